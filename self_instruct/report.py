"""A run report people can look at before they spend GPU hours: `python -m self_instruct.report OUT`.

Writes OUT/report.html, one self-contained page (charts are PNGs inlined as data URIs; no script,
no network) from what a generate or documents run wrote: generated.jsonl, rejected.jsonl,
state.json, run.json and, when present, ledger.jsonl. It shows
- kept against rejected (by reason) over the rounds, or over the chunks of a documents run;
- histograms of avg_similarity_score and of the top-1 ROUGE-L similarity of kept records;
- instruction and output lengths in words;
- the most common leading verbs and their objects as two rings, like Alpaca's verb-noun chart;
- tokens and cost over time from ledger.jsonl (without one, progress over rounds, and it says so);
- twenty random kept records and twenty rejected ones with their reasons;
- for a documents run, coverage: chunks with and without kept records.

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
from typing import Sequence

from .cli import run, words_as_flag
from .errors import ConfigError, DataError, SelfInstructError
from .io.jsonl import iter_jsonl, read_json, write_text_atomic
from .io.secrets import redact, redact_url

REPORT = "report.html"
SAMPLE_SIZE = 20
MAX_BARS = 60  # more rounds than this are drawn in groups of consecutive rounds
INSTALL_HINT = "pip install 'self_instruct[export]'"
# Words that open an instruction without being its verb, and words skipped on the way to its object.
NOT_VERBS = set("""what how why who whom whose which where when is are was were am be been can could do does did
    will would shall should may might must have has had i you we they he she it there here this that these those
    the a an in on at if for given as my your our their its his her please imagine suppose let""".split())
NOT_OBJECTS = set("""a an the this that these those some any each every all both my your our their its his her me us
    them it of to for in on at by with about from into onto as and or but how what why who which where when whether
    if one two three four five six seven eight nine ten several few many more most brief short simple""".split())
REASON_COLOURS = ["#d62728", "#ff7f0e", "#9467bd", "#8c564b", "#e377c2", "#7f7f7f", "#bcbd22", "#17becf", "#aec7e8", "#ffbb78"]


@dataclass
class RunSummary:
    """What a report shows, gathered in one pass over the run's files."""
    directory: Path
    unit_name: str = "round"  # "chunk" for a documents run
    kept_by_unit: Counter = field(default_factory=Counter)
    rejected_by_unit: dict = field(default_factory=lambda: defaultdict(Counter))
    reasons: Counter = field(default_factory=Counter)
    similarity: list = field(default_factory=list)
    top_similarity: list = field(default_factory=list)
    instruction_words: list = field(default_factory=list)
    output_words: list = field(default_factory=list)
    verbs: Counter = field(default_factory=Counter)
    verb_objects: dict = field(default_factory=lambda: defaultdict(Counter))
    kept_sample: list = field(default_factory=list)
    rejected_samples: dict = field(default_factory=lambda: defaultdict(list))  # reason -> sample
    kept_by_source: Counter = field(default_factory=Counter)
    unit_numbers: dict = field(default_factory=dict)
    state: dict = field(default_factory=dict)
    config: dict = field(default_factory=dict)
    ledger: list = field(default_factory=list)

    @property
    def kept(self) -> int:
        return sum(self.kept_by_unit.values())

    @property
    def rejected(self) -> int:
        return sum(self.reasons.values())


# -----------------------------------------------------------------------------
# gathering


def summarize(output_dir: str | Path, seed: int = 0) -> RunSummary:
    """Read a run's files once, keeping counts, lists of numbers and two random samples."""
    directory = Path(output_dir)
    generated = directory / "generated.jsonl"
    if not generated.is_file():
        raise DataError(f"{directory}: no generated.jsonl here; pass the --output_dir of a generate or documents run")
    summary = RunSummary(directory, state=read_json(directory / "state.json") or {}, config=read_json(directory / "run.json") or {})
    if "mode" in summary.config:  # a documents run: its units are chunks
        summary.unit_name = "chunk"
    rng = random.Random(seed)
    for seen, (_, record) in enumerate(iter_jsonl(generated)):
        unit = unit_of(record)
        summary.kept_by_unit[unit] += 1
        summary.kept_by_source[(record.get("metadata") or {}).get("source")] += 1
        add_kept(summary, record)
        keep_sample(summary.kept_sample, record, seen, rng)
    if (directory / "rejected.jsonl").is_file():
        for _, record in iter_jsonl(directory / "rejected.jsonl"):
            reason = str(record.get("reason", "unknown"))
            summary.reasons[reason] += 1
            summary.rejected_by_unit[unit_of(record)][reason] += 1
            keep_sample(summary.rejected_samples[reason], record, summary.reasons[reason] - 1, rng)
    if (directory / "ledger.jsonl").is_file():
        summary.ledger = [entry for _, entry in iter_jsonl(directory / "ledger.jsonl")]
    return summary


def unit_of(record: dict) -> int | None:
    """The unit (a round, or a documents run's chunk) the engine recorded the record in."""
    unit = (record.get("provenance") or {}).get("unit")
    return unit if isinstance(unit, int) and not isinstance(unit, bool) else None


