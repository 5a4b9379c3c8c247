"""The report's page: one self-contained HTML file of a run's summary and charts, every text escaped."""
from __future__ import annotations

import html
import time
from pathlib import Path

from ..io.secrets import redact, redact_url
from .charts import (
    asked_chart,
    coverage_chart,
    coverage_counts,
    evaluation_chart,
    histograms,
    ordered_sources,
    outcomes_chart,
    tags_chart,
    usage_chart,
)
from .summary import NO_SOURCE, RunSummary, count, metadata_of, rejected_sample

MAX_SOURCE_ROWS = 100  # rows of the coverage table; the rest are counted in one line


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
    if s.margins:
        sections.append(("Preference margins", histograms([("best minus worst score", s.margins, "points on 1-10")],
                                                          whole=all(float(m).is_integer() for m in s.margins)),
                         f"{len(s.margins)} pairs; mean margin {sum(s.margins) / len(s.margins):.2f}", ""))
    if s.turns:
        sections.append(("Turns per conversation", histograms([("user turns", s.turns, "turns")], whole=True),
                         f"{len(s.turns)} conversations", ""))
    for tag, values in s.tags.items():
        sections.append((f"Kept records per {tag}", tags_chart(s, tag),
                         f"{len(values)} {tag}s; the {min(len(values), 30)} with the most records shown", ""))
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
    """At most `limit` characters of `text`, with any key or URL password in it masked (a teacher
    may echo what a prompt or an error carried)."""
    text = redact(text)
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
