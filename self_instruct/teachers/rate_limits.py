"""How fast requests may go out: client-side request and token rates over a rolling minute
(RateLimits), and how many requests one endpoint gets at once (AdaptiveLimit).

The rates are the user's (--requests_per_minute, --tokens_per_minute), kept on our side so that a
server counting per minute never has cause to answer 429. The concurrency limit is learned from the
server: cut on 429s and timeouts, capped at the slots it shows when requests queue there, grown back
after successes. Both are plain bookkeeping with no I/O, so tests drive them on a virtual clock.
"""
from __future__ import annotations

import asyncio
import math
import time
from typing import Awaitable, Callable

# Successes in a row after which an endpoint whose slot count was learned is tried with one more.
PROBE_AFTER = 100


def estimate_tokens(text: str) -> int:
    """An upper guess of a text's tokens before the server counts them (English runs near 4
    characters a token; 3 leaves room for code and other languages).

    >>> estimate_tokens("Name three primary colors.")
    9
    """
    return len(text) // 3 + 1


class _Grant:
    """One request's share of a window: since when it counts, how much, and whether its answer
    is still to come (till then it cannot expire: the server may not have counted it yet)."""

    __slots__ = ("time", "amount", "pending")

    def __init__(self, time: float, amount: float):
        self.time, self.amount, self.pending = time, amount, True


class RollingWindow:
    """At most `limit` units (requests or tokens) within any `period` seconds, as the server
    counts them. A rolling window rather than a refilling bucket: a full bucket after an idle
    spell lets twice the limit through in one minute, which a server counting per minute answers
    with 429s. The server counts a request when it arrives, some time between our send and its
    answer, so a grant leaves the window a period after the answer began, not after the send.
    """

    def __init__(self, limit: float, period: float = 60.0):
        self.limit, self.period = limit, period
        self._grants: list[_Grant] = []

    def delay(self, amount: float, now: float) -> float:
        """Seconds until `amount` fits, or until it is worth looking again; 0 when it fits now. An
        amount above the whole limit goes out alone, once the window is empty (else it never would)."""
        self._grants = [g for g in self._grants if g.pending or g.time > now - self.period]
        excess = sum(g.amount for g in self._grants) + amount - self.limit
        if excess <= 0 or not self._grants:
            return 0.0
        for grant in sorted(self._grants, key=lambda g: (g.pending, g.time)):
            excess -= grant.amount
            if excess <= 0:
                break
        if grant.pending:  # freed only once answered: look again soon
            return self.period / 60
        return max(grant.time + self.period - now, self.period * 1e-6)

    def grant(self, amount: float, now: float) -> _Grant:
        grant = _Grant(now, amount)
        self._grants.append(grant)
        return grant


class Ticket:
    """What one request holds of the rate limits until settled."""

    def __init__(self, request: _Grant | None, tokens: _Grant | None):
        self.request, self.tokens = request, tokens


class RateLimits:
    """Client-side requests and tokens per minute. A request is granted when both fit; tokens are
    estimated before sending (prompt + max_tokens) and corrected to the usage reported after.

    The clock and the sleep are parameters so that a test can run minutes of traffic in no time.
    """

    def __init__(self, requests_per_minute: float | None = None, tokens_per_minute: float | None = None,
                 period: float = 60.0, clock: Callable[[], float] = time.monotonic,
                 sleep: Callable[[float], Awaitable] = asyncio.sleep):
        self.requests = RollingWindow(requests_per_minute, period) if requests_per_minute else None
        self.tokens = RollingWindow(tokens_per_minute, period) if tokens_per_minute else None
        self._clock, self._sleep = clock, sleep
        self._lock: asyncio.Lock | None = None
        self._loop = None

    async def acquire(self, tokens: int) -> Ticket:
        """Wait until one more request of `tokens` (estimated) fits."""
        loop = asyncio.get_running_loop()
        if self._loop is not loop:  # asyncio locks belong to one event loop
            self._loop, self._lock = loop, asyncio.Lock()
        async with self._lock:  # first come, first served
            while (wait := self._delay(tokens)) > 0:
                await self._sleep(wait)
            now = self._clock()
            return Ticket(self.requests.grant(1, now) if self.requests else None,
                          self.tokens.grant(tokens, now) if self.tokens else None)

    def _delay(self, tokens: int) -> float:
        now = self._clock()
        return max(self.requests.delay(1, now) if self.requests else 0.0, self.tokens.delay(tokens, now) if self.tokens else 0.0)

    def answered(self, ticket: Ticket | None) -> None:
        """The answer began (headers, or an error): the server has counted the request by now."""
        for grant in (ticket.request, ticket.tokens) if ticket else ():
            if grant is not None and grant.pending:
                grant.time, grant.pending = self._clock(), False

    def settle(self, ticket: Ticket | None, tokens: int) -> None:
        """Count the tokens the request really used (0 for a failed one) instead of the estimate."""
        self.answered(ticket)
        if ticket and ticket.tokens is not None:
            ticket.tokens.amount = tokens


class AdaptiveLimit:
    """How many requests one endpoint gets at once. It starts at the most allowed and is cut by a
    quarter on a 429 or a timeout (once for the requests sent before the cut: a burst of 429s is
    one signal), set to the server's slot count when requests queue there, and grown by one after
    as many successes in a row as the limit, up to the slots learned (tried with one more after
    PROBE_AFTER successes) and never above `maximum`.

    >>> limit = AdaptiveLimit(8); limit.cut(limit.epoch); limit.value
    6
    """

    def __init__(self, maximum: int):
        self.maximum = self.value = self.slots = maximum
        self.epoch = 0  # bumped at every cut: a signal from a request sent before it is stale
        self._streak = 0

    def cut(self, sent_epoch: int) -> None:
        if sent_epoch == self.epoch:
            self._lower(max(1, math.floor(self.value * 0.75)))

    def cap(self, slots: int) -> None:
        """The server serves `slots` requests at a time: never send it more until it shows otherwise."""
        self.slots = max(1, slots)
        self._lower(min(self.value, self.slots))

    def _lower(self, value: int) -> None:
        self.value, self._streak = value, 0
        self.epoch += 1

    def succeed(self) -> None:
        self._streak += 1
        if self.value < min(self.slots, self.maximum) and self._streak >= self.value:
            self.value, self._streak = self.value + 1, 0
        elif self.value == self.slots < self.maximum and self._streak >= PROBE_AFTER:
            self.slots = self.value = self.value + 1
            self._streak = 0
