"""A real HTTP server on 127.0.0.1 that speaks the OpenAI API (completions, chat, models),
writes plausible self-instruct replies, and injects the faults real endpoints throw.

Faults are scripted per request: `server.script(["429", "ok", "reset"])` answers the next three
requests so; `server.fault_rate = 0.3` draws faults at random (seeded) after the script. Besides
FAULTS, scripts may use "400" (a refusal), "echo_key" (a 500 whose message repeats the
Authorization header, as careless servers do) and "html" (HTTP 200 with an HTML page).
"""
from __future__ import annotations

import json
import random
import re
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
    request_queue_size = 256  # socketserver's default backlog of 5 drops bursts of connections

    def handle_error(self, request, client_address) -> None:
        # Clients hang up on purpose (cancelled rounds, timeouts); that is not a server failure.
        import sys
        if not isinstance(sys.exc_info()[1], (ConnectionError, TimeoutError)):
            super().handle_error(request, client_address)

    def __init__(self, latency: float = 0.0, tasks_per_reply: int | None = None, seed: int = 0, api_key: str | None = None,
                 synthetic: bool = False, port: int = 0):
        super().__init__(("127.0.0.1", port), _Handler)
        self.synthetic = synthetic
        self.latency = latency
        self.tasks_per_reply = tasks_per_reply
        self.rng = random.Random(seed)
        self.required_key = api_key
        self.fault_rate = 0.0
        self.timeout_sleep = 3.0
        self.lock = threading.Lock()
        self.scripted: list[str] = []
        self.requests: list[dict] = []
        self.faults_sent: list[str] = []
        self.in_flight = self.max_in_flight = 0
        self.reply_fn = None  # optional: fn(prompt, body) -> text, replaces the generated reply
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
        try:
            if server.latency:
                time.sleep(server.latency)
            self._answer(body, server.next_fault())
        finally:
            with server.lock:
                server.in_flight -= 1

    def _authorized(self) -> bool:
        key = self.server.required_key
        if key and self.headers.get("Authorization") != f"Bearer {key}":
            self._json(401, {"error": {"message": "Incorrect API key provided", "type": "invalid_request_error", "code": "invalid_api_key"}})
            return False
        return True

    def _answer(self, body: dict, fault: str) -> None:
        chat = self.path.endswith("/chat/completions")
        prompt = body["messages"][-1]["content"] if chat else body.get("prompt", "")
        if fault in ("429", "429-retry-after"):
            headers = {"Retry-After": "0.05"} if fault == "429-retry-after" else {}
            return self._json(429, {"error": {"message": "Rate limit reached", "type": "requests"}}, headers)
        if fault in ("500", "502", "503"):
            return self._json(int(fault), {"error": {"message": f"server error {fault}"}})
        if fault == "reset":
            return self._reset()
        if fault == "context_length":
            # OpenAI's wording, numbers consistent with what was asked.
            asked = body.get("max_tokens", 16)
            return self._json(400, {"error": {"message": (
                f"This model's maximum context length is {asked + 99} tokens. However, you requested {asked + 100} tokens "
                f"(100 in your prompt; {asked} for the completion). Please reduce your prompt; or completion length."),
                "type": "invalid_request_error", "code": "context_length_exceeded"}})
        if fault == "400":  # a refusal no retry can fix
            return self._json(400, {"error": {"message": "Unsupported parameter: 'top_p'", "type": "invalid_request_error"}})
        if fault == "echo_key":
            return self._json(500, {"error": {"message": f"upstream failed for credentials {self.headers.get('Authorization')}"}})
        if fault == "html":
            page = b"<html><body>Bad gateway</body></html>"
            self.send_response(200)
            self.send_header("Content-Type", "text/html")
            self.send_header("Content-Length", str(len(page)))
            self.end_headers()
            return self.wfile.write(page)
        if fault == "timeout":
            time.sleep(self.server.timeout_sleep)
        if fault == "malformed":
            return self._raw(200, b'{"id": "cmpl-1", "choices": [{"text": "unterminated')
        text, finish = self.server.reply_text(prompt, body), "stop"
        if fault == "empty_choices":
            return self._json(200, {"id": "x", "object": "text_completion", "created": 0, "model": body.get("model"), "choices": []})
        if fault == "length":
            text, finish = text[: max(1, len(text) * 2 // 3)], "length"
        elif fault == "zero_tasks":
            text = " Sorry, I cannot help with that request."
        elif fault == "wrong_numbering":
            text = re.sub(r"(\d+)\. (Instruction|Input|Output):", lambda m: f"{int(m.group(1)) + 7}. {m.group(2)}:", text)
        if chat:
            m = re.search(r"(\d+)\. Instruction:\s*$", prompt)
            text = f"{m.group(1) if m else 4}. Instruction:{text}"  # chat models restate the open number
        self._json(200, self._completion(body, text, finish, chat, prompt))

    @staticmethod
    def _completion(body: dict, text: str, finish: str, chat: bool, prompt: str) -> dict:
        usage = {"prompt_tokens": len(prompt.split()), "completion_tokens": len(text.split()), "total_tokens": len(prompt.split()) + len(text.split())}
        if chat:
            choice = {"index": 0, "message": {"role": "assistant", "content": text}, "finish_reason": finish}
            return {"id": "chatcmpl-1", "object": "chat.completion", "created": 0, "model": body.get("model"), "choices": [choice], "usage": usage}
        choice = {"index": 0, "text": text, "finish_reason": finish, "logprobs": None}
        return {"id": "cmpl-1", "object": "text_completion", "created": 0, "model": body.get("model"), "choices": [choice], "usage": usage}

    def _json(self, status: int, obj: dict, headers: dict | None = None) -> None:
        self._raw(status, json.dumps(obj).encode(), headers)

    def _raw(self, status: int, payload: bytes, headers: dict | None = None) -> None:
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
        self.wfile.flush()
        self.close_connection = True
        self.connection.shutdown(2)


if __name__ == "__main__":
    # Run as its own process (benchmarks): prints the base URL, serves until killed.
    import argparse

    parser = argparse.ArgumentParser()
    parser.add_argument("--latency", type=float, default=0.0)
    parser.add_argument("--tasks_per_reply", type=int, default=None)
    parser.add_argument("--synthetic", action="store_true")
    parser.add_argument("--fault_rate", type=float, default=0.0)
    args = parser.parse_args()
    server = FakeOpenAI(latency=args.latency, tasks_per_reply=args.tasks_per_reply, synthetic=args.synthetic)
    server.fault_rate = args.fault_rate
    print(server.base_url, flush=True)
    server.serve_forever()
