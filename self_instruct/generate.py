"""The self-instruct loop: seeds -> prompts -> teacher -> parse -> filters -> similarity -> pool.

This is the only module that wires the stages together; config.py holds the run's settings. Reference behaviour is Stanford
Alpaca's generate_instruction.py (prompt format, decoding defaults, parse rules, filters,
ROUGE-L > 0.7 against seeds and every kept instruction, regen.json); on top of it the run is
seeded, concurrent, resumable after any kill, and stops at exactly the requested count.

    python -m self_instruct.generate --num_instructions_to_generate 200 --output_dir out \\
        --base_url http://127.0.0.1:8000/v1 --model_name my-model
"""
from __future__ import annotations

import asyncio
import dataclasses
import difflib
import inspect
import os
import random
import re
import signal
import sys
import time
import types
from collections import Counter, deque
from dataclasses import dataclass, field
from pathlib import Path
from typing import Sequence

from tqdm import tqdm

from .config import GenerateConfig, check_resume, choose_teacher_kind, clear_outputs, make_teacher, run_config
from .errors import ConfigError, SelfInstructError
from .filters import DEFAULT_FILTERS, blacklist_word, first_rejection
from .parse import Rejection, parse_completion
from .pool import InstructionPool
from .prompts import encode_prompt, load_template
from .resources import default_seed_tasks_path
from .seeds import load_seed_tasks, seed_examples
from .similarity import RougeIndex
from .teachers.base import Teacher
from .types import Completion, Example

# Rounds outstanding at once: one being filtered here while the next is at the teacher.
PIPELINE_DEPTH = 2


class StallError(SelfInstructError):
    """Rounds in a row that kept nothing: the template or the model is wrong, not the luck."""


@dataclass
class Stats:
    """Counters of one run, kept across resumes in state.json."""

    rounds: int = 0
    requests: int = 0
    failed_requests: int = 0
    prompt_tokens: int = 0
    completion_tokens: int = 0
    parsed: int = 0
    kept: int = 0
    rejects: Counter = field(default_factory=Counter)
    faults: Counter = field(default_factory=Counter)

    @classmethod
    def from_state(cls, state: dict) -> "Stats":
        known = {f.name for f in dataclasses.fields(cls)}
        stats = cls(**{k: v for k, v in state.items() if k in known and k not in ("rejects", "faults")})
        stats.rejects = Counter(state.get("rejects", {}))
        stats.faults = Counter(state.get("faults", {}))
        return stats

    def to_state(self) -> dict:
        state = dataclasses.asdict(self)
        state["rejects"], state["faults"] = dict(self.rejects), dict(self.faults)
        return state

    @property
    def tokens(self) -> int:
        return self.prompt_tokens + self.completion_tokens

    def summary(self) -> str:
        rejects = ", ".join(f"{k} {v}" for k, v in self.rejects.most_common()) or "none"
        faults = ", ".join(f"{k} {v}" for k, v in self.faults.most_common()) or "none"
        rate = f"{self.kept / self.parsed:.0%}" if self.parsed else "n/a"
        return (f"kept {self.kept} of {self.parsed} parsed ({rate}) from {self.requests} requests "
                f"({self.failed_requests} failed); tokens {self.prompt_tokens} prompt + {self.completion_tokens} completion; "
                f"rejected: {rejects}; faults met: {faults}")


@dataclass
class GenerateResult:
    output_dir: Path
    kept: int
    stats: Stats
    stopped_by: str  # "target", "max_requests", "max_total_tokens"


# --- the loop ---

