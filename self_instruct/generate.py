"""The self-instruct loop: seeds -> prompts -> teacher -> parse -> filters -> similarity -> pool.

The command that runs Alpaca's pipeline (pipelines/alpaca.py) on the engine (engine.py); config.py
holds the run's settings. Reference behaviour is Stanford Alpaca's generate_instruction.py (prompt
format, decoding defaults, parse rules, filters, ROUGE-L > 0.7 against seeds and every kept
instruction, regen.json); on top of it the run is seeded, concurrent, budgeted, resumable after
any kill, and stops at exactly the requested count.

    python -m self_instruct.generate --num_instructions_to_generate 200 --output_dir out \\
        --base_url http://127.0.0.1:8000/v1 --model_name my-model
"""
from __future__ import annotations

import asyncio
import math
import os
import sys
import types
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

from . import cli as cli_edge
from .options import DEFAULT_OPENAI_MODEL, SHAPING, GenerateConfig, choose_teacher_kind, make_teacher, run_config
from .engine.scheduler import Engine, Stats, StallError
from .errors import ConfigError
from .engine.judge import Judge, extra_filters, normalize
from .engine.ledger import Budget, Ledger, find_price, format_cost, prompt_bound
from .pipelines.alpaca import AlpacaPipeline
from .pipelines.self_instruct import (NUM_TASKS, PROMPT_INSTRUCTIONS, SelfInstructPipeline, Templates,
                                      load_self_instruct_template)
from .engine.pool import InstructionPool
from .core.prompts import load_template
from .io.resources import default_seed_tasks_path
from .core.seeds import load_seed_tasks
from .teachers.base import Teacher

__all__ = ["GenerateConfig", "GenerateResult", "StallError", "agenerate", "generate", "dry_run", "normalize", "cli"]


@dataclass
class GenerateResult:
    output_dir: Path
    kept: int
    stats: Stats
    stopped_by: str  # "target", "max_requests", "max_total_tokens", "max_cost"


def load_seeds_for(cfg: GenerateConfig) -> tuple[Path, list]:
    """The seed tasks of a run, checked against --num_prompt_instructions."""
    path = Path(cfg.seed_tasks_path) if cfg.seed_tasks_path else default_seed_tasks_path()
    seeds = load_seed_tasks(path)
    if cfg.num_prompt_instructions > len(seeds):
        raise ConfigError(f"--num_prompt_instructions ({cfg.num_prompt_instructions}) is more than the {len(seeds)} seed tasks in {path}; lower it or add seed tasks")
    return path, seeds


def make_pipeline(cfg: GenerateConfig, seeds: list, template: str) -> AlpacaPipeline | SelfInstructPipeline:
    if cfg.pipeline == "self_instruct":  # Wang et al.'s shape: 8 instructions shown, 2 of them grown
        return SelfInstructPipeline(seeds, Templates.load(template), cfg.decoding(),
                                    request_batch_size=cfg.request_batch_size, seed=cfg.seed)
    return AlpacaPipeline(seeds, template, num_prompt_instructions=cfg.num_prompt_instructions,
                          num_machine_instructions=cfg.num_machine_instructions, num_tasks=cfg.num_tasks,
                          request_batch_size=cfg.request_batch_size, seed=cfg.seed,
                          # chat models drift in their numbering; a completion continues it exactly
                          renumber=cfg.api == "chat")


def load_template_for(cfg: GenerateConfig, alpaca_default: str) -> str:
    """The instruction prompt's template, whose hash run.json keeps (--prompt_path, else the pipeline's own)."""
    if cfg.pipeline == "self_instruct":
        return load_self_instruct_template("instructions", cfg.prompt_path)
    return load_template(cfg.prompt_path, alpaca_default)


def price_for(cfg: GenerateConfig, model: str, local: bool):
    price = find_price(model, cfg.price_prompt, cfg.price_completion, local=local)
    if cfg.max_cost is not None and price is None:
        raise ConfigError(f"--max_cost needs the price of {model!r}: pass --price_prompt and --price_completion "
                          f"(dollars per million tokens)")
    return price


# --- entry points ---

