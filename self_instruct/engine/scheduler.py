"""The engine every pipeline runs on: scheduling, budgets, judging and recording.

A pipeline (pipelines/base.py) hands out numbered units and runs one when asked, calling `ask`,
the engine's teacher call, as often as it needs. The engine
- keeps `max_concurrency` requests in flight at all times, launching units as requests finish,
  not as rounds finish (units are the unit of bookkeeping and reproducibility, not a barrier);
- counts every request in `ledger.jsonl` before it goes out, refuses one that could pass
  `--max_requests`, `--max_total_tokens` (each request reserves its prompt's upper bound and
  `max_tokens`) or `--max_cost`, and answers a prompt it was asked before from `responses.jsonl`;
- judges a unit's candidates (filters, exact duplicates, ROUGE-L) and commits them to the pool
  strictly in unit order, exactly once per unit, so a run killed anywhere and resumed makes the
  same pool from the same replies; a unit the budget cut short is not recorded, and reruns free;
- stops at exactly `target` kept records, when the budget is spent, when the pipeline has no
  more units, after `max_stall_units` units in a row that kept nothing, or when a unit fails.

Judging and writing a unit run in a worker thread (the ROUGE-L kernel and the fsyncs release
the GIL), which returns what it decided; the event loop alone applies it to the pool in memory,
the counters and the progress bar.
"""
from __future__ import annotations

import asyncio
import contextvars
import sys
import time
from collections import Counter
from dataclasses import dataclass, replace
from functools import partial
from typing import Any, Mapping

from tqdm import tqdm

from ..io.secrets import redact
from ..pipelines.base import Pipeline, UnitResult
from ..teachers.base import Teacher
from ..types import Completion, Decoding, Rejection
from .batches import Batches
from .judge import Judge, reject_record
from .ledger import Budget, BudgetExhausted, Ledger, cache_key
from .pool import PROVENANCE, InstructionPool
from .prices import Price, prompt_bound
from .progress import StallError, Stats, stall_message

# The most units judged and written in one go (one write and one state.json for all of them).
COMMIT_GROUP = 64

# The request (ledger id, unit) the current task is making, for the teacher's retry hook.
_REQUEST: contextvars.ContextVar[tuple[int, int] | None] = contextvars.ContextVar("request", default=None)


@dataclass
class Commit:
    """What the commit thread decided about one unit, now on disk, for the event loop to apply."""

    unit: int
    kept: list[dict]
    rejected: list[dict]
    judged: int    # candidates judged (the pipeline's own verdicts on candidates included)
    unjudged: int  # candidates left unjudged at the target


