"""An OpenAI-compatible HTTP endpoint in front of a teacher, by default the embedded local one.

    python -m self_instruct.serve [--host 127.0.0.1] [--port 8000] [--local_model_path m.gguf]

serves POST /v1/completions, POST /v1/chat/completions and GET /v1/models, so any tool that
speaks the OpenAI API (and our own generate CLI, through --base_url) can use the local model.
Completions get the teacher's raw-text behaviour, list continuation included, which is what
the generate loop wants. Chat messages go through the model's own chat template and the reply
ends at the model's end of turn (a teacher without a `chat` method gets the messages' text as
one raw prompt). Requests reach the teacher one at a time, since a llama.cpp model decodes one
sequence at a time anyway.

The endpoint listens on loopback only unless --allow_remote is given; --api_key makes every
request carry a key. Built on the standard library's http.server, hardened where it is soft:
request bodies and idle connections have a deadline, and every refusal is a JSON error.
"""
from __future__ import annotations

import asyncio
import concurrent.futures
import errno
import hmac
import ipaddress
import json
import socket
import sys
import threading
import time
import uuid
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any, Awaitable, Callable, Sequence

from .cli import run
from .errors import ConfigError
from .io.secrets import redact, register_secret
from .teachers.base import Teacher
from .types import Completion, Decoding

MAX_BODY_BYTES = 16 * 2**20
# How long a client may take to send a request (its head, or its body), or sit idle between two
# requests on one connection, before the connection is closed and its thread freed.
REQUEST_TIMEOUT = 60.0
# A chat reply ends at the model's end of turn; this only bounds one that never gets there
# (a client that wants more says max_tokens).
CHAT_MAX_TOKENS = 512
# Parameters a client may send that this endpoint cannot honour, with the value that is harmless.
_UNSUPPORTED = {"stream": False, "n": 1, "echo": False, "logprobs": None, "suffix": None, "best_of": 1}


class RequestError(Exception):
    """A request the endpoint refuses; becomes an OpenAI-style error body."""

    def __init__(self, status: int, message: str, param: str | None = None) -> None:
        super().__init__(message)
        self.status, self.param = status, param


def check_host(host: str, allow_remote: bool) -> None:
    """Refuse to listen beyond this machine unless asked to: anyone who reaches it can use it."""
    if allow_remote or host == "localhost":
        return
    try:
        loopback = ipaddress.ip_address(host).is_loopback
    except ValueError:
        loopback = False
    if not loopback:
        raise ConfigError(
            f"--host {host}: anyone who reaches the endpoint can use it, so it listens on loopback "
            "(127.0.0.1) only; pass --allow_remote to expose it (and --api_key to require a key)"
        )


def listen_error(exc: BaseException, host: str, port: int) -> ConfigError:
    """Why the endpoint cannot listen on host:port, naming the flag to change."""
    if isinstance(exc, OverflowError):
        return ConfigError(f"--port must be from 0 to 65535 (got {port})")
    if isinstance(exc, socket.gaierror):
        return ConfigError(f"--host {host}: not an address this machine knows ({exc.strerror}); try 127.0.0.1")
    if getattr(exc, "errno", None) == errno.EADDRNOTAVAIL:
        return ConfigError(f"--host {host}: not an address of this machine; try 127.0.0.1")
    why = " (ports below 1024 need root)" if getattr(exc, "errno", None) == errno.EACCES and 0 < port < 1024 else ""
    return ConfigError(f"cannot listen on {host}:{port} ({getattr(exc, 'strerror', None) or exc}{why}); choose another --port")