async def agenerate(cfg: GenerateConfig, *, teacher: Teacher | None = None, api_key: str | None = None, progress: bool = True) -> GenerateResult:
    """Run (or resume) generation into cfg.output_dir. Nothing is written until every input,
    flag and the teacher's endpoint have been checked and the output directory is locked."""
    cfg.validate()
    api_key = api_key or os.environ.get("OPENAI_API_KEY")
    cli_edge.register_secret(api_key)
    cfg.base_url = cfg.base_url or os.environ.get("OPENAI_BASE_URL")
    seeds_path, seeds = load_seeds_for(cfg)
    own_teacher = teacher is None
    teacher = teacher or make_teacher(cfg, api_key)
    try:
        cfg = cfg.resolved(teacher.default_options)
        template = load_template_for(cfg, teacher.default_template)
        local = teacher.describe().get("backend") == "local"
        price = price_for(cfg, teacher.model_id, local)
        config = run_config(cfg, teacher, seeds_path, template)
        if hasattr(teacher, "check"):
            await teacher.check()
        with InstructionPool.open(cfg.output_dir, config=config, shaping=SHAPING, overwrite=cfg.overwrite,
                                  unit_key="round") as pool:
            for note in pool.notes:
                print(f"self_instruct: {note}", file=sys.stderr)
            ledger = Ledger(pool.dir, price, pool.next_unit)
            judge = Judge([s.instruction for s in seeds] + [r["instruction"] for r in pool.records],
                          threshold=cfg.similarity_threshold, extra_filters=extra_filters(cfg.decontaminate))
            engine = Engine(teacher, pool, judge, ledger, decoding=cfg.decoding(),
                            budget=Budget(cfg.max_requests, cfg.max_total_tokens, cfg.max_cost),
                            max_concurrency=cfg.max_concurrency, target=cfg.num_instructions_to_generate,
                            max_stall_units=cfg.max_stall_rounds, progress=progress, api=cfg.api)
            try:
                stopped_by = await engine.run(make_pipeline(cfg, seeds, template))
            finally:
                pool.write_regen()
                pool.save_state(engine.stats.to_state())
                ledger.forget_before(pool.next_unit)
            if cfg.judge:
                from .score import judge_pool
                await judge_pool(cfg, pool.dir, teacher, api_key, progress)
            return GenerateResult(pool.dir, len(pool), engine.stats, stopped_by)
    finally:
        if own_teacher:
            await teacher.aclose()


def generate(output_dir: str = "out", *, teacher: Teacher | None = None, api_key: str | None = None, progress: bool = True, **options) -> GenerateResult:
    """Library entry point: `generate("out", num_instructions_to_generate=50, base_url=...)`."""
    return asyncio.run(agenerate(GenerateConfig(output_dir=output_dir, **options), teacher=teacher, api_key=api_key, progress=progress))


def dry_run(cfg: GenerateConfig) -> tuple[str, str]:
    """The first prompt of the run, and what the whole run may take (requests, tokens and the
    most it can cost). Calls nothing."""
    cfg.validate()
    _, seeds = load_seeds_for(cfg)
    base_url = cfg.base_url or os.environ.get("OPENAI_BASE_URL")
    try:  # the teacher a real run would pick, without loading it
        kind = cfg.teacher or choose_teacher_kind(base_url, os.environ.get("OPENAI_API_KEY"))
    except ConfigError:
        kind = "openai"
    teacher_class: type[Teacher] = Teacher
    if kind == "local":
        from .teachers.local import LocalTeacher
        teacher_class = LocalTeacher
    cfg = cfg.resolved(teacher_class.default_options)
    template = load_template_for(cfg, teacher_class.default_template)
    pipeline = make_pipeline(cfg, seeds, template)
    prompt = pipeline.unit(0, types.SimpleNamespace(records=[])).prompts[0]  # round 0 shows no pool record
    model = "local" if kind == "local" else (cfg.model_name or DEFAULT_OPENAI_MODEL)
    price = price_for(cfg, model, local=kind == "local")
    return prompt, estimate(cfg, prompt, price)


def estimate(cfg: GenerateConfig, prompt: str, price) -> str:
    """What a run to the target may take, for --dry_run. The keep rate is unknown before the run:
    the estimate assumes half of each reply's new tasks are kept (strong teachers keep more, a
    135M model far less), and the hard bounds are the budget flags."""
    new_tasks, calls, asks = cfg.num_tasks - cfg.num_prompt_instructions, 1, ""
    if cfg.pipeline == "self_instruct":  # a list, then a classification and an instance call per task
        new_tasks = NUM_TASKS - 1 - PROMPT_INSTRUCTIONS
        calls, asks = 1 + 2 * new_tasks, " (then 2 requests for each task)"
    requests = math.ceil(cfg.num_instructions_to_generate / max(1, new_tasks / 2)) * calls
    if cfg.max_requests is not None:
        requests = min(requests, cfg.max_requests)
    per_request = prompt_bound(prompt) + cfg.max_tokens
    tokens = requests * per_request
    if cfg.max_total_tokens is not None:
        tokens = min(tokens, cfg.max_total_tokens)
    lines = [f"dry run: {cfg.num_instructions_to_generate} instructions; each request asks for {new_tasks} new tasks{asks}",
             f"requests: about {requests} (if half of the new tasks are kept)",
             f"tokens: at most {per_request} a request, at most {tokens} for those requests"]
    if price is not None:
        bound = requests * price.cost(prompt_bound(prompt), cfg.max_tokens)
        if cfg.max_cost is not None:
            bound = min(bound, cfg.max_cost)
        lines.append(f"cost: at most {format_cost(bound)} for those requests "
                     f"(${price.prompt:g} / ${price.completion:g} per million prompt / completion tokens)")
    else:
        lines.append("cost: unknown price for this model (pass --price_prompt and --price_completion)")
    return "\n".join(lines)


