"""Any OpenAI-compatible server (OpenAI, vLLM, Ollama, llama.cpp's server, TGI), or a fleet of
them, with the completions or the chat API: the `openai` SDK's clients, settings and exceptions,
each completion sent through the SDK's HTTP client (client.py says why).

How a request goes out:
- to the least-loaded endpoint of the fleet that is not benched (fleet.py);
- within that endpoint's adaptive concurrency and the client-side request and token rates,
  counted over a rolling minute (rate_limits.py);
- streamed, so that `request_timeout` limits silence, not length: a 3,000-token reply at 30
  tokens/s is fine as long as tokens keep coming (a total cap still ends a reply that never does).
  A server that refuses streaming, its usage option or JSON mode is asked again without.

A reply is read for what it is, whatever was asked: an event stream is assembled chunk by chunk,
and a JSON body is a whole reply, so a server (or a proxy) that answers a stream request with one
JSON body, or a plain request with a stream, is served as well as any other. Only a real stream
has a limit on silence alone; a whole body must come within `request_timeout`, as with --no_stream.

This module holds that wire format and the retry loop around it. The SDK's own retries are turned
off: tenacity retries here, so that every fault is counted, Retry-After is honoured, and a prompt
that keeps failing comes back as a failed Completion instead of stopping the run (self-instruct
drops such prompts silently; Alpaca retries forever). Which faults are retried, which drop the
prompt and which stop the run is faults.py's to say. A retry goes to another endpoint at once
when one is healthy. A fault no retry can mend retires its endpoint, and with none left every
request, sent or waiting in a backoff, raises TeacherError at once: the run stops in seconds
with one line, not after rounds of backoff.
"""
from __future__ import annotations

import asyncio
import json
import random
import re
import time
from functools import partial
from typing import Sequence

import openai
from tenacity import (
    AsyncRetrying,
    RetryCallState,
    retry_if_exception,
    stop_after_attempt,
)

from ..errors import ConfigError, TeacherError
from ..io.secrets import redact
from ..types import Completion, Decoding
from .base import Teacher
from .faults import (
    CUT_SHORT_AFTER,
    FAULTS,
    BadReply,
    Interrupted,
    NoRoom,
    NotAnAPI,
    SlowReply,
    cut_short_reason,
    describe_body,
    fault_name,
    is_context_error,
    is_transient,
    is_unhealthy,
    permanent_reason,
    retry_after,
    room_left,
    server_message,
    shrink_max_tokens,
)
from .client import Client, http_errors, read_body
from .fleet import Endpoint, Fleet, parse_base_urls
from .rate_limits import RateLimits, Ticket, estimate_tokens

# A request still waiting for its first token after QUEUE_FACTOR times the quickest first token
# seen on its endpoint (and at least QUEUE_FLOOR seconds), while other requests there stream,
# is queued behind them: the server serves no more at once than are streaming.
QUEUE_FACTOR, QUEUE_FLOOR, QUEUE_POLL = 4.0, 1.0, 0.1
# How long the rest of a body after a stream's "[DONE]" may take to come, as the SDK allows.
DRAIN_TIMEOUT = 0.1
# How long check() waits for each endpoint's /models before calling it unreachable.
CHECK_TIMEOUT = 10.0


class _Withdrawn(Exception):
    """A request pulled back from a server queue, to wait its turn here instead of timing out there."""


class _Downgrade(Exception):
    """The endpoint refused streaming or stream_options; ask it again without."""


class _BudgetSpent(Exception):
    """before_retry said no: the run's budget has no request left for another attempt."""


class _Retired(Exception):
    """The endpoint was retired under this request; another one takes it, at no attempt's cost."""


class _Job:
    """One prompt's way through its attempts."""

    def __init__(self, max_tokens: int):
        self.max_tokens = max_tokens
        self.faults: list[str] = []
        self.failed_on: Endpoint | None = None
        self.ticket: Ticket | None = None  # its share of the rate limits, for the attempt in hand


