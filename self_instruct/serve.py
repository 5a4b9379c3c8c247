"""An OpenAI-compatible HTTP endpoint in front of a teacher, by default the embedded local one.

    python -m self_instruct.serve [--host 127.0.0.1] [--port 8000] [--local_model_path m.gguf]

serves POST /v1/completions, POST /v1/chat/completions and GET /v1/models, so any tool that
speaks the OpenAI API (and our own generate CLI, through --base_url) can use the local model.
Chat messages are not put through a chat template: their text is joined and sent as a raw
prompt, which is what the generate loop means by a chat request. Requests reach the teacher one
at a time, since a llama.cpp model decodes one sequence at a time anyway.

The endpoint has no authentication, so it listens on loopback only unless --allow_remote is given.
Built on the standard library's http.server: no web framework to install.
"""
from __future__ import annotations

import argparse
import asyncio
import ipaddress
import json
import socket
import sys
import threading
import time
import uuid
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any, Sequence

from .errors import ConfigError, SelfInstructError
from .teachers.base import Teacher
from .types import Completion, Decoding

MAX_BODY_BYTES = 16 * 2**20
# How long a client may take to send a request (its head, or its body), or sit idle between two
# requests on one connection, before the connection is closed and its thread freed.
REQUEST_TIMEOUT = 60.0
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
            f"--host {host}: the endpoint has no authentication, so it listens on loopback "
            "(127.0.0.1) only; pass --allow_remote to expose it"
        )


class TeacherServer(ThreadingHTTPServer):
    """A threading HTTP server that owns a teacher and an event loop to run it on.

    Handler threads hand each request to that one loop and wait, holding a lock, so the
    teacher sees one request at a time.
    """

    daemon_threads = True

    def __init__(
        self,
        teacher: Teacher,
        host: str = "127.0.0.1",
        port: int = 8000,
        allow_remote: bool = False,
        request_timeout: float = REQUEST_TIMEOUT,
    ):
        check_host(host, allow_remote)
        self.address_family = socket.AF_INET6 if ":" in host else socket.AF_INET
        self.teacher = teacher
        self.request_timeout = request_timeout
        self._lock = threading.Lock()
        self._loop = asyncio.new_event_loop()
        self._loop_thread = threading.Thread(target=self._loop.run_forever, name="teacher-loop", daemon=True)
        try:
            super().__init__((host, port), _Handler)
        except OSError as exc:
            self._loop.close()
            raise ConfigError(f"cannot listen on {host}:{port} ({exc.strerror}); choose another --port") from None
        self._loop_thread.start()

    @property
    def url(self) -> str:
        host, port = self.server_address[:2]
        return f"http://{'[' + host + ']' if ':' in host else host}:{port}/v1"

    def complete(self, prompts: Sequence[str], decoding: Decoding) -> list[Completion]:
        with self._lock:
            future = asyncio.run_coroutine_threadsafe(self.teacher.complete(prompts, decoding), self._loop)
            return future.result()

    def handle_error(self, request: Any, client_address: Any) -> None:
        """One line, not socketserver's traceback: what is left here is a client that went away."""
        exc = sys.exc_info()[1]
        sys.stderr.write(f"serve: {client_address[0]}: connection dropped ({type(exc).__name__}: {exc})\n")

    def close(self) -> None:
        """Stop listening, then release the teacher and the loop."""
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
        if self.path.rstrip("/") in ("/v1/models", "/models"):
            model = {"id": self.server.teacher.model_id, "object": "model", "created": 0, "owned_by": "self_instruct"}
            self._send(200, {"object": "list", "data": [model]})
        else:
            self._send_error(RequestError(404, f"no route GET {self.path}; try /v1/models"))

    def do_POST(self) -> None:
        routes = {"/v1/completions": self._completions, "/v1/chat/completions": self._chat_completions}
        route = routes.get(self.path.rstrip("/").replace("/v1/v1/", "/v1/"))
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
        completions = self._run([chat_prompt(body.get("messages"))], body)
        choices = [
            {"index": 0, "message": {"role": "assistant", "content": c.text}, "finish_reason": c.finish_reason}
            for c in completions
        ]
        return self._envelope("chatcmpl", "chat.completion", choices, completions)

    def _run(self, prompts: list[str], body: dict) -> list[Completion]:
        completions = self.server.complete(prompts, decoding_from_request(body))
        failed = [c.error for c in completions if c.error]
        if failed:
            raise RequestError(500, f"the teacher failed: {failed[0]}")
        return completions

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
                self.connection.settimeout(max(deadline - time.monotonic(), 1e-3))
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
        self._send(exc.status, {"error": {"message": str(exc), "type": kind, "param": exc.param, "code": None}})

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
        sys.stderr.write(f"serve: {self.address_string()} {format % args}\n")


