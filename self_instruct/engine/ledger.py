"""What a run spends and what came back: budgets that hold across kills, and replies never paid twice.

`ledger.jsonl` gets a line for every request *before* it goes out (fsynced, several at once
when several leave together) and a line when its reply comes back:

    {"event": "send", "id": 7, "unit": 3, "t": 1700000000.1, "tokens": 4096, "cost": 0.0025}
    {"event": "done", "id": 7, "unit": 3, "t": 1700000002.4, "prompt_tokens": 812, "completion_tokens": 402, "cost": 0.0004, "faults": ["429"]}
    {"event": "retry", "id": 7, "unit": 3, "t": ...}

A request whose reply never made it to disk (the process was killed) counts at its reservation
(`tokens`: an upper bound of what it can cost), so no kill lets a rerun pass a budget. Every
retry of a request is a request the server received, and counts as one.

`responses.jsonl` keeps each good reply of a unit not yet in the pool, keyed by a hash of the
model, the prompt and the decoding: a resumed run asks for exactly the prompts it had asked
before (rounds are seeded), and the ones already answered cost nothing the second time.
"""
from __future__ import annotations

import asyncio
import hashlib
import json
import time
from collections import Counter
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from ..cli import redact
from ..errors import ConfigError
from ..io.jsonl import append_jsonl, iter_jsonl, repair_torn_tail, write_jsonl_atomic
from .pool import LEDGER, RESPONSES
from ..types import Completion, Decoding

# Dollars per million prompt and completion tokens, as the providers list them (November 2026
# list prices of OpenAI's API). --price_prompt/--price_completion override; other models are
# priced only when those flags are given.
PRICES: dict[str, tuple[float, float]] = {
    "gpt-3.5-turbo-instruct": (1.50, 2.00),
    "gpt-3.5-turbo": (0.50, 1.50),
    "gpt-4o": (2.50, 10.00),
    "gpt-4o-mini": (0.15, 0.60),
    "gpt-4.1": (2.00, 8.00),
    "gpt-4.1-mini": (0.40, 1.60),
    "gpt-4.1-nano": (0.10, 0.40),
}
# Tokens a chat template may wrap around a prompt, on top of the prompt's own.
TEMPLATE_TOKENS = 32


@dataclass(frozen=True)
class Price:
    """Dollars per million tokens; None when unknown (then no cost is shown or capped)."""

    prompt: float
    completion: float

    def cost(self, prompt_tokens: int, completion_tokens: int) -> float:
        return (prompt_tokens * self.prompt + completion_tokens * self.completion) / 1e6


def find_price(model: str, prompt: float | None, completion: float | None, local: bool = False) -> Price | None:
    """The price of a model: flags first, then the table (by name, dated snapshots included), a
    local model is free. Example: find_price("gpt-4o-mini-2024-07-18", None, None) -> Price(0.15, 0.6)"""
    if prompt is not None or completion is not None:
        if prompt is None or completion is None:
            raise ConfigError("--price_prompt and --price_completion go together (dollars per million tokens)")
        return Price(prompt, completion)
    if local:
        return Price(0.0, 0.0)
    name = model.rsplit("/", 1)[-1]
    for known in sorted(PRICES, key=len, reverse=True):
        if name == known or name.startswith(known + "-"):
            return Price(*PRICES[known])
    return None


def prompt_bound(prompt: str) -> int:
    """An upper bound of a prompt's tokens: every token is at least one byte for byte-level and
    SentencePiece tokenizers alike, plus what a chat template wraps around it."""
    return len(prompt.encode("utf-8")) + TEMPLATE_TOKENS


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