def check_flags(host: str, port: int, allow_remote: bool, local_model_path: str | None, n_threads: int | None,
                n_ctx: int | None, request_timeout: float) -> None:
    """Refuse flags that cannot work before a model is loaded for nothing: the address is tried
    (bound, then let go), the model file's first bytes read."""
    check_host(host, allow_remote)
    if not 0 <= port <= 65535:
        raise ConfigError(f"--port must be from 0 to 65535 (got {port}); 0 picks a free one")
    for flag, value in (("--n_threads", n_threads), ("--n_ctx", n_ctx)):
        if value is not None and value < 1:
            raise ConfigError(f"{flag} must be a positive whole number (got {value}); leave it out for the default")
    if not request_timeout > 0:
        raise ConfigError(f"--request_timeout must be a positive number of seconds (got {request_timeout})")
    if local_model_path is not None:
        try:
            with open(local_model_path, "rb") as f:
                magic = f.read(4)
        except (FileNotFoundError, IsADirectoryError):
            raise ConfigError(f"--local_model_path {local_model_path} is not a file; give the path of a .gguf model") from None
        except OSError as exc:
            raise ConfigError(f"--local_model_path {local_model_path}: {exc.strerror}; give the path of a .gguf model") from None
        if magic != b"GGUF":
            raise ConfigError(f"--local_model_path {local_model_path} is not a GGUF model (it does not start with "
                              f"'GGUF'); give the path of a .gguf file")
    try:
        family = socket.AF_INET6 if ":" in host else socket.AF_INET
        with socket.socket(family, socket.SOCK_STREAM) as probe:
            probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as http.server binds
            probe.bind((host, port))
    except (OSError, OverflowError) as exc:
        raise listen_error(exc, host, port) from None


class TeacherServer(ThreadingHTTPServer):
    """A threading HTTP server that owns a teacher and an event loop to run it on.

    Handler threads hand each request to that one loop and wait, holding a lock, so the
    teacher sees one request at a time. With an `api_key`, every request must carry it.
    """

    daemon_threads = True

    def __init__(
        self,
        teacher: Teacher,
        host: str = "127.0.0.1",
        port: int = 8000,
        allow_remote: bool = False,
        request_timeout: float = REQUEST_TIMEOUT,
        *,
        api_key: str | None = None,
    ):
        check_host(host, allow_remote)
        register_secret(api_key)  # masked in every line this process prints
        self.address_family = socket.AF_INET6 if ":" in host else socket.AF_INET
        self.teacher = teacher
        self.request_timeout = request_timeout
        self.api_key = api_key
        self._lock = threading.Lock()  # one teacher call at a time
        self._state = threading.Lock()  # guards _running and _closing
        self._running: concurrent.futures.Future | None = None
        self._closing = False
        self._loop = asyncio.new_event_loop()
        self._loop_thread = threading.Thread(target=self._loop.run_forever, name="teacher-loop", daemon=True)
        try:
            super().__init__((host, port), _Handler)
        except (OSError, OverflowError) as exc:
            self._loop.close()
            raise listen_error(exc, host, port) from None
        self._loop_thread.start()

    @property
    def url(self) -> str:
        host, port = self.server_address[:2]
        return f"http://{'[' + host + ']' if ':' in host else host}:{port}/v1"

    def complete(self, prompts: Sequence[str], decoding: Decoding) -> list[Completion]:
        return self._call(lambda: self.teacher.complete(prompts, decoding))

    def chat(self, messages: list[dict[str, str]], decoding: Decoding) -> Completion:
        """One assistant turn: through the teacher's chat template when it has one (`chat`),
        else the messages' text as one raw prompt, as a completion endpoint would take it."""
        chat = getattr(self.teacher, "chat", None)
        if chat is None:
            return self.complete([chat_prompt(messages)], decoding)[0]
        return self._call(lambda: chat(messages, decoding))

    def _call(self, coroutine: Callable[[], Awaitable[Any]]) -> Any:
        """Run one teacher call on the loop, after the one before it; close() cancels it."""
        with self._lock:
            with self._state:  # close() must see this call, or this call must see close()
                if self._closing:
                    raise RequestError(503, "the server is shutting down")
                self._running = future = asyncio.run_coroutine_threadsafe(coroutine(), self._loop)
            try:
                return future.result()
            except concurrent.futures.CancelledError:
                raise RequestError(503, "the server is shutting down") from None
            finally:
                self._running = None

    def handle_error(self, request: Any, client_address: Any) -> None:
        """One line, not socketserver's traceback: what is left here is a client that went away."""
        exc = sys.exc_info()[1]
        sys.stderr.write(redact(f"serve: {client_address[0]}: connection dropped ({type(exc).__name__}: {exc})\n"))

    def close(self) -> None:
        """Stop listening, stop the reply in progress at its next token, release the teacher."""
        with self._state:
            self._closing = True
            if self._running is not None:
                self._running.cancel()
        self.server_close()
        asyncio.run_coroutine_threadsafe(self.teacher.aclose(), self._loop).result()
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._loop_thread.join()
        self._loop.close()


