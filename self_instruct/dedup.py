"""Greedy ROUGE-L dedup of an instruction dataset: ``python -m self_instruct.dedup INPUT``.

Keeps the decisions of Stanford Alpaca's generator, bit for bit: records are taken in input order,
and one is dropped when the rouge-score 0.1.2 ``RougeScorer(["rougeL"], use_stemmer=False)``
F-measure of its ``instruction`` against any kept instruction, or any instruction of the
``--against`` files, is greater than the threshold (0.7). Scoring goes through
:func:`~self_instruct.core.similarity.greedy_dedup`, so a million records take minutes, not days.

With ``--ngram N`` the ``--against`` files are benchmarks instead: a record sharing an N-word
n-gram of its instruction, input or output with any text in them is dropped as contaminated
(:mod:`self_instruct.core.decontaminate`), before the ROUGE-L pass over the rest.

INPUT is an Alpaca JSON list or a JSONL file of objects with an ``instruction`` field (seed task
files qualify). Kept records are copied byte for byte, in the input's format, to OUTPUT, which
defaults to the input's name with ``.dedup`` before the suffix (``data.json`` -> ``data.dedup.json``).
Files follow :mod:`self_instruct.io.jsonl`'s policy: lines end at "\\n" only, UTF-8 without a byte
order mark, every error names ``file:line``.
"""
from __future__ import annotations

import json
import os
import re
import sys
from array import array
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable, Iterator, Sequence

import numpy as np
from tqdm import tqdm

from .cli import run
from .core.decontaminate import Decontaminator
from .core.similarity import RougeIndex, _next_batch_size, greedy_dedup, key_shard, shard_pairs
from .errors import ConfigError, DataError
from .executors import EXECUTORS, LocalExecutor, open_executor
from .io.datasets import check_outputs
from .io.jsonl import BOM, fsync_dir, loads_line, not_json, type_name, write_jsonl_atomic, write_text_atomic

_JSON_SPACE = re.compile(r"[ \t\n\r]*")
# The fields of a record that decontamination looks at.
RECORD_TEXTS = ("instruction", "input", "output")


@dataclass(frozen=True)
class Record:
    """One input record: its line, instruction, other texts, and exact source text (a JSONL line or a list item)."""

    line: int
    instruction: str
    raw: str
    texts: tuple[str, ...] = ()


@dataclass(frozen=True)
class Dataset:
    """The records of one file and what is needed to write a subset back in the same format."""

    records: list[Record]
    is_json_list: bool
    # For a JSON list: the text before the first item, between items, and after the last one.
    head: str = ""
    separator: str = ", "
    tail: str = ""

    def render(self, kept: Iterable[Record]) -> str:
        """The file text holding only ``kept``, formatted like the source."""
        raws = [record.raw for record in kept]
        if self.is_json_list:
            return self.head + self.separator.join(raws) + self.tail
        return "".join(raw + "\n" for raw in raws)


def read_dataset(path: str | Path) -> Dataset:
    """Read a JSON list or JSONL file of records that each have a string ``instruction``.

    Errors name the file and line: ``data.jsonl:3: field "instruction" is missing``.
    """
    try:
        data = Path(path).read_bytes()
    except FileNotFoundError:
        raise DataError(f"{path}: no such file") from None
    except IsADirectoryError:
        raise DataError(f"{path}: is a directory, not a file") from None
    if data.startswith(BOM):
        raise DataError(f"{path}:1: the file starts with a byte order mark; save it as UTF-8 without BOM")
    if data.lstrip(b" \t\r\n").startswith(b"["):
        text = _decode(path, data)
        del data  # a large file is held once as text, not also as bytes
        return _read_json_list(path, text)
    return Dataset(_read_jsonl(path, data), is_json_list=False)


def _decode(path: str | Path, data: bytes) -> str:
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as exc:
        line = data.count(b"\n", 0, exc.start) + 1
        column = exc.start - data.rfind(b"\n", 0, exc.start)
        raise DataError(f"{path}:{line}: not UTF-8 (byte 0x{data[exc.start]:02x} at column {column}); "
                        "re-save the file as UTF-8") from None