class Generator:
    """One run over an open pool. Rounds of `request_batch_size` prompts go to the teacher while
    the previous round is filtered, so the loop's own work hides behind the teacher's latency."""

    def __init__(self, cfg: GenerateConfig, teacher: Teacher, pool: InstructionPool, seeds: list, template: str, progress: bool = True):
        self.cfg, self.teacher, self.pool, self.template = cfg, teacher, pool, template
        cfg.apply_defaults(teacher.default_options)
        self.seeds = seeds
        self.decoding = cfg.decoding()
        self.stats = Stats.from_state(pool.state)
        # The JSONL files are the truth: a kill between a round's append and its state.json
        # leaves the counters one round behind them.
        self.stats.kept = len(pool)
        self.stats.rejects = Counter(r.get("reason", "unknown") for r in pool.rejected)
        self.stats.parsed = max(self.stats.parsed, len(pool) + sum("instruction" in r for r in pool.rejected))
        self.index = RougeIndex([s.instruction for s in seeds], threshold=cfg.similarity_threshold)
        self.seen = {normalize(s.instruction) for s in seeds}
        for record in pool.records:
            self.index.add(record["instruction"])
            self.seen.add(normalize(record["instruction"]))
        self.bar = tqdm(total=cfg.num_instructions_to_generate, initial=min(len(pool), cfg.num_instructions_to_generate),
                        desc="kept", unit="inst", file=sys.stderr, disable=not progress, dynamic_ncols=True)
        self.in_flight = 0
        # Requests sent, counted at launch: a round that came back but is not yet counted in
        # stats (the pipeline launches before it judges) must still count against --max_requests.
        self.sent = self.stats.requests
        # Rejection reasons since the last round that kept something, for the stall message.
        self.stall_reasons: Counter = Counter()
        self.last_error = ""

    @property
    def target(self) -> int:
        return self.cfg.num_instructions_to_generate

    def prompts_for(self, round_idx: int) -> tuple[list[str], list[int]]:
        """Prompts of one round, drawn from an rng seeded by (seed, round): a resumed run draws
        the same prompts an uninterrupted one would have."""
        rng = random.Random(f"{self.cfg.seed}:{round_idx}")
        drawn = [draw_prompt(rng, self.seeds, self.pool.records, self.cfg, self.template) for _ in range(self.round_size())]
        return [prompt for prompt, _ in drawn], [size for _, size in drawn]

    def round_size(self) -> int:
        size = self.cfg.request_batch_size
        if self.cfg.max_requests is not None:
            size = min(size, self.cfg.max_requests - self.sent)
        return max(size, 0)

    def budget_left(self) -> str | None:
        """Why no further round may start, or None."""
        if self.cfg.max_requests is not None and self.sent >= self.cfg.max_requests:
            return "max_requests"
        if self.cfg.max_total_tokens is not None and self.stats.tokens >= self.cfg.max_total_tokens:
            return "max_total_tokens"
        return None

    def launch(self, round_idx: int) -> asyncio.Task | None:
        if self.budget_left():
            return None
        prompts, sizes = self.prompts_for(round_idx)
        self.in_flight += len(prompts)
        self.sent += len(prompts)

        async def ask() -> tuple[list[Completion], list[int], int]:
            return await self.teacher.complete(prompts, self.decoding), sizes, round_idx
        return asyncio.create_task(ask())

    async def run(self) -> str:
        stalled = 0
        pending: deque[asyncio.Task] = deque()
        next_round = self.pool.next_round
        try:
            while len(self.pool) < self.target:
                next_round = self.fill(pending, next_round)
                if not pending:
                    return self.budget_left() or "max_requests"
                completions, sizes, done_round = await pending.popleft()
                self.in_flight -= len(completions)
                next_round = self.fill(pending, next_round)
                await asyncio.sleep(0)  # let the new round's requests go out before the CPU work below
                kept, rejected = self.judge_round(completions, sizes, done_round)
                # fsyncs take milliseconds each; in a thread they no longer hold up the replies
                await finish_despite_cancel(asyncio.to_thread(self.persist, kept, rejected, done_round))
                stalled = 0 if kept else stalled + 1
                if stalled >= self.cfg.max_stall_rounds:
                    raise StallError(self.stall_message())
            return "target"
        finally:
            for task in pending:
                task.cancel()
            await asyncio.gather(*pending, return_exceptions=True)
            self.bar.close()

    def fill(self, pending: deque, next_round: int) -> int:
        """Keep up to PIPELINE_DEPTH rounds outstanding, so the teacher never waits on our
        filtering, but stop asking once the requests in flight should already reach the target
        at the keep rate seen so far (tokens past the target are money thrown away)."""
        remaining = self.target - len(self.pool)
        rate = self.stats.kept / self.stats.requests if self.stats.requests else None
        while len(pending) < PIPELINE_DEPTH and remaining > 0:
            if pending and (rate is None or self.in_flight * rate >= remaining):
                break
            task = self.launch(next_round)
            if task is None:
                break
            pending.append(task)
            next_round += 1
        return next_round

    def process(self, completions: Sequence[Completion], sizes: Sequence[int], round_idx: int) -> int:
        """Turn one round's replies into kept and rejected records and make them durable."""
        kept, rejected = self.judge_round(completions, sizes, round_idx)
        self.persist(kept, rejected, round_idx)
        return len(kept)

    def judge_round(self, completions: Sequence[Completion], sizes: Sequence[int], round_idx: int) -> tuple[list[dict], list[dict]]:
        kept, rejected = [], []
        meta = {"round": round_idx, "model": self.teacher.model_id}
        for completion, size in zip(completions, sizes):
            self.count_request(completion)
            if not completion.ok:
                rejected.append(reject_record(Rejection("request_failed", detail=completion.error or ""), meta))
                continue
            examples, rejections = parse_completion(completion.text, completion.finish_reason, size)
            if not examples and not rejections:
                rejections = [Rejection("empty_reply", raw=completion.text[:500])]
            self.stats.parsed += len(examples)
            rejected += [reject_record(r, meta) for r in rejections]
            for example in examples:
                if len(self.pool) + len(kept) >= self.target:
                    break  # exactly the target: the rest of the round is left unjudged
                verdict = self.judge(example)
                if isinstance(verdict, Rejection):
                    rejected.append(reject_record(verdict, meta))
                else:
                    verdict["metadata"] = dict(meta)
                    kept.append(verdict)
        return kept, rejected

    def persist(self, kept: list[dict], rejected: list[dict], round_idx: int) -> None:
        self.pool.append(kept, rejected)
        self.stats.rounds = max(self.stats.rounds, round_idx + 1)
        self.stats.kept = len(self.pool)
        for r in rejected:
            self.stats.rejects[r["reason"]] += 1
        if kept:
            self.stall_reasons.clear()
        else:
            self.stall_reasons.update(r["reason"] for r in rejected)
        self.last_error = next((r["detail"] for r in rejected if r["reason"] == "request_failed"), self.last_error)
        self.pool.save_state(self.stats.to_state())
        self.bar.update(len(kept))
        self.bar.set_postfix_str(self.postfix(), refresh=True)

    def count_request(self, completion: Completion) -> None:
        self.stats.requests += 1
        self.stats.failed_requests += 0 if completion.ok else 1
        self.stats.prompt_tokens += completion.prompt_tokens
        self.stats.completion_tokens += completion.completion_tokens
        self.stats.faults.update(completion.faults)

    def judge(self, example: Example) -> dict | Rejection:
        """Filters, then exact duplicates, then ROUGE-L against seeds and every kept instruction."""
        reason = first_rejection(example, DEFAULT_FILTERS)
        if reason:
            detail = blacklist_word(example.instruction) or "" if reason == "blacklist" else ""
            return Rejection(reason, example, detail=detail)
        key = normalize(example.instruction)
        if key in self.seen:
            return Rejection("duplicate", example)
        match = self.index.check(example.instruction, k=10, with_mean=True)
        if match.similar:
            return Rejection("similar", example, detail=f"{match.max_score:.4f} vs {match.nearest!r}")
        self.index.add(example.instruction)
        self.seen.add(key)
        return {
            "instruction": example.instruction, "input": example.input, "output": example.output,
            "most_similar_instructions": dict(match.most_similar), "avg_similarity_score": match.mean,
        }

    def postfix(self) -> str:
        rejects = " ".join(f"{k}={v}" for k, v in self.stats.rejects.most_common(4))
        return f"rej {rejects or 0} | tok {self.stats.tokens / 1000:.1f}k"

    def stall_message(self) -> str:
        rounds = f"stopped: {self.cfg.max_stall_rounds} rounds in a row kept no instruction"
        if set(self.stall_reasons) == {"request_failed"}:
            return (f"{rounds}: every request failed (last: {self.last_error}); the teacher is down, overloaded or "
                    f"refusing these requests: check it, then rerun the same command to resume")
        seen = ", ".join(f"{k} {v}" for k, v in self.stall_reasons.most_common(3)) or "no tasks in the replies"
        if self.stall_reasons and self.stall_reasons.most_common(1)[0][0] in ("similar", "duplicate"):
            fix = "the teacher keeps repeating known tasks: raise --temperature, add seed tasks or use another --model_name"
        else:
            fix = ("the replies do not follow the numbered format: check the template (--prompt_path, see one prompt "
                   "with --dry_run) and the model (--model_name)")
        return f"{rounds} (rejected: {seen}); {fix}, then rerun the same command to resume"


