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

import sys
from pathlib import Path
from typing import Sequence

from .cli import run, words_as_flag
from .errors import SelfInstructError
from .io.jsonl import read_json, write_text_atomic
from .io.secrets import redact
from .reporting.charts import INSTALL_HINT
from .reporting.page import render, render_evaluation
from .reporting.summary import REPORT, summarize


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
