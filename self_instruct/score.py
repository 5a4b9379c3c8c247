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
import dataclasses
import os
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

from . import cli as cli_edge
from .options import TeacherOptions, make_teacher, sha256_of
from .engine.scheduler import Engine, Stats
from .errors import ConfigError
from .io.jsonl import iter_records, write_json_atomic, write_jsonl_atomic
from .engine.ledger import Budget, Ledger, find_price
from .pipelines.score import ScorePipeline, VerdictCache, keep_all, load_rubric, to_example
from .engine.pool import InstructionPool
from .teachers.base import Teacher

VERDICTS = "verdicts.jsonl"  # not one of the pool's outputs: --overwrite keeps it
SHAPING = ("input_sha256", "model_name", "api", "rubric_sha256", "records_per_request", "min_score", "max_tokens")


@dataclass
class ScoreConfig(TeacherOptions):
    """Every option of a score run (the command's flags). The API key is not a field."""

    input: str = ""
    output: str | None = None
    output_dir: str | None = None
    min_score: float | None = None
    records_per_request: int = 5
    rubric_path: str | None = None
    max_tokens: int = 64

    def run_dir(self) -> str:
        return self.output_dir or f"{self.output}.run"

    def validate(self) -> None:
        if not self.input:
            raise ConfigError("give the dataset to score: python -m self_instruct.score INPUT --output OUT")
        if not self.output and not self.output_dir:
            raise ConfigError("give --output (the scored dataset) or --output_dir")
        if not isinstance(self.records_per_request, int) or self.records_per_request < 1:
            raise ConfigError(f"--records_per_request must be a positive whole number (got {self.records_per_request!r})")
        if self.min_score is not None and not 1 <= self.min_score <= 5:
            raise ConfigError(f"--min_score must be from 1 to 5 (got {self.min_score!r})")
        if self.api not in ("completions", "chat"):
            raise ConfigError(f"--api must be 'completions' or 'chat' (got {self.api!r})")


@dataclass
class ScoreResult:
    output_dir: Path
    records: int
    kept: list[dict]
    stats: Stats
    stopped_by: str


def read_examples(path: str):
    examples = []
    for lineno, record in iter_records(path):
        if not isinstance(record, dict) or not isinstance(record.get("instruction"), str):
            raise ConfigError(f"{path}:{lineno}: instruction: every record needs an instruction string")
        examples.append(to_example(record))
    return examples


async def ascore(cfg: ScoreConfig, *, teacher: Teacher | None = None, api_key: str | None = None,
                 progress: bool = True) -> ScoreResult:
    """Score (or resume scoring) cfg.input; writes cfg.output when every record is done."""
    cfg.validate()
    examples = read_examples(cfg.input)
    rubric = load_rubric(cfg.rubric_path)
    own_teacher = teacher is None
    api_key = api_key or os.environ.get("OPENAI_API_KEY")
    cli_edge.register_secret(api_key)
    cfg.base_url = cfg.base_url or os.environ.get("OPENAI_BASE_URL")
    teacher = teacher or make_teacher(cfg, api_key)
    try:
        local = teacher.describe().get("backend") == "local"
        price = find_price(teacher.model_id, cfg.price_prompt, cfg.price_completion, local=local)
        if cfg.max_cost is not None and price is None:
            raise ConfigError(f"--max_cost needs the price of {teacher.model_id!r}: pass --price_prompt and --price_completion")
        config = dataclasses.asdict(cfg)
        config.pop("overwrite")
        config.update(base_url=cli_edge.redact_url(cfg.base_url), model_name=teacher.model_id,
                      input_sha256=sha256_of(Path(cfg.input).read_bytes()), rubric_sha256=sha256_of(rubric))
        with InstructionPool.open(cfg.run_dir(), config=config, shaping=SHAPING, overwrite=cfg.overwrite,
                                  unit_key=ScorePipeline.unit_key) as pool:
            cache = VerdictCache(pool.dir / VERDICTS, teacher.model_id, rubric)
            pipeline = ScorePipeline(examples, rubric, records_per_request=cfg.records_per_request,
                                     min_score=cfg.min_score, max_tokens=cfg.max_tokens, cache=cache)
            ledger = Ledger(pool.dir, price, pool.next_unit)
            engine = Engine(teacher, pool, keep_all, ledger, decoding=pipeline.decoding(cfg.records_per_request),
                            budget=Budget(cfg.max_requests, cfg.max_total_tokens, cfg.max_cost),
                            max_concurrency=cfg.max_concurrency, target=None, total_units=pipeline.unit_count,
                            max_stall_units=None, progress=progress, api=cfg.api)
            try:
                stopped_by = await engine.run(pipeline)
            finally:
                pool.save_state(engine.stats.to_state())
                ledger.forget_before(pool.next_unit)
            kept = list(pool.records)
            if cfg.output and stopped_by == "done":
                write_dataset(cfg.output, kept)
            return ScoreResult(pool.dir, len(examples), kept, engine.stats, stopped_by)
    finally:
        if own_teacher:
            await teacher.aclose()