class _Reply:
    """A streamed reply as it arrives."""

    def __init__(self, sent: float):
        self.sent, self.started = sent, None
        self.parts: list[str] = []
        self.chunks = 0
        self.finish_reason: str | None = None
        self.usage = None
        self.choices_seen = False
        self.whole = False  # one JSON body, not a stream of chunks

    def take_event(self, data: str, chat: bool) -> bool:
        """Take one event's data; False at the stream's "[DONE]"."""
        if data.startswith("[DONE]"):
            return False
        self.take_chunk(json.loads(data), chat)
        return True

    def take_events(self, payloads: list[str], chat: bool) -> bool:
        """Take the data of the events that came in one read, as take_event would one by one, with
        one call to the JSON decoder for all of them; False once "[DONE]" came (nothing after it
        is read)."""
        done = next((i for i, data in enumerate(payloads) if data.startswith("[DONE]")), -1)
        if done >= 0:
            payloads = payloads[:done]
        chunks = None
        if len(payloads) > 1:
            try:  # equal counts: each event held exactly one JSON value (one holding none breaks the array)
                chunks = json.loads(f"[{','.join(payloads)}]")
            except (ValueError, RecursionError):
                pass
            if not isinstance(chunks, list) or len(chunks) != len(payloads):
                chunks = None
        if chunks is None:  # one event, or one that is not JSON: read one by one, to fail where it fails
            chunks = [json.loads(data) for data in payloads]
        for chunk in chunks:
            self.take_chunk(chunk, chat)
        return done < 0

    def take_chunk(self, chunk, chat: bool) -> None:
        if isinstance(chunk, dict) and chunk.get("error"):
            raise BadReply("stream_error", f"the stream carried an error: {str(chunk['error'])[:160]}")
        self.add(chunk, chat)

    async def take_stream(self, response, endpoint: Endpoint, chat: bool) -> None:
        """Read an event stream as its bytes arrive, the events of each read decoded at once. The
        SDK's event iterator was the largest part of a request's CPU at many requests a second
        (benchmarks/throughput.py): its event decoder alone takes 6-7 us an event, this 2.2 (a
        reply of one-word events read at once, JSON decoding included). The HTTP library's errors are
        raised as the SDK raises them for a stream."""
        timeouts, transport = http_errors()
        chunks = response.aiter_bytes()
        rest, open_ = b"", True
        try:
            async for data in chunks:
                data = rest + data
                if b"\r" in data:  # CR LF or a lone CR ends a line too; a CR last may be half of a CR LF
                    held = data.endswith(b"\r")
                    data = data[:-1] if held else data
                    data = data.replace(b"\r\n", b"\n").replace(b"\r", b"\n") + (b"\r" if held else b"")
                *events, rest = data.split(b"\n\n")
                payloads = [payload for payload in map(_event_payload, events) if payload is not None]
                if not payloads:
                    continue
                if self.started is None:  # the first event: the server is answering this one
                    self.started = time.monotonic()
                    endpoint.streaming += 1
                    waited = self.started - self.sent
                    endpoint.first_token = min(endpoint.first_token or waited, waited)
                if not self.take_events(payloads, chat):
                    open_ = False
                    break
            if open_ and rest.strip():  # a last event without the blank line after it: taken if whole
                for payload in filter(None, [_event_payload(rest)]):
                    try:
                        chunk = json.loads(payload)
                    except ValueError:
                        continue  # cut short: dropped, as the SDK drops it
                    self.take_chunk(chunk, chat)
            if not open_:  # after "[DONE]": what is left of the body, briefly, so the connection can be reused
                try:
                    await _drain(chunks)
                except asyncio.TimeoutError:
                    pass
        except timeouts as exc:
            if open_:
                raise openai.APITimeoutError(request=response.request) from exc
        except transport as exc:
            if open_:
                raise openai.APIConnectionError(request=response.request) from exc
        finally:
            await chunks.aclose()

    def add(self, chunk, chat: bool) -> None:
        """Take one chunk (a dict, as decoded from the event's JSON)."""
        if not isinstance(chunk, dict) or not isinstance(chunk.get("choices", []), list):
            raise BadReply("malformed", f"a stream chunk is not a completion chunk (got {type(chunk).__name__})")
        if isinstance(chunk.get("usage"), dict):
            self.usage = chunk["usage"]
        if not chunk.get("choices"):
            return  # the usage chunk, or a keep-alive
        self.choices_seen = True
        choice = chunk["choices"][0]
        if not isinstance(choice, dict):
            raise BadReply("malformed", f"a stream chunk's choice is {type(choice).__name__}, not an object")
        holder = choice.get("delta") if chat else choice
        piece = holder.get("content" if chat else "text") if isinstance(holder, dict) else None
        if piece is not None and not isinstance(piece, str):
            raise BadReply("malformed", f"a stream chunk's text is {type(piece).__name__}, not a string")
        if piece:
            self.parts.append(piece)
            self.chunks += 1
        if isinstance(choice.get("finish_reason"), str):
            self.finish_reason = choice["finish_reason"]

    def take_body(self, body: bytes, content_type: str, chat: bool) -> None:
        """Take a reply that came as one body, not as an event stream: a JSON completion, or an
        event stream under another content type. Anything else is no API's reply."""
        text = body.decode("utf-8", errors="replace").strip()
        if text[:1] in ("{", "["):
            reply = json.loads(text)  # a body cut short raises JSONDecodeError: a transient fault
            piece, self.finish_reason = _read_reply(reply, chat)
            self.parts, self.usage = [piece], _field(reply, "usage")
            self.choices_seen = self.whole = True
        elif text.startswith(("data:", "event:", "id:", ":")):
            for data in _event_data(text):
                if not self.take_event(data, chat):
                    break
        elif not text:
            raise BadReply("empty_choices", "the reply is empty")
        else:
            raise NotAnAPI(describe_body(text, content_type))