def draw_prompt(rng: random.Random, seeds: Sequence, records: Sequence[dict], cfg: GenerateConfig, template: str) -> tuple[str, int]:
    """One prompt: seed tasks plus up to --num_machine_instructions kept records, shuffled.
    Returns the prompt and how many example tasks it shows."""
    n, m = cfg.num_prompt_instructions, min(cfg.num_machine_instructions, len(records))
    examples = seed_examples(rng.sample(seeds, n - m), rng)
    examples += [Example(r["instruction"], r["input"], r["output"]) for r in rng.sample(records, m)]
    rng.shuffle(examples)
    return encode_prompt(examples, template, cfg.num_tasks), len(examples)


def load_seeds_for(cfg: GenerateConfig) -> tuple[Path, list]:
    """The seed tasks of a run, checked against --num_prompt_instructions."""
    path = Path(cfg.seed_tasks_path) if cfg.seed_tasks_path else default_seed_tasks_path()
    seeds = load_seed_tasks(path)
    if cfg.num_prompt_instructions > len(seeds):
        raise ConfigError(f"--num_prompt_instructions ({cfg.num_prompt_instructions}) is more than the {len(seeds)} seed tasks in {path}; lower it or add seed tasks")
    return path, seeds


def normalize(instruction: str) -> str:
    """Key for exact duplicates, including texts ROUGE-L cannot see (no ASCII letters).

    Example: normalize("  Name THREE  colors. ") -> "name three colors."
    """
    return re.sub(r"\s+", " ", instruction).strip().casefold()