class _Handler(BaseHTTPRequestHandler):
    server: TeacherServer
    protocol_version = "HTTP/1.1"  # keep-alive: the SDK reuses its connection
    # A request line too garbled to name its version is answered as HTTP/1.0, so the refusal has
    # a status line and headers (http.server would answer HTTP/0.9: a bare body).
    default_request_version = "HTTP/1.0"

    def setup(self) -> None:
        self.timeout = self.server.request_timeout  # StreamRequestHandler puts it on the socket
        super().setup()

    def do_GET(self) -> None:
        if not self._authorized():
            return
        if self.path.rstrip("/") in ("/v1/models", "/models"):
            model = {"id": self.server.teacher.model_id, "object": "model", "created": 0, "owned_by": "self_instruct"}
            self._send(200, {"object": "list", "data": [model]})
        else:
            self._send_error(RequestError(404, f"no route GET {self.path}; try /v1/models"))

    def do_POST(self) -> None:
        routes = {"/v1/completions": self._completions, "/v1/chat/completions": self._chat_completions}
        route = routes.get(self.path.rstrip("/").replace("/v1/v1/", "/v1/"))
        if not self._authorized():
            return
        try:
            if route is None:
                raise RequestError(404, f"no route POST {self.path}; try /v1/completions or /v1/chat/completions")
            self._send(200, route(self._read_json()))
        except RequestError as exc:
            self._send_error(exc)
        except ConfigError as exc:  # Decoding rejected a parameter
            self._send_error(RequestError(400, str(exc)))
        except (ConnectionError, TimeoutError):
            raise  # the client is gone: nothing to answer (handle_error says so in one line)
        except Exception as exc:  # a fault of the teacher: the client gets it, the server goes on
            self.log_message("%s", f"500: {type(exc).__name__}: {exc}")
            self._send_error(RequestError(500, f"the teacher failed: {type(exc).__name__}: {exc}"))

    def _authorized(self) -> bool:
        """True when no key is set or the request carries it; else answers 401 (never echoing it)."""
        key = self.server.api_key
        if key is None:
            return True
        scheme, _, token = self.headers.get("Authorization", "").partition(" ")
        if scheme.lower() == "bearer" and hmac.compare_digest(token.strip().encode(), key.encode()):
            return True
        self.close_connection = True  # a POST's body is left unread
        self._send_error(RequestError(401, "missing or wrong API key: send it as 'Authorization: Bearer <key>'"))
        return False

    def _completions(self, body: dict) -> dict:
        prompt = body.get("prompt")
        prompts = [prompt] if isinstance(prompt, str) else prompt
        if not prompts or not all(isinstance(p, str) for p in prompts):
            raise RequestError(400, "prompt must be a string or a non-empty list of strings", "prompt")
        completions = self._run(prompts, body)
        choices = [
            {"index": i, "text": c.text, "finish_reason": c.finish_reason, "logprobs": None}
            for i, c in enumerate(completions)
        ]
        return self._envelope("cmpl", "text_completion", choices, completions)

    def _chat_completions(self, body: dict) -> dict:
        messages = chat_messages(body.get("messages"))
        reply = self.server.chat(messages, decoding_from_request(body, default_max_tokens=CHAT_MAX_TOKENS))
        _check([reply])
        choice = {"index": 0, "message": {"role": "assistant", "content": reply.text}, "finish_reason": reply.finish_reason}
        return self._envelope("chatcmpl", "chat.completion", [choice], [reply])

    def _run(self, prompts: list[str], body: dict) -> list[Completion]:
        return _check(self.server.complete(prompts, decoding_from_request(body)))

    def _envelope(self, prefix: str, kind: str, choices: list, completions: list[Completion]) -> dict:
        prompt_tokens = sum(c.prompt_tokens for c in completions)
        completion_tokens = sum(c.completion_tokens for c in completions)
        return {
            "id": f"{prefix}-{uuid.uuid4().hex}",
            "object": kind,
            "created": int(time.time()),
            "model": self.server.teacher.model_id,
            "choices": choices,
            "usage": {
                "prompt_tokens": prompt_tokens,
                "completion_tokens": completion_tokens,
                "total_tokens": prompt_tokens + completion_tokens,
            },
        }

    def _read_json(self) -> dict:
        try:
            body = json.loads(self._read_body(self._content_length()) or b"null")
        except (json.JSONDecodeError, UnicodeDecodeError) as exc:
            raise RequestError(400, f"the body is not JSON ({exc})") from None
        if not isinstance(body, dict):
            raise RequestError(400, "the body must be a JSON object")
        return body

    def _content_length(self) -> int:
        """The body's size from its one Content-Length header, checked before anything is read.

        Refusals close the connection: the unread body would be taken for the next request.
        """
        if self.headers.get("Transfer-Encoding"):
            raise self._refuse(411, "send the body with a Content-Length header (Transfer-Encoding is not supported)")
        values = {v.strip() for v in self.headers.get_all("Content-Length") or []}
        if not values:
            raise self._refuse(411, "a POST needs a Content-Length header")
        if len(values) > 1:
            raise self._refuse(400, f"Content-Length is given {len(values)} times with different values")
        text = values.pop()
        if not (text.isascii() and text.isdigit()):
            raise self._refuse(400, f"Content-Length must be a whole number of bytes (got {_clip(text)!r})")
        # The digit count first: int() refuses numbers of over 4300 digits with a ValueError.
        if len(text) > len(str(MAX_BODY_BYTES)) or int(text) > MAX_BODY_BYTES:
            raise self._refuse(413, f"a request body of {_clip(text)} bytes is over the {MAX_BODY_BYTES}-byte limit")
        return int(text)

    def _read_body(self, length: int) -> bytes:
        """Read `length` bytes within the server's request_timeout, however slowly they trickle."""
        timeout = self.server.request_timeout
        deadline = time.monotonic() + timeout
        data = bytearray()
        try:
            while len(data) < length:
                left = deadline - time.monotonic()
                if left <= 0:
                    raise TimeoutError
                self.connection.settimeout(left)
                chunk = self.rfile.read1(length - len(data))
                if not chunk:
                    raise self._refuse(400, f"the body ended after {len(data)} of its {length} bytes (Content-Length)")
                data += chunk
        except TimeoutError:
            raise self._refuse(
                408, f"the body did not arrive within {timeout:g} s ({len(data)} of its {length} bytes came)"
            ) from None
        finally:
            self.connection.settimeout(timeout)
        return bytes(data)

    def _refuse(self, status: int, message: str) -> RequestError:
        """An error after which the connection cannot carry another request."""
        self.close_connection = True
        return RequestError(status, message)

    def send_error(self, code: int, message: str | None = None, explain: str | None = None) -> None:
        """http.server's own refusals (a bad request line, headers too long), as JSON errors."""
        self.close_connection = True
        self._send_error(RequestError(code, message or HTTPStatus(code).phrase))

    def _send_error(self, exc: RequestError) -> None:
        kind = "invalid_request_error" if exc.status < 500 else "server_error"
        # A careless server repeats the client's credentials (a key in the query) in its errors; not this one.
        self._send(exc.status, {"error": {"message": redact(str(exc)), "type": kind, "param": exc.param, "code": None}})

    def _send(self, status: int, payload: dict) -> None:
        data = json.dumps(payload).encode("utf-8")
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        if self.close_connection:
            self.send_header("Connection", "close")
        self.end_headers()
        self.wfile.write(data)

    def log_message(self, format: str, *args: Any) -> None:
        sys.stderr.write(redact(f"serve: {self.address_string()} {format % args}\n"))


