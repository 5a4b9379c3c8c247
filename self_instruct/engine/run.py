"""The one setup every command runs through, from its options to its last line on stderr.

    async with Run(cfg, stages=[out]) as run:            # key, address, teacher, price checked
        await run.check()                                 # the teacher answers, before any write
        with run.open(out, run.config(), SHAPING) as pool:    # lock, resume check, run.json
            outcome = await run.engine(pool, pipeline, judge, decoding=cfg.decoding(), target=100)
    finish("100 instructions", outcome)                   # the summary and the budget advice

What each step does for every command alike:
- the API key comes from the options or $OPENAI_API_KEY and is registered for redaction before
  anything can print it; the address from the options or $OPENAI_BASE_URL;
- the teacher is made from the options (or given, by a library caller or a test) and closed once;
- a --max_cost without a known price is refused before anything is sent;
- run.json records the settings (never the key, passwords in URLs masked) and the run's id;
- `engine` runs the pipeline with the ledger, judge and budget, and on the way out, however it
  ends (target, budget, stall, SIGTERM, a crash), writes regen.json and state.json and drops the
  cached replies of units now in the pool;
- a run in several stages (evolve's rounds, evaluate's systems and grading, generate's --judge)
  shares one budget: each stage gets the caps minus what the other stages' ledgers record, so
  --max_requests holds across stages, kills and resumes alike;
- `execute` runs the whole command so that SIGTERM stops it as Ctrl-C does.
"""
from __future__ import annotations

import asyncio
import os
import signal
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Coroutine, Sequence

from ..errors import ConfigError
from ..io.secrets import redact, redact_record, register_secret
from ..options import recorded
from ..teachers.base import Teacher
from ..teachers.batch import BatchClient
from ..teachers.choose import make_teacher, planned_teacher
from ..types import Completion, Decoding
from .batches import BATCHES, Batches, open_batches
from .judge import Judge
from .ledger import Budget, Ledger, Spend, read_spend
from .pool import LEDGER, OUTPUTS, InstructionPool
from .prices import Price, find_batch_price, price_of
from .progress import Stats


@dataclass
class Outcome:
    """How one engine run ended."""

    output_dir: Path
    stopped_by: str  # "target", "done", "max_requests", "max_total_tokens", "max_cost", "stopped"
    stats: Stats
    kept: int


class NoTeacher(Teacher):
    """For a run that asks nothing (documents' windows mode): the engine still names a model."""

    model_id = "none"

    async def complete(self, prompts: Sequence[str], decoding: Decoding) -> list[Completion]:
        raise AssertionError("this run asks no teacher")


BATCH_NEEDS_A_SERVER = ("--batch needs an OpenAI-compatible server that offers the Batch API (--base_url, or "
                        "OpenAI's with a key); run without --batch")


