"""What a run spends and what came back: budgets that hold across kills, and replies never paid twice.

`ledger.jsonl` gets a line for every request *before* it goes out (fsynced, those of one turn of
the event loop at once) and a line when its reply comes back:

    {"event": "send", "id": 7, "unit": 3, "t": 1700000000.1, "tokens": 4096, "cost": 0.0025}
    {"event": "done", "id": 7, "unit": 3, "t": 1700000002.4, "prompt_tokens": 812, "completion_tokens": 402, "cost": 0.0004, "faults": ["429"]}
    {"event": "retry", "id": 7, "unit": 3, "t": ...}

A request whose reply never made it to disk (the process was killed) counts at its reservation
(`tokens`: an upper bound of what it can cost), so no kill lets a rerun pass a budget. Every
retry of a request is a request the server received, and counts as one.

A "done" line and its cached reply are written when the event loop's turn ends, with the others
of that turn, in one write each (a reply is on disk as soon as it would be had it come a moment
later; a kill before then loses what a kill just before it came would).

`responses.jsonl` keeps each good reply of a unit not yet in the pool, keyed by a hash of the
model, the prompt and the decoding: a resumed run asks for exactly the prompts it had asked
before (rounds are seeded), and the ones already answered cost nothing the second time.
"""
from __future__ import annotations

import asyncio
import functools
import hashlib
import json
import time
from collections import Counter
from dataclasses import asdict, dataclass, field
from pathlib import Path

from ..errors import DataError
from ..io.jsonl import append_jsonl, iter_jsonl, repair_torn_tail, write_jsonl_atomic
from ..io.secrets import redact
from ..types import Completion, Decoding
from .pool import LEDGER, RESPONSES
from .prices import Price

#: Seconds a turn's write of send lines may take in the event loop (0.3 ms on a local disk): past
#: it, the writes after go through a worker thread.
SLOW_WRITE = 0.01


@dataclass
class Spend:
    requests: int = 0
    prompt_tokens: int = 0
    completion_tokens: int = 0
    reserved_tokens: int = 0  # requests out (or lost to a kill) whose usage is not known
    failed: int = 0  # requests that failed for good (retries spent)
    cost: float = 0.0
    faults: Counter = field(default_factory=Counter)

    @property
    def tokens(self) -> int:
        return self.prompt_tokens + self.completion_tokens + self.reserved_tokens

    def count(self, done: dict) -> None:
        """Count a request's "done" line: what it used, what it cost, the faults it met."""
        self.prompt_tokens += int(done.get("prompt_tokens", 0))
        self.completion_tokens += int(done.get("completion_tokens", 0))
        self.cost += float(done.get("cost", 0.0))
        self.faults.update(done.get("faults", ()))
        self.failed += "error" in done


def read_spend(path: Path) -> tuple[Spend, int]:
    """What a ledger file records as spent, and the next request id. A request sent whose reply
    never reached the file (the process was killed) counts at its reservation.

    A line that cannot be read is never skipped (it may be a request paid for): the error names
    it and what to do, and state.json's counters still hold the budget if the file goes.
    """
    spend, next_id, _ = read_ledger(path)
    return spend, next_id


def read_ledger(path: Path) -> tuple[Spend, int, dict[int, dict]]:
    """read_spend, and the "send" lines of the requests with no reply on file (by id)."""
    spend, next_id, sent = Spend(), 0, {}
    if path.exists():
        lineno = 0
        try:
            for lineno, line in iter_jsonl(path):
                event = line.get("event")
                if event in ("send", "retry"):
                    spend.requests += 1
                if event == "send":
                    sent[int(line["id"])] = line
                elif event == "done":
                    sent.pop(int(line["id"]), None)
                    spend.count(line)
                next_id = max(next_id, int(line.get("id", -1)) + 1)
            for line in sent.values():
                spend.reserved_tokens += int(line.get("tokens", 0))
                spend.cost += float(line.get("cost", 0.0))
        except DataError as exc:
            raise DataError(f"{exc}; {LEDGER_FIX}") from None
        except (KeyError, TypeError, ValueError) as exc:
            raise DataError(f"{path}:{lineno}: not a ledger line ({type(exc).__name__}: {exc}); {LEDGER_FIX}") from None
    return spend, next_id, sent


# What to do about a ledger line that cannot be read.
LEDGER_FIX = ("the ledger is this run's record of what it spent: restore that line, or delete ledger.jsonl "
              "and the budget counts on from state.json")


class BudgetExhausted(Exception):
    """No further request may go out; `reason` names the flag (max_requests, max_total_tokens, max_cost)."""

    def __init__(self, reason: str):
        super().__init__(reason)
        self.reason = reason


