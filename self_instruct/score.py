"""Rate a dataset with the teacher and keep the good records (AlpaGasus-style).

    python -m self_instruct.score data.json --output scored.json --min_score 4.5 \\
        --base_url http://127.0.0.1:8000/v1 --model_name my-judge --records_per_request 5

Each record gets `metadata.score` (1-5) and `metadata.score_reason`; below --min_score it goes to
rejected.jsonl as `low_score`, a reply without a valid score as `unscored`. The run is an engine run
in --output_dir (default: OUTPUT + ".run"): budgets, reply cache and resume as for generate, so the
same command again sends no request. Records are not deduplicated here.
"""
from __future__ import annotations

import asyncio
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

from . import cli as cli_edge
from .core.templates import load_template
from .engine.progress import Stats
from .engine.run import Outcome, Run, execute, finish, say
from .errors import ConfigError
from .engine.pool import LOCK, OUTPUTS
from .io.datasets import check_outputs, read_examples, write_dataset
from .io.jsonl import sha256_of
from .options import (
    BatchOptions,
    BudgetOptions,
    CostOptions,
    RateOptions,
    RunOptions,
    TeacherOptions,
    command,
    option,
    positive_int,
    validate,
)
from .pipelines.score import ScorePipeline, VerdictCache, keep_all
from .teachers.base import Teacher

VERDICTS = "verdicts.jsonl"  # not one of the pool's outputs: --overwrite keeps it
SHAPING = ("input_sha256", "model_name", "api", "rubric_sha256", "records_per_request", "min_score", "max_tokens")


def score_range(name: str, value) -> None:
    if value is not None and not (isinstance(value, (int, float)) and 1 <= value <= 5):
        raise ConfigError(f"--{name} must be from 1 to 5 (got {value!r})")


@dataclass(kw_only=True)
class ScoreConfig(RunOptions, CostOptions, BatchOptions, BudgetOptions, RateOptions, TeacherOptions):
    """Every setting of a score run: its flags, and the library's keywords."""

    input: str = option("", "the dataset to rate: a JSON list or JSONL of records with an instruction", positional=True)
    output: str | None = option(None, "the rated dataset: a JSON list, or JSONL by its suffix")
    output_dir: str | None = option(None, "the run's directory: budgets, reply cache, resume (default OUTPUT.run)")
    min_score: float | None = option(None, "keep records rated at least this (1-5); the rest go to rejected.jsonl",
                                     check=score_range)
    records_per_request: int = option(5, "records rated in one request", check=positive_int)
    rubric_path: str | None = option(None, "your own rubric template, holding {records} (see prompts/score.txt)")
    max_tokens: int = option(64, "tokens a verdict may take (a request gets this per record)", check=positive_int)

    def run_dir(self) -> Path:
        return Path(self.output_dir or f"{self.output}.run")

    def validate(self) -> None:
        if not self.input:
            raise ConfigError("give the dataset to score: python -m self_instruct.score INPUT --output OUT")
        if not self.output and not self.output_dir:
            raise ConfigError("give --output (the scored dataset) or --output_dir")
        validate(self)
        # before any request: a place that cannot take the output would fail only once all is paid for
        check_outputs([("--output", self.output)], directories=[("--output_dir", self.run_dir())],
                      inputs=[("INPUT", self.input), ("--rubric_path", self.rubric_path)],
                      reserved=(*OUTPUTS, VERDICTS, LOCK, "score"))


@dataclass
class ScoreResult:
    output_dir: Path
    records: int       # in the input
    kept: list[dict]   # rated (and at least --min_score)
    stats: Stats
    stopped_by: str


async def ascore(cfg: ScoreConfig, *, teacher: Teacher | None = None) -> ScoreResult:
    """Score (or resume scoring) cfg.input; writes cfg.output when every record is done."""
    cfg.validate()
    examples = read_examples(cfg.input)
    rubric = load_template("score.txt", cfg.rubric_path, "--rubric_path")
    async with Run(cfg, teacher=teacher, follows_instructions=True, stages=[cfg.run_dir()]) as run:
        config = run.config(input_sha256=sha256_of(Path(cfg.input).read_bytes()), rubric_sha256=sha256_of(rubric))
        await run.check()
        with run.open(cfg.run_dir(), config, SHAPING) as pool:
            outcome = await score_into(run, pool, examples, rubric, cfg)
            if cfg.output and outcome.stopped_by == "done":
                write_dataset(cfg.output, pool.records)
            return ScoreResult(pool.dir, len(examples), list(pool.records), outcome.stats, outcome.stopped_by)


