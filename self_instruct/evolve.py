"""Evolve a dataset into harder and rarer tasks (Evol-Instruct-style), round after round.

    python -m self_instruct.evolve data.json --rounds 3 --output evolved.json \\
        --base_url http://127.0.0.1:8000/v1 --model_name my-model --seed 0

Round r evolves every record round r-1 kept (round 1: the input), each by an operation drawn
from --seed, and answers the new task in a second call. Each round is an engine run in
OUTPUT_DIR/round_r (budgets, reply cache, resume); rerun the same command to resume. ROUGE-L
and exact-duplicate filters see the input and every earlier generation. --output gets the
evolved records of all rounds (not the input), each with metadata.parent, operation, generation.
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
from .engine.scheduler import Engine
from .errors import ConfigError
from .engine.judge import Judge
from .engine.ledger import Budget, Ledger, find_price, format_cost
from .pipelines.evolve import EvolvePipeline
from .engine.pool import InstructionPool
from .score import read_examples, write_dataset
from .teachers.base import Teacher
from .types import Decoding, Example

SHAPING = ("input_sha256", "round", "seed", "model_name", "api", "temperature", "max_tokens",
           "similarity_threshold", "no_change_threshold", "max_words")


@dataclass
class EvolveConfig(TeacherOptions):
    """Every option of an evolve run (the command's flags). The API key is not a field."""

    input: str = ""
    rounds: int = 1
    output: str | None = None
    output_dir: str | None = None
    seed: int = 0
    similarity_threshold: float = 0.7
    no_change_threshold: float = 0.9
    max_words: int = 400
    temperature: float = 0.7
    max_tokens: int = 1024

    def run_dir(self) -> Path:
        return Path(self.output_dir or f"{self.output}.run")

    def validate(self) -> None:
        if not self.input:
            raise ConfigError("give the dataset to evolve: python -m self_instruct.evolve INPUT --rounds N --output OUT")
        if not self.output and not self.output_dir:
            raise ConfigError("give --output (the evolved dataset) or --output_dir")
        if not isinstance(self.rounds, int) or self.rounds < 1:
            raise ConfigError(f"--rounds must be a positive whole number (got {self.rounds!r})")
        for name in ("similarity_threshold", "no_change_threshold"):
            if not 0 < getattr(self, name) <= 1:
                raise ConfigError(f"--{name} must be in (0, 1] (got {getattr(self, name)!r})")
        if self.api not in ("completions", "chat"):
            raise ConfigError(f"--api must be 'completions' or 'chat' (got {self.api!r})")


@dataclass
class EvolveResult:
    output_dir: Path
    rounds_done: int
    records: list[dict]  # the evolved records of every round done, in order
    stopped_by: str
    requests: int
    cost: float | None = None  # dollars, when the teacher's price is known


def _left(limit: float | None, spent: float) -> float | None:
    """What a budget leaves to the next round, after the rounds before spent `spent` of it."""
    return None if limit is None else max(0, limit - spent)


async def aevolve(cfg: EvolveConfig, *, teacher: Teacher | None = None, api_key: str | None = None,
                  progress: bool = True) -> EvolveResult:
    """Evolve (or resume evolving) cfg.input for cfg.rounds rounds; writes cfg.output when all are done."""
    cfg.validate()
    originals = read_examples(cfg.input)
    decoding = Decoding(max_tokens=cfg.max_tokens, temperature=cfg.temperature)
    own_teacher = teacher is None
    api_key = api_key or os.environ.get("OPENAI_API_KEY")
    cli_edge.register_secret(api_key)
    cfg.base_url = cfg.base_url or os.environ.get("OPENAI_BASE_URL")
    teacher = teacher or make_teacher(cfg, api_key)
    evolved: list[dict] = []
    known = [e.instruction for e in originals]
    parents, requests, tokens, cost, stopped_by, done = originals, 0, 0, 0.0, "done", 0
    try:
        price = find_price(teacher.model_id, cfg.price_prompt, cfg.price_completion,
                           local=teacher.describe().get("backend") == "local")
        if cfg.max_cost is not None and price is None:
            raise ConfigError(f"--max_cost needs the price of {teacher.model_id!r}: pass --price_prompt and --price_completion")
        base = dataclasses.asdict(cfg)
        base.pop("overwrite")
        base.update(base_url=cli_edge.redact_url(cfg.base_url), model_name=teacher.model_id,
                    input_sha256=sha256_of(Path(cfg.input).read_bytes()))
        for generation in range(1, cfg.rounds + 1):
            pipeline = EvolvePipeline(parents, generation, seed=cfg.seed, decoding=decoding,
                                      no_change_threshold=cfg.no_change_threshold, max_words=cfg.max_words)
            with InstructionPool.open(cfg.run_dir() / f"round_{generation}", config=base | {"round": generation},
                                      shaping=SHAPING, overwrite=cfg.overwrite, unit_key=pipeline.unit_key) as pool:
                ledger = Ledger(pool.dir, price, pool.next_unit)
                # duplicates and near-duplicates of any generation so far, this round's kept included
                judge = Judge(known + [r["instruction"] for r in pool.records], threshold=cfg.similarity_threshold)
                engine = Engine(teacher, pool, judge, ledger, decoding=decoding,
                                budget=Budget(_left(cfg.max_requests, requests), _left(cfg.max_total_tokens, tokens),
                                              _left(cfg.max_cost, cost)),
                                max_concurrency=cfg.max_concurrency, target=None, total_units=len(parents),
                                max_stall_units=None, progress=progress, api=cfg.api)
                try:
                    stopped_by = await engine.run(pipeline)
                finally:
                    pool.save_state(engine.stats.to_state())
                    ledger.forget_before(pool.next_unit)
                requests += ledger.spend.requests
                tokens += ledger.spend.tokens
                cost += ledger.spend.cost
                evolved += pool.records
                known += [r["instruction"] for r in pool.records]
                parents = [Example(r["instruction"], r["input"], r["output"], r["metadata"]) for r in pool.records]
            if stopped_by != "done":
                break
            done = generation
            if not parents:
                break  # nothing left to evolve: the run is over, not cut short
        if cfg.output and stopped_by == "done":
            write_dataset(cfg.output, evolved)
        return EvolveResult(cfg.run_dir(), done, evolved, stopped_by, requests, cost if price else None)
    finally:
        if own_teacher:
            await teacher.aclose()


def evolve_file(input: str, output: str | None = None, *, rounds: int = 1, teacher: Teacher | None = None,
                api_key: str | None = None, progress: bool = True, **options) -> EvolveResult:
    """Library entry point: `evolve_file("seed.json", "evolved.json", rounds=2, base_url=...)`."""
    cfg = EvolveConfig(input=str(input), rounds=rounds, output=output, **options)
    return asyncio.run(aevolve(cfg, teacher=teacher, api_key=api_key, progress=progress))


def main(
    input: str,
    rounds: int = 1,
    output: str | None = None,
    output_dir: str | None = None,
    seed: int = 0,
    similarity_threshold: float = 0.7,
    no_change_threshold: float = 0.9,
    max_words: int = 400,
    model_name: str | None = None,
    base_url: str | None = None,
    api_key: str | None = None,
    api: str = "completions",
    teacher: str | None = None,
    local_model_path: str | None = None,
    temperature: float = 0.7,
    max_tokens: int = 1024,
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
    """Evolve every record of INPUT (JSON list or JSONL) --rounds times: each round rewrites each
    task harder (add a constraint, deepen, concretize, more reasoning steps, a richer input) or
    into a rarer one of its field, picked by --seed, and the teacher answers it. Failed evolutions
    go to rejected.jsonl (evolve_no_change, evolve_refusal, evolve_copied, evolve_too_long).
    Writes --output (JSON list, or JSONL by suffix). Rerun the same command to resume.
    """
    options = {k: v for k, v in locals().items() if k not in ("input", "rounds", "output", "api_key", "quiet", "no_stream")}
    cfg = EvolveConfig(input=input, rounds=rounds, output=output, stream=not no_stream, **options)
    result = asyncio.run(aevolve(cfg, api_key=api_key, progress=not quiet))
    print(f"self_instruct: {len(result.records)} evolved records from {result.rounds_done} of {rounds} rounds "
          f"in {result.output_dir} (stopped by {result.stopped_by}; {result.requests} requests"
          f"{'' if result.cost is None else '; cost ' + format_cost(result.cost)})", file=sys.stderr)
    if result.stopped_by.startswith("max_"):
        print(f"self_instruct: budget {result.stopped_by} reached; raise it and rerun to resume", file=sys.stderr)


def cli(argv: Sequence[str] | None = None) -> None:
    cli_edge.run(main, argv, name="self_instruct.evolve",
                 interrupted="interrupted; every finished record is saved, rerun the same command to resume")


if __name__ == "__main__":
    cli()