def _checked_line(path: str | Path, lineno: int, line: bytes) -> dict:
    """The record on one JSONL line, or DataError naming the file, line and what is wrong."""
    obj = loads_line(path, lineno, line)
    problem = _problem(obj)
    if problem:
        raise DataError(f"{path}:{lineno}: {problem}")
    return obj


def _read_jsonl(path: str | Path, data: bytes) -> list[Record]:
    records = []
    for lineno, line in enumerate(data.split(b"\n"), 1):
        if not line.strip():
            continue
        records.append(_record(lineno, _checked_line(path, lineno, line), line.decode("utf-8")))
    return records


def _read_json_list(path: str | Path, text: str) -> Dataset:
    """Parse the list item by item, so each record keeps its source text and line."""
    decoder = json.JSONDecoder()
    records, spans = [], []
    line, counted = 1, 0
    position = _skip_space(text, text.index("[") + 1)
    while text[position:position + 1] != "]":
        if records:
            if text[position:position + 1] != ",":
                raise _error(path, text, position, "not valid JSON (expected ',' or ']' between records)")
            position = _skip_space(text, position + 1)
        try:
            obj, end = decoder.raw_decode(text, position)
        except json.JSONDecodeError as exc:
            raise DataError(f"{path}:{exc.lineno}: {not_json(exc)}") from None
        except RecursionError:
            raise _error(path, text, position, "JSON nested too deeply to be a record") from None
        problem = _problem(obj)
        if problem:
            raise _error(path, text, position, problem)
        # Lines are counted from the previous record on, so a one-line file costs no rescans.
        line, counted = line + text.count("\n", counted, position), position
        records.append(_record(line, obj, text[position:end]))
        spans.append((position, end))
        position = _skip_space(text, end)
    if text[position + 1:].strip():
        raise _error(path, text, position + 1, "not valid JSON (extra data after the closing ']')")
    if not spans:
        return Dataset([], True, head="[", tail="]" + text[position + 1:])
    separator = text[spans[0][1]:spans[1][0]] if len(spans) > 1 else ", "
    return Dataset(records, True, text[:spans[0][0]], separator, text[spans[-1][1]:])


def _record(line: int, obj: dict, raw: str) -> Record:
    texts = tuple(obj[name] for name in RECORD_TEXTS if isinstance(obj.get(name), str))
    return Record(line, obj["instruction"], raw, texts)


def _skip_space(text: str, position: int) -> int:
    """Index of the first character at or after ``position`` that is not JSON whitespace.

    >>> _skip_space("[  \\n {}", 1)
    5
    """
    return _JSON_SPACE.match(text, position).end()


def _error(path: str | Path, text: str, position: int, problem: str) -> DataError:
    return DataError(f"{path}:{text.count(chr(10), 0, position) + 1}: {problem}")


def _problem(obj: object) -> str | None:
    """What keeps ``obj`` from being a record with an instruction, or None.

    >>> _problem({"instruction": "Say hi."}), _problem({"instruction": 3})
    (None, 'field "instruction" must be a string (got number)')
    >>> _problem([])
    'expected a JSON object with an "instruction" field (got list)'
    """
    if not isinstance(obj, dict):
        return f'expected a JSON object with an "instruction" field (got {type_name(obj)})'
    if "instruction" not in obj:
        return 'field "instruction" is missing'
    if not isinstance(obj["instruction"], str):
        return f'field "instruction" must be a string (got {type_name(obj["instruction"])})'
    return None


def greedy_keep(instructions: Sequence[str], threshold: float = 0.7, against: Iterable[str] = ()) -> Iterator[bool]:
    """For each instruction in order, whether greedy dedup keeps it.

    One is dropped when it scores above ``threshold`` against an earlier kept one or any of
    ``against`` (see :func:`~self_instruct.core.similarity.greedy_dedup`).

    >>> list(greedy_keep(["Name a fruit.", "Name a red fruit.", "Sum 2 and 3."], against=["Sum 1 and 3"]))
    [True, False, False]
    """
    for batch in greedy_dedup(instructions, threshold, list(against)):
        yield from batch.tolist()


