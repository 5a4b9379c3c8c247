"""Reading a run for its report, as a resume would read it and without changing a byte: the
kept and rejected records up to the last commit, the counts per unit, per source file and per
reason, lengths and similarities, what was asked (verbs and their objects), and samples."""
from __future__ import annotations

import random
import re
from collections import Counter, defaultdict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterator

from ..engine.pool import COMMITS, GENERATED, LEDGER, REJECTED, RUN, STATE
from ..errors import DataError
from ..io.jsonl import loads_line, read_json, type_name
from ..pipelines.documents import MODES as DOCUMENT_MODES

REPORT = "report.html"


SAMPLE_SIZE = 20


TAGS = ("persona", "topic")  # what --personas and --topics tag each record with
NO_SOURCE = "(no source recorded)"  # records of a unit that named no file: a request that failed, say


# Words that open an instruction without being its verb, and words skipped on the way to its object.
NOT_VERBS = set("""what how why who whom whose which where when is are was were am be been can could do does did
    will would shall should may might must have has had i you we they he she it there here this that these those
    the a an in on at if for given as my your our their its his her please imagine suppose let""".split())


NOT_OBJECTS = set("""a an the this that these those some any each every all both my your our their its his her me us
    them it of to for in on at by with about from into onto as and or but how what why who which where when whether
    if one two three four five six seven eight nine ten several few many more most brief short simple""".split())


@dataclass
class SourceStats:
    """What one source file of a documents run gave: its chunks (sections in windows mode) and records."""
    first: int  # its first chunk's number: the table lists sources in the order the run read them
    pieces: set = field(default_factory=set)
    kept_pieces: set = field(default_factory=set)
    kept: int = 0
    reasons: Counter = field(default_factory=Counter)
    grounded: int = 0  # answers the grounding check found supported (kept, or rejected later by the judge)


@dataclass
class RunSummary:
    """What a report shows, gathered in one pass over the run's files."""
    directory: Path
    unit_name: str = "round"  # "chunk" for a documents run
    mode: str | None = None  # a documents run's mode
    kept_by_unit: Counter = field(default_factory=Counter)
    rejected_by_unit: dict = field(default_factory=lambda: defaultdict(Counter))
    reasons: Counter = field(default_factory=Counter)
    details: dict = field(default_factory=dict)  # reason -> the detail of its first rejection
    similarity: list = field(default_factory=list)
    top_similarity: list = field(default_factory=list)
    instruction_words: list = field(default_factory=list)
    output_words: list = field(default_factory=list)
    verbs: Counter = field(default_factory=Counter)
    verb_objects: dict = field(default_factory=lambda: defaultdict(Counter))
    openings: Counter = field(default_factory=Counter)  # first word of kept questions (qa)
    categories: dict = field(default_factory=lambda: defaultdict(Counter))  # category -> kept and reasons (instruct)
    kept_sample: list = field(default_factory=list)
    rejected_samples: dict = field(default_factory=lambda: defaultdict(list))  # reason -> sample
    sources: dict = field(default_factory=dict)  # source -> SourceStats
    units: int | None = None  # units committed, from the commit log (else state.json)
    state: dict = field(default_factory=dict)
    config: dict = field(default_factory=dict)
    ledger: list = field(default_factory=list)
    notes: list = field(default_factory=list)  # what was left out of reading, and why
    margins: list = field(default_factory=list)  # preference pairs: best minus worst score
    turns: list = field(default_factory=list)  # conversations: user turns in each
    tags: dict = field(default_factory=lambda: defaultdict(lambda: defaultdict(list)))  # tag -> value -> top similarities

    @property
    def kept(self) -> int:
        return sum(self.kept_by_unit.values())

    @property
    def rejected(self) -> int:
        return sum(self.reasons.values())

    @property
    def piece_name(self) -> str:
        """What a documents run's coverage counts: chunks, or sections in windows mode."""
        return "section" if self.mode == "windows" else "chunk"

    @property
    def grounding(self) -> tuple[int, int, int]:
        """(supported, ungrounded, unverified) answers of the grounding check."""
        supported = sum(stats.grounded for stats in self.sources.values())
        return supported, self.reasons.get("ungrounded", 0), self.reasons.get("unverified", 0)


def is_run_directory(directory: Path) -> bool:
    """A directory an engine run wrote to (a run that kept nothing has no generated.jsonl)."""
    return any((directory / name).is_file() for name in (GENERATED, REJECTED, COMMITS, RUN))


def read_object(path: Path, notes: list, without: str) -> dict:
    """A JSON object file, or {} with a note when it is missing or is not one (never an error:
    the report shows what it can)."""
    try:
        value = read_json(path)
    except DataError as exc:
        notes.append(f"{exc}; {without}")
        return {}
    if value is None:
        return {}
    if not isinstance(value, dict):
        notes.append(f"{path.name} holds a JSON {type_name(value)}, not an object; {without}")
        return {}
    return value