@dataclass(frozen=True)
class Budget:
    max_requests: int | None = None
    max_total_tokens: int | None = None
    max_cost: float | None = None

    def refusal(self, spend: Spend, in_flight_cost: float, tokens: int, cost: float) -> str | None:
        """Why one more request reserving `tokens` and `cost` would break a cap, or None."""
        if self.max_requests is not None and spend.requests + 1 > self.max_requests:
            return "max_requests"
        if self.max_total_tokens is not None and spend.tokens + tokens > self.max_total_tokens:
            return "max_total_tokens"
        if self.max_cost is not None and spend.cost + in_flight_cost + cost > self.max_cost + 1e-12:
            return "max_cost"
        return None

    def after(self, spent: Spend) -> "Budget":
        """What the caps leave once `spent` is spent (by the other stages of a run)."""
        def left(cap, used):
            return None if cap is None else max(0, cap - used)
        return Budget(left(self.max_requests, spent.requests), left(self.max_total_tokens, spent.tokens),
                      left(self.max_cost, spent.cost))


class Ledger:
    """The spend journal and reply cache of one output directory (opened under the pool's lock)."""

    def __init__(self, directory: Path, price: Price | None, next_unit: int, evidence: dict | None = None):
        self.path, self.cache_path = directory / LEDGER, directory / RESPONSES
        self.price = price
        self.spend = Spend()
        self.cache: dict[str, dict] = {}
        self.notes: list[str] = []  # what reading back repaired, for the run to say
        self.in_flight: dict[int, tuple[int, float]] = {}  # id -> (reserved tokens, reserved cost)
        self.unsettled: dict[int, dict] = {}  # "send" lines read back with no reply on file, by id
        self._next_id = 0
        self._pending: list[dict] = []  # send/retry lines waiting for one fsync
        self._queued = self._durable = 0  # lines counted, and how many of them are on disk
        self._turn: asyncio.Future | None = None  # the end-of-turn write the send lines wait for
        self._slow_disk = False  # a write took over SLOW_WRITE: the next ones go through a thread
        self._flush: asyncio.Future | None = None  # that thread's write in flight
        self._answered: list[dict] = []  # done lines and cached replies of this turn of the event loop
        self._caching: list[dict] = []
        self._written_soon = False
        self._write_failed: BaseException | None = None  # what the end-of-turn write raised, raised again here
        self._read(next_unit)
        self._floor(evidence or {})

    # -- reading back ------------------------------------------------------------------------

    def _read(self, next_unit: int) -> None:
        repair_torn_tail(self.path)
        self.spend, self._next_id, self.unsettled = read_ledger(self.path)
        if self.cache_path.exists():
            kept, dropped = read_cache(self.cache_path)
            self.cache = {e["key"]: e for e in kept if e["unit"] >= next_unit}
            # replies of pooled units are never asked again; an unreadable line is not kept either
            write_jsonl_atomic(self.cache_path, list(self.cache.values()))
            if dropped:
                self.notes.append(f"{self.cache_path.name}: dropped {dropped} line(s) that are not cached replies; "
                                  f"the reply cache only saves requests, so what they held is asked again if needed")

    def _floor(self, state: dict) -> None:
        """The budget survives a lost or cut ledger: state.json's counters (written after every
        unit) and the cached replies (each one a request answered) are evidence of spend too."""
        spend = self.spend
        spend.requests = max(spend.requests, int(state.get("requests") or 0), len(self.cache))
        spend.prompt_tokens = max(spend.prompt_tokens, int(state.get("prompt_tokens") or 0))
        spend.completion_tokens = max(spend.completion_tokens, int(state.get("completion_tokens") or 0))
        spend.reserved_tokens = max(spend.reserved_tokens, int(state.get("reserved_tokens") or 0))
        spend.cost = max(spend.cost, float(state.get("cost") or 0.0))

    def _count(self, line: dict) -> None:
        self.spend.count(line)

    # -- a request's life --------------------------------------------------------------------

    def cached(self, key: str) -> Completion | None:
        entry = self.cache.get(key)
        return None if entry is None else Completion(entry["text"], entry.get("finish_reason"))

    def in_flight_cost(self) -> float:
        return sum(c for _, c in self.in_flight.values())

    def reserve(self, unit: int, prompt_tokens: int, max_tokens: int, budget: Budget, price: Price | None = None) -> int:
        """Count a request about to go out (or raise BudgetExhausted); returns its id. It reserves
        the most it can use: `prompt_tokens` (an upper bound) and `max_tokens`."""
        tokens = prompt_tokens + max_tokens
        price = price or self.price  # another teacher of the run may have its own
        cost = price.cost(prompt_tokens, max_tokens) if price else 0.0
        reason = budget.refusal(self.spend, self.in_flight_cost(), tokens, cost)
        if reason:
            raise BudgetExhausted(reason)
        rid, self._next_id = self._next_id, self._next_id + 1
        self.spend.requests += 1
        self.spend.reserved_tokens += tokens
        self.in_flight[rid] = (tokens, cost)
        self._pending.append({"event": "send", "id": rid, "unit": unit, "t": round(time.time(), 3), "tokens": tokens, "cost": cost})
        self._queued += 1
        return rid

    def retry(self, rid: int, unit: int, budget: Budget) -> bool:
        """Count one more attempt of request `rid`, if the budget allows another request."""
        if budget.max_requests is not None and self.spend.requests + 1 > budget.max_requests:
            return False
        self.spend.requests += 1
        self._pending.append({"event": "retry", "id": rid, "unit": unit, "t": round(time.time(), 3)})
        self._queued += 1
        return True

    async def sync(self) -> None:
        """Make every request counted so far durable: the send lines of this turn of the event
        loop are written with one fsync at its end, and the callers wait for that.

        The write runs in the event loop itself. Through a worker thread it cost each request 10-13 ms
        of waiting at 128 in flight (the thread waits for the interpreter lock that the busy loop
        holds, once to write and once to hand back), for an fsync of 0.3 ms, and that wait cost a
        tenth of the client's throughput (benchmarks/throughput.py). A disk whose write takes
        longer than SLOW_WRITE (a network file system) would hold the loop, and every reply being
        read, for each one: after the first such write the rest go through the thread, one at a time."""
        self._raise_write_failure()
        if self._slow_disk:
            await self._sync_off_loop()
            return
        if self._durable >= self._queued:
            return
        if self._turn is None:
            loop = asyncio.get_running_loop()
            self._turn = loop.create_future()
            loop.call_soon(self._flush_turn)
        # Shared by every caller of this turn: one cancelled caller must not cancel the others' write.
        await asyncio.shield(self._turn)

    def _flush_turn(self) -> None:
        turn, self._turn = self._turn, None
        lines, self._pending, upto = self._pending, [], self._queued
        started = time.perf_counter()
        try:
            append_jsonl(self.path, lines)
        except Exception as exc:  # a full disk: every request of the turn fails to go, with it
            turn.set_exception(exc)
            return
        self._slow_disk = time.perf_counter() - started > SLOW_WRITE
        self._durable = upto
        turn.set_result(None)

    async def _sync_off_loop(self) -> None:
        """sync through a worker thread, one write in flight: a caller whose line came after the
        write in flight began waits for the next one."""
        mine = self._queued
        while self._durable < mine:
            if self._flush is None or self._flush.done():
                lines, self._pending, upto = self._pending, [], self._queued
                self._flush = asyncio.ensure_future(self._write(lines, upto))
            await asyncio.shield(self._flush)

    async def _write(self, lines: list[dict], upto: int) -> None:
        await asyncio.to_thread(append_jsonl, self.path, lines)
        self._durable = upto

    def done(self, rid: int, unit: int, key: str, completion: Completion, price: Price | None = None) -> float:
        """Replace the reservation of `rid` by what it used; cache a good reply. Returns its cost."""
        line, entry = self._settle(rid, unit, key, completion, price)
        # A lost "done" line only makes a rerun count the reservation: no fsync needed, and the
        # lines of one turn of the event loop are written together at its end.
        self._answered.append(line)
        if entry is not None:
            self._caching.append(entry)
        self._write_soon()
        return line["cost"]

    def _settle(self, rid: int, unit: int, key: str, completion: Completion, price: Price | None) -> tuple[dict, dict | None]:
        """Count what request `rid` used in place of its reservation; its "done" line and, for a
        good reply, its cache entry (cached in memory already), for the caller to write."""
        tokens, _ = self.in_flight.pop(rid)
        self.spend.reserved_tokens -= tokens
        price = price or self.price
        cost = price.cost(completion.prompt_tokens, completion.completion_tokens) if price else 0.0
        line = {"event": "done", "id": rid, "unit": unit, "t": round(time.time(), 3),
                "prompt_tokens": completion.prompt_tokens, "completion_tokens": completion.completion_tokens,
                "cost": cost, "faults": list(completion.faults)}
        if not completion.ok:
            line["error"] = redact(completion.error or "")
        self._count(line)
        entry = None
        if completion.ok and completion.finish_reason != "cancelled":
            entry = {"key": key, "unit": unit, "text": completion.text, "finish_reason": completion.finish_reason}
            self.cache[key] = entry
        return line, entry

    # -- requests sent in a provider's batch (engine/batches.py) -----------------------------

    def adopt(self, rid: int) -> bool:
        """Take back request `rid`, sent in a batch by an earlier run and not settled yet, as a
        request in flight: its reservation moves from the spend read back to `in_flight`, where
        `done_many` settles it. False when it is settled already (its reply is on file)."""
        sent = self.unsettled.pop(rid, None)
        if sent is None or rid in self.in_flight:
            return False
        tokens, cost = int(sent.get("tokens", 0)), float(sent.get("cost", 0.0))
        self.spend.reserved_tokens -= tokens
        self.spend.cost -= cost
        self.in_flight[rid] = (tokens, cost)
        return True

    def done_many(self, replies: list[tuple[int, int, str, Completion]], price: Price | None) -> None:
        """Settle the requests of a batch at once, `(rid, unit, key, completion)` each: their
        "done" lines and cached replies are made durable before the batch is marked ended, so a
        kill in between never has a batch's replies paid for again nor counted twice."""
        lines, entries = [], []
        for rid, unit, key, completion in replies:
            line, entry = self._settle(rid, unit, key, completion, price)
            lines.append(line)
            if entry is not None:
                entries.append(entry)
        append_jsonl(self.cache_path, entries)
        append_jsonl(self.path, lines)

    def _write_soon(self) -> None:
        """Write what came back at the end of this turn of the event loop (now, outside one)."""
        self._raise_write_failure()
        try:
            loop = asyncio.get_running_loop()
        except RuntimeError:
            self.write_answered()
            return
        if not self._written_soon:
            self._written_soon = True
            loop.call_soon(self._write_at_turn_end)

    def _write_at_turn_end(self) -> None:
        try:
            self.write_answered()
        except Exception as exc:  # a full disk: the next request or sync raises it, not the event loop's log
            self._write_failed = exc

    def _raise_write_failure(self) -> None:
        if self._write_failed is not None:
            failed, self._write_failed = self._write_failed, None
            raise failed

    def write_answered(self) -> None:
        """Write the done lines and cached replies not yet written, one write to each file."""
        self._written_soon = False
        lines, entries = self._answered, self._caching
        self._answered, self._caching = [], []
        if lines:
            append_jsonl(self.path, lines, fsync=False)
        if entries:
            append_jsonl(self.cache_path, entries, fsync=False)

    def forget_before(self, next_unit: int) -> None:
        """Drop cached replies of units now in the pool (called at the end of a run)."""
        self.write_answered()
        self._raise_write_failure()
        kept = [e for e in self.cache.values() if e["unit"] >= next_unit]
        if len(kept) != len(self.cache):
            self.cache = {e["key"]: e for e in kept}
            write_jsonl_atomic(self.cache_path, kept)