def sharded_keep(instructions: Sequence[str], threshold: float = 0.7, against: Sequence[str] = (),
                 shards: int = 4, directory: str | Path = ".") -> list[bool]:
    """:func:`greedy_keep`'s decisions computed as a cluster would, here one shard after another.

    1. Tokens are ranked by frequency over everything and texts encoded (a word count).
    2. A text whose tokens equal an earlier one's is dropped (as in greedy_dedup); the first of
       each goes on (a group-by).
    3. Each text goes to the shards owning its prefix keys; each shard writes every pair above
       the threshold that it finds (:func:`~self_instruct.core.similarity.shard_pairs`) to
       ``directory/pairs-K-of-N.npy``.
    4. One greedy pass over the merged pairs, sorted by their later text (:func:`greedy_pass`).

    >>> import tempfile
    >>> sharded_keep(["Name a fruit.", "Name a red fruit.", "Sum 2 and 3."], against=["Sum 1 and 3"],
    ...              shards=2, directory=tempfile.mkdtemp())
    [True, False, False]
    """
    texts = [*against, *instructions]
    if threshold >= 1:
        return [True] * len(instructions)
    encoded = RougeIndex(threshold=threshold)._encode_ranked(texts)
    first: dict[str, int] = {}
    duplicate = [bool(code) and first.setdefault(code, i) != i and i >= len(against) for i, code in enumerate(encoded)]
    files = write_shard_pairs([i for i, dup in enumerate(duplicate) if not dup], encoded, threshold, shards, directory)
    keep = greedy_pass(np.concatenate([np.load(file) for file in files]), len(texts), fixed=len(against))
    return [bool(kept) and not dup for kept, dup in zip(keep[len(against):], duplicate[len(against):])]


def write_shard_pairs(ids: Sequence[int], encoded: Sequence[str], threshold: float, shards: int,
                      directory: str | Path) -> list[Path]:
    """Send texts ``ids`` to the shards owning their prefix keys, join each shard, write its pairs (as ids)."""
    members: list[list[int]] = [[] for _ in range(shards)]
    index = RougeIndex(threshold=threshold)
    for i in ids:
        for shard in sorted({key_shard(key, shards) for key in index._prefix(encoded[i])}):
            members[shard].append(i)
    files = []
    for shard, chosen in enumerate(members):
        pairs = shard_pairs([encoded[i] for i in chosen], threshold, shard, shards)
        files.append(Path(directory) / f"pairs-{shard:04d}-of-{shards:04d}.npy")
        np.save(files[-1], np.asarray(chosen, dtype=np.int64)[pairs])
    return files


def greedy_pass(pairs: np.ndarray, size: int, fixed: int = 0) -> np.ndarray:
    """Greedy decisions from a candidate graph: text j is kept unless an edge (i, j), i < j, comes
    from a kept text i. The first ``fixed`` texts (the ``--against`` ones) are kept whatever their edges.

    >>> greedy_pass(np.array([[0, 1], [1, 2], [0, 3], [2, 3]]), 5).tolist()
    [True, False, True, False, True]
    """
    pairs = pairs[np.lexsort((pairs[:, 0], pairs[:, 1]))]
    later, earlier = pairs[:, 1].tolist(), pairs[:, 0].tolist()
    bounds = [0, *(np.flatnonzero(np.diff(pairs[:, 1])) + 1).tolist(), len(later)]
    keep = bytearray(b"\x01") * size
    for start, stop in zip(bounds, bounds[1:]):
        j = later[start] if start < stop else 0
        if j >= fixed and any(keep[i] for i in earlier[start:stop]):
            keep[j] = 0
    return np.frombuffer(bytes(keep), dtype=bool)


