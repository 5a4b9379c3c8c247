"""A run report people can look at before they spend GPU hours: `python -m self_instruct.report OUT`.

Writes OUT/report.html, one self-contained page (charts are PNGs inlined as data URIs; no script,
no network) from what a generate or documents run wrote: generated.jsonl, rejected.jsonl,
commits.jsonl, state.json, run.json and, when present, ledger.jsonl. It shows
- kept against rejected (by reason) over the rounds, or over the chunks of a documents run;
- for a documents run (run.json's `mode`), coverage per source file (chunks asked, chunks with
  kept records, kept records, rejections by reason) and the grounding check's pass rate;
- histograms of avg_similarity_score and of the top-1 ROUGE-L similarity of kept records;
- instruction and output lengths in words;
- what was asked: the most common leading verbs and their objects as two rings, like Alpaca's
  verb-noun chart; for a documents run in qa mode how its questions open, in instruct mode its
  Dolly categories (questions seldom start with a verb, and the rings would be empty);
- tokens and cost over time from ledger.jsonl (without one, progress over rounds, and it says so);
- twenty random kept records and twenty rejected ones with their reasons (and, for documents,
  the file, page and heading path each came from).
A run that kept nothing still gets its page, which says so and why.

The files are read as a resume would read them, and never changed: records past the last line
of the commit log (a unit the run was killed while writing) and a torn last line are left out,
with a note on the page; a state.json or run.json that is not a JSON object is left out with a
note, as a resume rebuilds state.json.

The verbs come from a heuristic, not a parser (no model to download): the first word of an
instruction, unless it is a question word, pronoun or auxiliary, and the next word that is not a
determiner, number or preposition as its object. `write_report(output_dir)` is what generate and
documents call at the end of a run.
"""
from __future__ import annotations

import base64
import html
import io
import random
import re
import sys
import time
from collections import Counter, defaultdict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterator, Sequence

from .cli import run, words_as_flag
from .engine.pool import COMMITS, GENERATED, LEDGER, REJECTED, RUN, STATE
from .errors import ConfigError, DataError, SelfInstructError
from .io.jsonl import loads_line, read_json, type_name, write_text_atomic
from .io.secrets import redact, redact_url
from .pipelines.documents import MODES as DOCUMENT_MODES

REPORT = "report.html"
SAMPLE_SIZE = 20
MAX_BARS = 60  # more rounds than this are drawn in groups of consecutive rounds
MAX_SOURCE_ROWS = 100  # rows of the coverage table; the rest are counted in one line
INSTALL_HINT = "pip install 'self_instruct[export]'"
NO_SOURCE = "(no source recorded)"  # records of a unit that named no file: a request that failed, say
# Words that open an instruction without being its verb, and words skipped on the way to its object.
NOT_VERBS = set("""what how why who whom whose which where when is are was were am be been can could do does did
    will would shall should may might must have has had i you we they he she it there here this that these those
    the a an in on at if for given as my your our their its his her please imagine suppose let""".split())
NOT_OBJECTS = set("""a an the this that these those some any each every all both my your our their its his her me us
    them it of to for in on at by with about from into onto as and or but how what why who which where when whether
    if one two three four five six seven eight nine ten several few many more most brief short simple""".split())
REASON_COLOURS = ["#d62728", "#ff7f0e", "#9467bd", "#8c564b", "#e377c2", "#7f7f7f", "#bcbd22", "#17becf", "#aec7e8", "#ffbb78"]


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


# -----------------------------------------------------------------------------
# reading, as a resume would read


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
    category = metadata_of(record).get("category")
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


# -----------------------------------------------------------------------------
# charts: matplotlib figures as PNG data URIs


def figure(width: float = 9.0, height: float = 3.4, columns: int = 1):
    """A figure and its axes, made without pyplot (no global state, no display needed)."""
    try:
        from matplotlib.figure import Figure
    except ImportError:
        raise ConfigError(f"the report needs matplotlib: {INSTALL_HINT}") from None
    fig = Figure(figsize=(width, height), dpi=100, layout="tight")
    return fig, fig.subplots(1, columns)


def whole_ticks():
    from matplotlib.ticker import MaxNLocator
    return MaxNLocator(integer=True)


def data_uri(fig) -> str:
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png")
    return "data:image/png;base64," + base64.b64encode(buffer.getvalue()).decode("ascii")


