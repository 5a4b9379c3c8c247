"""What can go wrong with a request to an OpenAI-compatible server, and what each fault calls for.

Every fault falls in one of three classes, decided here and nowhere else:

- **transient** (`is_transient`): 429, 408, 409, 5xx, a dropped or timed-out connection, a reply
  that is not JSON or not a completion, an error event inside a stream, a stream cut short. Another
  attempt may well succeed, so the request is retried with backoff (or at once on another endpoint),
  honouring Retry-After. A context overflow is retried too, with fewer tokens (`shrink_max_tokens`).
  When the attempts run out, the prompt comes back as a failed Completion, as a refused one does.
- **refused** (any other client error, such as a 400 or 422 not about the context, and a context
  overflow where the prompt alone fills the context, `NoRoom`): this prompt is wrong for this
  server. No retry can help it, and no other prompt is affected: it comes back as a failed
  Completion with the reason, and the loop draws fresh prompts.
- **permanent** (`permanent_reason`): no request to this endpoint can succeed, so no retry is
  spent on it. A refused key (401, 403) or a spent quota (402, a 429 saying "insufficient_quota");
  no such model (a 404, or a 400 coded model_not_found); an address that is not an OpenAI API (a
  404 not about a model, 405, 501, or, from an endpoint that has not answered a completion yet, a
  200 whose body is an HTML page or other text: a file server, a web page, a captive portal); and
  an endpoint that cuts every reply short (`cut_short_reason`: CUT_SHORT_AFTER replies in a row
  ending with finish_reason "length" before any text, or refused as `NoRoom`). The endpoint is
  taken out of the fleet, and when none is left the run stops with one line naming the server,
  what it answered and what to fix.

Separately, `is_unhealthy` says which transient faults speak against the endpoint itself (and count
toward benching it) rather than against the load on it or the request.

Anything else raised while sending is a bug of ours, and surfaces as one instead of being retried.
"""
from __future__ import annotations

import json
import re
import textwrap

import openai

# Servers phrase the context overflow differently: OpenAI "maximum context length", vLLM
# "This model's maximum context length", llama.cpp "exceeds the available context size",
# old OpenAI "Please reduce your prompt".
_CONTEXT_ERROR = re.compile(r"context length|context size|context window|reduce (the length|your prompt)|too many tokens", re.I)
_NUMBERS = re.compile(r"\d+")
# A 404's words about a model rather than a path: OpenAI and vLLM "The model `x` does not exist",
# Ollama 'model "x" not found, try pulling it first'.
_ABOUT_A_MODEL = re.compile(r"\bmodels?\b", re.I)
_TITLE = re.compile(r"<title[^>]*>(.*?)</title>", re.I | re.S)
_STATUS_PREFIX = re.compile(r"^Error code: \d+ - ")
# The longest wait a server may ask of us; one asking for more is waited on this long, then tried again.
MAX_RETRY_AFTER = 120.0
#: Replies in a row from one endpoint cut short before any text that make it unusable: every
#: prompt overflows its context, or a reasoning model spends max_tokens thinking. One such reply
#: is a prompt's bad luck; this many with nothing better between them is the endpoint.
CUT_SHORT_AFTER = 5
_FIX_ADDRESS = "check --base_url (the address of an OpenAI-compatible server usually ends in /v1) and --api"


class BadReply(Exception):
    """HTTP 200 whose body is JSON but not a usable completion. `fault` names it for the summary:
    "empty_choices" (no choice, or a choice without text) or "malformed" (not the expected shape)."""

    def __init__(self, fault: str, message: str):
        super().__init__(message)
        self.fault = fault


class NotAnAPI(BadReply):
    """HTTP 200 whose body is neither JSON nor an event stream (an HTML page, other text): what a
    web server, a file server or a captive portal answers. From an endpoint that has answered a
    completion before it is a stray page from a proxy, and retried; from one that has not, the
    address is not an OpenAI API (`permanent_reason`)."""

    def __init__(self, what: str):
        super().__init__("malformed", f"the reply is {what}, not JSON or an event stream")
        self.what = what


class NoRoom(Exception):
    """A context overflow where the prompt alone fills the context: no max_tokens can help."""


class Interrupted(Exception):
    """A stream that ended without a finish_reason while other requests waited on its endpoint:
    llama-cpp-python's server cuts the running reply short whenever another request queues."""


class SlowReply(Exception):
    """A reply still coming after the total cap (tokens kept coming, too slowly)."""


#: Every fault a request can end with, SDK errors and ours, for catching them all at once.
FAULTS = (openai.OpenAIError, json.JSONDecodeError, BadReply, NoRoom, Interrupted, SlowReply)


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
    if isinstance(exc, NoRoom):
        return "context_length"
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