class Replica:
    """One worker's copy of the kept texts' ROUGE-L index, answering which queries match a kept text.

    The driver of :func:`parallel_keep` keeps the list of kept texts (encoded) and sends each call
    the ones this replica has not had yet (``delta``) with how many it should already hold
    (``size``). A replica whose worker died and was restarted holds none: it answers ``None``,
    and the driver sends it everything again (:meth:`reset`) before asking once more, so a
    restart can cost time but never a decision.
    """

    def __init__(self, threshold: float):
        self.threshold = threshold
        self.index = RougeIndex(threshold=threshold)

    def match(self, queries: Sequence[str], delta: Sequence[str], size: int) -> tuple[np.ndarray, int] | None:
        """Which ``queries`` score above the threshold against a kept text, and postings read;
        None when this replica does not hold the first ``size`` kept texts."""
        held = len(self.index)
        if held == size:
            for code in delta:
                self.index._add("", code)
        elif held != size + len(delta):  # neither before nor after this delta: restarted
            return None
        return _matches(self.index, queries)

    def reset(self, kept: Sequence[str]) -> int:
        self.index = RougeIndex(threshold=self.threshold)
        for code in kept:
            self.index._add("", code)
        return len(self.index)

    def pid(self) -> int:
        return os.getpid()

    def peak_kib(self) -> int:
        """This process's peak resident memory (VmHWM), in KiB."""
        return _peak_kib()


def _matches(index: RougeIndex, queries: Sequence[str]) -> tuple[np.ndarray, int]:
    """Whether each query scores above the threshold against ``index``: first through its rarest
    prefix token alone (most near duplicates show there), then through all of them for the rest,
    as :meth:`RougeIndex._keep_batch` does; and how many postings entries were read."""
    matched = np.zeros(len(queries), dtype=bool)
    keys = [index._keys(text) for text in queries]
    quick = index._pairs(queries, [found[:1] for found in keys])
    matched[quick.query] = True
    left = np.flatnonzero(~matched)
    pairs = index._pairs([queries[i] for i in left.tolist()], [keys[i] for i in left.tolist()])
    matched[left[pairs.query]] = True
    return matched, quick.scanned + pairs.scanned


def _peak_kib() -> int:
    try:
        return int(re.search(r"VmHWM:\s*(\d+)", Path("/proc/self/status").read_text()).group(1))
    except (OSError, AttributeError):
        return 0


