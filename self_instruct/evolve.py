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
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

from . import cli as cli_edge
from .engine.judge import Judge
from .engine.prices import format_cost
from .engine.run import Run, execute, say
from .errors import ConfigError
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
    fraction,
    option,
    positive_int,
    validate,
)
from .pipelines.evolve import EvolvePipeline
from .teachers.base import Teacher
from .types import Decoding, Example

SHAPING = ("input_sha256", "round", "seed", "model_name", "api", "temperature", "max_tokens",
           "similarity_threshold", "no_change_threshold", "max_words")


@dataclass(kw_only=True)
class EvolveConfig(RunOptions, CostOptions, BatchOptions, BudgetOptions, RateOptions, TeacherOptions):
    """Every setting of an evolve run: its flags, and the library's keywords."""

    input: str = option("", "the dataset to evolve: a JSON list or JSONL of records with an instruction",
                        positional=True)
    rounds: int = option(1, "generations: round r evolves what round r-1 kept", check=positive_int)
    output: str | None = option(None, "the evolved records of every round: a JSON list, or JSONL by its suffix")
    output_dir: str | None = option(None, "the run's directory, a round_R folder per round (default OUTPUT.run)")
    seed: int = option(0, "picks each record's operation: the same seed asks the same")
    similarity_threshold: float = option(0.7, "reject an evolved task whose ROUGE-L against any earlier one is above this",
                                         check=fraction)
    no_change_threshold: float = option(0.9, "reject an evolved task this similar (ROUGE-L) to its parent",
                                        check=fraction)
    max_words: int = option(400, "reject an evolved task longer than this", check=positive_int)
    temperature: float = option(0.7, "sampling temperature")
    max_tokens: int = option(1024, "tokens a reply may take", check=positive_int)

    def run_dir(self) -> Path:
        return Path(self.output_dir or f"{self.output}.run")

    def validate(self) -> None:
        if not self.input:
            raise ConfigError("give the dataset to evolve: python -m self_instruct.evolve INPUT --rounds N --output OUT")
        if not self.output and not self.output_dir:
            raise ConfigError("give --output (the evolved dataset) or --output_dir")
        validate(self)
        # before any request: a place that cannot take the output would fail only once all is paid for
        check_outputs([("--output", self.output)], directories=[("--output_dir", self.run_dir())],
                      inputs=[("INPUT", self.input)], reserved=[f"round_{r}" for r in range(1, self.rounds + 1)])


@dataclass
class EvolveResult:
    output_dir: Path
    rounds_done: int
    records: list[dict]  # the evolved records of every round done, in order
    stopped_by: str
    requests: int
    cost: float | None = None  # dollars, when the teacher's price is known


async def aevolve(cfg: EvolveConfig, *, teacher: Teacher | None = None) -> EvolveResult:
    """Evolve (or resume evolving) cfg.input for cfg.rounds rounds; writes cfg.output when all are done.
    Each round is a stage of one run: the budgets hold across the rounds together."""
    cfg.validate()
    originals = read_examples(cfg.input)
    decoding = Decoding(max_tokens=cfg.max_tokens, temperature=cfg.temperature)
    rounds = [cfg.run_dir() / f"round_{r}" for r in range(1, cfg.rounds + 1)]
    evolved: list[dict] = []
    known = [e.instruction for e in originals]
    parents, requests, cost, stopped_by, done = originals, 0, 0.0, "done", 0
    async with Run(cfg, teacher=teacher, follows_instructions=True, stages=rounds) as run:
        base = run.config(input_sha256=sha256_of(Path(cfg.input).read_bytes()))
        await run.check()
        for generation, directory in enumerate(rounds, 1):
            pipeline = EvolvePipeline(parents, generation, seed=cfg.seed, decoding=decoding,
                                      no_change_threshold=cfg.no_change_threshold, max_words=cfg.max_words)
            with run.open(directory, base | {"round": generation}, SHAPING) as pool:
                # duplicates and near-duplicates of any generation so far, this round's kept included
                judge = Judge(known + [r["instruction"] for r in pool.records], threshold=cfg.similarity_threshold)
                outcome = await run.engine(pool, pipeline, judge, decoding=decoding, total_units=len(parents))
                stopped_by = outcome.stopped_by
                requests += outcome.stats.requests
                cost += outcome.stats.cost or 0.0
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
        return EvolveResult(cfg.run_dir(), done, evolved, stopped_by, requests, cost if run.price else None)


def evolve_file(input: str, output: str | None = None, *, rounds: int = 1, teacher: Teacher | None = None,
                **options) -> EvolveResult:
    """Library entry point: `evolve_file("seed.json", "evolved.json", rounds=2, base_url=...)`."""
    return asyncio.run(aevolve(EvolveConfig(input=str(input), rounds=rounds, output=output, **options), teacher=teacher))


def run_command(cfg: EvolveConfig) -> None:
    result = execute(aevolve(cfg))
    say(f"{len(result.records)} evolved records from {result.rounds_done} of {cfg.rounds} rounds "
        f"in {result.output_dir} (stopped by {result.stopped_by}; {result.requests} requests"
        f"{'' if result.cost is None else '; cost ' + format_cost(result.cost)})")
    if result.stopped_by.startswith("max_"):
        say(f"budget {result.stopped_by} reached; raise it and rerun to resume")


main = command(EvolveConfig, run_command, """Evolve every record of INPUT --rounds times into harder and rarer tasks (Evol-Instruct-style).

Each round rewrites each task harder (add a constraint, deepen, concretize, more reasoning steps,
a richer input) or into a rarer one of its field, picked by --seed, and the teacher answers it.
Failed evolutions go to rejected.jsonl (evolve_no_change, evolve_refusal, evolve_copied,
evolve_too_long). Writes --output once every round is done. Rerun the same command to resume.
""")


def cli(argv: Sequence[str] | None = None) -> None:
    cli_edge.run(main, argv, name="self_instruct.evolve",
                 interrupted="interrupted; every finished record is saved, rerun the same command to resume")


if __name__ == "__main__":
    cli()