def _check(completions: list[Completion]) -> list[Completion]:
    failed = [c.error for c in completions if c.error]
    if failed:
        raise RequestError(500, f"the teacher failed: {failed[0]}")
    return completions


def _clip(text: str, size: int = 40) -> str:
    """Text a client sent, short enough to quote in an error."""
    return text if len(text) <= size else text[:size] + "..."


def decoding_from_request(body: dict, default_max_tokens: int | None = None) -> Decoding:
    """The OpenAI request fields the teacher honours; refuses the ones it would silently ignore.

    Without max_tokens a reply gets `default_max_tokens`, or when that is None Decoding's own
    default, which the teacher caps by the context that is left (as llama.cpp's server does).
    """
    for name, harmless in _UNSUPPORTED.items():
        if body.get(name, harmless) not in (harmless, None):
            raise RequestError(400, f"{name}={body[name]!r} is not supported by this endpoint", name)
    stop = body.get("stop") or []
    if not isinstance(stop, (str, list)) or not all(isinstance(s, str) for s in ([stop] if isinstance(stop, str) else stop)):
        raise RequestError(400, "stop must be a string or a list of strings", "stop")
    fields: dict[str, Any] = {"stop": (stop,) if isinstance(stop, str) else tuple(stop), "seed": body.get("seed")}
    max_tokens = body.get("max_completion_tokens", body.get("max_tokens"))
    if max_tokens is None:
        max_tokens = default_max_tokens
    if max_tokens is not None:
        fields["max_tokens"] = max_tokens
    for name in ("temperature", "top_p", "presence_penalty", "frequency_penalty"):
        if body.get(name) is not None:
            fields[name] = body[name]
    return Decoding(**fields)


