"""A reply is read for what it is, whatever was asked: a JSON body to a stream request is a whole
reply, an event stream to a plain request is assembled, and either way a run keeps everything.

Simple servers and proxies answer `stream: true` with one JSON body; others stream whatever they
are asked. The loopback server plays both (`whole_replies`, `always_stream`).
"""
import asyncio
import json
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from fake_openai import FakeOpenAI
from self_instruct.generate import generate
from self_instruct.teachers.faults import BadReply, NotAnAPI
from self_instruct.teachers.openai_compat import OpenAITeacher, _Reply
from self_instruct.types import Decoding

PROMPT = "Come up with tasks.\n###\n4. Instruction:"
DECODING = Decoding(max_tokens=300, stop=("6. Instruction:",))


@pytest.fixture
def server():
    started = FakeOpenAI(synthetic=True, tasks_per_reply=4).start()  # made-up words: none lost to similarity
    yield started
    started.stop()


def completions(server):
    return [b for b in server.requests if "prompt" in b or "messages" in b]


def run(server, out, api, stream):
    return generate(str(out), base_url=server.base_url, model_name="fake-model", api=api, no_stream=not stream,
                    num_instructions_to_generate=100, num_tasks=8, request_batch_size=4, max_attempts=2,
                    retry_backoff=0.01, quiet=True)


def kept(out):
    return [json.loads(line) for line in (out / "generated.jsonl").read_text(encoding="utf-8").splitlines()]


@pytest.mark.parametrize("api", ["completions", "chat"])
def test_a_json_body_answering_a_stream_request_is_a_whole_reply(server, tmp_path, api):
    server.whole_replies = True
    result = run(server, tmp_path / "out", api, stream=True)
    assert result.kept == 100 and len(kept(tmp_path / "out")) == 100
    # Every request asked for a stream and got one JSON body; not one was called a fault.
    asked = completions(server)
    assert asked and all(b.get("stream") for b in asked)
    assert not result.stats.faults and result.stats.failed_requests == 0
    # Usage came in the body: counted as the server counted it.
    state = json.loads((tmp_path / "out" / "state.json").read_text())
    assert state["completion_tokens"] > 0 and state["faults"] == {}


@pytest.mark.parametrize("api", ["completions", "chat"])
def test_an_event_stream_answering_a_plain_request_is_assembled(server, tmp_path, api):
    server.always_stream = True
    result = run(server, tmp_path / "out", api, stream=False)
    assert result.kept == 100 and len(kept(tmp_path / "out")) == 100
    asked = completions(server)
    assert asked and not any(b.get("stream") for b in asked)
    assert not result.stats.faults and result.stats.failed_requests == 0


def test_a_whole_reply_keeps_its_text_finish_reason_and_usage(fake_server):
    fake_server.whole_replies, fake_server.tasks_per_reply = True, 1
    fake_server.script(["length"])

    async def ask():
        teacher = OpenAITeacher("fake-model", base_url=fake_server.base_url)
        try:
            return await teacher.complete([PROMPT, PROMPT], DECODING)
        finally:
            await teacher.aclose()
    # the two requests race: the server's first (scripted "length") may answer either prompt
    replies = asyncio.run(ask())
    assert sorted(reply.finish_reason for reply in replies) == ["length", "stop"]
    for reply in replies:
        assert reply.ok and not reply.faults and reply.text.strip()
        assert reply.prompt_tokens == len(PROMPT.split()) and reply.completion_tokens == len(reply.text.split())


# --- bodies read whole: each shape a server may send ---

def take(body: str, content_type: str = "application/json", chat: bool = False) -> _Reply:
    reply = _Reply(0.0)
    reply.take_body(body.encode(), content_type, chat)
    return reply