class OpenAITeacher(Teacher):
    """A teacher behind one or more OpenAI-compatible endpoints.

    `base_url` is one URL, several separated by commas, a file of them, or a list.
    """

    def __init__(
        self,
        model: str,
        *,
        base_url: str | Sequence[str] | None = None,
        api_key: str | None = None,
        api: str = "completions",
        max_concurrency: int = 8,
        max_attempts: int = 6,
        request_timeout: float = 120.0,
        backoff_initial: float = 1.0,
        backoff_max: float = 30.0,
        requests_per_minute: float | None = None,
        tokens_per_minute: float | None = None,
        stream: bool = True,
        total_timeout: float | None = None,
        bench_initial: float = 5.0,
        bench_max: float = 300.0,
        rate_period: float = 60.0,
    ):
        if api not in ("completions", "chat"):
            raise ConfigError(f"--api must be 'completions' or 'chat' (got {api!r})")
        for name, value in (("requests_per_minute", requests_per_minute), ("tokens_per_minute", tokens_per_minute)):
            if value is not None and (isinstance(value, bool) or not isinstance(value, (int, float)) or value <= 0):
                raise ConfigError(f"--{name} must be a positive number when given (got {value!r})")
        self.model_id = model
        self.api = api
        self.max_attempts = max_attempts
        self.backoff_initial, self.backoff_max = backoff_initial, backoff_max
        self.request_timeout = request_timeout
        self.total_timeout = total_timeout or 10 * request_timeout
        self.requests_per_minute, self.tokens_per_minute = requests_per_minute, tokens_per_minute
        self._jitter = random.Random()
        # Kept only to scrub it from error texts: some servers echo the key they refused.
        self._api_key = api_key
        urls = parse_base_urls(base_url)
        # Local servers (vLLM, Ollama, llama.cpp) take any key; the SDK insists on one. The
        # timeout bounds each wait for bytes, so on a stream it is a limit on silence.
        endpoints = [Endpoint(url, partial(Client, url, api_key or "not-needed", request_timeout), max_concurrency)
                     for url in urls]
        for endpoint in endpoints:
            endpoint.stream = stream
        self._fleet = Fleet(endpoints, max_concurrency, bench_initial, bench_max)
        self._rates = RateLimits(requests_per_minute, tokens_per_minute, rate_period) if requests_per_minute or tokens_per_minute else None

    @property
    def concurrency(self) -> int:
        return self._fleet.concurrency

    def endpoint_stats(self) -> dict[str, dict]:
        """Per endpoint (URL with any password masked): requests sent, failed attempts, times
        benched, requests pulled back from a server queue, and its concurrency now."""
        return {ep.name: ep.stats() for ep in self._fleet.endpoints}

    def describe(self) -> dict:
        names = [ep.name for ep in self._fleet.endpoints]
        info = {"model": self.model_id, "backend": "openai", "api": self.api,
                "base_url": None if names == ["api.openai.com"] else ",".join(names)}
        if self.requests_per_minute or self.tokens_per_minute:
            info.update(requests_per_minute=self.requests_per_minute, tokens_per_minute=self.tokens_per_minute)
        return info

    async def check(self) -> None:
        """Fail fast, before any output is written, when the key is refused or no endpoint can be
        reached; an endpoint that cannot be reached while others can starts benched, and one
        that refuses the key while others take it is retired."""
        endpoints = self._fleet.endpoints
        outcomes = await asyncio.gather(*(self._check_one(ep) for ep in endpoints))
        refused = [(ep, why) for ep, (kind, why) in zip(endpoints, outcomes) if kind == "refused"]
        down = [(ep, why) for ep, (kind, why) in zip(endpoints, outcomes) if kind == "down"]
        if len(refused) + len(down) == len(endpoints):
            if refused:
                raise ConfigError(refused[0][1])
            where = ", ".join(f"{ep.name} ({problem})" for ep, problem in down)
            raise ConfigError(f"cannot reach the teacher at {where}; start the server or fix --base_url")
        for ep, why in refused:
            self._fleet.retire(ep, why)
        for ep, _ in down:
            self._fleet.bench(ep)

    async def _check_one(self, endpoint: Endpoint) -> tuple[str | None, str]:
        """("refused", why), ("down", the connection error's name) or (None, "")."""
        try:
            # A plain GET: the SDK's typed model list breaks on a body that is not JSON (a web page).
            await endpoint.client.sdk.with_options(timeout=CHECK_TIMEOUT, max_retries=0).get("/models", cast_to=object)
        except openai.AuthenticationError:
            return "refused", f"the server at {endpoint.name} refused the API key (401); set OPENAI_API_KEY or pass --api_key"
        except openai.APIConnectionError as exc:
            return "down", type(exc).__name__
        except (openai.APIStatusError, openai.APIResponseValidationError, ValueError):
            pass  # some servers have no /models; the first request will tell
        return None, ""

    async def complete(self, prompts: Sequence[str], decoding: Decoding) -> list[Completion]:
        if len(prompts) == 1:  # the engine asks one at a time: no task of its own (a turn of the loop less)
            return [await self._complete_one(prompts[0], decoding)]
        return list(await asyncio.gather(*(self._complete_one(p, decoding) for p in prompts)))

    async def _complete_one(self, prompt: str, decoding: Decoding) -> Completion:
        job = _Job(decoding.max_tokens)
        retrying = AsyncRetrying(
            stop=stop_after_attempt(self.max_attempts),
            wait=lambda state: self._wait(state, job),
            sleep=self._fleet.sleep,  # a backoff ends when the fleet is down: the next attempt says so
            retry=retry_if_exception(lambda e: is_transient(e) or is_context_error(e)),
            reraise=True,
        )
        try:
            async for attempt in retrying:
                with attempt:
                    if attempt.retry_state.attempt_number > 1 and self.before_retry and not await self.before_retry():
                        raise _BudgetSpent()
                    return await self._attempt(prompt, decoding, job)
        except _BudgetSpent:
            after = f" (after {', '.join(job.faults)})" if job.faults else ""
            error = f"budget: no request left to retry this prompt{after}"
            return Completion("", finish_reason="error", error=error, faults=tuple(job.faults))
        except FAULTS as exc:
            # Retries spent, or a refusal no retry can fix (400, 422, a prompt the context cannot
            # hold): this prompt is dropped with the reason in rejected.jsonl and the loop draws
            # fresh prompts.
            error = self._scrub(f"{fault_name(exc)}: {' '.join(str(exc).split())}")
            return Completion("", finish_reason="error", error=error[:200], faults=tuple(job.faults))
        raise AssertionError("unreachable: tenacity either returns or raises")

    def _scrub(self, text: str) -> str:
        if self._api_key:
            text = text.replace(self._api_key, "[api key]")
        return redact(text)

    def _wait(self, state: RetryCallState, job: _Job) -> float:
        exc = state.outcome.exception() if state.outcome else None
        if is_context_error(exc) or isinstance(exc, Interrupted):
            return 0.0  # nothing to wait for: the next attempt asks for fewer tokens, or goes alone
        if self._fleet.another_up(job.failed_on):
            return 0.0  # another endpoint takes the retry now
        asked = retry_after(exc)
        return asked if asked is not None else self._backoff(state.attempt_number)

    def _backoff(self, attempt: int) -> float:
        """Doubling waits from backoff_initial, capped, with jitter in proportion to the first
        wait (tenacity's wait_exponential_jitter adds a flat second, which a local server does
        not need, and renamed its argument between versions)."""
        wait = self.backoff_initial * 2 ** min(attempt - 1, 30)
        return min(wait + self._jitter.uniform(0, self.backoff_initial), self.backoff_max)

    async def _attempt(self, prompt: str, decoding: Decoding, job: _Job) -> Completion:
        """One attempt, on the endpoint the fleet picks (TeacherError when none is left). A request
        withdrawn from a server's queue, or whose endpoint was retired under it, goes back in
        line here: that is not a failed attempt, but it is one more request to count."""
        while True:
            endpoint = await self._fleet.acquire(avoid=job.failed_on)
            try:
                return await self._attempt_on(endpoint, prompt, decoding, job)
            except _Withdrawn:
                endpoint.withdrawn += 1
            except _Retired:
                pass
            finally:
                self._fleet.release(endpoint)
            await self._admit_resend()

    async def _admit_resend(self) -> None:
        """A server saw the prompt once already: sending it again counts against the budget."""
        if self.before_retry and not await self.before_retry():
            raise _BudgetSpent()

    async def _attempt_on(self, endpoint: Endpoint, prompt: str, decoding: Decoding, job: _Job) -> Completion:
        while True:  # once more without streaming when the endpoint refuses it
            epoch = endpoint.limit.epoch
            job.ticket = await self._rates.acquire(estimate_tokens(prompt) + job.max_tokens) if self._rates else None
            endpoint.requests += 1
            try:
                completion = await self._send(endpoint, prompt, decoding, job)
            except asyncio.CancelledError:
                if self._rates:  # it may have been counted: it leaves the window a period from now
                    self._rates.answered(job.ticket)
                raise
            except Exception as exc:
                self._settle(job, 0)
                if isinstance(exc, _Downgrade):
                    await self._admit_resend()
                    continue
                if not isinstance(exc, _Withdrawn):
                    self._failed(endpoint, exc, epoch, job)
                raise
            self._settle(job, completion.prompt_tokens + completion.completion_tokens)
            self._fleet.succeeded(endpoint)
            endpoint.proven = True
            self._count_cut_short(endpoint, completion.finish_reason == "length" and not completion.text.strip())
            return completion

    def _settle(self, job: _Job, tokens: int) -> None:
        if self._rates:
            self._rates.settle(job.ticket, tokens)

    def _failed(self, endpoint: Endpoint, exc: Exception, epoch: int, job: _Job) -> None:
        """Count the fault, adapt the endpoint to it, and say why no retry can help where none can."""
        self._retire_for(endpoint, permanent_reason(exc, endpoint.name, self.model_id, self._path, endpoint.proven))
        name = "context_length" if is_context_error(exc) else fault_name(exc)
        job.faults.append(name)
        job.failed_on = endpoint
        if name == "context_length":
            room = room_left(server_message(exc), job.max_tokens)
            if room is not None and room <= 0:
                self._fleet.failed(endpoint, False)
                self._count_cut_short(endpoint, True)
                raise NoRoom(f"the prompt alone fills the server's context ({server_message(exc)})") from None
            job.max_tokens = shrink_max_tokens(server_message(exc), job.max_tokens)
        if name in ("429", "timeout"):
            endpoint.limit.cut(epoch)
        if isinstance(exc, Interrupted):
            endpoint.limit.cap(max(1, endpoint.streaming))
        asked = retry_after(exc)
        if asked is not None:
            self._fleet.pause(endpoint, asked)
        self._fleet.failed(endpoint, is_unhealthy(exc))

    def _count_cut_short(self, endpoint: Endpoint, cut_short: bool) -> None:
        """An endpoint whose replies keep ending before any text can answer nothing: retire it."""
        endpoint.cut_short = endpoint.cut_short + 1 if cut_short else 0
        if endpoint.cut_short >= CUT_SHORT_AFTER:
            self._retire_for(endpoint, cut_short_reason(endpoint.name, endpoint.cut_short))

    def _retire_for(self, endpoint: Endpoint, reason: str | None) -> None:
        """No request to this endpoint can succeed: out of the fleet. TeacherError when it was the
        last one; else the request goes to another endpoint."""
        if reason is None:
            return
        endpoint.failures += 1
        self._fleet.retire(endpoint, self._scrub(reason))
        if self._fleet.down:
            raise TeacherError(self._fleet.down) from None
        raise _Retired() from None

    @property
    def _path(self) -> str:
        return "/chat/completions" if self.api == "chat" else "/completions"

    async def _send(self, endpoint: Endpoint, prompt: str, decoding: Decoding, job: _Job) -> Completion:
        options = dict(
            model=self.model_id, max_tokens=job.max_tokens, temperature=decoding.temperature, top_p=decoding.top_p,
            presence_penalty=decoding.presence_penalty, frequency_penalty=decoding.frequency_penalty,
        )
        if decoding.stop:
            options["stop"] = list(decoding.stop)
        if decoding.seed is not None:
            options["seed"] = decoding.seed
        if self.api == "chat":
            options["messages"] = [{"role": "user", "content": prompt}]
            if decoding.json and endpoint.json_mode:
                options["response_format"] = {"type": "json_object"}
        else:
            options["prompt"] = prompt
        streamed, with_usage = endpoint.stream, endpoint.stream_usage  # other requests may change them meanwhile
        if streamed:
            options["stream"] = True
            if with_usage:
                options["stream_options"] = {"include_usage": True}
        try:
            return await _within(self.total_timeout, self._exchange(endpoint, options, prompt, job))
        except asyncio.TimeoutError:
            raise SlowReply(f"the reply was still coming after {self.total_timeout:g} s") from None
        except (openai.BadRequestError, openai.UnprocessableEntityError) as exc:
            if not is_context_error(exc):
                self._downgrade(endpoint, exc, with_usage, streamed, "response_format" in options)
            raise

    @staticmethod
    def _downgrade(endpoint: Endpoint, exc: Exception, with_usage: bool, streamed: bool, json_mode: bool) -> None:
        """Servers without streaming (or without its usage option, or without JSON mode) refuse
        the request with a 400 naming the parameter: ask them again without it."""
        body = getattr(exc, "body", None)
        said = f"{server_message(exc)} {body.get('param') if isinstance(body, dict) else ''}"
        if "response_format" in said and json_mode:
            endpoint.json_mode = False  # the prompt asks for JSON too; the reply is parsed tolerantly
            raise _Downgrade() from None
        if not streamed:
            return
        if "stream_options" in said and with_usage:
            endpoint.stream_usage = False
            raise _Downgrade() from None
        if re.search(r"\bstream\b", said):
            endpoint.stream = False
            raise _Downgrade() from None

    async def _exchange(self, endpoint: Endpoint, options: dict, prompt: str, job: _Job) -> Completion:
        """Send one request and read its reply, a stream or a whole body, whichever comes. While it
        waits for its first token, it watches for queueing behind the other requests on its
        endpoint and withdraws when the endpoint is over its limit."""
        reply = _Reply(time.monotonic())
        # The body is opened as a stream whatever was asked, so that its content type decides how
        # it is read. Chunks and bodies are read as plain dicts: the SDK's typed objects cost
        # about 100 times more CPU each (0.15-0.7 ms against 7 us measured), which a fast server
        # at many tokens a second in many streams would turn into the client's bottleneck.
        opening = endpoint.client.open(self._path, options)
        reading = asyncio.ensure_future(self._read(endpoint, opening, reply, job))
        try:
            # No request counts as queued before QUEUE_FLOOR: no need to look before then (a reply
            # within it, the usual case, costs no wake-up at all).
            first_look = QUEUE_FLOOR
            while not reading.done():
                await asyncio.wait({reading}, timeout=None if reply.started else first_look or QUEUE_POLL)
                first_look = 0.0
                if not reply.started and not reading.done():
                    self._watch_queue(endpoint, time.monotonic() - reply.sent)
        finally:
            reading.cancel()  # no-op once it is done
            await asyncio.gather(reading, return_exceptions=True)  # its outcome is taken in every case
        reading.result()
        text = "".join(reply.parts)
        if not reply.choices_seen or (not text and reply.finish_reason is None):
            raise BadReply("empty_choices", "the stream ended without a choice holding text")
        if reply.finish_reason is None and not reply.whole and endpoint.in_flight > 1:
            raise Interrupted(f"the stream ended without a finish_reason after {reply.chunks} chunks while other requests waited")
        usage = reply.usage
        return Completion(
            text, finish_reason=reply.finish_reason,
            # Servers that do not report usage: our estimates, one token a chunk of a stream.
            prompt_tokens=_token_count(usage, "prompt_tokens") if usage else estimate_tokens(prompt),
            completion_tokens=_token_count(usage, "completion_tokens") if usage else
            estimate_tokens(text) if reply.whole else reply.chunks,
            faults=tuple(job.faults),
        )

    async def _read(self, endpoint: Endpoint, opening, reply: _Reply, job: _Job) -> None:
        response = await opening
        if self._rates:
            self._rates.answered(job.ticket)
        try:
            kind = response.headers.get("content-type", "")
            if "text/event-stream" not in kind:
                reply.take_body(await read_body(response), kind, chat=self.api == "chat")
                return
            await reply.take_stream(response, endpoint, chat=self.api == "chat")
        finally:
            if reply.started is not None:
                endpoint.streaming -= 1
            await response.aclose()

    @staticmethod
    def _watch_queue(endpoint: Endpoint, waited: float) -> None:
        """No first token yet: if others stream meanwhile for far longer than a first token takes,
        the server serves only those; withdraw while the endpoint has more out than that."""
        if endpoint.first_token is None or not endpoint.streaming:
            return
        if waited <= max(QUEUE_FLOOR, QUEUE_FACTOR * endpoint.first_token):
            return
        endpoint.limit.cap(endpoint.streaming)
        if endpoint.in_flight > endpoint.limit.value:
            raise _Withdrawn()

    async def aclose(self) -> None:
        await self._fleet.aclose()