def main(
    output_dir: str = "out",
    pipeline: str = "alpaca",
    seed_tasks_path: str | None = None,
    num_instructions_to_generate: int = 100,
    model_name: str | None = None,
    num_prompt_instructions: int = 3,
    request_batch_size: int = 5,
    temperature: float = 1.0,
    top_p: float = 1.0,
    base_url: str | None = None,
    api_key: str | None = None,
    api: str = "completions",
    max_concurrency: int = 8,
    seed: int = 42,
    num_machine_instructions: int = 0,
    prompt_path: str | None = None,
    dry_run: bool = False,
    teacher: str | None = None,
    local_model_path: str | None = None,
    num_tasks: int | None = None,
    max_tokens: int | None = None,
    similarity_threshold: float = 0.7,
    decontaminate: str | None = None,
    judge: bool = False,
    min_score: float | None = None,
    judge_model: str | None = None,
    judge_base_url: str | None = None,
    max_requests: int | None = None,
    max_total_tokens: int | None = None,
    max_cost: float | None = None,
    price_prompt: float | None = None,
    price_completion: float | None = None,
    requests_per_minute: float | None = None,
    tokens_per_minute: float | None = None,
    no_stream: bool = False,
    max_stall_rounds: int = 10,
    request_timeout: float = 120.0,
    max_attempts: int = 6,
    retry_backoff: float = 1.0,
    overwrite: bool = False,
    quiet: bool = False,
    no_report: bool = False,
):
    """Grow a pool of instruction-following examples from seed tasks with a teacher LLM.

    pipeline alpaca|self_instruct: Alpaca's numbered lists (default), or Wang et al.'s instructions,
    classification check and instances (8 instructions shown per prompt, 2 from the pool).
    Writes generated.jsonl, rejected.jsonl, run.json, state.json and regen.json to output_dir;
    rerun the same command to resume. Flags named as in Alpaca's generate_instruction.py, plus:
    base_url/api_key (or OPENAI_BASE_URL/OPENAI_API_KEY) for any OpenAI-compatible server,
    api completions|chat, teacher openai|local, num_machine_instructions (grown tasks mixed into
    each prompt), num_tasks and max_tokens (list length and reply budget; default the teacher's
    preference, else Alpaca's 20 and 3072), budgets max_requests, max_total_tokens and max_cost
    (dollars; prices known for OpenAI's models, else price_prompt and price_completion in dollars
    per million tokens), dry_run (print the first prompt and what the run may cost, call nothing),
    overwrite (start output_dir afresh), no_report (skip report.html at the end), decontaminate
    (benchmark files, comma-separated: drop a record sharing 13 words in a row with one of them),
    judge (rate every kept record 1-5 at the end into output_dir/scored.json; min_score drops
    those below it there; judge_model and judge_base_url name another teacher for it).
    base_url may list several servers (comma-separated, or a file of URLs): requests go to the
    least-loaded healthy one. requests_per_minute and tokens_per_minute cap the rate client-side;
    concurrency adapts to 429s, timeouts and latency, never above max_concurrency. request_timeout
    is the silence (seconds without a token) after which a request is given up and retried, as
    replies are streamed (no_stream: plain requests, request_timeout limits their whole length).
    A failing request is retried up to max_attempts times, waiting retry_backoff seconds and
    doubling (up to 30 s) unless the server sends Retry-After; max_stall_rounds rounds in a row
    that keep nothing stop the run with the likely cause.
    """
    options = {k: v for k, v in locals().items() if k not in ("api_key", "dry_run", "quiet", "no_report", "no_stream")}
    cfg = GenerateConfig(stream=not no_stream, **options)
    if dry_run:
        prompt, cost = _dry_run(cfg)
        print(prompt)  # stdout holds the prompt alone, to pipe or diff
        print(cost, file=sys.stderr)
        return None
    result = cli_edge.run_stoppable(agenerate(cfg, api_key=api_key, progress=not quiet))
    print(f"self_instruct: {result.kept} instructions in {result.output_dir} "
          f"(stopped by {result.stopped_by}); {result.stats.summary()}", file=sys.stderr)
    if result.stopped_by.startswith("max_"):
        print(f"self_instruct: budget {result.stopped_by} reached; raise it and rerun to resume", file=sys.stderr)
    cli_edge.report_after_run(cfg.output_dir, no_report)
    return None


_dry_run = dry_run


def cli(argv: Sequence[str] | None = None) -> None:
    """Console entry point (one line and exit status 2 for every expected failure)."""
    cli_edge.run(main, argv, name="self_instruct.generate",
                 interrupted="interrupted; every finished round is saved, rerun the same command to resume")


class _CallableModule(types.ModuleType):
    """`self_instruct.generate(...)` stays the function even after this submodule, which shares
    its name, has been imported (importing it rebinds the package attribute to the module)."""

    def __call__(self, *args, **kwargs) -> GenerateResult:
        return generate(*args, **kwargs)


sys.modules[__name__].__class__ = _CallableModule

if __name__ == "__main__":
    cli()