async def score_into(run: Run, pool, examples, rubric: str, cfg) -> Outcome:
    """Rate `examples` on the engine into the open `pool` (records are never deduplicated here)."""
    cache = VerdictCache(pool.dir / VERDICTS, run.teacher.model_id, rubric)
    pipeline = ScorePipeline(examples, rubric, records_per_request=cfg.records_per_request,
                             min_score=cfg.min_score, max_tokens=cfg.max_tokens, cache=cache)
    return await run.engine(pool, pipeline, keep_all, decoding=pipeline.decoding(cfg.records_per_request),
                            total_units=pipeline.unit_count)


# The --judge stage of generate and documents rates this many records a request.
JUDGE_RECORDS_PER_REQUEST = 5


async def judge_run(run: Run, run_dir: Path) -> None:
    """--judge of generate and documents: rate every kept record of RUN_DIR 1-5 into
    RUN_DIR/scored.json, with the run's teacher or --judge_model/--judge_base_url. The stage in
    RUN_DIR/score starts afresh each time (the run may have grown), its verdicts cached in
    verdicts.jsonl and its ledger kept, so a record is rated once and the run's budgets hold."""
    o = run.options
    teacher = run.teacher
    if o.judge_model or o.judge_base_url:
        from dataclasses import replace
        teacher = run.open_teacher(replace(o, model_name=o.judge_model or o.model_name, teacher="openai"),
                                   base_url=o.judge_base_url or run.base_url)
        await run.check(teacher)
    examples = read_examples(str(run_dir / "generated.jsonl"))
    rubric = load_template("score.txt")
    with run.open(run_dir / "score", run.config(teacher, stage="judge"), restart=True) as pool:
        cache = VerdictCache(pool.dir / VERDICTS, teacher.model_id, rubric)
        pipeline = ScorePipeline(examples, rubric, records_per_request=JUDGE_RECORDS_PER_REQUEST,
                                 min_score=o.min_score, cache=cache)
        outcome = await run.engine(pool, pipeline, keep_all, teacher=teacher, price=run.price_of(teacher),
                                   decoding=pipeline.decoding(JUDGE_RECORDS_PER_REQUEST), total_units=pipeline.unit_count)
        if outcome.stopped_by == "done":
            write_dataset(str(run_dir / "scored.json"), pool.records)
    rated = f" {o.min_score} or more" if o.min_score is not None else ""
    say(f"judge: {outcome.kept} of {len(examples)} records rated{rated} in {run_dir / 'scored.json'} "
        f"(stopped by {outcome.stopped_by})")


def score_file(input: str, output: str | None = None, *, teacher: Teacher | None = None, **options) -> ScoreResult:
    """Library entry point: `score_file("regen.json", "scored.json", min_score=4.5, base_url=...)`."""
    return asyncio.run(ascore(ScoreConfig(input=str(input), output=output, **options), teacher=teacher))


def run_command(cfg: ScoreConfig) -> None:
    result = execute(ascore(cfg))
    where = cfg.output if result.stopped_by == "done" and cfg.output else result.output_dir
    finish(f"kept {len(result.kept)} of {result.records} records",
           Outcome(result.output_dir, result.stopped_by, result.stats, len(result.kept)), where)


main = command(ScoreConfig, run_command, """Rate every record of INPUT from 1 to 5 with the teacher, and keep the good ones (AlpaGasus-style).

The rubric (accuracy, helpfulness, instruction clarity; --rubric_path for your own) is sent with
--records_per_request records a request. --output gets every rated record with metadata.score and
metadata.score_reason; --min_score sends lower ones to rejected.jsonl (reason low_score). Rerun the
same command to resume; a finished run sends no request again.
""")


def cli(argv: Sequence[str] | None = None) -> None:
    cli_edge.run(main, argv, name="self_instruct.score",
                 interrupted="interrupted; every finished batch is saved, rerun the same command to resume")


if __name__ == "__main__":
    cli()
