"""The self-instruct loop: seeds -> prompts -> teacher -> parse -> filters -> similarity -> pool.

The command that runs Alpaca's pipeline (pipelines/alpaca.py), self-instruct's
(pipelines/self_instruct.py) or Magpie's (pipelines/magpie.py) through the one run setup
(engine/run.py), with --turns K growing each new task into a conversation
(pipelines/conversations.py); GenerateConfig holds the run's settings, and its flags. Reference
behaviour is Stanford Alpaca's generate_instruction.py (prompt format, decoding defaults, parse
rules, filters, ROUGE-L > 0.7 against seeds and every kept instruction, regen.json); on top of it
the run is seeded, concurrent, budgeted, resumable after any kill, and stops at exactly the
requested count.

    python -m self_instruct.generate --num_instructions_to_generate 200 --output_dir out \\
        --base_url http://127.0.0.1:8000/v1 --model_name my-model
"""
from __future__ import annotations

import asyncio
import dataclasses
import math
import sys
import types
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Mapping, Sequence

from . import cli as cli_edge
from .core.conditioning import Conditions
from .core.filters import DEFAULT_FILTERS, load_filters
from .core.prompts import load_list_template, stop_sequences
from .core.seeds import load_seed_tasks
from .engine.prices import find_batch_price, format_cost, price_of, prompt_bound
from .engine.progress import StallError
from .engine.run import Outcome, Run, execute, finish, judge_of
from .errors import ConfigError
from .executors import EXECUTORS, open_executor, share_env
from .io.jsonl import sha256_of
from .io.resources import default_seed_tasks_path
from .options import (
    BatchOptions,
    BudgetOptions,
    ConditionOptions,
    CostOptions,
    JudgeOptions,
    RateOptions,
    RunOptions,
    TeacherOptions,
    command,
    one_of,
    option,
    positive_int,
    positive_int_up_to,
    validate,
)
from .pipelines.alpaca import AlpacaPipeline
from .pipelines.base import Pipeline
from .pipelines.conversations import ConversationPipeline, TurnTemplates
from .pipelines.magpie import ChatFormat, MagpiePipeline
from .pipelines.self_instruct import (
    NUM_TASKS,
    PROMPT_INSTRUCTIONS,
    SelfInstructPipeline,
    Templates,
)
from .teachers.base import Teacher
from .teachers.choose import planned_teacher
from .types import Decoding

__all__ = ["GenerateConfig", "Outcome", "StallError", "agenerate", "generate", "dry_run", "cli"]

# Alpaca's values, used where neither a flag nor the teacher's default_options decide.
DEFAULTS = {"num_tasks": 20, "max_tokens": 3072}
# Settings that shape the data: resuming with any of them changed would mix two different runs
# in one pool, so it is refused unless --overwrite. The rest (target, budgets, concurrency) may change.
SHAPING = (
    "model_name", "api", "teacher", "num_prompt_instructions", "num_machine_instructions", "num_tasks",
    "temperature", "top_p", "seed", "similarity_threshold", "seed_tasks_sha256", "template_sha256",
    "decontaminate", "filter", "pipeline", "personas_sha256", "topics_sha256", "turns", "turn_templates_sha256",
    "chat_template_sha256",
)