async def finish_despite_cancel(work):
    """Await work to its end even when the task is cancelled meanwhile (Ctrl-C, SIGTERM), then
    pass the cancellation on: a round being written in a thread must be on disk, and counted,
    before the run's last regen.json and state.json are written from memory."""
    future = asyncio.ensure_future(work)
    cancelled = False
    while True:
        try:
            result = await asyncio.shield(future)
            break
        except asyncio.CancelledError:
            if future.cancelled():
                raise
            cancelled = True
    if cancelled:
        raise asyncio.CancelledError
    return result


def reject_record(rejection: Rejection, meta: dict) -> dict:
    ex = rejection.example
    record = {"reason": rejection.reason, "detail": rejection.detail}
    if ex is not None:
        record.update(instruction=ex.instruction, input=ex.input, output=ex.output)
    if rejection.raw:
        record["raw"] = rejection.raw
    record["metadata"] = dict(meta)
    return record


# --- entry points ---

async def agenerate(cfg: GenerateConfig, *, teacher: Teacher | None = None, api_key: str | None = None, progress: bool = True) -> GenerateResult:
    """Run (or resume) generation into cfg.output_dir. Nothing is written until every input,
    flag and the teacher's endpoint have been checked."""
    cfg.validate()
    api_key = api_key or os.environ.get("OPENAI_API_KEY")
    cfg.base_url = cfg.base_url or os.environ.get("OPENAI_BASE_URL")
    seeds_path, seeds = load_seeds_for(cfg)
    own_teacher = teacher is None
    teacher = teacher or make_teacher(cfg, api_key)
    try:
        cfg.apply_defaults(teacher.default_options)
        cfg.validate()
        template = load_template(cfg.prompt_path, teacher.default_template)
        output_dir = Path(cfg.output_dir)
        if output_dir.exists() and not output_dir.is_dir():
            raise ConfigError(f"--output_dir {output_dir} is a file, not a directory; pass another --output_dir")
        config = run_config(cfg, teacher, seeds_path, template)
        check_resume(output_dir, config, cfg.overwrite)
        if hasattr(teacher, "check"):
            await teacher.check()
        if cfg.overwrite:
            clear_outputs(output_dir)
        pool = InstructionPool.open(output_dir)
        for note in pool.repairs:
            print(f"self_instruct: {note}", file=sys.stderr)
        pool.write_run(config)
        generator = Generator(cfg, teacher, pool, seeds, template, progress)
        try:
            stopped_by = await generator.run()
        finally:
            pool.write_regen()
            pool.save_state(generator.stats.to_state())
        return GenerateResult(output_dir, len(pool), generator.stats, stopped_by)
    finally:
        if own_teacher:
            await teacher.aclose()


