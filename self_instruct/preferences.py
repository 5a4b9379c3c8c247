"""Preference pairs for DPO from any instructions: several answers each, rated side by side, the best
and the worst kept as `chosen` and `rejected` when their scores differ enough.

    python -m self_instruct.preferences data.json --output pairs.jsonl --samples 4 --min_margin 2 \\
        --base_url http://127.0.0.1:8000/v1 --model_name my-model --judge_model my-judge

INPUT is any pool (generated.jsonl, regen.json, scored.json) or Alpaca JSON/JSONL: every record's
instruction and input are asked; its metadata passes through. The answers come from the teacher at
the --temperatures in turn, or alternately from the teacher and a rival (--rival_model, with
--rival_base_url, or `local` for the embedded model). One rater (the teacher, or --judge_model /
--judge_base_url) scores all of a record's answers 1-10 in one request. Each record is one unit of
the engine in --output_dir (default OUTPUT.run): budgets, reply cache and resume as for generate.
--output gets the pairs: each record's output is the chosen answer, metadata.rejected the rejected
one, metadata.preference the scores; `python -m self_instruct.export --format preference` makes
TRL's preference rows of it, and `python -m self_instruct.train --method dpo` trains on them.
"""
from __future__ import annotations

import asyncio
import dataclasses
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

from . import cli as cli_edge
from .core.templates import load_template
from .engine.run import Outcome, Run, execute, finish
from .errors import ConfigError
from .io.datasets import read_examples, write_dataset
from .io.jsonl import sha256_of
from .options import (
    BudgetOptions,
    CostOptions,
    RateOptions,
    RaterOptions,
    RunOptions,
    TeacherOptions,
    command,
    option,
    positive_int,
    validate,
)
from .pipelines.preferences import RATER, RIVAL, PreferencePipeline, draws
from .pipelines.score import keep_all
from .teachers.base import Teacher
from .types import Decoding

SHAPING = ("input_sha256", "model_name", "api", "rubric_sha256", "samples", "temperatures", "rival_model",
           "judge_model", "min_margin", "max_tokens")


def at_least_two(name: str, value) -> None:
    if not isinstance(value, int) or isinstance(value, bool) or value < 2:
        raise ConfigError(f"--{name} must be 2 or more: a pair needs two answers (got {value!r})")


@dataclass(kw_only=True)
class PreferencesConfig(RunOptions, RaterOptions, CostOptions, BudgetOptions, RateOptions, TeacherOptions):
    """Every setting of a preferences run: its flags, and the library's keywords."""

    input: str = option("", "the instructions: any pool or Alpaca JSON list or JSONL", positional=True)
    output: str | None = option(None, "the pairs: a JSON list, or JSONL by its suffix")
    output_dir: str | None = option(None, "the run's directory: budgets, reply cache, resume (default OUTPUT.run)")
    samples: int = option(2, "answers asked for each instruction (2 or more)", check=at_least_two)
    temperatures: str = option("0.7,1.2", "sampling temperatures, comma-separated, used in turn by the answers")
    rival_model: str | None = option(None, "a second teacher answering every other draw: a model of --rival_base_url "
                                           "(or --base_url), or local for the embedded model")
    rival_base_url: str | None = option(None, "the rival's server (default --base_url)")
    min_margin: float = option(1.0, "keep a pair when the best and worst answers' scores (1-10) differ by this much")
    max_tokens: int = option(1024, "tokens an answer may take (a cut answer is not used)", check=positive_int)
    rubric_path: str | None = option(None, "your own rating template, holding {instruction} and {responses} "
                                           "(see prompts/preference.txt)")

    def run_dir(self) -> Path:
        return Path(self.output_dir or f"{self.output}.run")

    def temperature_list(self) -> list[float]:
        try:
            values = [float(t) for t in self.temperatures.split(",") if t.strip()]
        except ValueError:
            values = []
        if not values or not all(0 <= t <= 2 for t in values):
            raise ConfigError(f"--temperatures must be numbers from 0 to 2, comma-separated (got {self.temperatures!r})")
        return values

    def validate(self) -> None:
        if not self.input:
            raise ConfigError("give the instructions: python -m self_instruct.preferences INPUT --output OUT")
        if not self.output and not self.output_dir:
            raise ConfigError("give --output (the pairs) or --output_dir")
        validate(self)
        self.temperature_list()
        if not (isinstance(self.min_margin, (int, float)) and 0 < self.min_margin <= 9):
            raise ConfigError(f"--min_margin must be above 0 and at most 9 on the 1-10 scale (got {self.min_margin!r})")


