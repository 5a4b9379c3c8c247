"""Any OpenAI-compatible server (OpenAI, vLLM, Ollama, llama.cpp's server, TGI) through the
`openai` SDK, with the completions or the chat API.

The SDK's own retries are turned off: tenacity retries here, so that every fault is counted,
Retry-After is honoured, and a prompt that keeps failing comes back as a failed Completion
instead of stopping the run (self-instruct drops such prompts silently; Alpaca retries forever).
"""
from __future__ import annotations

import asyncio
import json
import random
import re
from typing import Sequence

import openai
from tenacity import AsyncRetrying, RetryCallState, retry_if_exception, stop_after_attempt

from ..errors import ConfigError, TeacherError
from ..types import Completion, Decoding
from .base import Teacher

# Servers phrase the context overflow differently: OpenAI "maximum context length", vLLM
# "This model's maximum context length", llama.cpp "exceeds the available context size",
# old OpenAI "Please reduce your prompt".
_CONTEXT_ERROR = re.compile(r"context length|context size|context window|reduce (the length|your prompt)|too many tokens", re.I)
_NUMBERS = re.compile(r"\d+")
MAX_RETRY_AFTER = 120.0


class BadReply(Exception):
    """HTTP 200 whose body is JSON but not a usable completion. `fault` names it for the summary:
    "empty_choices" (no choice, or a choice without text) or "malformed" (not the expected shape)."""

    def __init__(self, fault: str, message: str):
        super().__init__(message)
        self.fault = fault


def is_context_error(exc: BaseException) -> bool:
    return isinstance(exc, openai.BadRequestError) and bool(_CONTEXT_ERROR.search(str(exc)))


def fault_name(exc: BaseException) -> str:
    """Short name of a fault for the run summary. Example: RateLimitError(429) -> "429" """
    if isinstance(exc, openai.APITimeoutError):
        return "timeout"
    if isinstance(exc, openai.APIConnectionError):
        return "connection"
    if isinstance(exc, openai.APIStatusError):
        return str(exc.status_code)
    if isinstance(exc, BadReply):
        return exc.fault
    if isinstance(exc, (json.JSONDecodeError, openai.APIResponseValidationError)):
        return "malformed"
    return type(exc).__name__


def _retryable(exc: BaseException) -> bool:
    """Faults worth another attempt. What the SDK raises for each (checked with openai 3.54):
    429/5xx/408/409 -> APIStatusError subclasses; a reset or a cut body -> APIConnectionError;
    no answer in time -> APITimeoutError (an APIConnectionError); HTTP 200 with a body that is
    not JSON -> json.JSONDecodeError straight from the SDK; JSON of the wrong shape -> BadReply
    (ours: the SDK builds such responses without complaint). Anything else is a bug, not a fault."""
    if isinstance(exc, openai.APIStatusError):
        return exc.status_code in (408, 409, 429) or exc.status_code >= 500
    return isinstance(exc, (openai.APIConnectionError, openai.APIResponseValidationError, json.JSONDecodeError, BadReply))


def retry_after(exc: BaseException | None) -> float | None:
    """Seconds the server asked us to wait (Retry-After / retry-after-ms), if it said."""
    response = getattr(exc, "response", None)
    headers = getattr(response, "headers", None)
    if not headers:
        return None
    try:
        if "retry-after-ms" in headers:
            return max(0.0, float(headers["retry-after-ms"]) / 1000)
        if "retry-after" in headers:
            return max(0.0, float(headers["retry-after"]))
    except ValueError:
        return None  # an HTTP date: fall back to our own backoff
    return None