def chat_messages(messages: Any) -> list[dict[str, str]]:
    """A chat request's messages as {role, content} with text content; refuses any other shape.

    Example: chat_messages([{"role": "user", "content": [{"type": "text", "text": "Hi"}]}])
    -> [{"role": "user", "content": "Hi"}]
    """
    if not isinstance(messages, list) or not messages:
        raise RequestError(400, "messages must be a non-empty list", "messages")
    checked = []
    for message in messages:
        content = message.get("content") if isinstance(message, dict) else None
        if isinstance(content, list):  # content parts: keep the text ones
            content = "".join(p.get("text", "") for p in content if isinstance(p, dict) and p.get("type") == "text")
        role = message.get("role") if isinstance(message, dict) else None
        if not isinstance(content, str) or not isinstance(role, str):
            raise RequestError(400, "each message needs a role and a text content", "messages")
        checked.append({"role": role, "content": content})
    return checked


def chat_prompt(messages: list[dict[str, str]]) -> str:
    """The raw prompt for a teacher without a chat template: the messages' text, in order.

    Example: chat_prompt([{"role": "user", "content": "1. Instruction:"}]) -> "1. Instruction:"
    """
    return "\n\n".join(m["content"] for m in messages)


def main(
    host: str = "127.0.0.1",
    port: int = 8000,
    local_model_path: str | None = None,
    n_threads: int | None = None,
    n_ctx: int | None = None,
    allow_remote: bool = False,
    api_key: str | None = None,
    request_timeout: float = REQUEST_TIMEOUT,
) -> None:
    """Serve the embedded model (or any GGUF file) over the OpenAI API until Ctrl-C.

    Args:
        host: address to listen on; loopback only unless --allow_remote
        port: 0 picks a free port
        local_model_path: a GGUF file (default the bundled SmolLM2-135M)
        n_threads: default the cores this process may use
        n_ctx: context size; default the model's own, at most 8192
        allow_remote: listen on a non-loopback --host
        api_key: when given, clients must send it (Authorization Bearer); never printed
        request_timeout: seconds a client may take to send a request, or stay idle between two
    """
    from .teachers.local import LocalTeacher

    check_flags(host, port, allow_remote, local_model_path, n_threads, n_ctx, request_timeout)  # before loading a model
    if api_key is not None and not api_key.strip():
        raise ConfigError("--api_key is empty: clients could never send it; leave it out to serve without a key")
    teacher = LocalTeacher(local_model_path, n_threads=n_threads, n_ctx=n_ctx)
    server = TeacherServer(teacher, host, port, allow_remote, request_timeout, api_key=api_key)
    auth = "; clients must send the API key" if api_key else ""
    print(f"serving {teacher.model_id} at {server.url} (Ctrl-C stops{auth})", file=sys.stderr, flush=True)
    try:
        server.serve_forever()
    finally:
        server.close()


def cli(argv: Sequence[str] | None = None) -> None:
    run(main, argv, name="self_instruct.serve", interrupted="stopped")


if __name__ == "__main__":
    cli()