def _clip(text: str, size: int = 40) -> str:
    """Text a client sent, short enough to quote in an error."""
    return text if len(text) <= size else text[:size] + "..."


def decoding_from_request(body: dict) -> Decoding:
    """The OpenAI request fields the teacher honours; refuses the ones it would silently ignore."""
    for name, harmless in _UNSUPPORTED.items():
        if body.get(name, harmless) not in (harmless, None):
            raise RequestError(400, f"{name}={body[name]!r} is not supported by this endpoint", name)
    stop = body.get("stop") or []
    if not isinstance(stop, (str, list)) or not all(isinstance(s, str) for s in ([stop] if isinstance(stop, str) else stop)):
        raise RequestError(400, "stop must be a string or a list of strings", "stop")
    fields: dict[str, Any] = {"stop": (stop,) if isinstance(stop, str) else tuple(stop), "seed": body.get("seed")}
    # Without max_tokens the reply may use the context that is left, as llama.cpp's server does.
    max_tokens = body.get("max_completion_tokens", body.get("max_tokens"))
    if max_tokens is not None:
        fields["max_tokens"] = max_tokens
    for name in ("temperature", "top_p", "presence_penalty", "frequency_penalty"):
        if body.get(name) is not None:
            fields[name] = body[name]
    return Decoding(**fields)


def chat_prompt(messages: Any) -> str:
    """The raw prompt for a chat request: the text of its messages, in order.

    Example: chat_prompt([{"role": "user", "content": "1. Instruction:"}]) -> "1. Instruction:"
    """
    if not isinstance(messages, list) or not messages:
        raise RequestError(400, "messages must be a non-empty list", "messages")
    texts = []
    for message in messages:
        content = message.get("content") if isinstance(message, dict) else None
        if isinstance(content, list):  # content parts: keep the text ones
            content = "".join(p.get("text", "") for p in content if isinstance(p, dict) and p.get("type") == "text")
        if not isinstance(content, str):
            raise RequestError(400, "each message needs a text content", "messages")
        texts.append(content)
    return "\n\n".join(texts)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m self_instruct.serve", description=__doc__.split("\n\n")[0])
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8000, help="0 picks a free port")
    parser.add_argument("--local_model_path", default=None, help="a GGUF file (default: the bundled SmolLM2-135M)")
    parser.add_argument("--n_threads", type=int, default=None, help="default: the cores this process may use")
    parser.add_argument("--n_ctx", type=int, default=None, help="default: the model's own, at most 8192")
    parser.add_argument("--allow_remote", action="store_true", help="listen on a non-loopback --host")
    args = parser.parse_args(argv)
    from .teachers.local import LocalTeacher

    try:
        check_host(args.host, args.allow_remote)  # before loading a model for nothing
        teacher = LocalTeacher(args.local_model_path, n_threads=args.n_threads, n_ctx=args.n_ctx)
        server = TeacherServer(teacher, args.host, args.port, args.allow_remote)
    except SelfInstructError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    print(f"serving {teacher.model_id} at {server.url} (Ctrl-C stops)", file=sys.stderr)
    try:
        server.serve_forever()
    except KeyboardInterrupt:
        pass
    finally:
        server.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