def outcomes_chart(s: RunSummary) -> str:
    """Kept and rejected (stacked by reason) per round or chunk, in groups when there are many."""
    units = sorted(u for u in set(s.kept_by_unit) | set(s.rejected_by_unit) if isinstance(u, int))
    width = max(1, -(-(max(units) + 1) // MAX_BARS)) if units else 1
    groups = sorted({u // width for u in units})
    reasons = [reason for reason, _ in s.reasons.most_common()]
    fig, ax = figure()
    x = [g * width for g in groups]
    bottom = [0] * len(groups)
    layers = [("kept", "#2ca02c", lambda u: s.kept_by_unit.get(u, 0))]
    layers += [(reason, REASON_COLOURS[i % len(REASON_COLOURS)], lambda u, r=reason: s.rejected_by_unit.get(u, {}).get(r, 0))
               for i, reason in enumerate(reasons)]
    for label, colour, count in layers:
        heights = [sum(count(u) for u in range(g * width, (g + 1) * width)) for g in groups]
        ax.bar(x, heights, width=0.85 * width, bottom=bottom, color=colour, label=label, align="edge")
        bottom = [b + h for b, h in zip(bottom, heights)]
    group = f" (groups of {width})" if width > 1 else ""
    ax.set(xlabel=f"{s.unit_name}{group}", ylabel="candidates", title=f"Kept and rejected by reason, per {s.unit_name}")
    ax.xaxis.set_major_locator(whole_ticks())
    ax.legend(fontsize=8, loc="upper left", bbox_to_anchor=(1.01, 1.0))  # beside the bars, never over them
    return data_uri(fig)


def histograms(pairs: Sequence[tuple[str, list, str]], whole: bool = False) -> str:
    """Side-by-side histograms of (title, values, x label); `whole` numbers get a bar each while
    they span at most 60 values."""
    fig, axes = figure(columns=len(pairs))
    for ax, (title, values, xlabel) in zip(axes, pairs):
        if values:
            low, high = min(values), max(values)
            if whole and high - low <= 60:
                ax.hist(values, bins=[b - 0.5 for b in range(low, high + 2)], color="#1f77b4", edgecolor="white")
                ax.set_xlim(low - 0.5 - max(2, (high - low) // 10), high + 0.5 + max(2, (high - low) // 10))
                ax.xaxis.set_major_locator(whole_ticks())
            else:
                ax.hist(values, bins=30, color="#1f77b4", edgecolor="white")
        else:
            ax.text(0.5, 0.5, "no values", ha="center", va="center", transform=ax.transAxes)
        ax.set(title=title, xlabel=xlabel, ylabel="kept records")
    return data_uri(fig)


def verb_chart(s: RunSummary, verbs: int = 20, objects: int = 4) -> str:
    """Two rings in the manner of Alpaca's verb-noun circle: leading verbs inside, their objects outside
    (verbs without an object are left out)."""
    top = [verb for verb, _ in s.verbs.most_common(verbs) if s.verb_objects[verb]]
    fig, ax = figure(8.0, 8.0)
    if not top:
        ax.text(0.5, 0.5, "no instruction starts with a verb", ha="center", va="center", transform=ax.transAxes)
        ax.set_axis_off()
        return data_uri(fig)
    palette = [REASON_COLOURS[i % len(REASON_COLOURS)] for i in range(len(top))]
    inner, outer, outer_labels, outer_colours = [], [], [], []
    for verb, colour in zip(top, palette):
        shown = s.verb_objects[verb].most_common(objects)
        inner.append(sum(n for _, n in shown))
        outer += [n for _, n in shown]
        outer_labels += [obj for obj, _ in shown]
        outer_colours += [colour] * len(shown)
    ring = {"edgecolor": "white", "linewidth": 0.6}
    ax.pie(inner, radius=0.62, labels=top, labeldistance=0.55, rotatelabels=True, colors=palette,
           wedgeprops={**ring, "width": 0.42}, textprops={"fontsize": 8}, startangle=90, counterclock=False)
    ax.pie(outer, radius=1.0, labels=outer_labels, labeldistance=0.8, rotatelabels=True, colors=outer_colours,
           wedgeprops={**ring, "width": 0.38, "alpha": 0.6}, textprops={"fontsize": 6.5}, startangle=90, counterclock=False)
    ax.set_title(f"Top {len(top)} leading verbs (inner) and their top {objects} objects (outer);\n"
                 f"sizes count these pairs only, as in Alpaca's chart")
    return data_uri(fig)


def usage_chart(s: RunSummary) -> tuple[str, str]:
    """Tokens and cost over time from ledger.jsonl, or kept and rejected over rounds without one;
    returns the image and a sentence saying which."""
    done = sorted((e for e in s.ledger if e.get("event") == "done" and isinstance(e.get("t"), (int, float))), key=lambda e: e["t"])
    fig, ax = figure()
    if done:
        start = min(e["t"] for e in s.ledger if isinstance(e.get("t"), (int, float)))
        minutes = [(e["t"] - start) / 60 for e in done]
        prompt = cumulative(e.get("prompt_tokens") or 0 for e in done)
        completion = cumulative(e.get("completion_tokens") or 0 for e in done)
        ax.stackplot(minutes, prompt, completion, labels=["prompt tokens", "completion tokens"], colors=["#aec7e8", "#1f77b4"])
        ax.set(xlabel="minutes since the first request", ylabel="tokens (cumulative)", title="Tokens and cost over time")
        cost = cumulative(e.get("cost") or 0 for e in done)
        if cost[-1]:
            twin = ax.twinx()
            twin.plot(minutes, cost, color="#d62728", label="cost")
            twin.set_ylabel("cost (cumulative, USD)")
            twin.legend(loc="upper center", fontsize=8)
        ax.legend(loc="upper left", fontsize=8)
        return data_uri(fig), f"From ledger.jsonl: {len(done)} replies."
    units = sorted(u for u in set(s.kept_by_unit) | set(s.rejected_by_unit) if isinstance(u, int))
    ax.plot(units, cumulative(s.kept_by_unit.get(u, 0) for u in units), label="kept", color="#2ca02c")
    ax.plot(units, cumulative(sum(s.rejected_by_unit.get(u, {}).values()) for u in units), label="rejected", color="#d62728")
    ax.set(xlabel=s.unit_name, ylabel="records (cumulative)", title=f"Progress over {s.unit_name}s")
    ax.xaxis.set_major_locator(whole_ticks())
    ax.legend(loc="upper left", fontsize=8)
    return data_uri(fig), ("This run has no ledger.jsonl, so there is no token or cost history: the chart shows "
                           f"records over {s.unit_name}s, and the totals above come from state.json.")


def ordered_sources(s: RunSummary) -> list[tuple[str, SourceStats]]:
    """Sources in the order the run read them (by first chunk), NO_SOURCE last."""
    return sorted(s.sources.items(), key=lambda item: (item[0] == NO_SOURCE, item[1].first, item[0]))


def coverage_counts(s: RunSummary) -> tuple[int, int, int | None]:
    """Chunks (sections) with kept records, with only rejected ones, and with no record at all
    (None when the number of chunks asked is unknown: in windows mode a unit is many sections)."""
    seen = set().union(*(stats.pieces for stats in s.sources.values()))
    with_kept = set().union(*(stats.kept_pieces for stats in s.sources.values()))
    total = s.units if s.mode != "windows" else None
    return len(with_kept), len(seen - with_kept), (None if total is None else max(0, total - len(seen)))


def coverage_chart(s: RunSummary) -> str:
    """Chunks by outcome, and per source (the 15 read first) kept records and rejections by reason."""
    with_kept, only_rejected, none = coverage_counts(s)
    bars = [("with kept records", with_kept, "#2ca02c"), ("only rejected", only_rejected, "#d62728")]
    if none is not None:
        bars.append(("no record at all", none, "#7f7f7f"))
    fig, (left, right) = figure(columns=2)
    left.barh([b[0] for b in bars][::-1], [b[1] for b in bars][::-1], color=[b[2] for b in bars][::-1])
    left.set(xlabel=f"{s.piece_name}s", title=f"{s.piece_name.capitalize()}s by outcome")
    left.xaxis.set_major_locator(whole_ticks())
    shown = ordered_sources(s)[:15][::-1]
    names = [Path(name).name if name != NO_SOURCE else name for name, _ in shown]
    left_edge = [0] * len(shown)
    layers = [("kept", "#2ca02c", lambda st: st.kept)]
    layers += [(reason, REASON_COLOURS[i % len(REASON_COLOURS)], lambda st, r=reason: st.reasons.get(r, 0))
               for i, (reason, _) in enumerate(s.reasons.most_common())]
    for label, colour, count in layers:
        widths = [count(stats) for _, stats in shown]
        right.barh(names, widths, left=left_edge, color=colour, label=label)
        left_edge = [x + w for x, w in zip(left_edge, widths)]
    right.set(xlabel="records", title="Per source: kept and rejected")
    right.xaxis.set_major_locator(whole_ticks())
    if shown:
        right.legend(fontsize=7, loc="best")
    else:
        right.text(0.5, 0.5, "no record names its source", ha="center", va="center", transform=right.transAxes)
    return data_uri(fig)


def coverage_note(s: RunSummary) -> str:
    with_kept, only_rejected, none = coverage_counts(s)
    piece = s.piece_name
    if none is None:
        return (f"{with_kept + only_rejected} {piece}s made records, {with_kept} of them kept ones; a unit of a "
                f"windows run is a group of sections, so {piece}s that made no pair at all are not counted.")
    total = with_kept + only_rejected + none
    return (f"{with_kept} of {total} {piece}s asked have kept records, {only_rejected} only rejected ones "
            f"and {none} none at all, from {len([n for n in s.sources if n != NO_SOURCE])} source file(s).")


def verifies(s: RunSummary) -> bool:
    """Whether the run checked answers against their chunks (qa and instruct, unless --no_verify)."""
    return s.mode in ("qa", "instruct") and s.config.get("verify") is not False and not s.config.get("no_verify")


def coverage_table(s: RunSummary) -> str:
    """A row per source: chunks asked and with kept records, kept records, rejections by reason and,
    when the run checked grounding, the answers supported of those with a verdict."""
    check = verifies(s)
    head = (f"<th>source</th><th>{s.piece_name}s</th><th>with kept records</th><th>kept</th><th>rejected</th>"
            + ("<th>grounded</th>" if check else ""))
    rows = []
    ordered = ordered_sources(s)
    for name, stats in ordered[:MAX_SOURCE_ROWS]:
        rejected = sum(stats.reasons.values())
        reasons = ", ".join(f"{r} {n:,}" for r, n in stats.reasons.most_common())
        cells = [name, f"{len(stats.pieces):,}", f"{len(stats.kept_pieces):,}", f"{stats.kept:,}",
                 f"{rejected:,}" + (f" ({reasons})" if reasons else "")]
        if check:
            verdicts = stats.grounded + stats.reasons.get("ungrounded", 0)
            cells.append(f"{stats.grounded:,} of {verdicts:,}" + (f" ({stats.grounded / verdicts:.0%})" if verdicts else ""))
        rows.append("<tr>" + "".join(f"<td>{esc(c)}</td>" for c in cells) + "</tr>")
    more = f"<p>and {len(ordered) - MAX_SOURCE_ROWS:,} more sources</p>" if len(ordered) > MAX_SOURCE_ROWS else ""
    return f"<table class=coverage><tr>{head}</tr>{''.join(rows)}</table>{more}" if rows else "<p>no record names its source</p>"


def grounding_text(s: RunSummary) -> str:
    """The grounding check's pass rate in a sentence."""
    if not verifies(s):
        return "The grounding check was off (--no_verify): no answer was checked against its chunk."
    supported, ungrounded, unverified = s.grounding
    verdicts = supported + ungrounded
    unverdicted = f"; {unverified:,} more got no verdict and were rejected as unverified" if unverified else ""
    if not verdicts:
        return f"No answer got a verdict from the grounding check{unverdicted}."
    return (f"{supported:,} of the {verdicts:,} answers the teacher checked against their chunk were supported "
            f"({supported / verdicts:.1%}); {ungrounded:,} were not and were rejected as ungrounded{unverdicted}.")


def asked_chart(s: RunSummary) -> tuple[str, str, str] | None:
    """(title, image, note) of what was asked: a qa run's question openings, an instruct run's
    categories, else the leading verbs; None for windows (its instructions are the documents' own sentences)."""
    if s.mode == "windows":
        return None
    if s.mode == "qa":
        top = s.openings.most_common(15)[::-1]
        fig, ax = figure(9.0, max(2.6, 0.6 + 0.3 * len(top)))
        ax.barh([w for w, _ in top], [n for _, n in top], color="#1f77b4")
        ax.set(xlabel="kept questions", title=f"How the kept questions open (first word, top {len(top)})")
        ax.xaxis.set_major_locator(whole_ticks())
        return "How the questions open", data_uri(fig), "Questions seldom start with a verb, so a qa run shows their first words."
    if s.mode == "instruct":
        names = sorted(s.categories, key=lambda c: -sum(s.categories[c].values()))[::-1]
        fig, ax = figure(9.0, max(2.6, 0.6 + 0.35 * len(names)))
        left = [0] * len(names)
        layers = [("kept", "#2ca02c")] + [(r, REASON_COLOURS[i % len(REASON_COLOURS)]) for i, (r, _) in enumerate(s.reasons.most_common())]
        for label, colour in layers:
            widths = [s.categories[c].get(label, 0) for c in names]
            ax.barh(names, widths, left=left, color=colour, label=label)
            left = [x + w for x, w in zip(left, widths)]
        ax.set(xlabel="records", title="Dolly categories: kept, and rejected by reason")
        ax.xaxis.set_major_locator(whole_ticks())
        if names:
            ax.legend(fontsize=7, loc="best")
        return "Categories", data_uri(fig), "The category each task was asked for (metadata.category)."
    return ("Leading verbs and their objects", verb_chart(s),
            "Verb: the instruction's first word; object: the next content word (a heuristic, no parser).")


def cumulative(values) -> list:
    total, out = 0, []
    for value in values:
        total += value
        out.append(total)
    return out


# -----------------------------------------------------------------------------
# the page


def render(s: RunSummary) -> str:
    """The report page as HTML text."""
    sections = [("Kept and rejected", outcomes_chart(s), "", "")]
    if s.mode:
        sections.append(("Coverage of the documents", coverage_chart(s), coverage_note(s), coverage_table(s)))
    sections += [("Similarity of kept records", histograms([
                     ("avg_similarity_score", s.similarity, "mean ROUGE-L F to the 10 most similar"),
                     ("top-1 similarity", s.top_similarity, "ROUGE-L F to the most similar instruction")]), "", ""),
                 ("Lengths", histograms([("instruction", s.instruction_words, "words"),
                                         ("output", s.output_words, "words")], whole=True), "", "")]
    asked = asked_chart(s)
    if asked:
        sections.append((*asked, ""))
    image, note = usage_chart(s)
    sections.append(("Tokens and cost", image, note, ""))
    body = [f"<h1>Run report: {esc(s.directory.resolve().name)}</h1>", nothing_kept(s), overview(s)]
    body += [f"<p class=note>{esc(note)}</p>" for note in s.notes]
    for title, image, note, after in sections:
        body.append(f"<h2>{esc(title)}</h2>" + (f"<p>{esc(note)}</p>" if note else "")
                    + f'<img alt="{esc(title)}" src="{image}">' + after)
        if title == "Coverage of the documents" and s.mode in ("qa", "instruct"):
            body.append(f"<h2>Grounding check</h2><p>{esc(grounding_text(s))}</p>")
    body.append(f"<h2>{len(s.kept_sample)} random kept records</h2>" + records_table(s.kept_sample, False, bool(s.mode)))
    rejected = rejected_sample(s)
    body.append(f"<h2>{len(rejected)} random rejected records, every reason shown</h2>"
                + records_table(rejected, True, bool(s.mode)))
    return PAGE.format(title=esc(f"self_instruct report: {s.directory.resolve().name}"), body="\n".join(body))


def nothing_kept(s: RunSummary) -> str:
    """For a run that kept nothing: a paragraph that says so, and why (the top reasons, each with
    the detail of its first rejection)."""
    if s.kept:
        return ""
    if not s.reasons:
        units = f" ({s.units} {s.unit_name}s recorded)" if s.units else ""
        return f"<p class=nothing><b>No record was kept, and none was rejected{esc(units)}:</b> no {esc(s.unit_name)} made a candidate.</p>"
    top = s.reasons.most_common(3)
    why = "; ".join(f"{esc(r)} {n:,}" + (f" (first: {esc(clip(s.details[r], 200))})" if s.details.get(r) else "")
                    for r, n in top)
    return (f"<p class=nothing><b>No record was kept.</b> Every one of the {s.rejected:,} candidates was rejected; "
            f"the top reasons: {why}.</p>")


def count(state: dict, key: str):
    """A counter of state.json as a number (0 where it is missing or is not one)."""
    value = state.get(key)
    return value if isinstance(value, (int, float)) and not isinstance(value, bool) else 0


def overview(s: RunSummary) -> str:
    state, config = s.state, s.config
    prompt, completion = count(state, "prompt_tokens"), count(state, "completion_tokens")
    rows = [("kept", f"{s.kept:,}"), ("rejected", f"{s.rejected:,}" + (" (" + ", ".join(f"{r} {n:,}" for r, n in s.reasons.most_common()) + ")" if s.reasons else "")),
            ("requests", f"{count(state, 'requests'):,} ({count(state, 'failed_requests'):,} failed)"),
            ("tokens", f"{prompt + completion:,} ({prompt:,} prompt, {completion:,} completion)")]
    if isinstance(state.get("cost"), (int, float)):
        rows.append(("cost", f"{state['cost']:.4f} USD"))
    if s.mode in ("qa", "instruct"):
        supported, ungrounded, _ = s.grounding
        rows.append(("grounded", f"{supported:,} of {supported + ungrounded:,}" if verifies(s) else "not checked (--no_verify)"))
    for key in ("mode", "model_name", "teacher", "api", "base_url", "seed", "num_instructions_to_generate"):
        if config.get(key) is not None:
            rows.append((key, redact_url(str(config[key]))))
    rows.append(("written", time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime())))
    return "<table class=overview>" + "".join(f"<tr><th>{esc(k)}</th><td>{esc(v)}</td></tr>" for k, v in rows) + "</table>"


def where_from(record: dict) -> str:
    """Where a documents record came from: its file, pages and heading path.

    >>> where_from({"metadata": {"source": "/books/garden.pdf", "page": 3, "last_page": 4, "headings": ["I", "Soil"]}})
    'garden.pdf, pages 3-4, I > Soil'
    """
    meta = metadata_of(record)
    parts = [Path(str(meta["source"])).name] if meta.get("source") else []
    page, last = meta.get("page"), meta.get("last_page")
    if page is not None:
        parts.append(f"page {page}" if last in (None, page) else f"pages {page}-{last}")
    headings = meta.get("headings")
    if isinstance(headings, list) and headings:
        parts.append(" > ".join(map(str, headings)))
    return ", ".join(parts)


def records_table(records: list[dict], rejected: bool, documents: bool = False) -> str:
    if not records:
        return "<p>none</p>"
    head = (("<th>reason</th>" if rejected else "") + ("<th>from</th>" if documents else "")
            + "<th>instruction</th><th>input</th><th>output</th>")
    rows = []
    for r in records:
        texts = ([where_from(r)] if documents else []) + [r.get("instruction", r.get("raw", "")), r.get("input", ""), r.get("output", "")]
        reason = f"<td><b>{esc(r.get('reason', ''))}</b><br><small>{esc(clip(str(r.get('detail', ''))))}</small></td>" if rejected else ""
        rows.append("<tr>" + reason + "".join(f"<td>{esc(clip(str(t)))}</td>" for t in texts) + "</tr>")
    return f"<table class=records><tr>{head}</tr>{''.join(rows)}</table>"


def clip(text: str, limit: int = 600) -> str:
    return text if len(text) <= limit else text[:limit] + f"… ({len(text) - limit:,} more characters)"


def esc(text) -> str:
    return html.escape(str(text))


PAGE = """<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>{title}</title>
<style>
body {{ font-family: system-ui, sans-serif; max-width: 1000px; margin: 2em auto; padding: 0 1em; color: #222; }}
img {{ max-width: 100%; display: block; margin: 0.5em 0 1.5em; }}
table {{ border-collapse: collapse; margin: 0.5em 0 1.5em; font-size: 0.85em; }}
th, td {{ border: 1px solid #ddd; padding: 4px 8px; text-align: left; vertical-align: top; }}
table.records td {{ white-space: pre-wrap; unicode-bidi: plaintext; }}
h2 {{ border-bottom: 1px solid #ddd; padding-bottom: 0.2em; margin-top: 1.5em; }}
p.nothing {{ background: #fdecea; border-left: 4px solid #d62728; padding: 0.6em 1em; }}
p.note {{ color: #555; font-size: 0.9em; }}
</style></head>
<body>
{body}
</body></html>
"""


def write_report(output_dir: str | Path, seed: int = 0) -> Path:
    """Write output_dir/report.html (replacing it whole) and return its path: a run's report, or
    for an evaluate directory (results.json, no generated.jsonl) the evaluation's."""
    directory = Path(output_dir)
    path = directory / REPORT
    if (directory / "results.json").is_file() and not (directory / "generated.jsonl").is_file():
        write_text_atomic(path, render_evaluation(directory, read_json(directory / "results.json")))
    else:
        write_text_atomic(path, render(summarize(output_dir, seed)))
    return path


def evaluation_chart(results: dict) -> str:
    """Per metric, a bar per system at its mean with its 95% bootstrap interval; `X` and `X+rag`
    share a colour, the +rag bar hatched."""
    systems = results.get("systems") or []
    metrics = [m for m in results.get("metrics", []) if any(m in (row.get("metrics") or {}) for row in systems)]
    if not systems or not metrics:
        raise DataError("results.json holds no system with a metric; run the evaluation first")
    fig, axes = figure(3.2 * len(metrics), 0.9 + 0.45 * len(systems), columns=len(metrics))
    axes = axes if isinstance(axes, (list, tuple)) or hasattr(axes, "__len__") else [axes]
    bases = list(dict.fromkeys(row["name"].removesuffix("+rag") for row in systems))
    colours = {base: f"C{i % 10}" for i, base in enumerate(bases)}
    for ax, metric in zip(axes, metrics):
        for y, row in enumerate(systems):
            cell = (row.get("metrics") or {}).get(metric)
            if not cell:
                continue
            mean, low, high = cell["mean"], cell.get("low", cell["mean"]), cell.get("high", cell["mean"])
            ax.barh(y, mean, xerr=[[mean - low], [high - mean]], capsize=3,
                    color=colours[row["name"].removesuffix("+rag")], hatch="//" if row["name"].endswith("+rag") else None)
        ax.set_yticks(range(len(systems)), [f"{row['name']} ({row.get('answered', '?')}/{results.get('questions', '?')})"
                                            for row in systems])
        ax.invert_yaxis()
        ax.set_xlim(0, 1)
        ax.set_title(metric)
    return data_uri(fig)


def render_evaluation(directory: Path, results: dict) -> str:
    retrieval = results.get("retrieval")
    note = (f"Retrieval ({esc(retrieval.get('retrieval', ''))}): hit@{retrieval.get('k')} {retrieval.get('hit_at_k', 0):.3f}, "
            f"MRR {retrieval.get('mrr', 0):.3f} over {retrieval.get('questions')} questions with a source."
            if retrieval else "No retrieval in this evaluation.")
    stopped = f"<p>Stopped by {esc(results['stopped_by'])}: not every answer is in.</p>" if results.get("stopped_by") else ""
    body = [f"<h1>Evaluation: {esc(directory.resolve().name)}</h1>",
            f"<p>{results.get('questions', '?')} questions; means with {int(100 * results.get('confidence', 0.95))}% "
            f"bootstrap intervals.</p>{stopped}",
            f'<h2>Systems</h2><img alt="Systems" src="{evaluation_chart(results)}">', f"<p>{note}</p>"]
    return PAGE.format(title=esc(f"self_instruct evaluation: {directory.resolve().name}"), body="\n".join(body))


def main(output_dir: str, seed: int = 0) -> None:
    """Write OUTPUT_DIR/report.html: charts and samples of what a generate or documents run made.

    Args:
        output_dir: the --output_dir of a generate, documents or evaluate run.
        seed: picks which twenty kept and twenty rejected records are shown.
    """
    path = write_report(output_dir, seed)
    print(f"self_instruct: report in {path}", file=sys.stderr)


def write_report_after_run(output_dir: str | Path) -> None:
    """The report at the end of a run; a missing extra is a note, not a failure."""
    try:
        path = write_report(output_dir)
    except (SelfInstructError, ImportError) as exc:
        hint = "" if isinstance(exc, SelfInstructError) else f"; {INSTALL_HINT}"  # ours say what to do
        print(f"self_instruct: no report ({redact(str(exc))}{hint})", file=sys.stderr)
        return
    print(f"self_instruct: report in {path}", file=sys.stderr)


def cli(argv: Sequence[str] | None = None) -> None:
    run(main, words_as_flag("output_dir", sys.argv[1:] if argv is None else argv), name="self_instruct.report")


if __name__ == "__main__":
    cli()