def _read_reply(response, chat: bool) -> tuple[str, str | None]:
    """Text and finish_reason of the first choice of a whole reply. The shape is checked here and
    a wrong one raised as a retryable BadReply. A choice with no text that ended at the length
    limit (a reasoning model that spent max_tokens thinking) is a reply cut short, with text "".

    >>> _read_reply({"choices": [{"text": " Name a river.", "finish_reason": "stop"}]}, chat=False)
    (' Name a river.', 'stop')
    """
    choices = _field(response, "choices")
    if not isinstance(choices, list):
        error = _field(response, "error")
        said = f": {' '.join(str(error).split())[:160]}" if error else f" (got {type(response).__name__} without a list of choices)"
        raise BadReply("malformed", f"the reply is not a completion{said}")
    if not choices:
        raise BadReply("empty_choices", "the reply has no choices")
    choice = choices[0]
    holder = _field(choice, "message") if chat else choice
    text = _field(holder, "content" if chat else "text")
    finish_reason = _field(choice, "finish_reason")
    finish_reason = finish_reason if isinstance(finish_reason, str) else None
    if text is None and finish_reason == "length":
        text = ""
    if text is None:
        raise BadReply("empty_choices", "the first choice holds no text")
    if not isinstance(text, str):
        raise BadReply("malformed", f"the first choice's text is {type(text).__name__}, not a string")
    return text, finish_reason


