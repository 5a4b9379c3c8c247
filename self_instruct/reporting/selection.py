"""The page `select` writes: the funnel of a selection (how many records each step kept), the
scores of kept and dropped records, and examples of both, with the reason each was dropped."""
from __future__ import annotations

import time
from dataclasses import dataclass, field

from ..io.secrets import redact
from .charts import REASON_COLOURS, data_uri, figure
from .page import PAGE, clip, esc

SHOWN = 10  # examples of kept records, and of dropped ones per reason


@dataclass
class Funnel:
    """What a selection did, as the page shows it."""

    input: str
    by: str                                  # "ifd" or "judge"
    steps: list[tuple[str, int]]             # (step, records left after it), from "read" to "kept"
    kept_scores: list[float]
    dropped_scores: list[float]              # of dropped records that have a score
    kept: list[dict]                         # records in rank order, each with its "selection" entry
    dropped: list[dict]                      # each with "selection": {"dropped": reason, ...}
    settings: dict = field(default_factory=dict)


def funnel_chart(f: Funnel) -> str:
    fig, ax = figure(9.0, 0.9 + 0.45 * len(f.steps))
    names = [name for name, _ in f.steps][::-1]
    counts = [n for _, n in f.steps][::-1]
    ax.barh(names, counts, color=["#2ca02c"] + ["#1f77b4"] * (len(names) - 1))
    for y, n in enumerate(counts):
        ax.text(n, y, f" {n:,}", va="center", fontsize=8)
    ax.set(xlabel="records", title="Records left after each step")
    return data_uri(fig)


def score_chart(f: Funnel) -> str:
    fig, ax = figure()
    values = f.kept_scores + f.dropped_scores
    if values:
        low, high = min(values), max(values)
        bins = 30 if high > low else 1
        ax.hist([f.kept_scores, f.dropped_scores], bins=bins, range=(low, high if high > low else low + 1),
                stacked=True, color=["#2ca02c", REASON_COLOURS[0]], label=["kept", "dropped"], edgecolor="white")
        ax.legend(fontsize=8)
    else:
        ax.text(0.5, 0.5, "no scores", ha="center", va="center", transform=ax.transAxes)
    label = "IFD (perplexity of the answer with the instruction / without)" if f.by == "ifd" else "judge score"
    ax.set(xlabel=label, ylabel="records", title=f"{f.by.upper() if f.by == 'ifd' else 'Judge'} scores, kept and dropped")
    return data_uri(fig)


def examples(records: list[dict], dropped: bool) -> str:
    if not records:
        return "<p>none</p>"
    head = ("<th>why</th>" if dropped else "<th>rank</th>") + "<th>score</th><th>instruction</th><th>input</th><th>output</th>"
    rows = []
    for r in records:
        sel = r.get("selection") or {}
        first = (f"<td><b>{esc(sel.get('dropped', ''))}</b><br><small>{esc(sel.get('detail', ''))}</small></td>" if dropped
                 else f"<td>{esc(sel.get('rank', ''))}</td>")
        score = sel.get("score")
        cells = ["" if score is None else f"{score:.4g}", r.get("instruction", ""), r.get("input", "") or "", r.get("output", "")]
        rows.append("<tr>" + first + "".join(f"<td>{esc(clip(str(c)))}</td>" for c in cells) + "</tr>")
    return f"<table class=records><tr>{head}</tr>{''.join(rows)}</table>"


def dropped_examples(f: Funnel) -> list[dict]:
    """Up to SHOWN dropped records per reason, the best-scored first."""
    by_reason: dict[str, list[dict]] = {}
    for r in f.dropped:
        by_reason.setdefault(r["selection"]["dropped"], []).append(r)
    shown = []
    for rows in by_reason.values():
        scored = sorted(rows, key=lambda r: -(r["selection"].get("score") if r["selection"].get("score") is not None else float("-inf")))
        shown += scored[:SHOWN]
    return shown


def render_selection(f: Funnel) -> str:
    """The page as HTML text."""
    # an --embedder URL may carry a credential: the page never shows one
    settings = {**{k: redact(str(v)) for k, v in f.settings.items()}, "written": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime())}
    steps = "".join(f"<tr><th>{esc(name)}</th><td>{n:,}</td></tr>" for name, n in f.steps)
    body = [f"<h1>Selection: {esc(f.input)}</h1>",
            "<table class=overview>" + "".join(f"<tr><th>{esc(k)}</th><td>{esc(v)}</td></tr>" for k, v in settings.items())
            + "</table>",
            f"<h2>Funnel</h2><table class=overview>{steps}</table>",
            f'<img alt="Funnel" src="{funnel_chart(f)}">',
            f'<h2>Scores</h2><img alt="Scores" src="{score_chart(f)}">',
            f"<h2>The {min(SHOWN, len(f.kept))} best kept records</h2>" + examples(f.kept[:SHOWN], False),
            "<h2>Dropped records, by reason</h2>" + examples(dropped_examples(f), True)]
    return PAGE.format(title=esc(f"self_instruct selection: {f.input}"), body="\n".join(body))