def permanent_reason(exc: BaseException, where: str, model: str, path: str, proven: bool = True) -> str | None:
    """Why no request to the endpoint at `where` can succeed, as the one line the run stops with;
    None when the fault leaves other requests a chance. `path` is what was asked for
    ("/completions"); `proven`, whether the endpoint has answered a completion in this run.

    >>> permanent_reason(NotAnAPI('an HTML page titled "Welcome to nginx!"'), "http://h/v1", "m", "/completions", proven=False)
    'the teacher at http://h/v1 is not an OpenAI-compatible API: POST /completions answered 200 with an HTML page titled "Welcome to nginx!"; check --base_url (the address of an OpenAI-compatible server usually ends in /v1) and --api'
    """
    if isinstance(exc, NotAnAPI):
        return None if proven else f"the teacher at {where} is not an OpenAI-compatible API: POST {path} answered 200 with {exc.what}; {_FIX_ADDRESS}"
    if not isinstance(exc, openai.APIStatusError):
        return None
    status, said, page = exc.status_code, _said(exc), _is_page(exc)
    code = (exc.body.get("code") or exc.body.get("type")) if isinstance(exc.body, dict) else None
    if status in (401, 403):
        return f"the teacher at {where} refused the request ({status}: {said}): check OPENAI_API_KEY / --api_key"
    if status == 402 or (status == 429 and code == "insufficient_quota"):
        return f"the teacher at {where} refused the request ({status}: {said}): the account behind the key has no credit left"
    if code == "model_not_found" or (status == 404 and not page and _ABOUT_A_MODEL.search(said)):
        return f"the teacher at {where} cannot serve model {model!r} ({status}: {said}): fix --model_name (or --api, if it serves the model on the other API)"
    if status in (404, 405, 501):
        if page:
            return f"the teacher at {where} is not an OpenAI-compatible API: POST {path} answered {status} with {said}; {_FIX_ADDRESS}"
        return f"the teacher at {where} does not serve POST {path} ({status}: {said}); {_FIX_ADDRESS}"
    return None


def cut_short_reason(where: str, count: int) -> str:
    """The line the run stops with when an endpoint cut `count` replies in a row short before any text."""
    return (f"the teacher at {where} cut {count} replies in a row short before any text (finish_reason \"length\", "
            "or the prompt alone filling its context): raise --max_tokens (a reasoning model may spend them all "
            "thinking) or serve the model with a longer context")


def describe_body(text: str, content_type: str = "") -> str:
    """A few words on a body that is not what an API sends, for a message.

    >>> describe_body("<html><head><title>404 Not Found</title></head></html>", "text/html")
    'an HTML page titled "404 Not Found"'
    >>> describe_body("OK")
    'the text "OK"'
    """
    text = text.strip()
    if not text:
        return "an empty body"
    if "html" in content_type.lower() or text.startswith("<"):
        title = _TITLE.search(text)
        title = " ".join(title.group(1).split()) if title else ""
        return f'an HTML page titled "{textwrap.shorten(title, 80)}"' if title else "an HTML page"
    return f'the text "{textwrap.shorten(text, 80)}"'


def _is_page(exc: openai.APIStatusError) -> bool:
    """The error came as a page or other text rather than JSON: no API's answer."""
    kind = exc.response.headers.get("content-type", "") if getattr(exc, "response", None) is not None else ""
    return "json" not in kind.lower()


def _said(exc: openai.APIStatusError) -> str:
    """The server's words in an error reply, short enough for one line."""
    if _is_page(exc):
        return describe_body(exc.response.text, exc.response.headers.get("content-type", ""))
    body = exc.body
    words = None
    if isinstance(body, dict):
        words = next((body[k] for k in ("message", "detail", "error") if isinstance(body.get(k), str)), None)
    if words is None:
        words = _STATUS_PREFIX.sub("", str(exc))
    return textwrap.shorten(" ".join(words.split()), 160) or "no message"


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


def room_left(message: str, max_tokens: int) -> int | None:
    """Tokens the server says are left for the completion after a context overflow (zero or less:
    the prompt alone fills the context), or None when it does not say. OpenAI, vLLM and
    llama-cpp-python give four numbers: the context, what was asked, the prompt, the completion.

    >>> room_left("maximum context length is 4097 tokens. However, you requested 5000 tokens (1928 in your prompt; 3072 for the completion)", 3072)
    2169
    >>> room_left("maximum context length is 2048 tokens, however you requested 3100 tokens (2100 in your prompt; 1000 for the completion)", 1000)
    -52
    """
    numbers = [int(n) for n in _NUMBERS.findall(message)]
    if len(numbers) >= 4 and numbers[1] == numbers[2] + numbers[3] and numbers[3] == max_tokens:
        return numbers[0] - numbers[2]
    return None


def shrink_max_tokens(message: str, max_tokens: int) -> int:
    """Fewer tokens after a context overflow: what the server says is left when it says it
    (OpenAI/vLLM: "maximum context length is 4097 tokens ... you requested 5000 tokens (1928 in
    the messages, 3072 in the completion)"), else 80% as Alpaca does.

    Example: shrink_max_tokens("maximum context length is 4097 tokens. However, you requested
    5000 tokens (1928 in your prompt; 3072 for the completion)", 3072) -> 2169
    """
    fits = room_left(message, max_tokens)
    if fits is not None and 0 < fits < max_tokens:
        return fits
    return max(1, int(max_tokens * 0.8))
