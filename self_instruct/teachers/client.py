"""One OpenAI-compatible endpoint's client: the `openai` SDK's client for its settings and the HTTP
client under it, which sends the completions.

The SDK supplies the address (OPENAI_BASE_URL too), the headers (OPENAI_ORG_ID too), the HTTP
defaults and the exceptions; `Client.open` posts a body straight through the HTTP client and
raises an error reply as the SDK would (`status_error`), so faults.py reads both alike. All the
clients of a run share one TLS context.
"""
from __future__ import annotations

import functools
import json
import sys

import openai


def http_errors() -> tuple[tuple[type[Exception], ...], tuple[type[Exception], ...]]:
    """The HTTP library's timeout and transport errors, to raise as the SDK's APITimeoutError and APIConnectionError."""
    http = _http_library()
    return (http.TimeoutException,), (http.TransportError, http.DecodingError)


def make_client(url: str | None, api_key: str, timeout: float, http_client=None) -> openai.AsyncOpenAI:
    """An SDK client with the SDK's own HTTP defaults, sharing one TLS context: building the
    context loads the CA bundle, about 40 ms a client, paid eight times over at concurrency 128."""
    http_client = http_client or openai.DefaultAsyncHttpxClient(verify=_tls_context())
    return openai.AsyncOpenAI(base_url=url, api_key=api_key, max_retries=0, timeout=timeout, http_client=http_client)


class Client:
    """One SDK client and the HTTP client under it. The SDK is the client's settings (its address
    from OPENAI_BASE_URL too, its headers, its HTTP defaults) and its exceptions; a completion is
    sent straight through the HTTP client with the headers built once, because the SDK's own
    request path (options, URL merging and headers built again for every request, its auth and
    retry layers) cost 0.4 ms of CPU a request against 0.9 ms for all the rest of a streamed
    request at 128 in flight, in one event loop that does everything else too
    (benchmarks/throughput.py). Faults come out as the SDK raises them (`status_error`), so that
    faults.py reads them the same way."""

    def __init__(self, url: str | None, api_key: str, timeout: float):
        self.http = openai.DefaultAsyncHttpxClient(verify=_tls_context())
        self.sdk = make_client(url, api_key, timeout, self.http)
        self.base = str(self.sdk.base_url).rstrip("/")
        self.timeout = timeout
        headers = {name: value for name, value in self.sdk.default_headers.items() if isinstance(value, str)}
        self.headers = headers | {"Authorization": f"Bearer {api_key}"}
        self._timeouts = http_errors()[0]

    async def open(self, path: str, body: dict):
        """POST `body` as JSON to base_url + path, the reply opened as a stream for the caller to
        read and close; an error status raised as the SDK raises it, its body read first."""
        request = self.http.build_request("POST", self.base + path, headers=self.headers, timeout=self.timeout,
                                          content=json.dumps(body, ensure_ascii=False, separators=(",", ":")).encode())
        try:
            response = await self.http.send(request, stream=True)
        except self._timeouts as exc:
            raise openai.APITimeoutError(request=request) from exc
        except Exception as exc:  # as the SDK: anything else on the way is a connection error
            raise openai.APIConnectionError(request=request) from exc
        if response.status_code < 400:
            return response
        try:
            await read_body(response)
        finally:
            await response.aclose()
        raise status_error(response)

    async def close(self) -> None:
        await self.sdk.close()


#: The SDK's exception for each error status; any other status is a plain APIStatusError.
_STATUS_ERRORS = {400: openai.BadRequestError, 401: openai.AuthenticationError, 403: openai.PermissionDeniedError,
                  404: openai.NotFoundError, 409: openai.ConflictError, 422: openai.UnprocessableEntityError,
                  429: openai.RateLimitError}


def status_error(response) -> openai.APIStatusError:
    """The exception the SDK raises for an error reply (its body read): the class by status (any
    5xx an InternalServerError); the message "Error code: N", with " - " and the server's message
    when its JSON has one; as `body`, the JSON's "error" object when it has one, else the JSON or
    the text."""
    status = response.status_code
    try:
        body = json.loads(response.text)
    except ValueError:
        body = response.text.strip()
    detail = body.get("error", body) if isinstance(body, dict) else body
    said = detail.get("message") if isinstance(detail, dict) else None
    message = f"Error code: {status}" + (f" - {said}" if isinstance(said, str) and said else "")
    kind = openai.InternalServerError if status >= 500 else _STATUS_ERRORS.get(status, openai.APIStatusError)
    return kind(message, response=response, body=detail)


async def read_body(response) -> bytes:
    """A reply's whole body, read from the stream opened for it, with the HTTP library's errors
    raised as the SDK raises them (a dropped connection or a timeout is a transient fault, not a bug)."""
    timeouts, transport = http_errors()
    try:
        return await response.aread()
    except timeouts as exc:
        raise openai.APITimeoutError(request=response.request) from exc
    except transport as exc:
        raise openai.APIConnectionError(request=response.request) from exc


def _http_library():
    """The HTTP library the SDK is built on (httpx, or its successor)."""
    return sys.modules[openai.DefaultAsyncHttpxClient.__mro__[1].__module__.partition(".")[0]]


@functools.cache
def _tls_context():
    # The HTTP library makes the context it would make itself.
    return _http_library().create_ssl_context()