@dataclass
class PreferencesResult:
    output_dir: Path
    records: int      # instructions in the input
    pairs: list[dict]  # the pairs kept
    outcome: Outcome


def rival_options(cfg: PreferencesConfig) -> PreferencesConfig:
    local = cfg.rival_model == "local"
    return dataclasses.replace(cfg, teacher="local" if local else "openai", model_name=None if local else cfg.rival_model)


async def apreferences(cfg: PreferencesConfig, *, teacher: Teacher | None = None,
                       others: dict[str, Teacher] | None = None) -> PreferencesResult:
    """Make (or resume making) preference pairs of cfg.input; writes cfg.output when every record
    is done. `others`: given teachers by name (`rival`, `rater`), as `teacher` is the run's own."""
    cfg.validate()
    examples = read_examples(cfg.input)
    rubric = load_template("preference.txt", cfg.rubric_path, "--rubric_path")
    async with Run(cfg, teacher=teacher, follows_instructions=True, stages=[cfg.run_dir()]) as run:
        named = dict(others or {})
        if cfg.rival_model and RIVAL not in named:
            named[RIVAL] = run.open_teacher(rival_options(cfg), base_url=cfg.rival_base_url or run.base_url)
        if (cfg.judge_model or cfg.judge_base_url) and RATER not in named:
            named[RATER] = run.open_teacher(dataclasses.replace(cfg, teacher="openai",
                                                                model_name=cfg.judge_model or cfg.model_name),
                                            base_url=cfg.judge_base_url or run.base_url)
        config = run.config(input_sha256=sha256_of(Path(cfg.input).read_bytes()), rubric_sha256=sha256_of(rubric),
                            rival_model=named[RIVAL].model_id if RIVAL in named else None,
                            judge_model=named[RATER].model_id if RATER in named else None)
        await run.check()
        for other in named.values():
            await run.check(other)
        pipeline = PreferencePipeline(examples, draws(cfg.samples, cfg.temperature_list(), RIVAL in named), rubric,
                                      max_tokens=cfg.max_tokens, min_margin=cfg.min_margin,
                                      rater=RATER if RATER in named else None)
        with run.open(cfg.run_dir(), config, SHAPING) as pool:
            # each draw and the rating set their own decoding; this one bounds what a request may take
            outcome = await run.engine(pool, pipeline, keep_all, decoding=Decoding(max_tokens=cfg.max_tokens),
                                       others=named, total_units=pipeline.unit_count)
            if cfg.output and outcome.stopped_by == "done":
                write_dataset(cfg.output, pool.records)
            return PreferencesResult(pool.dir, len(examples), list(pool.records), outcome)


def preferences_file(input: str, output: str | None = None, *, teacher: Teacher | None = None,
                     others: dict[str, Teacher] | None = None, **options) -> PreferencesResult:
    """Library entry point: `preferences_file("data.json", "pairs.jsonl", samples=4, base_url=...)`."""
    return asyncio.run(apreferences(PreferencesConfig(input=str(input), output=output, **options), teacher=teacher,
                                    others=others))


def run_command(cfg: PreferencesConfig) -> None:
    result = execute(apreferences(cfg))
    where = cfg.output if result.outcome.stopped_by == "done" and cfg.output else result.output_dir
    finish(f"{len(result.pairs)} preference pairs from {result.records} instructions", result.outcome, where)


main = command(PreferencesConfig, run_command, """Make preference pairs for DPO: several answers to each instruction of INPUT, rated side by side.

The best and the worst answer become a pair (the record's output and metadata.rejected) when their
scores (1-10) differ by at least --min_margin; ties, small margins and unparseable ratings go to
rejected.jsonl with their reasons. Rerun the same command to resume.
""")


def cli(argv: Sequence[str] | None = None) -> None:
    cli_edge.run(main, argv, name="self_instruct.preferences",
                 interrupted="interrupted; every finished instruction is saved, rerun the same command to resume")


if __name__ == "__main__":
    cli()
