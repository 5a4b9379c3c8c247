"""A real HTTP server on 127.0.0.1 that speaks the OpenAI API (completions, chat, models),
writes plausible self-instruct replies, and injects the faults real endpoints throw.

Faults are scripted per request: `server.script(["429", "ok", "reset"])` answers the next three
requests so; `server.fault_rate = 0.3` draws faults at random (seeded) after the script. Besides
FAULTS, scripts may use "400" (a refusal), "401" (a key refused, as after it is revoked), "404" (no such model), "echo_key" (a 500 whose message repeats the
Authorization header, as careless servers do), "html" (HTTP 200 with an HTML page), "stall"
(a streamed reply that goes silent for `timeout_sleep` seconds halfway), "cut_short" (finish_reason
"length" before any text, as a reasoning model that spent max_tokens thinking), "context_full" (a
context overflow whose numbers say the prompt alone fills the context) and "quota" (OpenAI's 429
for an account with no credit left).

Replies are streamed as server-sent events when the request says `stream: true`, one word a chunk,
`token_delay` seconds apart, with a usage chunk when `stream_options.include_usage` asks (unless
`stream_usage` is off). `whole_replies` answers every request with one JSON body, stream or not,
as simple servers and proxies do; `always_stream` streams every reply, even to a plain request. `refuse_stream` / `refuse_stream_options` answer such requests with a 400,
as servers without streaming do. `slots=n` serves n requests at a time: the rest wait, silent, as
llama.cpp's server and Ollama queue them; `interrupt=True` also cuts a stream short (a bare
[DONE], no finish_reason) as soon as another request waits, as llama-cpp-python's server does.

Every request's arrival time and answered tokens are kept (`arrivals`, `charges`), so a test can
count what the server saw in any window (`most_in_window`).
"""
from __future__ import annotations

import itertools
import json
import random
import re
import select
import socket
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

WORDS = (
    "river garden budget poem recipe league planet market engine harbor winter orchard ladder violin "
    "forest lantern castle bridge desert meadow canyon island glacier volcano prairie tundra lagoon "
    "bakery library museum theater stadium airport station hospital school office factory workshop "
    "teacher doctor farmer pilot sailor painter writer chemist lawyer nurse baker tailor plumber "
    "apple bread cheese honey lemon mango olive pepper rice salt sugar tomato walnut yogurt carrot "
    "battery cable camera clock compass engine filter hammer kettle magnet mirror needle pencil rope "
    "justice freedom courage patience wisdom kindness honesty loyalty humor curiosity ambition "
    "election treaty census tariff pension mortgage invoice salary auction charity festival parade "
    "algorithm database protocol compiler network server browser keyboard password spreadsheet"
).split()
VERBS = ("Explain", "Describe", "Compare", "Summarize", "List", "Suggest", "Classify", "Rewrite", "Evaluate", "Outline")
FAULTS = ("429", "429-retry-after", "500", "502", "503", "reset", "timeout", "malformed", "empty_choices",
          "length", "zero_tasks", "wrong_numbering", "context_length")
# Faults answered with an error status at once, before the request would wait for a slot.
_REFUSALS = ("429", "429-retry-after", "500", "502", "503", "context_length", "context_full", "400", "401", "404", "echo_key", "quota")


def make_task(rng: random.Random, synthetic: bool = False) -> tuple[str, str, str]:
    if synthetic:
        # Made-up words: every task is new to the pool, so none is lost to the similarity filter.
        words = ["".join(rng.choice("bcdfghjklmnprstvz") + rng.choice("aeiou") for _ in range(3)) for _ in range(6)]
        return f"{rng.choice(VERBS)} {' '.join(words[:4])} briefly.", f"{words[4]} {words[5]}", f"{words[0]} {words[2]}."
    words = rng.sample(WORDS, 6)
    instruction = f"{rng.choice(VERBS)} how the {words[0]} and the {words[1]} shape a {words[2]} near the {words[3]}."
    inp = "" if rng.random() < 0.4 else f"The {words[4]} meets the {words[5]}."
    return instruction, inp, f"The {words[0]} supports the {words[2]} while the {words[1]} guides the {words[3]}."