def parallel_keep(instructions: Sequence[str], threshold: float = 0.7, against: Sequence[str] = (),
                  executor=None, shards: int = 2, progress=None) -> list[bool]:
    """:func:`greedy_keep`'s decisions, bit for bit, with the search for near duplicates spread
    over ``shards`` workers of ``executor`` (:mod:`self_instruct.executors`; in this process by default).

    Texts are taken in batches, in order. Each worker holds a copy of the index of the kept texts
    (:class:`Replica`) and answers for a slice of the batch which texts score above the threshold
    against a kept one; the driver then runs the greedy pass among the batch's other texts and
    adds the ones it keeps. A text is dropped exactly when an earlier kept text (or an ``against``
    one) scores above the threshold against it, so the decisions are the sequential ones whatever
    the batches or the slices.

    Blocking that cannot miss a pair. Let a query of m tokens and a kept text of n tokens have an
    LCS of l. rouge-score's F is 2PR/(P+R) with P = l/n and R = l/m, which is 2l/(m+n); so
    F > t needs (1) l >= t(m+n)/2 tokens in common; since l <= min(m, n), also (2)
    min(m, n)/max(m, n) > t/(2-t), a bound on the token-count ratio; and, whatever the partner's
    length, since m >= l, (3) l > t*n/(2-t) (2l/(n+l) >= 2l/(n+m)). Two multisets of tokens
    sharing at least l tokens share one among the first n-l+1 of each side in any one fixed order
    (the rarest first), so indexing a text under its first ``prefix_length(t, n)`` tokens and
    probing with the query's first ``prefix_length(t, m)`` finds every pair above t (the prefix
    filter). Where two sorted texts first share a token, at ranks i and j, every common token lies
    at or after them, so l <= min(m - i, n - j); a candidate failing (1) there cannot match (the
    positional filter). The pairs left are scored exactly (rapidfuzz's LCS, rouge-score's float
    operations); the bounds carry a margin of 1e-9, far above rounding. So a worker reports
    every query that has a kept text above the threshold, and only those
    (:meth:`RougeIndex._pairs`, :func:`~self_instruct.core.similarity.prefix_length`).

    A worker that dies mid-run is restarted by the executor and sent the kept texts again
    (:class:`Replica`); its slice is asked again, so nothing is lost or decided twice.

    >>> parallel_keep(["Name a fruit.", "Name a red fruit.", "Sum 2 and 3."], against=["Sum 1 and 3"])
    [True, False, False]
    """
    if threshold >= 1:  # nothing scores above 1
        return [True] * len(instructions)
    executor = executor or LocalExecutor()
    driver = RougeIndex(threshold=threshold)
    encoded = driver._encode_ranked([*against, *instructions])
    del driver._codes  # the vocabulary is not needed past encoding
    fixed = len(against)
    kept_codes = list(encoded[:fixed])
    replicas = executor.actors(Replica, shards, threshold)
    synced = [0] * shards
    keep = bytearray(len(encoded))
    seen: set[str] = set()
    start, size = fixed, 256
    while start < len(encoded):
        batch = range(start, min(start + size, len(encoded)))
        fresh = []
        for position in batch:
            code = encoded[position]
            if not (code and code in seen):
                seen.add(code)
                fresh.append(position)
        codes = [encoded[position] for position in fresh]
        bounds = np.linspace(0, len(codes), shards + 1).round().astype(int).tolist()
        parts = [codes[a:b] for a, b in zip(bounds, bounds[1:])]
        answers = executor.get([executor.call(replica, "match", part, kept_codes[synced[k]:], synced[k])
                                for k, (replica, part) in enumerate(zip(replicas, parts))])
        for k, answer in enumerate(answers):
            if answer is None:  # a restarted worker: send it every kept text, then ask again
                executor.get([executor.call(replicas[k], "reset", kept_codes)])
                answers[k] = executor.get([executor.call(replicas[k], "match", parts[k], [], len(kept_codes))])[0]
                if answers[k] is None:
                    raise RuntimeError("a dedup worker lost its index twice in a row")
        synced = [len(kept_codes)] * shards
        matched = np.concatenate([answer[0] for answer in answers]) if codes else np.zeros(0, dtype=bool)
        survivors = np.flatnonzero(~matched)
        among = driver._greedy_among([codes[i] for i in survivors.tolist()])
        for i in survivors[among].tolist():
            keep[fresh[i]] = 1
            kept_codes.append(codes[i])
        if progress is not None:
            progress.update(len(batch))
        start = batch.stop
        size = _next_batch_size(len(fresh), int(among.sum()), sum(answer[1] for answer in answers))
    return [bool(flag) for flag in keep[fixed:]]


@dataclass(frozen=True)
class Summary:
    """What a dedup run did: where the output went and why records were dropped."""

    output: Path
    read: int
    kept: int
    near_duplicates: int = 0
    contaminated: Counter | None = None  # benchmark file -> records dropped for it

    def __str__(self) -> str:
        why = f"near duplicates {self.near_duplicates}"
        if self.contaminated is not None:
            files = ", ".join(f"{name} {count}" for name, count in self.contaminated.most_common())
            why += f", contaminated {sum(self.contaminated.values())}" + (f" ({files})" if files else "")
        return f"read {self.read}, kept {self.kept}, dropped {self.read - self.kept}: {why} -> {self.output}"