class Engine:
    """Runs one pipeline over an open pool with one teacher, one judge and one ledger."""

    def __init__(self, teacher: Teacher, pool: InstructionPool, judge: Judge, ledger: Ledger, *,
                 others: Mapping[str, tuple[Teacher, Price | None]] | None = None,
                 decoding: Decoding, budget: Budget = Budget(), max_concurrency: int = 8,
                 target: int | None = None, max_stall_units: int | None = 10, quiet: bool = False,
                 total_units: int | None = None, api: str = "", batches: Batches | None = None):
        self.teacher, self.pool, self.judge, self.ledger = teacher, pool, judge, ledger
        self.batches = batches  # --batch: the main teacher's requests go in provider batches
        # teachers a pipeline may ask by name besides the main one (a rival, a rater), with their prices
        self.others = dict(others or {})
        self.decoding, self.budget, self.target = decoding, budget, target
        self.max_concurrency, self.max_stall_units, self.api = max_concurrency, max_stall_units, api
        self.slots = asyncio.Semaphore(max_concurrency)
        self.stats = Stats(ledger, units=pool.next_unit, kept=len(pool), rejects=Counter(pool.reject_counts),
                           parsed=len(pool) + pool.judged_rejects, unjudged=int(pool.state.get("unjudged", 0) or 0))
        self.stats.endpoints = teacher.endpoint_stats
        self.width: dict[int, int] = {}  # running unit -> requests it makes at once (what it declares)
        self.active: dict[int, int] = {}  # unit that has asked -> its asks now waiting or in flight
        self.asks: Counter = Counter()  # unit -> asks it made (answered, cached or failed)
        self.committing = 0  # candidates of the unit being judged and written now
        self.yield_seen = [0, 0]  # candidates and asks of the units back in this run: candidates per ask
        self.wake = asyncio.Event()
        if batches is not None:
            batches.notify = self.wake.set
        self.asking: dict[str, asyncio.Future] = {}  # cache key -> the reply of the request out for it
        self.pipeline: Pipeline | None = None  # set by run()
        self.exhausted: str | None = None
        self.failed = False  # a unit raised: no new unit starts
        self.stall_reasons: Counter = Counter()
        self.stalled = 0
        self.last_error = ""
        total, initial = (target, min(len(pool), target)) if target is not None else (total_units, pool.next_unit)
        self.bar = tqdm(total=total, initial=initial, desc="kept" if target is not None else "units",
                        unit="inst" if target is not None else "unit", file=sys.stderr, disable=quiet,
                        dynamic_ncols=True)
        self.shown = -float("inf")  # when the bar was last redrawn between commits
        for each in [teacher, *(t for t, _ in self.others.values())]:
            each.before_retry = self._admit_retry

    # -- the teacher call pipelines get --------------------------------------------------------

    async def ask(self, unit: int, prompt: str, decoding: Decoding | None = None, *,
                  teacher: str | None = None) -> Completion:
        """`teacher`: the name of another teacher of the run (see `others`) to ask instead of the main one."""
        decoding = decoding or self.decoding
        who, price = (self.teacher, None) if teacher is None else self.others[teacher]
        key = cache_key(who.model_id, self.api if teacher is None else f"{self.api}:{teacher}", prompt, decoding)
        self.active[unit] = self.active.get(unit, 0) + 1
        try:
            hit = self.ledger.cached(key)
            if hit is not None:
                self.stats.cached += 1
                return hit
            twin = self.asking.get(key)
            if twin is not None:  # the same prompt is out already (two units drew it): wait for its reply
                self.stats.cached += 1
                return await self._await_twin(unit, twin)
            self.asking[key] = reply = asyncio.get_running_loop().create_future()
            try:
                if self.batches is not None and teacher is None:
                    completion = await self._ask_in_batch(unit, key, prompt, decoding)
                else:
                    completion = await self._send(unit, key, prompt, decoding, who, price)
                reply.set_result(completion)
                return completion
            except BaseException as exc:
                reply.set_exception(exc)
                reply.exception()  # a twin may not be waiting: nothing to report unretrieved
                raise
            finally:
                del self.asking[key]
        except BudgetExhausted as exc:
            self.exhausted = self.exhausted or exc.reason
            raise
        finally:
            if unit in self.active:  # not when its unit ended before this ask (see run)
                self.active[unit] -= 1
            self.asks[unit] += 1
            self.wake.set()
            if self.pipeline is not None:  # asked inside run(): room may have opened for a unit
                # Once the asks sent with this one have started too: a reply from the cache comes
                # back before they do, and they would not count as out yet.
                asyncio.get_running_loop().call_soon(self._launch)

    async def _send(self, unit: int, key: str, prompt: str, decoding: Decoding, teacher: Teacher,
                    price: Price | None) -> Completion:
        """One request, counted on disk before it goes and settled when its reply is back."""
        async with self.slots:
            rid = self.ledger.reserve(unit, prompt_bound(prompt), decoding.max_tokens, self.budget, price)
            await self.ledger.sync()  # on disk before it goes
            self._show()
            token = _REQUEST.set((rid, unit))
            try:
                completion = (await teacher.complete([prompt], decoding))[0]
            finally:
                _REQUEST.reset(token)
            if completion.error:  # whatever the teacher, its error reaches the ledger, rejects and messages masked
                completion = replace(completion, error=redact(completion.error))
            self.ledger.done(rid, unit, key, completion, price)
            self._show()
            return completion

    # -- --batch: requests parked for a provider batch (engine/batches.py) ----------------------

    async def _ask_in_batch(self, unit: int, key: str, prompt: str, decoding: Decoding) -> Completion:
        """The reply through a batch; `_send` sends it directly when --batch_retry requests says so."""
        ordinary = partial(self._send, unit, key, prompt, decoding, self.teacher, None)
        try:
            return await self.batches.ask(unit, key, prompt, decoding, ordinary)
        finally:
            self._show()

    async def _await_twin(self, unit: int, twin: asyncio.Future) -> Completion:
        """Wait for the reply of the same prompt asked by another unit; in batch mode the unit is
        parked as long as the other's request is."""
        if self.batches is None:
            return await asyncio.shield(twin)
        self.batches.parked[unit] += 1
        self.wake.set()
        try:
            return await asyncio.shield(twin)
        finally:
            self.batches.parked[unit] -= 1

    def _flush_if_idle(self) -> None:
        """Send the parked requests as a batch once no running unit can go on without a reply
        (each waits on parked requests only) and no other unit may start: a batch holds the
        requests of as many units as the budget and --batch_size allow."""
        b = self.batches
        if b is None or not b.queue:
            return
        for unit, task in self.running.items():
            if not task.done() and (self.active.get(unit, 0) == 0 or self.active[unit] != b.parked[unit]):
                return
        b.flush()

    async def _units_back(self) -> None:
        """Wait for the running units to end; in batch mode the requests they parked go as a batch."""
        if self.batches is None:
            await asyncio.gather(*self.running.values(), return_exceptions=True)
            return
        while not all(task.done() for task in self.running.values()):
            self.wake.clear()
            self._flush_if_idle()
            await self.wake.wait()

    def _concurrency(self) -> int:
        """Requests out at most: --max_concurrency and the teacher's own limit; in batch mode, a batch's worth."""
        if self.batches is not None and self.batches.enabled:
            return self.batches.size
        return min(self.max_concurrency, self.teacher.concurrency or self.max_concurrency)

    def _show(self) -> None:
        """Keep the bar alive between commits (a unit of a local model can take minutes): the
        first request out shows at once, then requests out and tokens used twice a second."""
        now = time.monotonic()
        if now - self.shown >= 0.5:
            self.shown = now
            self.bar.set_postfix_str(self.stats.postfix(self.teacher.concurrency), refresh=True)

    async def _admit_retry(self) -> bool:
        current = _REQUEST.get()
        if current is None:
            return True
        if not self.ledger.retry(current[0], current[1], self.budget):
            self.exhausted = self.exhausted or "max_requests"
            return False
        await self.ledger.sync()
        return True

    # -- the run ---------------------------------------------------------------------------

    async def run(self, pipeline: Pipeline) -> str:
        """Run until the target, the budget, the stall limit or the last unit; returns which."""
        self.pipeline = pipeline
        self.next_launch = self.next_commit = self.pool.next_unit
        self.requests_before = self.ledger.spend.requests  # a resumed run's earlier requests
        self.running: dict[int, asyncio.Task] = {}
        self.finished: dict[int, UnitResult | BaseException] = {}
        self.no_more_units, self.stopping = False, False
        if self.batches is not None:
            self.batches.start()
        try:
            self._launch()
            while True:
                for index in [i for i, task in self.running.items() if task.done()]:
                    task = self.running.pop(index)
                    self.finished[index] = result = task.exception() or task.result()
                    if isinstance(result, BaseException) and not isinstance(result, BudgetExhausted):
                        self.failed = True  # it is raised once the units before it are recorded
                    self.width.pop(index, None)
                    self.active.pop(index, None)
                    if isinstance(result, UnitResult):
                        self.yield_seen[0] += len(result.examples)
                        self.yield_seen[1] += self.asks[index]
                    self.asks.pop(index, None)
                if self.next_commit not in self.finished:
                    if not self.running:
                        return self._why_stopped(self.no_more_units)
                    self.wake.clear()
                    if not any(task.done() for task in self.running.values()):
                        self._flush_if_idle()
                        await self.wake.wait()
                    continue
                result = self.finished.pop(self.next_commit)
                if isinstance(result, BudgetExhausted):
                    # Requests already out are paid for: let them come back (no new one can go), so
                    # their replies reach the cache and the resumed run does not buy them twice.
                    await self._units_back()
                    # A unit whose asks ran side by side may have ended on the refusal while its
                    # other requests are still out, in tasks of its own: their replies too.
                    await asyncio.gather(*self.asking.values(), return_exceptions=True)
                    return self.exhausted or result.reason
                if isinstance(result, BaseException):
                    raise result
                self.finished[self.next_commit] = result
                await self._commit_ready()
                if self.target is not None and len(self.pool) >= self.target:
                    return "target"
                self._launch()  # the pool grew: units waiting on it (lag, the target) may go
        except asyncio.CancelledError:
            # Ctrl-C or SIGTERM: what came back in order is judged and written before we go.
            self.stopping = True
            while isinstance(self.finished.get(self.next_commit), UnitResult):
                await self._commit_ready()
            raise
        finally:
            self.stopping = True
            for task in self.running.values():
                task.cancel()
            await asyncio.gather(*self.running.values(), return_exceptions=True)
            if self.batches is not None:
                await self.batches.stop()
            self.ledger.write_answered()  # the replies of this last turn, before the run's last state is written
            self.bar.close()

    def _launch(self) -> None:
        """Start units while there is room. Called whenever room may have opened (a request came
        back, a unit was recorded), so a commit's fsyncs never leave the teacher idle."""
        while not self.stopping and not self.no_more_units and self._may_launch(
                self.next_launch, self.next_commit, self.running, self.finished):
            unit = self.pipeline.unit(self.next_launch, self.pool)
            if unit is None:
                self.no_more_units = True
                return
            self.width[self.next_launch] = max(1, self.pipeline.requests(unit))
            self.running[self.next_launch] = asyncio.create_task(self._run_unit(self.pipeline, self.next_launch, unit))
            self.next_launch += 1

    async def _run_unit(self, pipeline: Pipeline, index: int, unit: Any) -> UnitResult:
        try:
            return await pipeline.run_unit(unit, partial(self.ask, index))
        finally:
            self.wake.set()

    def _may_launch(self, index: int, next_commit: int, running: dict, finished: dict) -> bool:
        if self.exhausted or self.failed:
            return False
        if self.target is not None and len(self.pool) >= self.target:
            return False
        lag = self.pipeline.lag
        if lag is not None and index - next_commit > lag:
            return False  # unit `index` samples from units < index - lag: they must be in the pool
        if not running:  # nothing out: only replies already back may hold a unit back
            return not self._enough_coming(0, finished)
        concurrency = self._concurrency()
        in_flight = self._in_flight()
        if in_flight >= concurrency:
            return False
        # Units wait for the oldest one to be recorded in order; a slow request (retries, a
        # timeout) must not let an unbounded queue of finished units build up behind it.
        per_unit = max(self.width.values(), default=1)
        if index - next_commit >= 2 * -(-concurrency // per_unit) + 2:
            return False
        if self.budget.refusal(self.ledger.spend, self.ledger.in_flight_cost(), self.decoding.max_tokens, 0.0):
            return False
        return not self._enough_coming(in_flight, finished)

    def _in_flight(self) -> int:
        """Requests out or about to go: a unit that has asked counts its asks in progress (a unit
        asking one question after another holds one slot, not all it will use); one not yet
        started counts what it declared."""
        return sum(self.active.get(unit, width) for unit, width in self.width.items())

    def _enough_coming(self, in_flight: int, finished: dict) -> bool:
        """Whether the candidates already back and the requests out should reach the target at
        the rates seen so far: tokens asked for past the target are money thrown away. The rate
        is taken over whole units back (a unit's first replies are not candidates until it ends)."""
        candidates, asks = self.yield_seen
        if self.target is None:
            return False
        if asks <= 0:  # nothing back yet: the pipeline's most per reply, or else one full wave
            candidates, asks = self.pipeline.candidates_per_request, 1
            if candidates is None:
                return self.ledger.spend.requests - self.requests_before >= self.max_concurrency
        waiting = self.committing + sum(len(r.examples) for r in finished.values() if isinstance(r, UnitResult))
        answered = sum(self.asks[unit] for unit in self.width)  # replies held by units not yet back
        keep = self.stats.kept / self.stats.parsed if self.stats.parsed else 1.0
        return self.stats.kept + keep * (waiting + candidates / asks * (in_flight + answered)) >= self.target

    def _why_stopped(self, no_more_units: bool) -> str:
        if self.target is not None and len(self.pool) >= self.target:
            return "target"
        if self.exhausted:
            return self.exhausted
        if no_more_units:  # every unit recorded, none refused: the budget sufficed, even to its last request
            return "done"
        return self.budget.refusal(self.ledger.spend, 0.0, self.decoding.max_tokens, 0.0) or "stopped"

    async def _commit_ready(self) -> None:
        """Judge the units back in order from `next_commit` (at most COMMIT_GROUP, stopping at the
        first not back or not whole), make their outcome durable in a worker thread (the event
        loop keeps sending and reading requests meanwhile), then apply it here, a unit at a time.
        Units back together are written together, one write and one state.json for all: at many
        replies a second, a commit a unit would cost more fsyncs and thread hand-overs than the
        teacher leaves time for. A unit reaching the target or the stall limit ends the group,
        so the units recorded are those a commit a unit would have recorded."""
        group = []
        while len(group) < COMMIT_GROUP and isinstance(self.finished.get(self.next_commit + len(group)), UnitResult):
            index = self.next_commit + len(group)
            group.append((index, self.finished.pop(index)))
        self.committing = sum(len(result.examples) for _, result in group)  # neither waiting nor kept while in the thread
        try:
            commits, cancelled = await to_the_end(asyncio.to_thread(self._judge_and_write, group))
        finally:
            self.committing = 0
        for index, result in group[len(commits):]:
            self.finished[index] = result  # after the target or the stall: not recorded
        try:
            for commit in commits:
                self._apply(commit)  # on disk: it counts, even in the state written on the way out
                self.next_commit += 1
        finally:
            _, cancelled_again = await to_the_end(asyncio.to_thread(self.pool.save_state, self.stats.to_state()))
        if cancelled or cancelled_again:
            raise asyncio.CancelledError

    def _judge_and_write(self, group: list[tuple[int, UnitResult]]) -> list[Commit]:
        """The commit thread's work: verdicts for each unit's candidates, in order, written and
        committed together; ends the group after a unit that reaches the target or the stall limit."""
        commits: list[Commit] = []
        kept_before = len(self.pool)
        stalled = self.stalled
        for index, result in group:
            commit = self._judge(index, result, kept_before)
            commits.append(commit)
            kept_before += len(commit.kept)
            stalled = 0 if commit.kept else stalled + 1
            if self.target is not None and kept_before >= self.target:
                break
            if self.max_stall_units and stalled >= self.max_stall_units:
                break
        self.pool.write_units([(c.unit, c.kept, c.rejected) for c in commits])
        return commits

    def _judge(self, index: int, result: UnitResult, kept_before: int) -> Commit:
        """Verdicts for one unit's candidates, with `kept_before` records in the pool before it."""
        # the engine's bookkeeping goes under its own key, written last: the input's metadata passes untouched
        provenance = {PROVENANCE: {"run": self.pool.run_id, "unit": index, "model": self.teacher.model_id}}
        kept: list[dict] = []
        rejected = [reject_record(r) | provenance for r in result.rejections]
        # a pipeline's own verdicts on a candidate (low_score, ungrounded) count as judged, as on resume
        judged = sum(r.example is not None for r in result.rejections)
        unjudged = 0
        limit = None if self.target is None else max(0, self.target - kept_before)
        for verdict in self.judge.judge_many(result.examples, limit):
            if verdict is None:
                unjudged += 1  # exactly the target: the rest is left unjudged
            elif isinstance(verdict, Rejection):
                judged += 1
                rejected.append(reject_record(verdict) | provenance)
            else:
                judged += 1
                kept.append(verdict | provenance)
        return Commit(index, kept, rejected, judged, unjudged)

    def _apply(self, commit: Commit) -> None:
        self.pool.apply(commit.unit, commit.kept, commit.rejected)
        self.stats.units += 1
        self.stats.kept = len(self.pool)
        self.stats.parsed += commit.judged
        self.stats.unjudged += commit.unjudged
        self.stats.rejects.update(r["reason"] for r in commit.rejected)
        self.last_error = next((r["detail"] for r in commit.rejected if r["reason"] == "request_failed"), self.last_error)
        self.bar.update(len(commit.kept) if self.target is not None else 1)
        self.bar.set_postfix_str(self.stats.postfix(self.teacher.concurrency), refresh=True)
        if commit.kept:
            self.stalled = 0
            self.stall_reasons.clear()
            return
        self.stalled += 1
        self.stall_reasons.update(r["reason"] for r in commit.rejected)
        if self.max_stall_units and self.stalled >= self.max_stall_units:
            raise StallError(stall_message(f"{self.max_stall_units} {self.pipeline.unit_name}s", self.stall_reasons,
                                           self.last_error))


async def to_the_end(work) -> tuple[Any, bool]:
    """Await work to its end even when the task is cancelled meanwhile (Ctrl-C, SIGTERM); returns
    its result and whether a cancellation came, for the caller to pass on once it has applied the
    result: a unit being written in a thread must be on disk, and counted, before the run's last
    regen.json and state.json are written from memory."""
    future = asyncio.ensure_future(work)
    cancelled = False
    while True:
        try:
            return await asyncio.shield(future), cancelled
        except asyncio.CancelledError:
            if future.cancelled():
                raise
            cancelled = True
