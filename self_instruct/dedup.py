"""Greedy ROUGE-L dedup of an instruction dataset: ``python -m self_instruct.dedup INPUT``.

Keeps the decisions of Stanford Alpaca's generator, bit for bit: records are taken in input order,
and one is dropped when the rouge-score 0.1.2 ``RougeScorer(["rougeL"], use_stemmer=False)``
F-measure of its ``instruction`` against any kept instruction, or any instruction of the
``--against`` files, is greater than the threshold (0.7). Scoring goes through
:class:`~self_instruct.similarity.RougeIndex`, so 50,000 records take seconds, not hours.

INPUT is an Alpaca JSON list or a JSONL file of objects with an ``instruction`` field (seed task
files qualify). Kept records are copied byte for byte, in the input's format, to OUTPUT, which
defaults to the input's name with ``.dedup`` before the suffix (``data.json`` -> ``data.dedup.json``).
"""
from __future__ import annotations

import json
import os
import re
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable, Iterator, Sequence

import fire
from tqdm import tqdm

from .errors import ConfigError, SeedFormatError, SelfInstructError
from .similarity import greedy_dedup

_JSON_SPACE = re.compile(r"[ \t\n\r]*")


@dataclass(frozen=True)
class Record:
    """One input record: its instruction and its exact source text (a JSONL line or a list item)."""

    instruction: str
    raw: str


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
        text = Path(path).read_bytes().decode("utf-8-sig")
    except FileNotFoundError:
        raise ConfigError(f"{path}: no such file") from None
    except UnicodeDecodeError as exc:
        raise SeedFormatError(f"{path}: not UTF-8 (byte {exc.start}); re-save the file as UTF-8") from None
    except OSError as exc:
        raise ConfigError(f"{path}: cannot read: {exc.strerror}") from None
    start = _skip_space(text, 0)
    if text.startswith("[", start):
        return _read_json_list(path, text, start)
    return Dataset(_read_jsonl(path, text), is_json_list=False)


def _read_jsonl(path: str | Path, text: str) -> list[Record]:
    records = []
    for lineno, line in enumerate(text.split("\n"), 1):
        if not line.strip():
            continue
        try:
            obj = json.loads(line)
        except json.JSONDecodeError as exc:
            raise SeedFormatError(f"{path}:{lineno}: not valid JSON ({exc.msg} at column {exc.colno})") from None
        except RecursionError:
            raise SeedFormatError(f"{path}:{lineno}: JSON nested too deeply to be a record") from None
        problem = _problem(obj)
        if problem:
            raise SeedFormatError(f"{path}:{lineno}: {problem}")
        records.append(Record(obj["instruction"], line))
    return records


def _read_json_list(path: str | Path, text: str, start: int) -> Dataset:
    """Parse the list opening at ``start`` item by item, so each record keeps its source text and line."""
    decoder = json.JSONDecoder()
    records, spans = [], []
    position = _skip_space(text, start + 1)
    while text[position:position + 1] != "]":
        if records:
            if text[position:position + 1] != ",":
                raise _error(path, text, position, "not valid JSON (expected ',' or ']' between records)")
            position = _skip_space(text, position + 1)
        try:
            obj, end = decoder.raw_decode(text, position)
        except json.JSONDecodeError as exc:
            raise SeedFormatError(f"{path}:{exc.lineno}: not valid JSON ({exc.msg} at column {exc.colno})") from None
        except RecursionError:
            raise _error(path, text, position, "JSON nested too deeply to be a record") from None
        problem = _problem(obj)
        if problem:
            raise _error(path, text, position, problem)
        records.append(Record(obj["instruction"], text[position:end]))
        spans.append((position, end))
        position = _skip_space(text, end)
    if text[position + 1:].strip():
        raise _error(path, text, position + 1, "not valid JSON (extra data after the closing ']')")
    if not spans:
        return Dataset([], True, head="[", tail="]" + text[position + 1:])
    separator = text[spans[0][1]:spans[1][0]] if len(spans) > 1 else ", "
    return Dataset(records, True, text[:spans[0][0]], separator, text[spans[-1][1]:])


def _skip_space(text: str, position: int) -> int:
    """Index of the first character at or after ``position`` that is not JSON whitespace.

    >>> _skip_space("[  \\n {}", 1)
    5
    """
    return _JSON_SPACE.match(text, position).end()


def _error(path: str | Path, text: str, position: int, problem: str) -> SeedFormatError:
    # Lines are counted only here: counting them for every record is quadratic on one-line files.
    return SeedFormatError(f"{path}:{text.count(chr(10), 0, position) + 1}: {problem}")