class OpenAITeacher(Teacher):
    def __init__(
        self,
        model: str,
        *,
        base_url: str | None = None,
        api_key: str | None = None,
        api: str = "completions",
        max_concurrency: int = 8,
        max_attempts: int = 6,
        request_timeout: float = 120.0,
        backoff_initial: float = 1.0,
        backoff_max: float = 30.0,
    ):
        if api not in ("completions", "chat"):
            raise ConfigError(f"--api must be 'completions' or 'chat' (got {api!r})")
        self.model_id = model
        self.api = api
        self.base_url = base_url
        self.max_attempts = max_attempts
        self.backoff_initial, self.backoff_max = backoff_initial, backoff_max
        self._jitter = random.Random()
        # Kept only to scrub it from error texts: some servers echo the key they refused.
        self._api_key = api_key
        self._semaphore = asyncio.Semaphore(max_concurrency)
        # Local servers (vLLM, Ollama, llama.cpp) take any key; the SDK insists on one.
        self._client = openai.AsyncOpenAI(
            base_url=base_url, api_key=api_key or "not-needed", max_retries=0, timeout=request_timeout
        )

    def describe(self) -> dict:
        return {"model": self.model_id, "backend": "openai", "api": self.api, "base_url": self.base_url}

    async def check(self, timeout: float = 10.0) -> None:
        """Fail fast, before any output is written, when the server is unreachable or refuses the key."""
        try:
            await self._client.with_options(timeout=timeout, max_retries=0).models.list()
        except openai.AuthenticationError:
            raise ConfigError(
                f"the server at {self._where()} refused the API key (401); set OPENAI_API_KEY or pass --api_key"
            ) from None
        except openai.APIConnectionError as exc:
            raise ConfigError(
                f"cannot reach the teacher at {self._where()} ({type(exc).__name__}); start the server or fix --base_url"
            ) from None
        except (openai.APIStatusError, openai.APIResponseValidationError, ValueError):
            pass  # some servers have no /models; the first request will tell

    def _where(self) -> str:
        return self.base_url or "api.openai.com"

    async def complete(self, prompts: Sequence[str], decoding: Decoding) -> list[Completion]:
        return list(await asyncio.gather(*(self._complete_one(p, decoding) for p in prompts)))

    async def _complete_one(self, prompt: str, decoding: Decoding) -> Completion:
        faults: list[str] = []
        max_tokens = decoding.max_tokens
        retrying = AsyncRetrying(
            stop=stop_after_attempt(self.max_attempts),
            wait=self._wait,
            retry=retry_if_exception(lambda e: _retryable(e) or is_context_error(e)),
            reraise=True,
        )
        try:
            async for attempt in retrying:
                with attempt:
                    try:
                        async with self._semaphore:
                            return await self._request(prompt, decoding, max_tokens, faults)
                    except Exception as exc:
                        if isinstance(exc, (openai.AuthenticationError, openai.PermissionDeniedError)):
                            raise TeacherError(f"the teacher refused the request ({exc.status_code}): check OPENAI_API_KEY / --api_key") from None
                        if isinstance(exc, openai.NotFoundError):
                            raise TeacherError(f"the teacher at {self._where()} has no model {self.model_id!r} (404): fix --model_name") from None
                        faults.append("context_length" if is_context_error(exc) else fault_name(exc))
                        if is_context_error(exc):
                            max_tokens = shrink_max_tokens(_server_message(exc), max_tokens)
                        raise
        except (openai.OpenAIError, json.JSONDecodeError, BadReply) as exc:
            # Retries spent, or a refusal no retry can fix (400, 422): this prompt is dropped
            # with the reason in rejected.jsonl and the loop draws fresh prompts.
            error = f"{fault_name(exc)}: {' '.join(str(exc).split())}"
            if self._api_key:
                error = error.replace(self._api_key, "[api key]")
            return Completion("", finish_reason="error", error=error[:200], faults=tuple(faults))
        raise AssertionError("unreachable: tenacity either returns or raises")

    def _wait(self, state: RetryCallState) -> float:
        exc = state.outcome.exception() if state.outcome else None
        if is_context_error(exc):
            return 0.0  # nothing to wait for: the next attempt asks for fewer tokens
        asked = retry_after(exc)
        return min(asked, MAX_RETRY_AFTER) if asked is not None else self._backoff(state.attempt_number)

    def _backoff(self, attempt: int) -> float:
        """Doubling waits from backoff_initial, capped, with jitter in proportion to the first
        wait (tenacity's wait_exponential_jitter adds a flat second, which a local server does
        not need, and renamed its argument between versions)."""
        wait = self.backoff_initial * 2 ** min(attempt - 1, 30)
        return min(wait + self._jitter.uniform(0, self.backoff_initial), self.backoff_max)

    async def _request(self, prompt: str, decoding: Decoding, max_tokens: int, faults: list[str]) -> Completion:
        options = dict(
            model=self.model_id, max_tokens=max_tokens, temperature=decoding.temperature, top_p=decoding.top_p,
            presence_penalty=decoding.presence_penalty, frequency_penalty=decoding.frequency_penalty,
        )
        if decoding.stop:
            options["stop"] = list(decoding.stop)
        if decoding.seed is not None:
            options["seed"] = decoding.seed
        if self.api == "chat":
            response = await self._client.chat.completions.create(messages=[{"role": "user", "content": prompt}], **options)
        else:
            response = await self._client.completions.create(prompt=prompt, **options)
        text, finish_reason = _read_reply(response, chat=self.api == "chat")
        usage = getattr(response, "usage", None)
        return Completion(
            text,
            finish_reason=finish_reason,
            prompt_tokens=_token_count(usage, "prompt_tokens"),
            completion_tokens=_token_count(usage, "completion_tokens"),
            faults=tuple(faults),
        )

    async def aclose(self) -> None:
        await self._client.close()