@dataclass(kw_only=True)
class GenerateConfig(RunOptions, JudgeOptions, ConditionOptions, CostOptions, BatchOptions, BudgetOptions, RateOptions, TeacherOptions):
    """Every setting of a generate run: its flags, and the library's keywords."""

    output_dir: str = option("out", "where generated.jsonl, rejected.jsonl, run.json, state.json and regen.json go")
    pipeline: str = option("alpaca", "alpaca (Alpaca's numbered lists), self_instruct (Wang et al.'s "
                                     "instructions, classification check and instances) or magpie (a chat model "
                                     "served raw writes the instructions from its own template)",
                           check=one_of("alpaca", "self_instruct", "magpie"))
    turns: int = option(1, "turns of each record: 2 or more grows every new task into a conversation, the teacher "
                           "playing user and assistant in turn (records keep metadata.messages)", check=positive_int)
    chat_template: str | None = option(None, "--pipeline magpie with a server: the model's chat template, a Jinja file "
                                             "(the embedded model's comes from its GGUF file)")
    seed_tasks_path: str | None = option(None, "the seed task JSONL (default the bundled seed_tasks.jsonl)")
    num_instructions_to_generate: int = option(100, "kept instructions to stop at (exactly)", check=positive_int)
    num_prompt_instructions: int = option(3, "example tasks shown in each prompt", check=positive_int)
    request_batch_size: int = option(5, "prompts per round", check=positive_int_up_to(
        10_000, "a round's prompts are built in memory at once and its records commit only when all are back"))
    temperature: float = option(1.0, "sampling temperature (Alpaca's 1.0)")
    top_p: float = option(1.0, "nucleus sampling (Alpaca's 1.0)")
    seed: int = option(42, "seed of the prompts' sampling: the same seed draws the same prompts")
    num_machine_instructions: int = option(0, "of the example tasks, how many come from the grown pool")
    prompt_path: str | None = option(None, "your own prompt template, holding {tasks} (see prompts/generate.txt)")
    num_tasks: int | None = option(None, "the list the teacher completes runs to this number (default: the "
                                         "teacher's preference, else Alpaca's 20)")
    max_tokens: int | None = option(None, "tokens a reply may take (default: the teacher's preference, else 3072)")
    max_stall_rounds: int = option(10, "rounds in a row that keep nothing stop the run with the likely cause",
                                   check=positive_int)
    no_report: bool = option(False, "no report.html at the end", record=False)
    dry_run: bool = option(False, "print the first prompt (stdout) and what the run may take (stderr); call nothing",
                           record=False)
    executor: str = option("local", "where the teacher requests are sent from: local (this process) or ray (Ray "
                                    "workers; pip install 'self_instruct[ray]'); the judge, budget and pool stay here, "
                                    "and the output is the same", check=one_of(*EXECUTORS), record=False)
    ray_address: str | None = option(None, "the Ray cluster to join with --executor ray (default: RAY_ADDRESS, else "
                                           "a local instance for the run)", record=False)

    def resolved(self, teacher_options: Mapping[str, Any]) -> "GenerateConfig":
        """The run's one configuration: options left unset take the teacher's preference, then
        Alpaca's values; checked as a whole.

        Example: a 135M local model prefers 6-task lists; --num_tasks 20 still wins over that. A
        teacher's preferred filter is added to the user's --filter, never replaced by it.
        """
        filled = {name: teacher_options.get(name, value) for name, value in DEFAULTS.items() if getattr(self, name) is None}
        preferred = teacher_options.get("filter")
        if preferred and preferred not in (self.filter or "").split(","):  # the teacher's filters, then the user's
            filled["filter"] = ",".join(filter(None, [preferred, self.filter]))
        cfg = dataclasses.replace(self, **filled)
        cfg.validate()
        return cfg

    def validate(self) -> None:
        validate(self)
        for name in DEFAULTS:  # decided once the teacher is known
            if getattr(self, name) is not None:
                positive_int(name, getattr(self, name))
        if not isinstance(self.num_machine_instructions, int) or not 0 <= self.num_machine_instructions <= self.num_prompt_instructions:
            raise ConfigError(f"--num_machine_instructions must be between 0 and --num_prompt_instructions "
                              f"({self.num_prompt_instructions}) (got {self.num_machine_instructions!r})")
        if self.num_tasks is not None and self.num_tasks <= self.num_prompt_instructions:
            raise ConfigError(f"--num_tasks ({self.num_tasks}) must be larger than --num_prompt_instructions "
                              f"({self.num_prompt_instructions})")
        if self.pipeline == "magpie":
            if self.api == "chat":
                raise ConfigError("--pipeline magpie asks the model raw: use --api completions (a chat API writes "
                                  "the template around what it is sent, so no user's turn can be left open)")
            unused = [flag for flag, value in (("--prompt_path", self.prompt_path), ("--personas", self.personas),
                                               ("--topics", self.topics), ("--turns", self.turns > 1)) if value]
            if unused:
                raise ConfigError(f"{unused[0]} has no use with --pipeline magpie: its instructions are the model's own, "
                                  f"written from its chat template alone")
        elif self.chat_template is not None:
            raise ConfigError("--chat_template is for --pipeline magpie")
        if self.ray_address and self.executor != "ray":
            raise ConfigError("--ray_address goes with --executor ray")
        if self.executor == "ray":
            if planned_teacher(self)[0] != "openai":
                raise ConfigError("--executor ray sends requests to an OpenAI-compatible server from Ray workers: "
                                  "give --base_url (the embedded model runs in this process)")
            if self.batch:
                raise ConfigError("--executor ray and --batch do not go together: a batch is one upload from here")
        self.decoding()  # temperature, top_p
        load_filters(self.filter)  # every --filter resolves, before anything is written

    def decoding(self) -> Decoding:
        max_tokens, num_tasks = self.max_tokens or DEFAULTS["max_tokens"], self.num_tasks or DEFAULTS["num_tasks"]
        return Decoding(max_tokens=max_tokens, temperature=self.temperature, top_p=self.top_p, stop=stop_sequences(num_tasks))