def dedup_file(input: str | Path, output: str | Path | None = None, threshold: float = 0.7,
               against: Sequence[str | Path] = (), ngram: int | None = None, fields: Sequence[str] | None = None,
               report: str | Path | None = None, executor: str = "local", shards: int = 1,
               ray_address: str | None = None) -> Summary:
    """Dedup ``input`` into ``output`` (and, with ``ngram``, decontaminate it against ``against``).

    With ``shards`` above 1 or ``executor="ray"`` the near-duplicate search is spread over that many
    workers (:func:`parallel_keep`), and a JSONL input without ``ngram`` is streamed: only each
    record's instruction and byte offsets are held, and kept lines are copied from the file.
    """
    input = Path(input)
    output = Path(output) if output else input.with_name(f"{input.stem}.dedup{input.suffix}")
    check_outputs([("--output", output), ("--report", report)],
                  inputs=[("INPUT", input), *(("--against", path) for path in against)])
    if not 0 <= threshold <= 1:
        raise ConfigError(f"--threshold must be between 0 and 1 (got {threshold})")
    if fields is not None and ngram is None:
        raise ConfigError("--fields chooses benchmark fields for --ngram; pass --ngram too")
    if executor not in EXECUTORS:
        raise ConfigError(f"--executor must be one of {', '.join(EXECUTORS)} (got {executor!r})")
    if not isinstance(shards, int) or isinstance(shards, bool) or shards < 1:
        raise ConfigError(f"--shards must be a whole number of at least 1 (got {shards!r})")
    if ray_address and executor != "ray":
        raise ConfigError("--ray_address goes with --executor ray")
    if executor == "local" and shards == 1:
        return _dedup_dataset(input, output, threshold, against, ngram, fields, report)
    if executor == "ray":
        shards = shards if shards > 1 else 0  # 0: one worker per CPU of the cluster
    with open_executor(executor, ray_address) as workers:
        if not shards:
            import ray
            shards = max(1, int(ray.cluster_resources().get("CPU", 1)))
        if ngram is None and not _is_json_list(input):
            return _dedup_streamed(input, output, threshold, against, report, workers, shards)
        return _dedup_dataset(input, output, threshold, against, ngram, fields, report, workers, shards)


def _dedup_dataset(input: Path, output: Path, threshold: float, against: Sequence[str | Path], ngram: int | None,
                   fields: Sequence[str] | None, report: str | Path | None, executor=None, shards: int = 1) -> Summary:
    """The whole file read into memory, decided by :func:`greedy_keep` (or :func:`parallel_keep`)."""
    dataset = read_dataset(input)
    records = dataset.records
    dropped: list[dict] = []
    contaminated = None
    if ngram is not None:
        bench = Decontaminator(against, ngram, fields)
        hits = _first_hits(bench, records)
        contaminated = Counter(hit[0] for hit in hits if hit)
        dropped = [dict(line=r.line, reason="contaminated", benchmark=hit[0], ngram=hit[1], instruction=r.instruction)
                   for r, hit in zip(records, hits) if hit]
        records = [r for r, hit in zip(records, hits) if not hit]
        seen: list[str] = []
    else:
        seen = [record.instruction for path in against for record in read_dataset(path).records]
    kept = []
    with tqdm(total=len(records), desc="dedup", unit="rec", file=sys.stderr) as progress:
        instructions = [record.instruction for record in records]
        flags = (greedy_keep(instructions, threshold, seen) if executor is None
                 else parallel_keep(instructions, threshold, seen, executor, shards))
        for record, keep in zip(records, flags):
            if keep:
                kept.append(record)
            else:
                dropped.append(dict(line=record.line, reason="near_duplicate", instruction=record.instruction))
            progress.update()
    write_text_atomic(output, dataset.render(kept))
    if report:
        write_jsonl_atomic(report, sorted(dropped, key=lambda row: row["line"]))
    near = len(records) - len(kept)
    return Summary(output, len(dataset.records), len(kept), near, contaminated)


def _is_json_list(path: Path) -> bool:
    """Whether the file's first character that is not whitespace is ``[`` (a JSON list, not JSONL)."""
    with open(path, "rb") as f:
        while True:
            block = f.read(65536)
            if not block:
                return False
            block = block.lstrip(b" \t\r\n")
            if block:
                return block.startswith(b"[")


def _scan_jsonl(path: Path) -> Iterator[tuple[int, str]]:
    """(line number, instruction) of each record of a JSONL file, checked as :func:`read_dataset` checks them."""
    try:
        f = open(path, "rb")
    except FileNotFoundError:
        raise DataError(f"{path}: no such file") from None
    except IsADirectoryError:
        raise DataError(f"{path}: is a directory, not a file") from None
    with f:
        for lineno, line in enumerate(f, 1):
            line = line[:-1] if line.endswith(b"\n") else line
            if not line.strip():
                continue
            yield lineno, _checked_line(path, lineno, line)["instruction"]