def add_kept(summary: RunSummary, record: dict) -> None:
    if isinstance(record.get("avg_similarity_score"), (int, float)):
        summary.similarity.append(float(record["avg_similarity_score"]))
    scores = [s for s in (record.get("most_similar_instructions") or {}).values() if isinstance(s, (int, float))]
    if scores:
        summary.top_similarity.append(float(max(scores)))
    summary.instruction_words.append(len(str(record.get("instruction", "")).split()))
    summary.output_words.append(len(str(record.get("output", "")).split()))
    verb, obj = verb_and_object(str(record.get("instruction", "")))
    if verb:
        summary.verbs[verb] += 1
        if obj:
            summary.verb_objects[verb][obj] += 1


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


def coverage_chart(s: RunSummary) -> tuple[str, str]:
    """Chunks of a documents run with kept records, with only rejections, and (when state.json
    says how many chunks there were) with no record at all."""
    with_kept = {u for u, n in s.kept_by_unit.items() if n and u is not None}
    only_rejected = {u for u in s.rejected_by_unit if u is not None} - with_kept
    total = s.state.get("units")
    bars = [("with kept records", len(with_kept), "#2ca02c"), ("only rejected", len(only_rejected), "#d62728")]
    if isinstance(total, int):
        bars.append(("no record at all", max(0, total - len(with_kept) - len(only_rejected)), "#7f7f7f"))
    fig, (left, right) = figure(columns=2)
    left.barh([b[0] for b in bars], [b[1] for b in bars], color=[b[2] for b in bars])
    left.set(xlabel="chunks", title="Chunks by outcome")
    sources = s.kept_by_source.most_common(15)
    right.barh([Path(str(name)).name for name, _ in sources][::-1], [n for _, n in sources][::-1], color="#1f77b4")
    right.set(xlabel="kept records", title="Kept records per source file (top 15)")
    note = (f"{len(with_kept)} of {total} chunks have kept records." if isinstance(total, int) else
            f"{len(with_kept)} chunks have kept records; state.json does not say how many chunks the run had.")
    return data_uri(fig), note


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
    sections = [("Kept and rejected", outcomes_chart(s), ""),
                ("Similarity of kept records", histograms([
                    ("avg_similarity_score", s.similarity, "mean ROUGE-L F to the 10 most similar"),
                    ("top-1 similarity", s.top_similarity, "ROUGE-L F to the most similar instruction")]), ""),
                ("Lengths", histograms([("instruction", s.instruction_words, "words"),
                                        ("output", s.output_words, "words")], whole=True), ""),
                ("Leading verbs and their objects", verb_chart(s),
                 "Verb: the instruction's first word; object: the next content word (a heuristic, no parser).")]
    image, note = usage_chart(s)
    sections.append(("Tokens and cost", image, note))
    if s.unit_name == "chunk":
        image, note = coverage_chart(s)
        sections.append(("Coverage of the documents", image, note))
    body = [f"<h1>Run report: {esc(s.directory.resolve().name)}</h1>", overview(s)]
    for title, image, note in sections:
        body.append(f"<h2>{esc(title)}</h2>" + (f"<p>{esc(note)}</p>" if note else "") + f'<img alt="{esc(title)}" src="{image}">')
    body.append(f"<h2>{len(s.kept_sample)} random kept records</h2>" + records_table(s.kept_sample, rejected=False))
    rejected = rejected_sample(s)
    body.append(f"<h2>{len(rejected)} random rejected records, every reason shown</h2>" + records_table(rejected, rejected=True))
    return PAGE.format(title=esc(f"self_instruct report: {s.directory.resolve().name}"), body="\n".join(body))


def overview(s: RunSummary) -> str:
    state, config = s.state, s.config
    tokens = (state.get("prompt_tokens") or 0) + (state.get("completion_tokens") or 0)
    rows = [("kept", f"{s.kept:,}"), ("rejected", f"{s.rejected:,}" + (" (" + ", ".join(f"{r} {n:,}" for r, n in s.reasons.most_common()) + ")" if s.reasons else "")),
            ("requests", f"{state.get('requests', 0):,} ({state.get('failed_requests', 0):,} failed)"),
            ("tokens", f"{tokens:,} ({state.get('prompt_tokens', 0):,} prompt, {state.get('completion_tokens', 0):,} completion)")]
    if state.get("cost") is not None:
        rows.append(("cost", f"{state['cost']:.4f} USD"))
    for key in ("model_name", "teacher", "api", "base_url", "seed", "num_instructions_to_generate"):
        if config.get(key) is not None:
            rows.append((key, redact_url(str(config[key]))))
    rows.append(("written", time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime())))
    return "<table class=overview>" + "".join(f"<tr><th>{esc(k)}</th><td>{esc(v)}</td></tr>" for k, v in rows) + "</table>"


def records_table(records: list[dict], rejected: bool) -> str:
    if not records:
        return "<p>none</p>"
    head = ("<th>reason</th>" if rejected else "") + "<th>instruction</th><th>input</th><th>output</th>"
    rows = []
    for r in records:
        texts = [r.get("instruction", r.get("raw", "")), r.get("input", ""), r.get("output", "")]
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