async def ascore_run(run_dir: str | Path, teacher: Teacher, *, min_score: float | None = None,
                     records_per_request: int = 5, api: str = "completions", progress: bool = True,
                     **options) -> ScoreResult:
    """The `--judge` step of generate and documents: score RUN_DIR/generated.jsonl with `teacher`
    (the run's, or a separate judge's) into RUN_DIR/score/, and write RUN_DIR/scored.json. Call it
    again after the run grows: records already scored are answered from RUN_DIR/score/verdicts.jsonl.

        result = await ascore_run(pool.dir, teacher, min_score=4.5)
    """
    run_dir = Path(run_dir)
    cfg = ScoreConfig(input=str(run_dir / "generated.jsonl"), output=str(run_dir / "scored.json"),
                      output_dir=str(run_dir / "score"), min_score=min_score, records_per_request=records_per_request,
                      api=api, overwrite=True, **options)
    return await ascore(cfg, teacher=teacher, progress=progress)


async def judge_pool(cfg, run_dir: Path, teacher: Teacher, api_key: str | None, progress: bool) -> None:
    """--judge: rate every kept record 1-5 (self_instruct.score) into RUN_DIR/scored.json, with the
    run's teacher or --judge_model/--judge_base_url; a rerun sends only records not yet rated."""
    separate = cfg.judge_model or cfg.judge_base_url
    judge = make_teacher(dataclasses.replace(cfg, model_name=cfg.judge_model or cfg.model_name,
                                             base_url=cfg.judge_base_url or cfg.base_url, teacher="openai"), api_key) \
        if separate else teacher
    try:
        result = await ascore_run(run_dir, judge, min_score=cfg.min_score, api=cfg.api,
                                  max_concurrency=cfg.max_concurrency, progress=progress)
    finally:
        if separate:
            await judge.aclose()
    print(f"self_instruct: judge: {len(result.kept)} of {result.records} records rated"
          f"{f' {cfg.min_score} or more' if cfg.min_score is not None else ''} in {run_dir / 'scored.json'}", file=sys.stderr)


def write_dataset(path: str, records: list[dict]) -> None:
    """A JSONL file when the name ends in .jsonl, else a JSON list."""
    if path.endswith(".jsonl"):
        write_jsonl_atomic(path, records)
    else:
        write_json_atomic(path, records)


def score_file(input: str, output: str | None = None, *, teacher: Teacher | None = None, api_key: str | None = None,
               progress: bool = True, **options) -> ScoreResult:
    """Library entry point: `score_file("regen.json", "scored.json", min_score=4.5, base_url=...)`."""
    cfg = ScoreConfig(input=str(input), output=output, **options)
    return asyncio.run(ascore(cfg, teacher=teacher, api_key=api_key, progress=progress))


def main(
    input: str,
    output: str | None = None,
    output_dir: str | None = None,
    min_score: float | None = None,
    records_per_request: int = 5,
    rubric_path: str | None = None,
    model_name: str | None = None,
    base_url: str | None = None,
    api_key: str | None = None,
    api: str = "completions",
    teacher: str | None = None,
    local_model_path: str | None = None,
    max_tokens: int = 64,
    max_concurrency: int = 8,
    max_requests: int | None = None,
    max_total_tokens: int | None = None,
    max_cost: float | None = None,
    price_prompt: float | None = None,
    price_completion: float | None = None,
    request_timeout: float = 120.0,
    max_attempts: int = 6,
    retry_backoff: float = 1.0,
    requests_per_minute: float | None = None,
    tokens_per_minute: float | None = None,
    no_stream: bool = False,
    overwrite: bool = False,
    quiet: bool = False,
):
    """Rate every record of INPUT (JSON list or JSONL) from 1 to 5 with the teacher on a rubric
    (accuracy, helpfulness, instruction clarity; --rubric_path for your own, holding {records}),
    --records_per_request records a request. Writes --output (JSON list, or JSONL by suffix) with
    metadata.score and metadata.score_reason; --min_score drops lower ones (rejected.jsonl, reason
    low_score). Rerun the same command to resume; a finished run sends no request again.
    """
    options = {k: v for k, v in locals().items() if k not in ("input", "output", "api_key", "quiet", "no_stream")}
    cfg = ScoreConfig(input=input, output=output, stream=not no_stream, **options)
    result = asyncio.run(ascore(cfg, api_key=api_key, progress=not quiet))
    where = cfg.output if result.stopped_by == "done" and cfg.output else result.output_dir
    print(f"self_instruct: kept {len(result.kept)} of {result.records} records in {where} "
          f"(stopped by {result.stopped_by}); {result.stats.summary()}", file=sys.stderr)
    if result.stopped_by.startswith("max_"):
        print(f"self_instruct: budget {result.stopped_by} reached; raise it and rerun to resume", file=sys.stderr)


def cli(argv: Sequence[str] | None = None) -> None:
    cli_edge.run(main, argv, name="self_instruct.score",
                 interrupted="interrupted; every finished batch is saved, rerun the same command to resume")


if __name__ == "__main__":
    cli()