def test_an_event_stream_under_another_content_type_is_assembled():
    events = ('data: {"choices": [{"text": "Name", "finish_reason": null}]}\n\n: keep-alive\n\n'
              'data: {"choices": [{"text": " a river.", "finish_reason": "stop"}]}\n\n'
              'data: {"choices": [], "usage": {"prompt_tokens": 7, "completion_tokens": 3}}\n\ndata: [DONE]\n\n')
    reply = take(events, "text/plain")
    assert "".join(reply.parts) == "Name a river." and reply.finish_reason == "stop"
    assert reply.usage == {"prompt_tokens": 7, "completion_tokens": 3} and not reply.whole


def test_a_chat_reply_cut_short_while_thinking_is_empty_text_not_a_fault():
    body = json.dumps({"choices": [{"message": {"role": "assistant", "content": None, "reasoning_content": "Hmm"},
                                    "finish_reason": "length"}]})
    reply = take(body, chat=True)
    assert reply.parts == [""] and reply.finish_reason == "length"
    with pytest.raises(BadReply, match="holds no text"):  # no text and no reason why: a bad reply
        take(json.dumps({"choices": [{"message": {"content": None}, "finish_reason": "stop"}]}), chat=True)


@pytest.mark.parametrize("body,content_type,what", [
    ("<!DOCTYPE html><html><head><title>Welcome to nginx!</title></head></html>", "text/html", 'an HTML page titled "Welcome to nginx!"'),
    ("<html><body>It works</body></html>", "text/plain", "an HTML page"),
    ("OK", "text/plain", 'the text "OK"'),
])
def test_a_body_no_api_sends_is_named_for_what_it_is(body, content_type, what):
    with pytest.raises(NotAnAPI) as info:
        take(body, content_type)
    assert info.value.what == what


def test_json_that_is_no_completion_says_what_the_server_said():
    with pytest.raises(BadReply, match="not a completion: .*model is loading") as info:
        take(json.dumps({"error": {"message": "model is loading"}}))
    assert not isinstance(info.value, NotAnAPI)  # an API that failed: retried like any bad reply


# --- streams as they arrive: any line ends, events cut anywhere by the network ---

class _DribblingStream(BaseHTTPRequestHandler):
    """Answers every completion with a stream in CR LF line ends (the standard allows CR LF, CR
    or LF), a comment, and the bytes sent a few at a time, so events are cut between reads."""
    EVENTS = ('data: {"choices": [{"text": "Name", "finish_reason": null}]}\r\n\r\n: keep-alive\r\n\r\n'
              'data: {"choices": [{"text": " a\\u00e9 river.", "finish_reason": "stop"}]}\r\r'
              'data: {"choices": [], "usage": {"prompt_tokens": 7, "completion_tokens": 3}}\n\ndata: [DONE]\r\n\r\n').encode()

    def do_POST(self):
        self.rfile.read(int(self.headers["Content-Length"]))
        self.send_response(200)
        self.send_header("Content-Type", "text/event-stream")
        self.send_header("Content-Length", str(len(self.EVENTS)))
        self.end_headers()
        for i in range(0, len(self.EVENTS), 7):
            self.wfile.write(self.EVENTS[i:i + 7])
            self.wfile.flush()
            time.sleep(0.001)

    def log_message(self, *args):
        pass


def test_a_stream_cut_anywhere_with_any_line_ends_is_read_whole():
    server = ThreadingHTTPServer(("127.0.0.1", 0), _DribblingStream)
    threading.Thread(target=server.serve_forever, daemon=True).start()

    async def ask():
        teacher = OpenAITeacher("fake-model", base_url=f"http://127.0.0.1:{server.server_address[1]}/v1")
        try:
            return await teacher.complete([PROMPT] * 3, DECODING)
        finally:
            await teacher.aclose()
    try:
        replies = asyncio.run(ask())
    finally:
        server.shutdown()
    for reply in replies:
        assert reply.ok and not reply.faults
        assert reply.text == "Name a\u00e9 river." and reply.finish_reason == "stop"
        assert (reply.prompt_tokens, reply.completion_tokens) == (7, 3)