def load_seeds_for(cfg: GenerateConfig) -> tuple[Path, list]:
    """The seed tasks of a run, checked against --num_prompt_instructions."""
    path = Path(cfg.seed_tasks_path) if cfg.seed_tasks_path else default_seed_tasks_path()
    seeds = load_seed_tasks(path)
    if cfg.num_prompt_instructions > len(seeds):
        raise ConfigError(f"--num_prompt_instructions ({cfg.num_prompt_instructions}) is more than the {len(seeds)} "
                          f"seed tasks in {path}; lower it or add seed tasks")
    return path, seeds


def make_pipeline(cfg: GenerateConfig, seeds: list, template: str, conditions: Conditions = Conditions(), *,
                  chat: ChatFormat | None = None, filters: Sequence = (), turn_teacher: str | None = None,
                  renumbers: bool = False) -> Pipeline:
    """The run's pipeline. `chat`: the model's chat format (magpie); `filters`: the judge's, which
    a conversation is not grown for a task that fails; `turn_teacher`: who writes the turns;
    `renumbers`: the teacher's numbering drifts (Teacher.renumbers)."""
    pipeline: Pipeline
    if cfg.pipeline == "magpie":
        return MagpiePipeline(chat, cfg.decoding(), request_batch_size=cfg.request_batch_size, seed=cfg.seed)
    if cfg.pipeline == "self_instruct":  # Wang et al.'s shape: 8 instructions shown, 2 of them grown
        pipeline = SelfInstructPipeline(seeds, Templates.load(template), cfg.decoding(),
                                        request_batch_size=cfg.request_batch_size, seed=cfg.seed)
    else:
        pipeline = AlpacaPipeline(seeds, template, num_prompt_instructions=cfg.num_prompt_instructions,
                                  num_machine_instructions=cfg.num_machine_instructions, num_tasks=cfg.num_tasks,
                                  request_batch_size=cfg.request_batch_size, seed=cfg.seed,
                                  # chat models drift in their numbering; a completion continues it exactly
                                  renumber=cfg.api == "chat" or renumbers, conditions=conditions)
    if cfg.turns > 1:
        return ConversationPipeline(pipeline, cfg.turns, TurnTemplates.load(), cfg.decoding(),
                                    filters=filters or DEFAULT_FILTERS, known=[s.instruction for s in seeds],
                                    threshold=cfg.similarity_threshold, target=cfg.num_instructions_to_generate,
                                    teacher=turn_teacher)
    return pipeline