def _problem(obj: object) -> str | None:
    """What keeps ``obj`` from being a record with an instruction, or None.

    >>> _problem({"instruction": "Say hi."}), _problem({"instruction": 3})
    (None, 'field "instruction" must be a string (got int)')
    >>> _problem([])
    'expected a JSON object with an "instruction" field (got list)'
    """
    if not isinstance(obj, dict):
        return f'expected a JSON object with an "instruction" field (got {type(obj).__name__})'
    if "instruction" not in obj:
        return 'field "instruction" is missing'
    if not isinstance(obj["instruction"], str):
        return f'field "instruction" must be a string (got {type(obj["instruction"]).__name__})'
    return None


def greedy_keep(instructions: Sequence[str], threshold: float = 0.7, against: Iterable[str] = ()) -> Iterator[bool]:
    """For each instruction in order, whether greedy dedup keeps it.

    One is dropped when it scores above ``threshold`` against an earlier kept one or any of
    ``against`` (see :func:`~self_instruct.similarity.greedy_dedup`).

    >>> list(greedy_keep(["Name a fruit.", "Name a red fruit.", "Sum 2 and 3."], against=["Sum 1 and 3"]))
    [True, False, False]
    """
    for batch in greedy_dedup(instructions, threshold, list(against)):
        yield from batch.tolist()


def dedup_file(input: str | Path, output: str | Path | None = None, threshold: float = 0.7,
               against: Sequence[str | Path] = ()) -> tuple[Path, int, int]:
    """Dedup ``input`` into ``output``; returns (output path, records read, records kept)."""
    input = Path(input)
    output = Path(output) if output else input.with_name(f"{input.stem}.dedup{input.suffix}")
    if output.resolve() in {Path(path).resolve() for path in (input, *against)}:
        raise ConfigError(f"{output}: the output would overwrite an input file; pass another --output")
    dataset = read_dataset(input)
    seen = [record.instruction for path in against for record in read_dataset(path).records]
    instructions = [record.instruction for record in dataset.records]
    flags = greedy_keep(instructions, threshold, seen)
    kept = []
    with tqdm(total=len(instructions), desc="dedup", unit="rec", file=sys.stderr) as progress:
        for record, keep in zip(dataset.records, flags):
            if keep:
                kept.append(record)
            progress.update()
            progress.set_postfix_str(f"kept={len(kept)}, dropped={progress.n - len(kept)}", refresh=False)
    _write_atomically(output, dataset.render(kept))
    return output, len(instructions), len(kept)


def _write_atomically(path: Path, text: str) -> None:
    """Write through a temporary file and rename it, so a failure never leaves a partial file."""
    # Not tempfile.mkstemp: its files are private (0600) and the result should follow the umask.
    temporary = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        file = open(temporary, "x", encoding="utf-8", newline="")
    except OSError as exc:
        raise ConfigError(f"{path}: cannot write here: {exc.strerror}") from None
    try:
        with file:
            file.write(text)
        os.replace(temporary, path)
    except BaseException:
        temporary.unlink()
        raise


def _paths(against) -> list[str]:
    """``--against`` as a list: fire passes a list, or one value (comma-separated files; a name like
    ``2024`` arrives as a number).

    >>> _paths("seed.jsonl,test.json"), _paths(["a.json"]), _paths(()), _paths(2024)
    (['seed.jsonl', 'test.json'], ['a.json'], [], ['2024'])
    """
    if isinstance(against, (list, tuple)):
        return [str(path) for path in against]
    return [path for path in str(against).split(",") if path]


def main(input, output=None, threshold=0.7, against=()):
    """Drop records whose instruction is a ROUGE-L near duplicate (F > threshold) of a kept one.

    Args:
        input: Alpaca JSON list or JSONL file of records with an "instruction" field.
        output: where kept records go, in the input's format (default: INPUT with .dedup before the suffix).
        threshold: ROUGE-L F-measure above which a record counts as a duplicate (Alpaca: 0.7).
        against: files whose instructions also count as kept, e.g. seed tasks or a test set;
            several are separated by commas.
    """
    try:
        if isinstance(threshold, bool) or not isinstance(threshold, (int, float)):
            raise ConfigError(f"--threshold must be a number between 0 and 1 (got {threshold!r})")
        path, read, kept = dedup_file(str(input), output and str(output), threshold, _paths(against))
    except SelfInstructError as exc:
        print(exc, file=sys.stderr)
        sys.exit(2)
    print(f"read {read}, kept {kept}, dropped {read - kept} -> {path}", file=sys.stderr)


def cli():
    fire.Fire(main)


if __name__ == "__main__":
    cli()