def _read_reply(response, chat: bool) -> tuple[str, str | None]:
    """Text and finish_reason of the first choice. The SDK builds its response objects from any
    JSON without checking (and hands back a plain str for a non-JSON content type), so the shape
    is checked here and a wrong one raised as a retryable BadReply."""
    choices = getattr(response, "choices", None)
    if not isinstance(choices, list):
        raise BadReply("malformed", f"the reply is not a completion (got {type(response).__name__} without a list of choices)")
    if not choices:
        raise BadReply("empty_choices", "the reply has no choices")
    choice = choices[0]
    holder = getattr(choice, "message", None) if chat else choice
    text = getattr(holder, "content" if chat else "text", None)
    if text is None:
        raise BadReply("empty_choices", "the first choice holds no text")
    if not isinstance(text, str):
        raise BadReply("malformed", f"the first choice's text is {type(text).__name__}, not a string")
    finish_reason = getattr(choice, "finish_reason", None)
    return text, finish_reason if isinstance(finish_reason, str) else None


def _server_message(exc: BaseException) -> str:
    """The server's own error text: str() of an SDK error starts with "Error code: 400 - ",
    whose number would throw off shrink_max_tokens."""
    body = getattr(exc, "body", None)
    message = body.get("message") if isinstance(body, dict) else None
    return message if isinstance(message, str) else str(exc)


def _token_count(usage, name: str) -> int:
    value = getattr(usage, name, None)
    return value if isinstance(value, int) and not isinstance(value, bool) and value >= 0 else 0


def shrink_max_tokens(message: str, max_tokens: int) -> int:
    """Fewer tokens after a context overflow: what the server says is left when it says it
    (OpenAI/vLLM: "maximum context length is 4097 tokens ... you requested 5000 tokens (1928 in
    the messages, 3072 in the completion)"), else 80% as Alpaca does.

    Example: shrink_max_tokens("maximum context length is 4097 tokens. However, you requested
    5000 tokens (1928 in your prompt; 3072 for the completion)", 3072) -> 2169
    """
    numbers = [int(n) for n in _NUMBERS.findall(message)]
    if len(numbers) >= 4 and numbers[1] == numbers[2] + numbers[3] and numbers[3] == max_tokens:
        fits = numbers[0] - numbers[2]
        if 0 < fits < max_tokens:
            return fits
    return max(1, int(max_tokens * 0.8))