def self_instruct_reply(prompt: str, num_tasks: int, rng: random.Random, count: int | None = None, start_open: bool = True, synthetic: bool = False) -> str:
    """Continue an Alpaca-format prompt that ends with `###\\n{k}. Instruction:`."""
    m = re.search(r"(\d+)\. Instruction:\s*$", prompt)
    k = int(m.group(1)) if m else 4
    last = num_tasks if count is None else min(num_tasks, k + count - 1)
    blocks = []
    for i in range(k, last + 1):
        instruction, inp, out = make_task(rng, synthetic)
        head = f" {instruction}" if (i == k and start_open) else f"{i}. Instruction: {instruction}"
        blocks.append(f"{head}\n{i}. Input:\n{inp or '<noinput>'}\n{i}. Output:\n{out}\n")
    return "###\n".join(blocks)


class FakeOpenAI(ThreadingHTTPServer):
    daemon_threads = True
    # socketserver's default backlog of 5 drops connections when 64 clients open at once.
    request_queue_size = 256

    def handle_error(self, request, client_address) -> None:
        # Clients hang up on purpose (cancelled rounds, timeouts); that is not a server failure.
        import sys
        if not isinstance(sys.exc_info()[1], (ConnectionError, TimeoutError)):
            super().handle_error(request, client_address)

    def __init__(self, latency: float = 0.0, tasks_per_reply: int | None = None, seed: int = 0, api_key: str | None = None,
                 synthetic: bool = False, port: int = 0, slots: int | None = None, token_delay: float = 0.0,
                 interrupt: bool = False, jitter: float = 0.0):
        super().__init__(("127.0.0.1", port), _Handler)
        self.slots = threading.Semaphore(slots) if slots else None
        self.waiting = 0  # requests queued for a slot
        self.interrupt = interrupt
        self.token_delay = token_delay
        self.stream_usage = True
        self.refuse_stream = self.refuse_stream_options = False
        self.whole_replies = self.always_stream = False
        self.arrivals: list[tuple[float, int]] = []  # (time, requests in flight then, this one included)
        self.charges: list[tuple[float, int]] = []  # (arrival time, tokens of the answered request)
        self.synthetic = synthetic
        self.latency = latency
        # Each request waits latency * U(1 - jitter, 1 + jitter): real servers do not answer a
        # burst all at once, and a fixed latency keeps the client's work in bursts forever.
        self.jitter = jitter
        self.tasks_per_reply = tasks_per_reply
        self.rng = random.Random(seed)
        self.required_key = api_key
        self.fault_rate = 0.0
        self.timeout_sleep = 3.0
        self.retry_after = "0.05"  # seconds a "429-retry-after" asks the client to wait
        self.lock = threading.Lock()
        self.scripted: list[str] = []
        self.requests: list[dict] = []
        self.faults_sent: list[str] = []
        self.in_flight = self.max_in_flight = 0
        self.reply_fn = None  # optional: fn(prompt, body) -> text, replaces the generated reply
        self.raw_chat = False  # True: a chat reply is reply_fn's text as is (no restated open number)
        self.refuse_json_mode = False  # True: a request with response_format gets a 400 naming it
        self.tickets = itertools.count(1)  # numbers each refusal, as a real one carries its request id
        # A short poll so that stop() returns at once (the default half second adds up over a test run).
        self.thread = threading.Thread(target=self.serve_forever, kwargs={"poll_interval": 0.02}, daemon=True)

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.server_address[1]}/v1"

    def start(self) -> "FakeOpenAI":
        self.thread.start()
        return self

    def stop(self) -> None:
        self.shutdown()
        self.server_close()

    def next_latency(self) -> float:
        if not self.jitter:
            return self.latency
        with self.lock:
            return self.latency * self.rng.uniform(1 - self.jitter, 1 + self.jitter)

    def script(self, faults) -> None:
        with self.lock:
            self.scripted.extend(faults)

    def next_fault(self) -> str:
        with self.lock:
            if self.scripted:
                fault = self.scripted.pop(0)
            elif self.fault_rate and self.rng.random() < self.fault_rate:
                fault = self.rng.choice(FAULTS)
            else:
                fault = "ok"
            if fault != "ok":
                self.faults_sent.append(fault)
            return fault

    def most_in_window(self, period: float, tokens: bool = False) -> int:
        """The most requests (or answered tokens) that arrived within any `period` seconds."""
        with self.lock:
            events = sorted(self.charges if tokens else [(t, 1) for t, _ in self.arrivals])
        most, total, start = 0, 0, 0
        for t, amount in events:
            total += amount
            while events[start][0] <= t - period:
                total -= events[start][1]
                start += 1
            most = max(most, total)
        return most

    def reply_text(self, prompt: str, body: dict) -> str:
        if self.reply_fn:
            return self.reply_fn(prompt, body)
        stop = (body.get("stop") or ["21. Instruction:"])[0]
        num_tasks = int(re.match(r"(\d+)", stop).group(1)) - 1
        with self.lock:
            seed = self.rng.random()
        return self_instruct_reply(prompt, num_tasks, random.Random(seed), self.tasks_per_reply, synthetic=self.synthetic)