def chat_format(cfg: GenerateConfig, teacher: Teacher | None) -> tuple[ChatFormat, str]:
    """Magpie's chat format and the template's text: --chat_template's file, else the embedded
    model's own (its GGUF metadata). A server's template is rendered with no BOS text: the server
    adds BOS as it tokenizes the prompt."""
    own = teacher.chat_template() if hasattr(teacher, "chat_template") else None
    bos, eos = own[1:] if own else ("", "")
    if cfg.chat_template:
        path = Path(cfg.chat_template)
        try:
            text = path.read_text(encoding="utf-8")
        except (OSError, UnicodeDecodeError) as exc:
            raise ConfigError(f"--chat_template: {path} cannot be read ({getattr(exc, 'strerror', None) or exc})") from None
        where = f"--chat_template: {path}"
    elif own:
        text, where = own[0], f"{teacher.model_id}'s chat template"
    else:
        raise ConfigError("--pipeline magpie with a server needs --chat_template FILE: the model's chat template "
                          "(the chat_template of its tokenizer_config.json, as a Jinja file)")
    try:
        return ChatFormat.from_template(text, bos, eos), text
    except ConfigError as exc:
        raise ConfigError(f"{where}: {exc}") from None


def magpie_teacher(cfg: GenerateConfig) -> Teacher | None:
    """The embedded model for a Magpie run, reading prompts in its own chat format; None when the
    run's teacher is a server."""
    if cfg.pipeline != "magpie" or planned_teacher(cfg)[0] != "local":
        return None
    from .teachers.local import LocalTeacher
    return LocalTeacher(model_path=cfg.local_model_path, formatted=True)


def turn_teachers(cfg: GenerateConfig, teacher: Teacher) -> dict[str, Teacher]:
    """The teacher that writes a conversation's turns, by name, when it is not the run's own: the
    embedded model continues lists raw, and answers turns through its chat template."""
    from .teachers.local import ChatView, LocalChatTeacher, LocalTeacher
    raw = isinstance(teacher, LocalTeacher) and not isinstance(teacher, LocalChatTeacher) and not teacher.formatted
    return {"chat": ChatView(teacher)} if cfg.turns > 1 and raw else {}


def condition_sha256(cfg: GenerateConfig) -> dict:
    """Fingerprints of the persona and topic files, which shape the data (run.json, resume check)."""
    return {f"{name}_sha256": sha256_of(Path(path).read_bytes()) if path else None
            for name, path in (("personas", cfg.personas), ("topics", cfg.topics))}


def load_template_for(cfg: GenerateConfig, alpaca_default: str) -> str:
    """The instruction prompt's template, whose hash run.json keeps (--prompt_path, else the pipeline's own;
    Magpie sends none)."""
    if cfg.pipeline == "magpie":
        return ""
    if cfg.pipeline == "self_instruct":
        return load_list_template("self_instruct_instructions.txt", cfg.prompt_path)
    return load_list_template(alpaca_default, cfg.prompt_path)


# --- entry points ---

async def agenerate(cfg: GenerateConfig, *, teacher: Teacher | None = None) -> Outcome:
    """Run (or resume) generation into cfg.output_dir. Nothing is written until every input,
    flag and the teacher's endpoint have been checked and the output directory is locked."""
    cfg.validate()
    seeds_path, seeds = load_seeds_for(cfg)
    conditions = Conditions.load(cfg.personas, cfg.topics)
    if cfg.executor == "ray" and teacher is None:
        share_env("OPENAI_API_KEY", cfg.api_key)  # before Ray starts: a local instance's workers inherit it
        with open_executor("ray", cfg.ray_address):  # joined here, on the main thread
            return await _agenerate(cfg, seeds_path, seeds, conditions, None, on_ray=True)
    return await _agenerate(cfg, seeds_path, seeds, conditions, teacher)


def ray_teacher(cfg: GenerateConfig) -> Teacher:
    """The run's teacher with its requests sent from Ray workers (Ray joined already)."""
    from .teachers.ray_teacher import on_ray
    return on_ray(cfg)