def _event_data(text: str) -> list[str]:
    """The data of each server-sent event in a body read whole: an event is the lines up to a
    blank one, its data the values of its "data:" lines joined by newlines (the SSE standard).

    >>> _event_data('data: {"a": 1}\\n\\n: keep-alive\\n\\ndata: [DONE]\\n\\n')
    ['{"a": 1}', '[DONE]']
    """
    events = []
    for block in text.replace("\r\n", "\n").replace("\r", "\n").split("\n\n"):
        lines = [line[5:].removeprefix(" ") for line in block.split("\n") if line.startswith("data:")]
        if lines:
            events.append("\n".join(lines))
    return events


def _event_payload(block: bytes) -> str | None:
    """The data of one server-sent event (its lines up to a blank one), None when it has none
    (a comment, a keep-alive). Bytes that are not UTF-8 are replaced, and fail as JSON.

    >>> _event_payload(b'data: {"a": 1}'), _event_payload(b'event: x\\ndata:1\\ndata: 2'), _event_payload(b': ping')
    ('{"a": 1}', '1\\n2', None)
    """
    if block.startswith(b"data: ") and b"\n" not in block:  # the usual event: one data line
        return block[6:].decode("utf-8", errors="replace")
    lines = [line[5:].removeprefix(b" ") for line in block.split(b"\n") if line.startswith(b"data:")]
    return b"\n".join(lines).decode("utf-8", errors="replace") if lines else None


async def _drain(chunks) -> None:
    """Read what is left of a body for at most DRAIN_TIMEOUT (asyncio.TimeoutError after)."""
    await _within(DRAIN_TIMEOUT, _drain_all(chunks))


async def _drain_all(chunks) -> None:
    async for _ in chunks:
        pass


async def _within(seconds: float, work):
    """Await `work` for at most `seconds` (asyncio.TimeoutError after). From Python 3.11 in this
    task: wait_for runs it in a task of its own there, a turn of the event loop more each way,
    which a loop busy with many requests makes milliseconds."""
    if not hasattr(asyncio, "timeout"):
        return await asyncio.wait_for(work, seconds)
    async with asyncio.timeout(seconds):
        return await work


def _field(obj, name: str):
    """A field of a reply's JSON, as a dict (what comes back) or an SDK object."""
    return obj.get(name) if isinstance(obj, dict) else getattr(obj, name, None)


def _token_count(usage, name: str) -> int:
    value = usage.get(name) if isinstance(usage, dict) else getattr(usage, name, None)
    return value if isinstance(value, int) and not isinstance(value, bool) and value >= 0 else 0