def read_cache(path: Path) -> tuple[list[dict], int]:
    """The replies cached in `path` and how many lines were not replies (edited, corrupt, torn).
    The cache is never evidence of spend beyond what the ledger and state.json say, so what
    cannot be read is dropped, not a reason to stop: at worst a request is asked again."""
    entries, dropped = [], 0
    with open(path, "rb") as f:
        for line in f:
            if not line.strip():
                continue
            try:
                entry = json.loads(line.decode("utf-8"))
            except (UnicodeDecodeError, json.JSONDecodeError, RecursionError):
                entry = None
            if _is_reply(entry):
                entries.append(entry)
            else:
                dropped += 1
    return entries, dropped


def _is_reply(entry) -> bool:
    return (isinstance(entry, dict) and isinstance(entry.get("key"), str) and isinstance(entry.get("text"), str)
            and type(entry.get("unit")) is int and isinstance(entry.get("finish_reason"), (str, type(None))))


def cache_key(model: str, api: str, prompt: str, decoding: Decoding) -> str:
    try:
        fields = _fields(decoding)
    except TypeError:  # a decoding built with a list where a tuple belongs: not hashable, not cached
        fields = asdict(decoding)
    payload = json.dumps([model, api, prompt, fields], ensure_ascii=False, sort_keys=True)
    return hashlib.sha256(payload.encode("utf-8")).hexdigest()[:32]


@functools.lru_cache(maxsize=256)
def _fields(decoding: Decoding) -> dict:
    """asdict() of a decoding (frozen; a run has a few): it deep-copies every field on each call."""
    return asdict(decoding)