class Ledger:
    """The spend journal and reply cache of one output directory (opened under the pool's lock)."""

    def __init__(self, directory: Path, price: Price | None, next_unit: int):
        self.path, self.cache_path = directory / LEDGER, directory / RESPONSES
        self.price = price
        self.spend = Spend()
        self.cache: dict[str, dict] = {}
        self.in_flight: dict[int, tuple[int, float]] = {}  # id -> (reserved tokens, reserved cost)
        self._next_id = 0
        self._pending: list[dict] = []  # send/retry lines waiting for one fsync
        self._flush: asyncio.Future | None = None
        self._read(next_unit)

    # -- reading back ------------------------------------------------------------------------

    def _read(self, next_unit: int) -> None:
        repair_torn_tail(self.path)
        repair_torn_tail(self.cache_path)
        sent: dict[int, dict] = {}
        if self.path.exists():
            for _, line in iter_jsonl(self.path):
                event = line.get("event")
                if event in ("send", "retry"):
                    self.spend.requests += 1
                if event == "send":
                    sent[line["id"]] = line
                elif event == "done":
                    sent.pop(line["id"], None)
                    self._count(line)
                self._next_id = max(self._next_id, int(line.get("id", -1)) + 1)
        for line in sent.values():  # sent, never answered on disk: count the reservation
            self.spend.reserved_tokens += int(line.get("tokens", 0))
            self.spend.cost += float(line.get("cost", 0.0))
        if self.cache_path.exists():
            kept = [e for _, e in iter_jsonl(self.cache_path) if e.get("unit", -1) >= next_unit]
            self.cache = {e["key"]: e for e in kept}
            write_jsonl_atomic(self.cache_path, kept)  # replies of pooled units are never asked again

    def _count(self, line: dict) -> None:
        self.spend.prompt_tokens += int(line.get("prompt_tokens", 0))
        self.spend.completion_tokens += int(line.get("completion_tokens", 0))
        self.spend.cost += float(line.get("cost", 0.0))
        self.spend.faults.update(line.get("faults", ()))
        self.spend.failed += "error" in line

    # -- a request's life --------------------------------------------------------------------

    def cached(self, key: str) -> Completion | None:
        entry = self.cache.get(key)
        return None if entry is None else Completion(entry["text"], entry.get("finish_reason"))

    def in_flight_cost(self) -> float:
        return sum(c for _, c in self.in_flight.values())

    def reserve(self, unit: int, prompt_tokens: int, max_tokens: int, budget: Budget) -> int:
        """Count a request about to go out (or raise BudgetExhausted); returns its id. It reserves
        the most it can use: `prompt_tokens` (an upper bound) and `max_tokens`."""
        tokens = prompt_tokens + max_tokens
        cost = self.price.cost(prompt_tokens, max_tokens) if self.price else 0.0
        reason = budget.refusal(self.spend, self.in_flight_cost(), tokens, cost)
        if reason:
            raise BudgetExhausted(reason)
        rid, self._next_id = self._next_id, self._next_id + 1
        self.spend.requests += 1
        self.spend.reserved_tokens += tokens
        self.in_flight[rid] = (tokens, cost)
        self._pending.append({"event": "send", "id": rid, "unit": unit, "t": round(time.time(), 3), "tokens": tokens, "cost": cost})
        return rid

    def retry(self, rid: int, unit: int, budget: Budget) -> bool:
        """Count one more attempt of request `rid`, if the budget allows another request."""
        if budget.max_requests is not None and self.spend.requests + 1 > budget.max_requests:
            return False
        self.spend.requests += 1
        self._pending.append({"event": "retry", "id": rid, "unit": unit, "t": round(time.time(), 3)})
        return True

    async def sync(self) -> None:
        """Make every counted request durable: one fsync for all that queued meanwhile."""
        while self._pending:
            if self._flush is None or self._flush.done():
                lines, self._pending = self._pending, []
                self._flush = asyncio.ensure_future(asyncio.to_thread(append_jsonl, self.path, lines))
                await asyncio.shield(self._flush)
            else:
                await asyncio.shield(self._flush)

    def done(self, rid: int, unit: int, key: str, completion: Completion) -> float:
        """Replace the reservation of `rid` by what it used; cache a good reply. Returns its cost."""
        tokens, _ = self.in_flight.pop(rid)
        self.spend.reserved_tokens -= tokens
        cost = self.price.cost(completion.prompt_tokens, completion.completion_tokens) if self.price else 0.0
        line = {"event": "done", "id": rid, "unit": unit, "t": round(time.time(), 3),
                "prompt_tokens": completion.prompt_tokens, "completion_tokens": completion.completion_tokens,
                "cost": cost, "faults": list(completion.faults)}
        if not completion.ok:
            line["error"] = redact(completion.error or "")
        self._count(line)
        # A lost "done" line only makes a rerun count the reservation: no fsync needed.
        append_jsonl(self.path, [line], fsync=False)
        if completion.ok and completion.finish_reason != "cancelled":
            entry = {"key": key, "unit": unit, "text": completion.text, "finish_reason": completion.finish_reason}
            self.cache[key] = entry
            append_jsonl(self.cache_path, [entry], fsync=False)
        return cost

    def forget_before(self, next_unit: int) -> None:
        """Drop cached replies of units now in the pool (called at the end of a run)."""
        kept = [e for e in self.cache.values() if e["unit"] >= next_unit]
        if len(kept) != len(self.cache):
            self.cache = {e["key"]: e for e in kept}
            write_jsonl_atomic(self.cache_path, kept)


def cache_key(model: str, api: str, prompt: str, decoding: Decoding) -> str:
    payload = json.dumps([model, api, prompt, asdict(decoding)], ensure_ascii=False, sort_keys=True)
    return hashlib.sha256(payload.encode("utf-8")).hexdigest()[:32]


def format_cost(cost: float) -> str:
    """Example: format_cost(0.0123) -> '$0.0123'; format_cost(12.5) -> '$12.50'"""
    return f"${cost:.2f}" if cost >= 1 else f"${cost:.4f}"