def committed_sizes(directory: Path, notes: list) -> dict | None:
    """The sizes of generated.jsonl and rejected.jsonl at the last commit, and how many units
    were committed, as InstructionPool.open reads them (a torn last line of the log does not
    count); None without a commit log."""
    path = directory / COMMITS
    if not path.is_file():
        return None
    commits = list(read_lines(path, notes))
    for i, entry in enumerate(commits):
        if not isinstance(entry.get(GENERATED), int) or not isinstance(entry.get(REJECTED), int):
            raise DataError(f"{path}:{i + 1}: a commit without the sizes of {GENERATED} and {REJECTED}; "
                            f"the commit log was edited")
    if not commits:
        return {GENERATED: 0, REJECTED: 0, "units": 0}
    return {GENERATED: commits[-1][GENERATED], REJECTED: commits[-1][REJECTED], "units": len(commits)}


def read_lines(path: Path, notes: list, size: int | None = None) -> Iterator[dict]:
    """The JSON objects of a JSONL file we wrote, up to byte `size` (a commit's) when given, and
    without a torn last line (no newline: a write a kill cut short), each left out with a note.
    Nothing on disk changes. A bad line before those is an error naming file and line."""
    if not path.is_file():
        return
    with open(path, "rb") as f:
        offset = 0
        for lineno, line in enumerate(f, 1):
            if size is not None and offset >= size:
                rest = path.stat().st_size - offset
                notes.append(f"{path.name}: {rest:,} bytes past the last commit left out (a unit the run was "
                             f"killed while writing; a resume cuts them and runs it again)")
                return
            offset += len(line)
            if not line.endswith(b"\n"):
                notes.append(f"{path.name}: a torn last line of {len(line):,} bytes left out (the run was killed "
                             f"while writing it)")
                return
            body = line.rstrip(b"\n").rstrip(b"\r")
            if not body.strip():
                continue
            value = loads_line(path, lineno, body)
            if not isinstance(value, dict):
                raise DataError(f"{path}:{lineno}: expected a JSON object, got {type_name(value)}")
            yield value
    if size is not None and offset < size:
        notes.append(f"{path.name}: {offset:,} bytes where {COMMITS} says {size:,} were committed (the file was "
                     f"cut or edited; a resume refuses it): the report shows what is there")


def summarize(output_dir: str | Path, seed: int = 0) -> RunSummary:
    """Read a run's files once, keeping counts, lists of numbers and two random samples."""
    directory = Path(output_dir)
    if not is_run_directory(directory):
        raise DataError(f"{directory}: no generated.jsonl here; pass the --output_dir of a generate or documents run")
    notes: list[str] = []
    summary = RunSummary(directory, state=read_object(directory / STATE, notes, "its counters are left out"),
                         config=read_object(directory / RUN, notes, "the run's settings are unknown"), notes=notes)
    if summary.config.get("mode") in DOCUMENT_MODES:
        summary.mode = summary.config["mode"]
        summary.unit_name = "section group" if summary.mode == "windows" else "chunk"
    sizes = committed_sizes(directory, notes)
    rng = random.Random(seed)
    for seen, record in enumerate(read_lines(directory / GENERATED, notes, sizes and sizes[GENERATED])):
        summary.kept_by_unit[unit_of(record)] += 1
        add_kept(summary, record)
        keep_sample(summary.kept_sample, record, seen, rng)
    unplaced = []  # documents rejections that name no source, placed once every record was read
    for record in read_lines(directory / REJECTED, notes, sizes and sizes[REJECTED]):
        reason = str(record.get("reason", "unknown"))
        summary.reasons[reason] += 1
        summary.details.setdefault(reason, str(record.get("detail", "")))
        summary.rejected_by_unit[unit_of(record)][reason] += 1
        keep_sample(summary.rejected_samples[reason], record, summary.reasons[reason] - 1, rng)
        if summary.mode and not add_to_source(summary, record, reason):
            unplaced.append((unit_of(record), reason))
        category = metadata_of(record).get("category")
        if summary.mode == "instruct" and isinstance(category, str):
            summary.categories[category][reason] += 1
    place_unsourced(summary, unplaced)
    summary.ledger = list(read_lines(directory / LEDGER, notes))
    units = sizes["units"] if sizes else summary.state.get("units")
    summary.units = units if isinstance(units, int) and not isinstance(units, bool) else None
    return summary


def unit_of(record: dict) -> int | None:
    """The unit (a round, or a documents run's chunk) the engine recorded the record in."""
    unit = (record.get("provenance") or {}).get("unit")
    return unit if isinstance(unit, int) and not isinstance(unit, bool) else None


def metadata_of(record: dict) -> dict:
    meta = record.get("metadata")
    return meta if isinstance(meta, dict) else {}


def piece_of(summary: RunSummary, record: dict) -> int | None:
    """The chunk (or section, in windows mode) a documents record came from."""
    piece = metadata_of(record).get(summary.piece_name)
    if isinstance(piece, int) and not isinstance(piece, bool):
        return piece
    return None if summary.mode == "windows" else unit_of(record)  # a unit is one chunk