async def _agenerate(cfg: GenerateConfig, seeds_path: Path, seeds: list, conditions: Conditions,
                     teacher: Teacher | None, on_ray: bool = False) -> Outcome:
    out = Path(cfg.output_dir)
    own = None if teacher is not None else ray_teacher(cfg) if on_ray else magpie_teacher(cfg)
    async with Run(cfg, teacher=teacher or own, stages=[out, out / "score"]) as run:
        if own is not None:
            run.adopt(own)
        cfg = cfg.resolved(run.teacher.default_options)
        run.options = cfg
        template = load_template_for(cfg, run.teacher.default_template)
        chat, chat_text = chat_format(cfg, run.teacher) if cfg.pipeline == "magpie" else (None, None)
        others = turn_teachers(cfg, run.teacher)
        config = run.config(seed_tasks_path=str(seeds_path), seed_tasks_sha256=sha256_of(seeds_path.read_bytes()),
                            template_sha256=sha256_of(template) if template else None, **condition_sha256(cfg),
                            turn_templates_sha256=TurnTemplates.load().sha256() if cfg.turns > 1 else None,
                            chat_template_sha256=sha256_of(chat_text) if chat_text else None)
        await run.check()
        with run.open(out, config, SHAPING) as pool:
            judge = judge_of([s.instruction for s in seeds] + [r["instruction"] for r in pool.records], cfg)
            pipeline = make_pipeline(cfg, seeds, template, conditions, chat=chat, filters=judge.filters,
                                     turn_teacher=next(iter(others), None), renumbers=getattr(run.teacher, "renumbers", False))
            outcome = await run.engine(pool, pipeline, judge, decoding=cfg.decoding(), others=others,
                                       target=cfg.num_instructions_to_generate, max_stall_units=cfg.max_stall_rounds)
        if cfg.judge:
            from .score import judge_run
            await judge_run(run, out)
        return outcome


def generate(output_dir: str = "out", *, teacher: Teacher | None = None, **options) -> Outcome:
    """Library entry point: `generate("out", num_instructions_to_generate=50, base_url=...)`."""
    return asyncio.run(agenerate(GenerateConfig(output_dir=output_dir, **options), teacher=teacher))


def dry_run(cfg: GenerateConfig) -> tuple[str, str]:
    """The first prompt of the run, and what the whole run may take (requests, tokens and the
    most it can cost). Calls nothing (a Magpie run on the embedded model loads it, to read its
    chat template)."""
    cfg.validate()
    _, seeds = load_seeds_for(cfg)
    kind, model = planned_teacher(cfg)
    teacher_class: type[Teacher] = Teacher
    if kind == "local":
        from .teachers.local import LocalTeacher
        teacher_class = LocalTeacher
    cfg = cfg.resolved(teacher_class.default_options)
    template = load_template_for(cfg, teacher_class.default_template)
    chat = None
    if cfg.pipeline == "magpie":
        teacher = magpie_teacher(cfg)
        try:
            chat, _ = chat_format(cfg, teacher)
        finally:
            if teacher is not None:
                asyncio.run(teacher.aclose())
    pipeline = make_pipeline(cfg, seeds, template, Conditions.load(cfg.personas, cfg.topics), chat=chat)
    unit = pipeline.unit(0, types.SimpleNamespace(records_before=lambda unit: []))
    prompt = (pipeline.prompts(unit) if hasattr(pipeline, "prompts") else unit.prompts)[0]
    price = price_of(model, cfg, local=kind == "local")
    return prompt, estimate(cfg, prompt, price, find_batch_price(model, price, cfg))


