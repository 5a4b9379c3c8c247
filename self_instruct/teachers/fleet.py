"""Several OpenAI-compatible endpoints behind one teacher, and which of them takes each request.

--base_url names them (one URL, several separated by commas, or a file of them). Each request goes to
the least-loaded endpoint that may take one (in flight against its adaptive limit); an endpoint
failing BENCH_AFTER times in a row rests, for doubling spells, while another one is healthy, and
after the rest one probe request decides whether it is back. The last endpoint up is never benched.
An endpoint with a fault no retry can mend (faults.permanent_reason) is retired for the run: it
takes no more requests, and when every endpoint is retired the fleet is down, and every request
waiting on it (for an endpoint, or in a backoff) raises TeacherError with the line that says why.

Each endpoint holds its own clients (client.py), one per CONNECTIONS_PER_CLIENT requests it may have
out. What a request says on the wire is openai_compat's business, not this one's.
"""
from __future__ import annotations

import asyncio
import itertools
import re
import time
from pathlib import Path
from typing import Callable, Sequence

from ..errors import ConfigError, TeacherError
from ..io.secrets import redact_url
from .client import Client
from .rate_limits import AdaptiveLimit

_URL = re.compile(r"https?://[^/\s]")
CONNECTIONS_PER_CLIENT = 16  # an endpoint's requests share one HTTP client per this many (see Endpoint)
# Failures in a row that bench an endpoint (while another one is healthy).
BENCH_AFTER = 3


def parse_base_urls(base_url: str | Sequence[str] | None) -> list[str | None]:
    """The endpoints --base_url names: one URL, several separated by commas, or a file holding
    one a line (blank lines and # comments skipped). None is OpenAI's own.

    >>> parse_base_urls("http://a:8000/v1, http://b:8000/v1")
    ['http://a:8000/v1', 'http://b:8000/v1']
    """
    if base_url is None:
        return [None]
    if isinstance(base_url, str):
        text = base_url.strip()
        if text and not _URL.match(text) and "," not in text:
            return _read_url_file(text)
        named = [("--base_url", url.strip()) for url in text.split(",") if url.strip()]
    else:
        named = [("--base_url", str(url).strip()) for url in base_url]
    return _checked_urls(named)


def _read_url_file(path: str) -> list[str | None]:
    file = Path(path)
    if not file.is_file():
        raise ConfigError(
            f"--base_url must be an http:// or https:// URL, several separated by commas, or a file of them "
            f"(got {redact_url(path)!r}, which is none of these)")
    named = []
    for lineno, line in enumerate(file.read_text(encoding="utf-8").split("\n"), start=1):
        url = line.strip()
        if url and not url.startswith("#"):
            named.append((f"{path}:{lineno}", url))
    if not named:
        raise ConfigError(f"{path}: no URL in the file (one http:// or https:// URL a line)")
    return _checked_urls(named)


def _checked_urls(named: list[tuple[str, str]]) -> list[str | None]:
    seen: set[str] = set()
    for where, url in named:
        if not _URL.match(url):
            raise ConfigError(f"{where}: not an http:// or https:// URL such as http://127.0.0.1:8000/v1 (got {redact_url(url)!r})")
        if url.rstrip("/") in seen:
            raise ConfigError(f"{where}: {redact_url(url)} is listed twice")
        seen.add(url.rstrip("/"))
    if not named:
        raise ConfigError("--base_url names no URL")
    return [url for _, url in named]