class _Handler(BaseHTTPRequestHandler):
    server: FakeOpenAI
    protocol_version = "HTTP/1.1"

    def setup(self) -> None:
        super().setup()
        # Headers and body go out in two writes; without this, Nagle's algorithm and the client's
        # delayed ACK add 40 ms to every reply.
        self.connection.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)

    def log_message(self, *args) -> None:
        pass

    def do_GET(self) -> None:
        if not self._authorized():
            return
        if self.path.rstrip("/").endswith("/models"):
            self._json(200, {"object": "list", "data": [{"id": "fake-model", "object": "model", "owned_by": "test"}]})
        else:
            self._json(404, {"error": {"message": "not found"}})

    def do_POST(self) -> None:
        length = int(self.headers.get("Content-Length", 0))
        data = self.rfile.read(length)
        if len(data) < length:  # the client gave up (a cancelled request): nothing to answer
            self.close_connection = True
            return
        body = json.loads(data or b"{}")
        if not self._authorized():
            return
        server = self.server
        with server.lock:
            server.requests.append(body)
            server.in_flight += 1
            server.max_in_flight = max(server.max_in_flight, server.in_flight)
            self.arrived = time.monotonic()
            server.arrivals.append((self.arrived, server.in_flight))
        try:
            fault = server.next_fault()
            if fault in _REFUSALS or self._refused(body):
                return self._answer(body, fault)  # refusals need no slot, as on real servers
            if not self._take_slot():
                return
            try:
                if server.latency:
                    time.sleep(server.next_latency())
                self._answer(body, fault)
            finally:
                if server.slots:
                    server.slots.release()
        finally:
            with server.lock:
                server.in_flight -= 1

    def _refused(self, body: dict) -> bool:
        return bool(body.get("stream")) and (self.server.refuse_stream or (self.server.refuse_stream_options and "stream_options" in body))

    def _take_slot(self) -> bool:
        """Wait, silent, for a free slot; False when the client hung up meanwhile."""
        server = self.server
        if not server.slots:
            return True
        with server.lock:
            server.waiting += 1
        try:
            while not server.slots.acquire(timeout=0.01):
                if self._client_gone():
                    self.close_connection = True
                    return False
            return True
        finally:
            with server.lock:
                server.waiting -= 1

    def _client_gone(self) -> bool:
        readable, _, _ = select.select([self.connection], [], [], 0)
        if not readable:
            return False
        try:
            return self.connection.recv(1, socket.MSG_PEEK) == b""
        except OSError:
            return True

    def _authorized(self) -> bool:
        key = self.server.required_key
        if key and self.headers.get("Authorization") != f"Bearer {key}":
            self._json(401, {"error": {"message": "Incorrect API key provided", "type": "invalid_request_error", "code": "invalid_api_key"}})
            return False
        return True

    def _answer(self, body: dict, fault: str) -> None:
        chat = self.path.endswith("/chat/completions")
        prompt = body["messages"][-1]["content"] if chat else body.get("prompt", "")
        if self.server.refuse_json_mode and "response_format" in body:
            return self._json(400, {"error": {"message": "response_format is not supported", "param": "response_format"}})
        if self._refused(body):
            name = "stream" if self.server.refuse_stream else "stream_options"
            return self._json(400, {"error": {"message": f"{name} is not supported by this endpoint", "param": name}})
        if fault == "quota":
            return self._json(429, {"error": {"message": "You exceeded your current quota, please check your plan and billing details.",
                                              "type": "insufficient_quota", "code": "insufficient_quota"}})
        if fault in ("429", "429-retry-after"):
            headers = {"Retry-After": self.server.retry_after} if fault == "429-retry-after" else {}
            return self._json(429, {"error": {"message": "Rate limit reached", "type": "requests"}}, headers)
        if fault in ("500", "502", "503"):
            return self._json(int(fault), {"error": {"message": f"server error {fault}"}})
        stream = (bool(body.get("stream")) and not self.server.whole_replies) or self.server.always_stream
        if fault == "reset" and not stream:
            return self._reset()
        if fault == "context_length":
            # OpenAI's wording, numbers consistent with what was asked.
            asked = body.get("max_tokens", 16)
            return self._json(400, {"error": {"message": (
                f"This model's maximum context length is {asked + 99} tokens. However, you requested {asked + 100} tokens "
                f"(100 in your prompt; {asked} for the completion). Please reduce your prompt; or completion length."),
                "type": "invalid_request_error", "code": "context_length_exceeded"}})
        if fault == "context_full":  # llama-cpp-python's wording: the prompt alone is past the context
            asked = body.get("max_tokens", 16)
            return self._json(400, {"error": {"message": (
                f"This model's maximum context length is 50 tokens, however you requested {asked + 100} tokens "
                f"(100 in your prompt; {asked} for the completion). Please reduce your prompt; or completion length."),
                "type": "invalid_request_error", "code": "context_length_exceeded"}})
        if fault == "400":  # a refusal no retry can fix
            return self._json(400, {"error": {"message": "Unsupported parameter: 'top_p'", "type": "invalid_request_error"}})
        if fault == "401":
            return self._json(401, {"error": {"message": "Incorrect API key provided", "type": "invalid_request_error", "code": "invalid_api_key"}})
        if fault == "404":  # the model is not served here
            return self._json(404, {"error": {"message": f"The model '{body.get('model')}' does not exist", "code": "model_not_found"}})
        if fault == "echo_key":
            return self._json(500, {"error": {"message": f"upstream failed for credentials {self.headers.get('Authorization')}"}})
        if fault == "html":
            page = b"<html><head><title>Bad gateway</title></head><body>Bad gateway</body></html>"
            self.send_response(200)
            self.send_header("Content-Type", "text/html")
            self.send_header("Content-Length", str(len(page)))
            self.end_headers()
            return self.wfile.write(page)
        if fault == "timeout":
            time.sleep(self.server.timeout_sleep)
        if fault == "malformed":
            return self._raw(200, b'{"id": "cmpl-1", "choices": [{"text": "unterminated', stream=stream)
        text, finish = self.server.reply_text(prompt, body), "stop"
        if fault == "empty_choices":
            empty = {"id": "x", "object": "text_completion", "created": 0, "model": body.get("model"), "choices": []}
            return self._stream([empty]) if stream else self._json(200, empty)
        if fault == "length":
            text, finish = text[: max(1, len(text) * 2 // 3)], "length"
        elif fault == "cut_short":
            text, finish = "", "length"
        elif fault == "zero_tasks":
            # numbered like a real refusal's request id: two refusals are two different replies
            text = f" Sorry, I cannot help with that request (ticket {next(self.server.tickets)})."
        elif fault == "wrong_numbering":
            text = re.sub(r"(\d+)\. (Instruction|Input|Output):", lambda m: f"{int(m.group(1)) + 7}. {m.group(2)}:", text)
        if chat and not self.server.raw_chat and text:
            m = re.search(r"(\d+)\. Instruction:\s*$", prompt)
            text = f"{m.group(1) if m else 4}. Instruction:{text}"  # chat models restate the open number
        usage = {"prompt_tokens": len(prompt.split()), "completion_tokens": len(text.split()), "total_tokens": len(prompt.split()) + len(text.split())}
        with self.server.lock:
            self.server.charges.append((self.arrived, usage["total_tokens"]))
        if stream:
            return self._stream(self._chunks(body, text, finish, chat, usage), fault)
        self._json(200, self._completion(body, text, finish, chat, usage))

    def _chunks(self, body: dict, text: str, finish: str, chat: bool, usage: dict):
        """The reply as stream chunks: one word each, then the finish_reason, then usage if asked."""
        head = {"id": "cmpl-1", "created": 0, "model": body.get("model"), "object": "chat.completion.chunk" if chat else "text_completion"}

        def chunk(piece, finish_reason=None):
            delta = {"content": piece} if piece or not finish_reason else {}  # no text: no content
            choice = {"index": 0, "delta": delta} if chat else {"index": 0, "text": piece, "logprobs": None}
            return {**head, "choices": [{**choice, "finish_reason": finish_reason}]}
        if chat:
            yield {**head, "choices": [{"index": 0, "delta": {"role": "assistant"}, "finish_reason": None}]}
        for piece in re.findall(r"\s*\S+\s*", text):
            yield chunk(piece)
        yield chunk("", finish)
        if self.server.stream_usage and (body.get("stream_options") or {}).get("include_usage"):
            yield {**head, "choices": [], "usage": usage}

    def _stream(self, chunks, fault: str = "ok") -> None:
        """Server-sent events, chunked; cut, stalled or interrupted as the fault says."""
        self.send_response(200)
        self.send_header("Content-Type", "text/event-stream")
        self.send_header("Transfer-Encoding", "chunked")
        self.end_headers()
        chunks = list(chunks)
        for i, chunk in enumerate(chunks):
            if i and self.server.token_delay:
                time.sleep(self.server.token_delay)
            if i == len(chunks) // 2 and fault == "reset":
                return self._cut()
            if i == len(chunks) // 2 and fault == "stall":
                time.sleep(self.server.timeout_sleep)
            self._event(json.dumps(chunk).encode())
            if self.server.interrupt and self.server.waiting:
                break  # another request is queued: end this one early, as llama-cpp-python does
        self._event(b"[DONE]")
        self.wfile.write(b"0\r\n\r\n")

    def _event(self, data: bytes) -> None:
        payload = b"data: " + data + b"\n\n"
        self.wfile.write(b"%x\r\n%s\r\n" % (len(payload), payload))

    def _cut(self) -> None:
        self.wfile.flush()
        self.close_connection = True
        self.connection.shutdown(socket.SHUT_RDWR)

    @staticmethod
    def _completion(body: dict, text: str, finish: str, chat: bool, usage: dict) -> dict:
        if chat:  # no text at all: content null, as a reasoning model's reply cut short in its thinking
            choice = {"index": 0, "message": {"role": "assistant", "content": text or None}, "finish_reason": finish}
            return {"id": "chatcmpl-1", "object": "chat.completion", "created": 0, "model": body.get("model"), "choices": [choice], "usage": usage}
        choice = {"index": 0, "text": text, "finish_reason": finish, "logprobs": None}
        return {"id": "cmpl-1", "object": "text_completion", "created": 0, "model": body.get("model"), "choices": [choice], "usage": usage}

    def _json(self, status: int, obj: dict, headers: dict | None = None) -> None:
        self._raw(status, json.dumps(obj).encode(), headers)

    def _raw(self, status: int, payload: bytes, headers: dict | None = None, stream: bool = False) -> None:
        if stream:  # the same bytes as one server-sent event: not JSON either way
            self.send_response(status)
            self.send_header("Content-Type", "text/event-stream")
            self.send_header("Transfer-Encoding", "chunked")
            self.end_headers()
            self._event(payload)
            return self.wfile.write(b"0\r\n\r\n")
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(payload)))
        for k, v in (headers or {}).items():
            self.send_header(k, v)
        self.end_headers()
        self.wfile.write(payload)

    def _reset(self) -> None:
        # Promise a body, send half of it, and drop the connection.
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", "1000")
        self.end_headers()
        self.wfile.write(b'{"id": "cmpl-1", "choi')
        self._cut()


if __name__ == "__main__":
    # Run as its own process (benchmarks): prints the base URL, serves until killed.
    import argparse

    parser = argparse.ArgumentParser()
    parser.add_argument("--latency", type=float, default=0.0)
    parser.add_argument("--tasks_per_reply", type=int, default=None)
    parser.add_argument("--synthetic", action="store_true")
    parser.add_argument("--fault_rate", type=float, default=0.0)
    parser.add_argument("--slots", type=int, default=None)
    parser.add_argument("--token_delay", type=float, default=0.0)
    parser.add_argument("--jitter", type=float, default=0.0)
    args = parser.parse_args()
    server = FakeOpenAI(latency=args.latency, tasks_per_reply=args.tasks_per_reply, synthetic=args.synthetic,
                        slots=args.slots, token_delay=args.token_delay, jitter=args.jitter)
    server.fault_rate = args.fault_rate
    print(server.base_url, flush=True)
    server.serve_forever()