def estimate(cfg: GenerateConfig, prompt: str, price, batch_price=None) -> str:
    """What a run to the target may take, for --dry_run. The keep rate is unknown before the run:
    the estimate assumes half of each reply's new tasks are kept (strong teachers keep more, a
    135M model far less), and the hard bounds are the budget flags."""
    new_tasks, calls, asks = cfg.num_tasks - cfg.num_prompt_instructions, 1, []
    if cfg.pipeline == "self_instruct":  # a list, then a classification and an instance call per task
        new_tasks = NUM_TASKS - 1 - PROMPT_INSTRUCTIONS
        calls, asks = 1 + 2 * new_tasks, ["then 2 requests for each task"]
    if cfg.pipeline == "magpie":  # one instruction a request, then its answer
        new_tasks, calls, asks = 1, 2, ["the model writes it, then answers it: 2 requests"]
    if cfg.turns > 1:  # each new task grown: a user's and an assistant's turn a turn
        calls += 2 * (cfg.turns - 1) * new_tasks
        asks.append(f"then {2 * (cfg.turns - 1)} requests to grow each task into {cfg.turns} turns")
    requests = math.ceil(cfg.num_instructions_to_generate / (new_tasks / 2)) * calls
    if cfg.max_requests is not None:
        requests = min(requests, cfg.max_requests)
    per_request = prompt_bound(prompt) + cfg.max_tokens
    if cfg.turns > 1:  # a turn's prompt shows the transcript: every turn before it, each at most max_tokens
        templates = TurnTemplates.load()
        per_request = max(per_request, prompt_bound(templates.user + templates.assistant)
                          + 2 * cfg.turns * cfg.max_tokens)
    tokens = requests * per_request
    if cfg.max_total_tokens is not None:
        tokens = min(tokens, cfg.max_total_tokens)
    what = "each request asks for one" if cfg.pipeline == "magpie" else f"each request asks for {new_tasks} new tasks"
    lines = [f"dry run: {cfg.num_instructions_to_generate} instructions; {what}" + (f" ({'; '.join(asks)})" if asks else ""),
             f"requests: about {requests} (if half of the new tasks are kept)",
             f"tokens: at most {per_request} a request, at most {tokens} for those requests"]
    if price is not None:
        bound = requests * price.cost(per_request - cfg.max_tokens, cfg.max_tokens)
        if cfg.max_cost is not None:
            bound = min(bound, cfg.max_cost)
        lines.append(f"cost: at most {format_cost(bound)} for those requests "
                     f"(${price.prompt:g} / ${price.completion:g} per million prompt / completion tokens)")
        if batch_price is not None and batch_price != price:
            batched = requests * batch_price.cost(per_request - cfg.max_tokens, cfg.max_tokens)
            lines.append(f"{'with' if cfg.batch else 'through'} --batch: at most {format_cost(min(batched, bound))}, "
                         f"{format_cost(bound - min(batched, bound))} less (answers within 24 hours)")
    else:
        lines.append("cost: unknown price for this model (pass --price_prompt and --price_completion)")
    return "\n".join(lines)


def run_command(cfg: GenerateConfig) -> None:
    if cfg.dry_run:
        prompt, cost = dry_run(cfg)
        print(prompt)  # stdout holds the prompt alone, to pipe or diff
        print(cost, file=sys.stderr)
        return
    outcome = execute(agenerate(cfg))
    finish(f"{outcome.kept} instructions", outcome)
    if not cfg.no_report:
        from .report import write_report_after_run
        write_report_after_run(cfg.output_dir)


main = command(GenerateConfig, run_command, """Grow a pool of instruction-following examples from seed tasks with a teacher LLM.

Alpaca's loop (or Wang et al.'s, --pipeline self_instruct): seed tasks sampled into a numbered
prompt, the teacher continues the list, replies parsed, filtered, deduplicated by ROUGE-L
against every known instruction, until exactly --num_instructions_to_generate are kept.
Rerun the same command to resume: nothing already paid for is asked again.
""")


def cli(argv: Sequence[str] | None = None) -> None:
    """Console entry point (one line and exit status 2 for every expected failure)."""
    cli_edge.run(main, argv, name="self_instruct.generate",
                 interrupted="interrupted; every finished round is saved, rerun the same command to resume")


class _CallableModule(types.ModuleType):
    """`self_instruct.generate(...)` stays the function even after this submodule, which shares
    its name, has been imported (importing it rebinds the package attribute to the module)."""

    def __call__(self, *args, **kwargs) -> Outcome:
        return generate(*args, **kwargs)


sys.modules[__name__].__class__ = _CallableModule

if __name__ == "__main__":
    cli()