def generate(output_dir: str = "out", *, teacher: Teacher | None = None, api_key: str | None = None, progress: bool = True, **options) -> GenerateResult:
    """Library entry point: `generate("out", num_instructions_to_generate=50, base_url=...)`."""
    return asyncio.run(agenerate(GenerateConfig(output_dir=output_dir, **options), teacher=teacher, api_key=api_key, progress=progress))


def dry_run(cfg: GenerateConfig) -> str:
    """One fully rendered prompt (what the first request of the run would send)."""
    cfg.validate()
    _, seeds = load_seeds_for(cfg)
    default_template, options = Teacher.default_template, Teacher.default_options
    try:  # the teacher a real run would pick, without loading it
        kind = cfg.teacher or choose_teacher_kind(cfg.base_url or os.environ.get("OPENAI_BASE_URL"), os.environ.get("OPENAI_API_KEY"))
    except ConfigError:
        kind = "openai"
    if kind == "local":
        from .teachers.local import LocalTeacher
        default_template, options = LocalTeacher.default_template, LocalTeacher.default_options
    cfg.apply_defaults(options)
    cfg.validate()
    template = load_template(cfg.prompt_path, default_template)
    return draw_prompt(random.Random(f"{cfg.seed}:0"), seeds, [], cfg, template)[0]


def main(
    output_dir: str = "out",
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
    max_requests: int | None = None,
    max_total_tokens: int | None = None,
    max_stall_rounds: int = 10,
    request_timeout: float = 120.0,
    max_attempts: int = 6,
    retry_backoff: float = 1.0,
    overwrite: bool = False,
    quiet: bool = False,
):
    """Grow a pool of instruction-following examples from seed tasks with a teacher LLM.

    Writes generated.jsonl, rejected.jsonl, run.json, state.json and regen.json to output_dir;
    rerun the same command to resume. Flags named as in Alpaca's generate_instruction.py, plus:
    base_url/api_key (or OPENAI_BASE_URL/OPENAI_API_KEY) for any OpenAI-compatible server,
    api completions|chat, teacher openai|local, num_machine_instructions (grown tasks mixed into
    each prompt), num_tasks and max_tokens (list length and reply budget; default the teacher's
    preference, else Alpaca's 20 and 3072), budgets max_requests and
    max_total_tokens, dry_run (print one prompt, call nothing), overwrite (start output_dir afresh).
    A failing request is retried up to max_attempts times, waiting retry_backoff seconds and
    doubling (up to 30 s) unless the server sends Retry-After; max_stall_rounds rounds in a row
    that keep nothing stop the run with the likely cause.
    """
    options = {k: v for k, v in locals().items() if k not in ("api_key", "dry_run", "quiet")}
    # fire turns "--model_name 7" into an int; names, paths and URLs are text whatever they look like.
    for name in ("output_dir", "seed_tasks_path", "model_name", "base_url", "prompt_path", "local_model_path", "api", "teacher"):
        if options[name] is not None and not isinstance(options[name], str):
            options[name] = str(options[name])
    api_key = None if api_key is None else str(api_key)
    cfg = GenerateConfig(**options)
    if dry_run:
        print(_dry_run(cfg))
        return None
    result = asyncio.run(_run_cancellable(cfg, api_key, progress=not quiet))
    print(f"self_instruct: {result.kept} instructions in {result.output_dir} "
          f"(stopped by {result.stopped_by}); {result.stats.summary()}", file=sys.stderr)
    if result.stopped_by != "target":
        print(f"self_instruct: budget {result.stopped_by} reached; raise it and rerun to resume", file=sys.stderr)
    return None