class Run:
    """One command's run: its options resolved, its teacher open, its stages sharing one budget."""

    def __init__(self, options: Any, *, teacher: Teacher | None = None, asks_teacher: bool = True,
                 follows_instructions: bool = False, stages: Sequence[str | Path] = ()):
        self.options = options
        self.given = teacher
        self.asks_teacher = asks_teacher
        self.follows_instructions = follows_instructions
        self.stages = [Path(s) for s in stages]
        self.teacher: Teacher = NoTeacher()
        self.price: Price | None = None
        self.api_key = getattr(options, "api_key", None) or os.environ.get("OPENAI_API_KEY")
        register_secret(self.api_key)
        self.base_url = getattr(options, "base_url", None) or os.environ.get("OPENAI_BASE_URL")
        self._opened: list[Teacher] = []
        self._overwritten = False

    async def __aenter__(self) -> "Run":
        if self.given is not None:
            self.teacher = self.given
        elif self.asks_teacher:
            if getattr(self.options, "batch", False) and planned_teacher(self.options)[0] == "local":
                raise ConfigError(BATCH_NEEDS_A_SERVER)  # before the model loads
            if planned_teacher(self.options)[0] == "local" and not getattr(self.options, "quiet", False):
                say("loading the embedded model; on a CPU a unit can take minutes, and the bar counts "
                    "the requests out and the tokens back meanwhile")
            self.teacher = self.open_teacher()
        try:
            self.price = self.price_of(self.teacher) if self.asks_teacher else None
            if getattr(self.options, "batch", False) and self.asks_teacher:
                self.batchable()  # before anything is written
        except BaseException:
            await self.__aexit__(None, None, None)
            raise
        return self

    async def __aexit__(self, *exc: Any) -> None:
        for teacher in reversed(self._opened):
            await teacher.aclose()
        self._opened.clear()

    # -- teachers and prices --------------------------------------------------------------

    def open_teacher(self, options: Any = None, *, base_url: str | None = None) -> Teacher:
        """A teacher of these options (default the run's), closed when the run ends."""
        return self.adopt(make_teacher(options or self.options, base_url=base_url or self.base_url,
                                       api_key=self.api_key, follows_instructions=self.follows_instructions))

    def adopt(self, teacher: Teacher) -> Teacher:
        """Close this teacher when the run ends (or on `release`)."""
        self._opened.append(teacher)
        return teacher

    async def release(self, teacher: Teacher) -> None:
        """Close a teacher the run opened, now (a local model's memory is wanted back)."""
        self._opened.remove(teacher)
        await teacher.aclose()

    def price_of(self, teacher: Teacher) -> Price | None:
        """The teacher's price (flags, then the table; the embedded model is free)."""
        return price_of(teacher.model_id, self.options, local=is_local(teacher))

    async def check(self, teacher: Teacher | None = None) -> None:
        """Let the teacher fail fast (a refused key, no server), before anything is written."""
        if self.asks_teacher or teacher is not None:
            await (teacher or self.teacher).check()

    # -- files ----------------------------------------------------------------------------

    def config(self, teacher: Teacher | None = None, **extra: Any) -> dict[str, Any]:
        """What run.json records: the settings (no key, no credential of a URL, whichever flag
        gave it), the teacher, the version."""
        from .. import __version__

        teacher = teacher or self.teacher
        config = recorded(self.options)
        if "base_url" in config:
            config["base_url"] = self.base_url
        if self.asks_teacher:
            config.update(teacher=getattr(self.options, "teacher", None) or ("local" if is_local(teacher) else "openai"),
                          teacher_info=teacher.describe(), model_name=teacher.model_id)
        return redact_record({**config, **extra, "self_instruct_version": __version__})

    def open(self, directory: str | Path, config: dict | None, shaping: Sequence[str] = (), *,
             restart: bool = False) -> InstructionPool:
        """Lock and read the pool in `directory` (refusing one made with other `shaping` settings),
        saying on stderr what was repaired.

        --overwrite starts the whole run afresh: the first pool opened clears itself, then every
        other stage of the run. restart: a stage built afresh on every run from a growing input (a
        run's --judge) drops its pool and reply cache but keeps its ledger: what was spent stays spent.
        """
        directory = Path(directory)
        overwrite = getattr(self.options, "overwrite", False) and not self._overwritten and not restart
        if restart:
            for name in OUTPUTS:
                if name not in (LEDGER, BATCHES):  # what was spent, and batches still to come, stay
                    (directory / name).unlink(missing_ok=True)
        pool = InstructionPool.open(directory, config=config, shaping=shaping, overwrite=overwrite)
        if overwrite:
            self._overwritten = True
            for stage in self.stages:
                if stage.resolve() != directory.resolve():
                    for name in OUTPUTS:
                        (stage / name).unlink(missing_ok=True)
        for note in pool.notes:
            say(note)
        return pool

    # -- the engine ------------------------------------------------------------------------

    def budget(self, directory: Path) -> Budget:
        """The caps for the stage in `directory`: the options' caps minus what every other stage
        of this run has spent, as their ledgers on disk say now."""
        o = self.options
        caps = Budget(getattr(o, "max_requests", None), getattr(o, "max_total_tokens", None), getattr(o, "max_cost", None))
        spent = Spend()
        for stage in self.stages:
            if stage.resolve() != Path(directory).resolve():
                other, _ = read_spend(stage / LEDGER)
                spent.requests += other.requests
                spent.prompt_tokens += other.prompt_tokens
                spent.completion_tokens += other.completion_tokens
                spent.reserved_tokens += other.reserved_tokens
                spent.cost += other.cost
        return caps.after(spent)

    async def engine(self, pool: InstructionPool, pipeline: Any, judge: Any, *, decoding: Decoding,
                     teacher: Teacher | None = None, price: Price | None = None, target: int | None = None,
                     total_units: int | None = None, max_stall_units: int | None = None,
                     budget: Budget | None = None, others: dict[str, Teacher] | None = None) -> Outcome:
        """Run `pipeline` on the engine into `pool`; whatever ends it, regen.json and state.json are
        written and the replies of recorded units leave the cache. `others`: teachers the pipeline
        may ask by name besides the main one (a rival, a rater), each priced as the main one is."""
        from .scheduler import Engine

        teacher = teacher or self.teacher
        ledger = Ledger(pool.dir, price if teacher is not self.teacher else self.price, pool.next_unit, pool.state)
        for note in ledger.notes:
            say(note)
        o = self.options
        budget = budget or self.budget(pool.dir)
        engine = Engine(teacher, pool, judge, ledger, decoding=decoding,
                        others={name: (t, self.price_of(t)) for name, t in (others or {}).items()},
                        budget=budget, batches=self.batches(pool, ledger, budget) if teacher is self.teacher else None,
                        max_concurrency=getattr(o, "max_concurrency", 8), target=target, total_units=total_units,
                        max_stall_units=max_stall_units, quiet=getattr(o, "quiet", False),
                        api=getattr(o, "api", ""))
        try:
            stopped_by = await engine.run(pipeline)
        finally:
            pool.write_regen()
            pool.save_state(engine.stats.to_state())
            ledger.forget_before(pool.next_unit)
        return Outcome(pool.dir, stopped_by, engine.stats, len(pool))


    def batches(self, pool: InstructionPool, ledger: Ledger, budget: Budget) -> Batches | None:
        """--batch: the provider batches of the stage in `pool`, at the batch price. A stage whose
        earlier run left a batch open follows it even without --batch (it is paid for)."""
        o = self.options
        wanted = bool(getattr(o, "batch", False))
        if not (wanted or open_batches(pool.dir)) or not self.asks_teacher:
            return None
        self.batchable()
        client = self.adopt(BatchClient(self.teacher.model_id, base_url=self.base_url, api_key=self.api_key,
                                        api=getattr(o, "api", "completions"),
                                        timeout=getattr(o, "request_timeout", 120.0)))
        return Batches(client, ledger, pool.dir, price=self.batch_price(), budget=budget, enabled=wanted,
                       size=getattr(o, "batch_size", 50000), poll=getattr(o, "batch_poll", 30.0),
                       poll_max=getattr(o, "batch_poll_max", 600.0), retry=getattr(o, "batch_retry", "requests"),
                       say=say)

    def batchable(self) -> None:
        """Refuse --batch for a teacher that is no OpenAI-compatible server."""
        if self.teacher.describe().get("backend") != "openai":
            raise ConfigError(BATCH_NEEDS_A_SERVER)

    def batch_price(self) -> Price | None:
        """What a request in a batch costs this run (--batch_discount, else the table's batch rate)."""
        return find_batch_price(self.teacher.model_id, self.price, self.options)


