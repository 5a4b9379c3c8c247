"""What can go wrong with a request to an OpenAI-compatible server, and what each fault calls for.

Every fault falls in one of three classes, decided here and nowhere else:

- **transient** (`is_transient`): 429, 408, 409, 5xx, a dropped or timed-out connection, a reply
  that is not JSON or not a completion, an error event inside a stream, a stream cut short. Another
  attempt may well succeed, so the request is retried with backoff (or at once on another endpoint),
  honouring Retry-After. A context overflow is retried too, with fewer tokens (`shrink_max_tokens`).
  When the attempts run out, the prompt comes back as a failed Completion, as a refused one does.
- **refused** (any other client error, such as a 400 or 422 not about the context): this prompt is
  wrong for this server. No retry can help it, and no other prompt is affected: it comes back as a
  failed Completion with the reason, and the loop draws fresh prompts.
- **permanent** (`permanent_reason`): a refused key (401, 403) or a model the server does not have
  (404). No retry and no other prompt can succeed, so the run stops with one line saying what to fix.

Separately, `is_unhealthy` says which transient faults speak against the endpoint itself (and count
toward benching it) rather than against the load on it or the request.

Anything else raised while sending is a bug of ours, and surfaces as one instead of being retried.
"""
from __future__ import annotations

import json
import re

import openai

# Servers phrase the context overflow differently: OpenAI "maximum context length", vLLM
# "This model's maximum context length", llama.cpp "exceeds the available context size",
# old OpenAI "Please reduce your prompt".
_CONTEXT_ERROR = re.compile(r"context length|context size|context window|reduce (the length|your prompt)|too many tokens", re.I)
_NUMBERS = re.compile(r"\d+")
# The longest wait a server may ask of us; one asking for more is waited on this long, then tried again.
MAX_RETRY_AFTER = 120.0


class BadReply(Exception):
    """HTTP 200 whose body is JSON but not a usable completion. `fault` names it for the summary:
    "empty_choices" (no choice, or a choice without text) or "malformed" (not the expected shape)."""

    def __init__(self, fault: str, message: str):
        super().__init__(message)
        self.fault = fault


class Interrupted(Exception):
    """A stream that ended without a finish_reason while other requests waited on its endpoint:
    llama-cpp-python's server cuts the running reply short whenever another request queues."""


class SlowReply(Exception):
    """A streamed reply still going after the total cap (tokens kept coming, too slowly)."""


#: Every fault a request can end with, SDK errors and ours, for catching them all at once.
FAULTS = (openai.OpenAIError, json.JSONDecodeError, BadReply, Interrupted, SlowReply)


def is_context_error(exc: BaseException | None) -> bool:
    return isinstance(exc, openai.BadRequestError) and bool(_CONTEXT_ERROR.search(str(exc)))


def _stream_error(exc: BaseException) -> bool:
    """An error event inside an open stream (the SDK raises a bare APIError for it)."""
    return type(exc) is openai.APIError


def fault_name(exc: BaseException) -> str:
    """Short name of a fault for the run summary. Example: RateLimitError(429) -> "429" """
    if isinstance(exc, (openai.APITimeoutError, SlowReply)):
        return "timeout"
    if isinstance(exc, openai.APIConnectionError):
        return "connection"
    if isinstance(exc, openai.APIStatusError):
        return str(exc.status_code)
    if isinstance(exc, BadReply):
        return exc.fault
    if isinstance(exc, Interrupted):
        return "interrupted"
    if _stream_error(exc):
        return "stream_error"
    if isinstance(exc, (json.JSONDecodeError, openai.APIResponseValidationError)):
        return "malformed"
    return type(exc).__name__


def is_transient(exc: BaseException) -> bool:
    """Faults worth another attempt. What the SDK raises for each (checked with openai 3.54):
    429/5xx/408/409 -> APIStatusError subclasses; a reset or a cut body -> APIConnectionError;
    no answer in time -> APITimeoutError (an APIConnectionError); HTTP 200 with a body that is
    not JSON -> json.JSONDecodeError straight from the SDK; JSON of the wrong shape -> BadReply
    (ours: the SDK builds such responses without complaint); an error event mid-stream -> APIError.
    Anything else is a bug, not a fault."""
    if isinstance(exc, openai.APIStatusError):
        return exc.status_code in (408, 409, 429) or exc.status_code >= 500
    return _stream_error(exc) or isinstance(exc, (
        openai.APIConnectionError, openai.APIResponseValidationError, json.JSONDecodeError, BadReply, Interrupted, SlowReply))


def is_unhealthy(exc: BaseException) -> bool:
    """Faults that speak against the endpoint itself (and count toward benching it); a 429, a
    refusal or an interruption says the endpoint is busy or the request is wrong, not that it is down."""
    if isinstance(exc, openai.APIStatusError):
        return exc.status_code >= 500
    return is_transient(exc) and not isinstance(exc, Interrupted)


def permanent_reason(exc: BaseException, where: str, model: str) -> str | None:
    """Why no request to the teacher at `where` can succeed, as the one line the run stops with;
    None when the fault leaves other requests a chance."""
    if isinstance(exc, (openai.AuthenticationError, openai.PermissionDeniedError)):
        return f"the teacher at {where} refused the request ({exc.status_code}): check OPENAI_API_KEY / --api_key"
    if isinstance(exc, openai.NotFoundError):
        return f"the teacher at {where} has no model {model!r} (404): fix --model_name"
    return None


def retry_after(exc: BaseException | None) -> float | None:
    """Seconds the server asked us to wait (Retry-After / retry-after-ms), at most
    MAX_RETRY_AFTER, if it said."""
    response = getattr(exc, "response", None)
    headers = getattr(response, "headers", None)
    if not headers:
        return None
    try:
        if "retry-after-ms" in headers:
            return min(max(0.0, float(headers["retry-after-ms"]) / 1000), MAX_RETRY_AFTER)
        if "retry-after" in headers:
            return min(max(0.0, float(headers["retry-after"])), MAX_RETRY_AFTER)
    except ValueError:
        return None  # an HTTP date: fall back to our own backoff
    return None


def server_message(exc: BaseException) -> str:
    """The server's own error text: str() of an SDK error starts with "Error code: 400 - ",
    whose number would throw off shrink_max_tokens."""
    body = getattr(exc, "body", None)
    message = body.get("message") if isinstance(body, dict) else None
    return message if isinstance(message, str) else str(exc)


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