def _dedup_streamed(input: Path, output: Path, threshold: float, against: Sequence[str | Path],
                    report: str | Path | None, executor, shards: int) -> Summary:
    """A JSONL file deduplicated holding only its instructions: the kept lines are copied from the
    file, byte for byte, to a temporary file renamed over ``output`` at the end."""
    seen = [record.instruction for path in against for record in read_dataset(path).records]
    lines, instructions = array("q"), []
    for lineno, instruction in _scan_jsonl(input):
        lines.append(lineno)
        instructions.append(instruction)
    with tqdm(total=len(instructions), desc="dedup", unit="rec", file=sys.stderr) as progress:
        flags = parallel_keep(instructions, threshold, seen, executor, shards, progress)
    del instructions
    keep = {lineno for lineno, flag in zip(lines, flags) if flag}
    dropped = []
    tmp = output.with_name(f".{output.name}.{os.getpid()}.tmp")
    try:
        with open(input, "rb") as source, open(tmp, "wb") as target:
            for lineno, line in enumerate(source, 1):
                if lineno in keep:
                    target.write(line if line.endswith(b"\n") else line + b"\n")
                elif report and line.strip():
                    dropped.append(dict(line=lineno, reason="near_duplicate", instruction=json.loads(line)["instruction"]))
            target.flush()
            os.fsync(target.fileno())
        os.replace(tmp, output)
    finally:
        tmp.unlink(missing_ok=True)
    fsync_dir(output.parent)
    if report:
        write_jsonl_atomic(report, dropped)
    return Summary(output, len(lines), len(keep), len(lines) - len(keep))


def _first_hits(bench: Decontaminator, records: list[Record]) -> list[tuple[str, str] | None]:
    """Each record's first benchmark n-gram over its instruction, input and output, or None."""
    hits = bench.hits([text for record in records for text in record.texts])
    first, start = [], 0
    for record in records:
        first.append(next((hit for hit in hits[start:start + len(record.texts)] if hit), None))
        start += len(record.texts)
    return first


def _split(names: str) -> list[str]:
    """A comma-separated flag (``--against``, ``--fields``) as a list.

    >>> _split("seed.jsonl,test.json"), _split("")
    (['seed.jsonl', 'test.json'], [])
    """
    return [name for name in names.split(",") if name]


def main(input: str, output: str | None = None, threshold: float = 0.7, against: str = "",
         ngram: int | None = None, fields: str | None = None, report: str | None = None,
         executor: str = "local", shards: int = 1, ray_address: str | None = None):
    """Drop records whose instruction is a ROUGE-L near duplicate (F > threshold) of a kept one.

    Args:
        input: Alpaca JSON list or JSONL file of records with an "instruction" field.
        output: where kept records go, in the input's format (default: INPUT with .dedup before the suffix).
        threshold: ROUGE-L F-measure above which a record counts as a duplicate (Alpaca: 0.7).
        against: files whose instructions also count as kept, e.g. seed tasks or a test set;
            several are separated by commas. With --ngram: benchmark files (JSON, JSONL, CSV, Parquet).
        ngram: drop records sharing this many consecutive words (13 is the usual choice) with any
            --against file, before the ROUGE-L pass.
        fields: with --ngram, the benchmark fields (columns) to read, separated by commas (default: every string field).
        report: a JSONL file listing each dropped record (line, reason; benchmark and n-gram when contaminated).
        executor: where the near-duplicate search runs: local (this process) or ray (a Ray cluster;
            pip install 'self_instruct[ray]'). The decisions are the same.
        shards: workers the search is split over (default 1, one pass in this process; with --executor ray,
            one per CPU of the cluster). A JSONL input is then streamed (instructions and line numbers held).
        ray_address: the Ray cluster to join with --executor ray (default: RAY_ADDRESS, else a local
            instance started for the run).
    """
    summary = dedup_file(input, output, threshold, _split(against), ngram,
                         _split(fields) if fields is not None else None, report, executor, shards, ray_address)
    print(summary, file=sys.stderr)


def cli(argv: Sequence[str] | None = None) -> None:
    args = list(sys.argv[1:] if argv is None else argv)
    if args and not args[0].startswith("-"):  # INPUT first, as the README shows it
        args = ["--input", *args]
    run(main, args, name="self_instruct.dedup")


if __name__ == "__main__":
    cli()