class Endpoint:
    """One server of the fleet: its clients, its limit, its health and its counters.

    Requests take the endpoint's clients in turn. One HTTP connection pool probes every idle
    socket of its own each time a request starts or ends, so a pool of 128 connections spent a
    quarter of the event loop's time on those probes (benchmarks/loop.py); pools of at most
    CONNECTIONS_PER_CLIENT keep that cost flat whatever --max_concurrency is.
    """

    def __init__(self, url: str | None, new_client: Callable[[], Client], maximum: int):
        self.url = url
        self.clients = [new_client() for _ in range(-(-maximum // CONNECTIONS_PER_CLIENT))]
        self._turn = itertools.cycle(self.clients)
        self.name = redact_url(url) or "api.openai.com"
        self.limit = AdaptiveLimit(maximum)
        self.in_flight = self.streaming = 0
        self.requests = self.failures = self.benched = self.withdrawn = 0
        self.failing = 0  # failures in a row
        self.resume_at = 0.0  # benched or asked to wait (Retry-After) until then
        self.bench_spell = 0.0
        self.probing = False  # back from the bench: one request decides
        self.first_token: float | None = None  # the quickest first token seen, seconds
        self.stream = self.stream_usage = True
        self.json_mode = True  # response_format, until the server refuses it
        self.proven = False  # it has answered a completion: it is an OpenAI API
        self.cut_short = 0  # replies in a row cut short before any text
        self.retired: str | None = None  # why no request to it can succeed, once that is known

    @property
    def client(self) -> Client:
        """The client for the next request."""
        return next(self._turn)

    def up(self, now: float) -> bool:
        return self.retired is None and now >= self.resume_at

    def can_take(self, now: float) -> bool:
        return self.up(now) and self.in_flight < (1 if self.probing else self.limit.value)

    def stats(self) -> dict:
        stats = {"requests": self.requests, "failures": self.failures, "benched": self.benched,
                 "withdrawn": self.withdrawn, "concurrency": self.limit.value}
        return stats | ({"retired": self.retired} if self.retired else {})


class Fleet:
    """The endpoints and who gets the next request: the least loaded (in flight against its
    limit) that may take one, the total in flight never above max_concurrency."""

    def __init__(self, endpoints: list[Endpoint], max_concurrency: int, bench_initial: float, bench_max: float):
        self.endpoints, self.max_concurrency = endpoints, max_concurrency
        self.bench_initial, self.bench_max = bench_initial, bench_max
        self._wakeup: asyncio.Event | None = None
        self._down: asyncio.Event | None = None
        self._loop = None
        self.down: str | None = None  # every endpoint is retired: the line the run stops with

    @property
    def concurrency(self) -> int:
        now = time.monotonic()
        working = [ep.limit.value for ep in self.endpoints if ep.up(now)] or [1]
        return min(self.max_concurrency, sum(working))

    async def acquire(self, avoid: Endpoint | None = None) -> Endpoint:
        """An endpoint for one request, waiting until one may take it; `avoid` (where the last
        attempt failed) only when no other one can."""
        wakeup = self._event()
        while (endpoint := self._pick(avoid)) is None:
            if self.down:
                raise TeacherError(self.down)
            wakeup.clear()
            try:
                await asyncio.wait_for(wakeup.wait(), self._until_resume())
            except asyncio.TimeoutError:
                pass  # a bench or a pause ended
        endpoint.in_flight += 1
        return endpoint

    def release(self, endpoint: Endpoint) -> None:
        endpoint.in_flight -= 1
        self.wake()

    def wake(self) -> None:
        if self._wakeup is not None:
            self._wakeup.set()

    def _event(self) -> asyncio.Event:
        loop = asyncio.get_running_loop()
        if self._loop is not loop:  # asyncio events belong to one event loop
            self._loop, self._wakeup, self._down = loop, asyncio.Event(), asyncio.Event()
            if self.down:
                self._down.set()
        return self._wakeup

    async def sleep(self, seconds: float) -> None:
        """A backoff: `seconds`, or until the fleet is down, when waiting serves nothing."""
        self._event()
        try:
            await asyncio.wait_for(self._down.wait(), seconds)
        except asyncio.TimeoutError:
            pass

    def _pick(self, avoid: Endpoint | None) -> Endpoint | None:
        if sum(ep.in_flight for ep in self.endpoints) >= self.max_concurrency:
            return None
        now = time.monotonic()
        ready = [ep for ep in self.endpoints if ep.can_take(now)]
        if len(ready) > 1 and avoid in ready:
            ready.remove(avoid)
        return min(ready, key=lambda ep: (ep.in_flight / ep.limit.value, ep.in_flight, ep.requests), default=None)

    def _until_resume(self) -> float | None:
        now = time.monotonic()
        waits = [ep.resume_at - now for ep in self.endpoints if ep.retired is None and ep.resume_at > now]
        return max(min(waits), 1e-3) if waits else None

    def another_up(self, endpoint: Endpoint | None) -> bool:
        now = time.monotonic()
        return any(ep is not endpoint and ep.up(now) for ep in self.endpoints)

    def succeeded(self, endpoint: Endpoint) -> None:
        endpoint.failing = 0
        if endpoint.probing:
            endpoint.probing, endpoint.bench_spell = False, 0.0
        endpoint.limit.succeed()
        self.wake()

    def failed(self, endpoint: Endpoint, unhealthy: bool) -> None:
        endpoint.failures += 1
        if not unhealthy:
            return
        endpoint.failing += 1
        # The last endpoint up is never benched: resting it would stop the run, not spare it.
        if (endpoint.probing or endpoint.failing >= BENCH_AFTER) and self.another_up(endpoint):
            self.bench(endpoint)

    def bench(self, endpoint: Endpoint) -> None:
        endpoint.bench_spell = min(self.bench_max, endpoint.bench_spell * 2 or self.bench_initial)
        endpoint.resume_at = time.monotonic() + endpoint.bench_spell
        endpoint.benched += 1
        endpoint.probing, endpoint.failing = True, 0

    def retire(self, endpoint: Endpoint, reason: str) -> None:
        """Take an endpoint out for the run: no request to it can succeed. With none left the
        fleet is down, and the line it stops with gives each endpoint's reason."""
        if endpoint.retired is None:
            endpoint.retired = reason
            endpoint.benched += 1
        if all(ep.retired for ep in self.endpoints):
            self.down = "; ".join(dict.fromkeys(ep.retired for ep in self.endpoints))
            self._event()
            self._down.set()
        self.wake()

    def pause(self, endpoint: Endpoint, seconds: float) -> None:
        endpoint.resume_at = max(endpoint.resume_at, time.monotonic() + seconds)

    async def aclose(self) -> None:
        """Close every endpoint's clients, once, when the run ends."""
        for endpoint in self.endpoints:
            for client in endpoint.clients:
                await client.close()