_dry_run = dry_run


async def _run_cancellable(cfg: GenerateConfig, api_key: str | None, progress: bool) -> GenerateResult:
    # SIGTERM stops like Ctrl-C: the round in hand is already on disk, regen.json gets written.
    task = asyncio.current_task()
    loop = asyncio.get_running_loop()
    try:
        loop.add_signal_handler(signal.SIGTERM, task.cancel)
    except (NotImplementedError, RuntimeError):
        pass
    return await agenerate(cfg, api_key=api_key, progress=progress)


def check_flags(argv: Sequence[str]) -> None:
    """Refuse unknown flags and stray words before fire sees them: fire calls main with the
    flags it knows and complains about the rest only afterwards, so a typo such as
    --num_instruction 500 would first run a whole generation with the default count."""
    params = inspect.signature(main).parameters
    switches = {name for name, p in params.items() if isinstance(p.default, bool)}
    args, i = list(argv), 0
    while i < len(args):
        arg, i = args[i], i + 1
        if arg in ("--", "-h", "--help"):  # fire's own flags follow "--"
            return
        if not arg.startswith("-"):
            raise ConfigError(f"unexpected argument in position {i}: every option is a flag, --name value (see --help)")
        name, has_value, _ = arg.lstrip("-").partition("=")
        name = name.replace("-", "_")
        if name in switches or (name.startswith("no") and name[2:] in switches):
            # fire would take any word after a switch as its value (--quiet 500 sets quiet="500")
            if not has_value and i < len(args) and not args[i].startswith("-"):
                if args[i].lower() not in ("true", "false"):
                    raise ConfigError(f"unexpected argument in position {i + 1}: --{name} is a switch and takes no value")
                i += 1
            continue
        if name not in params:
            close = [p for p in params if p.startswith(name)] or difflib.get_close_matches(name, list(params), n=1)
            raise ConfigError(f"unknown flag --{name}; " + (f"did you mean --{close[0]}?" if close else "see --help for the flags"))
        if not has_value:
            i += 1  # its value, whatever it looks like (-5 included)


def cli(argv: Sequence[str] | None = None) -> None:
    """Console entry point: library errors become one line on stderr and exit status 2."""
    import fire

    started = time.monotonic()
    try:
        check_flags(sys.argv[1:] if argv is None else argv)
        fire.Fire(main, command=argv, name="self_instruct.generate")
    except StallError as exc:
        print(f"self_instruct: {exc}", file=sys.stderr)
        sys.exit(1)
    except SelfInstructError as exc:
        print(f"self_instruct: error: {exc}", file=sys.stderr)
        sys.exit(2)
    except (KeyboardInterrupt, asyncio.CancelledError):
        print(f"self_instruct: interrupted after {time.monotonic() - started:.1f}s; every finished round is saved, "
              f"rerun the same command to resume", file=sys.stderr)
        sys.exit(130)


class _CallableModule(types.ModuleType):
    """`self_instruct.generate(...)` stays the function even after this submodule, which shares
    its name, has been imported (importing it rebinds the package attribute to the module)."""

    def __call__(self, *args, **kwargs) -> GenerateResult:
        return generate(*args, **kwargs)


sys.modules[__name__].__class__ = _CallableModule

if __name__ == "__main__":
    cli()