def source_stats(summary: RunSummary, source: str, piece: int | None) -> SourceStats:
    stats = summary.sources.get(source)
    if stats is None:
        stats = summary.sources[source] = SourceStats(first=piece if piece is not None else 1 << 62)
    if piece is not None:
        stats.first = min(stats.first, piece)
        stats.pieces.add(piece)
    return stats


def add_to_source(summary: RunSummary, record: dict, reason: str | None) -> bool:
    """Count a documents record (kept when `reason` is None) for its source; False when it names none."""
    source = metadata_of(record).get("source")
    if not isinstance(source, str):
        return False
    piece = piece_of(summary, record)
    stats = source_stats(summary, source, piece)
    stats.grounded += metadata_of(record).get("grounded") is True
    if reason is None:
        stats.kept += 1
        if piece is not None:
            stats.kept_pieces.add(piece)
    else:
        stats.reasons[reason] += 1
    return True


def place_unsourced(summary: RunSummary, unplaced: list) -> None:
    """Rejections that name no source (a request that failed, a reply that did not parse) go to
    the source of the other records of their chunk, or to NO_SOURCE when there are none."""
    by_unit = {}
    if summary.mode != "windows":  # there a unit holds many sections, maybe of several files
        for source, stats in summary.sources.items():
            for piece in stats.pieces:
                by_unit[piece] = source
    for unit, reason in unplaced:
        source = by_unit.get(unit, NO_SOURCE)
        stats = source_stats(summary, source, None if summary.mode == "windows" else unit)
        stats.reasons[reason] += 1


def add_kept(summary: RunSummary, record: dict) -> None:
    if isinstance(record.get("avg_similarity_score"), (int, float)):
        summary.similarity.append(float(record["avg_similarity_score"]))
    scores = [s for s in (record.get("most_similar_instructions") or {}).values() if isinstance(s, (int, float))]
    if scores:
        summary.top_similarity.append(float(max(scores)))
    instruction = str(record.get("instruction", ""))
    summary.instruction_words.append(len(instruction.split()))
    summary.output_words.append(len(str(record.get("output", "")).split()))
    verb, obj = verb_and_object(instruction)
    if verb:
        summary.verbs[verb] += 1
        if obj:
            summary.verb_objects[verb][obj] += 1
    if summary.mode:
        add_to_source(summary, record, None)
        words = re.findall(r"[^\W\d_]+(?:'[^\W\d_]+)?", instruction)
        summary.openings[words[0].lower() if words else "(no word)"] += 1
    meta = metadata_of(record)
    preference = meta.get("preference")
    if isinstance(preference, dict) and isinstance(preference.get("margin"), (int, float)):
        summary.margins.append(preference["margin"])
    if isinstance(meta.get("messages"), list):
        summary.turns.append(sum(isinstance(m, dict) and m.get("role") == "user" for m in meta["messages"]))
    for tag in TAGS:
        if isinstance(meta.get(tag), str):
            summary.tags[tag][meta[tag]].append(max(scores) if scores else 0.0)
    category = meta.get("category")
    if summary.mode == "instruct" and isinstance(category, str):
        summary.categories[category]["kept"] += 1


def verb_and_object(instruction: str) -> tuple[str | None, str | None]:
    """The leading verb of an instruction and its object, by the heuristic in the module docstring.

    >>> verb_and_object("Write a short poem about the sea.")
    ('write', 'poem')
    >>> verb_and_object("Give three tips for staying healthy.")
    ('give', 'tips')
    >>> verb_and_object("What is the capital of France?"), verb_and_object("中文 translate this")
    ((None, None), (None, None))
    """
    words = re.findall(r"[A-Za-z]+(?:'[a-z]+)?", instruction)
    if not re.match(r"\s*[A-Za-z]", instruction) or words[0].lower() in NOT_VERBS:
        return None, None
    obj = next((w.lower() for w in words[1:6] if w.lower() not in NOT_OBJECTS and not w.endswith("ly")), None)
    return words[0].lower(), obj


def keep_sample(sample: list, record: dict, seen: int, rng: random.Random) -> None:
    """Reservoir sampling (`seen` records came before this one): after n records each is in the
    sample with the same chance."""
    if len(sample) < SAMPLE_SIZE:
        sample.append(record)
    elif (slot := rng.randrange(seen + 1)) < SAMPLE_SIZE:
        sample[slot] = record


def rejected_sample(s: RunSummary) -> list[dict]:
    """Twenty rejected records taken in turn from each reason's sample, so a rare reason shows
    beside the one that rejected most."""
    queues = [list(s.rejected_samples[reason]) for reason, _ in s.reasons.most_common()]
    picked = []
    while len(picked) < SAMPLE_SIZE and any(queues):
        picked += [queue.pop(0) for queue in queues if queue][:SAMPLE_SIZE - len(picked)]
    return picked


def count(state: dict, key: str):
    """A counter of state.json as a number (0 where it is missing or is not one)."""
    value = state.get(key)
    return value if isinstance(value, (int, float)) and not isinstance(value, bool) else 0
