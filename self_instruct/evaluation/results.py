"""An evaluation's results: per system and metric, the mean over its answered questions with a
95% bootstrap interval (results.json), and the table people read (results.md)."""
from __future__ import annotations

from typing import Sequence

from . import metrics
from .systems import SystemSpec


def summarize(records: Sequence[dict], systems: Sequence[SystemSpec], questions: int, judged: bool) -> dict:
    """Per system and metric: the mean over its answered questions and a 95% bootstrap interval."""
    names = metrics.METRICS + (("judge",) if judged else ())
    rows = []
    for system in systems:
        mine = [r for r in records if r["system"] == system.name]
        row = {"name": system.name, "spec": system.spec, "rag": system.rag, "answered": len(mine), "metrics": {}}
        for name in names:
            values = [r["scores"][name] for r in mine if name in r["scores"]]
            if values:
                mean, low, high = metrics.bootstrap_interval(values)
                row["metrics"][name] = {"mean": mean, "low": low, "high": high, "n": len(values)}
        rows.append(row)
    return {"questions": questions, "metrics": list(names), "confidence": 0.95, "systems": rows}


def render_results(summary: dict) -> str:
    """results.md: the system x metric table, then retrieval quality."""
    header = ["system", "answered"] + summary["metrics"]
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for row in summary["systems"]:
        cells = [row["name"], f"{row['answered']}/{summary['questions']}"]
        for name in summary["metrics"]:
            m = row["metrics"].get(name)
            cells.append(f"{m['mean']:.3f} [{m['low']:.3f}, {m['high']:.3f}]" if m else "-")
        lines.append("| " + " | ".join(cells) + " |")
    text = (f"Means over questions with 95% bootstrap intervals ({summary['questions']} questions).\n\n"
            + "\n".join(lines) + "\n")
    quality = summary.get("retrieval")
    if quality and quality.get("questions"):
        text += (f"\nRetrieval ({quality['retrieval']}): hit@{quality['k']} {quality['hit_at_k']:.3f}, "
                 f"MRR {quality['mrr']:.3f} over {quality['questions']} questions with a source.\n")
    if summary.get("stopped_by"):
        text += f"\nStopped by {summary['stopped_by']}: raise it and rerun to finish.\n"
    return text