def is_local(teacher: Teacher) -> bool:
    return teacher.describe().get("backend") == "local"


def judge_of(known: Sequence[Any], options: Any, *, filters: Any = None, filter_set: Any = None) -> Judge:
    """The judge of a generating run: the pipeline's filter set (Alpaca's by default), the user's
    --filter, --decontaminate's benchmarks, and ROUGE-L at --similarity_threshold (None: the
    set's own) against `known` (seeds and the pool's records)."""
    from ..core.decontaminate import decontamination_filters
    from ..core.filters import ALPACA, load_filters

    extra = load_filters(getattr(options, "filter", None)) + tuple(decontamination_filters(getattr(options, "decontaminate", None)))
    return Judge(known, threshold=options.similarity_threshold, filter_set=filter_set or ALPACA, filters=filters,
                 extra_filters=extra)


# -- the command's process -------------------------------------------------------------------

def say(message: str) -> None:
    """A line on stderr, above a progress bar that is running rather than through it."""
    from tqdm import tqdm
    tqdm.write(f"self_instruct: {redact(message)}", file=sys.stderr)


def execute(work: Coroutine) -> Any:
    """asyncio.run(work), with SIGTERM stopping it as Ctrl-C does: the engine writes what came
    back in order, then regen.json and state.json, and the command exits with status 130."""
    async def main() -> Any:
        task = asyncio.current_task()
        try:
            asyncio.get_running_loop().add_signal_handler(signal.SIGTERM, task.cancel)
        except (NotImplementedError, RuntimeError):
            pass
        return await work
    return asyncio.run(main())


def finish(what: str, outcome: Outcome, where: str | Path | None = None) -> None:
    """The last lines of a command: what it made (in `where`, default the run's directory) and why
    it stopped, the summary, and what to do when a budget stopped it."""
    say(f"{what} in {where or outcome.output_dir} (stopped by {outcome.stopped_by}); {outcome.stats.summary()}")
    if outcome.stopped_by.startswith("max_"):
        say(f"budget {outcome.stopped_by} reached; raise it and rerun to resume")
