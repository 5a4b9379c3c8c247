"""The report's charts: matplotlib figures inlined as PNG data URIs (no script, no network)."""
from __future__ import annotations

import base64
import io
from pathlib import Path
from typing import Mapping, Sequence

from ..errors import ConfigError, DataError
from .summary import NO_SOURCE, RunSummary, SourceStats

MAX_BARS = 60  # more rounds than this are drawn in groups of consecutive rounds


INSTALL_HINT = "pip install 'self_instruct[export]'"


REASON_COLOURS = ["#d62728", "#ff7f0e", "#9467bd", "#8c564b", "#e377c2", "#7f7f7f", "#bcbd22", "#17becf", "#aec7e8", "#ffbb78"]


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
    for ax, (title, values, xlabel) in zip(axes if len(pairs) > 1 else [axes], pairs):
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


def stacked_outcomes(ax, names: list[str], s: RunSummary, rows: list[tuple[int, Mapping[str, int]]]) -> None:
    """One horizontal bar per name: its kept records, then its rejections by reason in the run's
    order of reasons (each reason one colour across the chart). `rows`: (kept, counts by reason)."""
    left = [0] * len(names)
    layers = [("kept", "#2ca02c", lambda row: row[0])]
    layers += [(reason, REASON_COLOURS[i % len(REASON_COLOURS)], lambda row, r=reason: row[1].get(r, 0))
               for i, (reason, _) in enumerate(s.reasons.most_common())]
    for label, colour, count in layers:
        widths = [count(row) for row in rows]
        ax.barh(names, widths, left=left, color=colour, label=label)
        left = [x + w for x, w in zip(left, widths)]


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
    stacked_outcomes(right, names, s, [(stats.kept, stats.reasons) for _, stats in shown])
    right.set(xlabel="records", title="Per source: kept and rejected")
    right.xaxis.set_major_locator(whole_ticks())
    if shown:
        right.legend(fontsize=7, loc="best")
    else:
        right.text(0.5, 0.5, "no record names its source", ha="center", va="center", transform=right.transAxes)
    return data_uri(fig)


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
        stacked_outcomes(ax, names, s, [(s.categories[c].get("kept", 0), s.categories[c]) for c in names])
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


def tags_chart(s: RunSummary, tag: str, most: int = 30) -> str:
    """Records per value of a tag (persona, topic), beside the values' novelty: one minus the
    mean ROUGE-L F of their records to the most similar instruction known before them."""
    values = sorted(s.tags[tag].items(), key=lambda item: -len(item[1]))[:most]
    fig, (count_ax, novelty_ax) = figure(height=max(3.0, 0.28 * len(values) + 1), columns=2)
    names = [name if len(name) <= 48 else name[:47] + "..." for name, _ in values][::-1]
    count_ax.barh(names, [len(sims) for _, sims in values][::-1], color="#1f77b4")
    count_ax.set(title=f"kept records per {tag}", xlabel="kept records")
    novelty_ax.barh(names, [1 - sum(sims) / len(sims) for _, sims in values][::-1], color="#2ca02c")
    novelty_ax.set(title="novelty (1 - mean top-1 ROUGE-L)", xlim=(0, 1))
    novelty_ax.set_yticklabels([])
    return data_uri(fig)
