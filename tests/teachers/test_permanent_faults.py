"""Faults no retry can mend end the run at once, with one line naming the server and what it
answered, and exit status 2: an address that is not an OpenAI API (a static file server, a web
page), no such model, a refused key, a spent quota, a server that cuts every reply short.

Each run goes through the real CLI with its default retries and backoff (6 attempts from 1 s):
were the fault retried, a run would send dozens of requests and take minutes. That it stops in
seconds is shown by counting what the server saw. In a fleet, such an endpoint is retired and
the others carry the run.
"""
import asyncio
import functools
import json
import threading
from http.server import BaseHTTPRequestHandler, SimpleHTTPRequestHandler, ThreadingHTTPServer

import pytest

from fake_openai import FakeOpenAI
from self_instruct.errors import TeacherError
from self_instruct.generate import cli
from self_instruct.teachers.faults import CUT_SHORT_AFTER
from self_instruct.teachers.openai_compat import OpenAITeacher
from self_instruct.types import Decoding

PROMPT = "Come up with tasks.\n###\n4. Instruction:"
DECODING = Decoding(max_tokens=300, stop=("6. Instruction:",))
# The engine keeps --max_concurrency (8) requests out in whole rounds of --request_batch_size (5),
# so two rounds go out before the first reply is back: a fault that stops the run at first sight
# leaves those 10 requests, the check's GET /models, and nothing more.
HANDFUL = 11


class Counted:
    """A server of the standard library's in a thread, counting the requests it answers."""

    def __init__(self, handler, **options):
        counted = self

        class Handler(handler):
            def log_message(self, *args):
                pass

            def handle_one_request(self):
                self.requestline = ""  # a kept-alive connection's close is no request
                super().handle_one_request()
                if self.requestline:
                    counted.requests.append(self.requestline)

        self.requests: list[str] = []
        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), functools.partial(Handler, **options))
        self.thread = threading.Thread(target=self.httpd.serve_forever, kwargs={"poll_interval": 0.02}, daemon=True)

    def __enter__(self):
        self.thread.start()
        return self

    def __exit__(self, *exc):
        self.httpd.shutdown()
        self.httpd.server_close()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.httpd.server_address[1]}"


class PageEverywhere(BaseHTTPRequestHandler):
    """A web site: the same HTML page, 200, for any path and method (a captive portal, a web app)."""

    protocol_version = "HTTP/1.1"

    def do_GET(self):
        self.rfile.read(int(self.headers.get("Content-Length", 0)))
        page = b"<!DOCTYPE html><html><head><title>Sign in to the guest network</title></head><body>Hi</body></html>"
        self.send_response(200)
        self.send_header("Content-Type", "text/html; charset=utf-8")
        self.send_header("Content-Length", str(len(page)))
        self.end_headers()
        self.wfile.write(page)

    do_POST = do_GET


def generate_cli(tmp_path, base_url, capsys, *flags):
    """Run generate as a user would; its exit status and stderr's lines."""
    with pytest.raises(SystemExit) as info:
        cli(["--output_dir", str(tmp_path / "out"), "--base_url", base_url, "--model_name", "fake-model", "--quiet",
             "--num_instructions_to_generate", "20", *flags])
    return info.value.code, capsys.readouterr().err.strip().splitlines()


def test_a_static_file_server_is_not_a_teacher(tmp_path, capsys):
    site = tmp_path / "site"
    site.mkdir()
    (site / "index.html").write_text("<html><body>my notes</body></html>", encoding="utf-8")
    with Counted(SimpleHTTPRequestHandler, directory=str(site)) as files:
        status, err = generate_cli(tmp_path, files.url + "/v1", capsys)
    # http.server answers a POST with 501 and an HTML error page.
    assert status == 2 and len(err) == 1
    assert err[0].startswith(f"self_instruct: error: the teacher at {files.url}/v1 is not an OpenAI-compatible API: "
                             "POST /completions answered 501 with an HTML page")
    assert "--base_url" in err[0]
    posts = [r for r in files.requests if r.startswith("POST")]
    assert 1 <= len(posts) and len(files.requests) <= HANDFUL


def test_a_file_server_at_the_address_without_v1_is_named_the_same_way(tmp_path, capsys):
    site = tmp_path / "site"
    site.mkdir()
    with Counted(SimpleHTTPRequestHandler, directory=str(site)) as files:
        status, err = generate_cli(tmp_path, files.url, capsys, "--api", "chat")
    assert status == 2 and len(err) == 1 and "POST /chat/completions answered 501" in err[0]
    assert len(files.requests) <= HANDFUL


def test_a_web_page_is_not_a_teacher(tmp_path, capsys):
    with Counted(PageEverywhere) as site:
        status, err = generate_cli(tmp_path, site.url + "/v1", capsys)
    assert status == 2 and len(err) == 1
    assert (f"the teacher at {site.url}/v1 is not an OpenAI-compatible API: POST /completions answered 200 with "
            'an HTML page titled "Sign in to the guest network"') in err[0]
    assert len(site.requests) <= HANDFUL


# (scripted fault, what the line says): each answered to every request.
REFUSED = [
    ("404", "cannot serve model 'fake-model' (404: The model 'fake-model' does not exist): fix --model_name"),
    ("401", "refused the request (401: Incorrect API key provided): check OPENAI_API_KEY / --api_key"),
    ("quota", "refused the request (429: You exceeded your current quota, please check your plan and billing details.)"),
]


@pytest.mark.parametrize("fault,says", REFUSED, ids=[f for f, _ in REFUSED])
def test_a_server_that_refuses_every_request_for_good_stops_the_run(fake_server, tmp_path, capsys, fault, says):
    fake_server.script([fault] * 500)
    status, err = generate_cli(tmp_path, fake_server.base_url, capsys)
    assert status == 2 and len(err) == 1
    assert err[0].startswith(f"self_instruct: error: the teacher at {fake_server.base_url} {says}")
    assert len(fake_server.requests) <= HANDFUL - 1  # POSTs only: the fake does not log GET /models


@pytest.mark.parametrize("api", ["completions", "chat"])
def test_replies_always_cut_short_stop_the_run(fake_server, tmp_path, capsys, api):
    # A reasoning model spending max_tokens thinking: finish_reason "length", no text, every time.
    fake_server.script(["cut_short"] * 500)
    status, err = generate_cli(tmp_path, fake_server.base_url, capsys, "--api", api)
    assert status == 2 and len(err) == 1
    assert f"the teacher at {fake_server.base_url} cut {CUT_SHORT_AFTER} replies in a row short before any text" in err[0]
    assert "--max_tokens" in err[0]
    # Replies are fast, so a few more than the limit went out meanwhile; not rounds of them.
    assert CUT_SHORT_AFTER <= len(fake_server.requests) <= CUT_SHORT_AFTER + 8


def test_prompts_the_context_cannot_hold_are_not_retried_and_stop_the_run(fake_server, tmp_path, capsys):
    # The prompt alone is past the context: no max_tokens can help, so no prompt is retried.
    fake_server.script(["context_full"] * 500)
    status, err = generate_cli(tmp_path, fake_server.base_url, capsys)
    assert status == 2 and len(err) == 1 and "short before any text" in err[0]
    assert len(fake_server.requests) <= CUT_SHORT_AFTER + 8
    asked = [b["prompt"] for b in fake_server.requests]
    assert len(set(asked)) == len(asked)  # each prompt sent once


def test_a_reply_cut_short_now_and_then_is_just_a_reply(fake_server, tmp_path, capsys):
    fake_server.script(["cut_short"] * (CUT_SHORT_AFTER - 1) + ["ok"] + ["cut_short"] * (CUT_SHORT_AFTER - 1))
    cli(["--output_dir", str(tmp_path / "out"), "--base_url", fake_server.base_url, "--model_name", "fake-model",
         "--quiet", "--num_instructions_to_generate", "20", "--max_concurrency", "1", "--request_batch_size", "1"])
    assert "error" not in capsys.readouterr().err
    kept = (tmp_path / "out" / "generated.jsonl").read_text(encoding="utf-8").splitlines()
    assert len(kept) == 20


# --- the teacher itself: fleets, and requests waiting in a backoff ---

def ask(teacher, n):
    async def run():
        try:
            return await teacher.complete([PROMPT] * n, DECODING)
        finally:
            await teacher.aclose()
    return asyncio.run(run())


def test_an_endpoint_broken_for_good_is_retired_while_others_serve(tmp_path):
    healthy, missing = FakeOpenAI(tasks_per_reply=1).start(), FakeOpenAI(tasks_per_reply=1).start()
    missing.script(["404"] * 500)  # this one does not serve the model
    try:
        teacher = OpenAITeacher("fake-model", base_url=[healthy.base_url, missing.base_url], max_concurrency=4,
                                max_attempts=1, backoff_initial=60)
        replies = ask(teacher, 40)
    finally:
        healthy.stop()
        missing.stop()
    # Every prompt answered, none dropped (max_attempts=1: a request sent to the retired endpoint
    # went to the other one at no attempt's cost), and the broken one saw only the first requests.
    assert all(r.ok and not r.faults for r in replies)
    assert len(missing.requests) <= 4 and len(healthy.requests) == 40
    stats = teacher.endpoint_stats()
    assert "cannot serve model 'fake-model' (404" in stats[missing.base_url]["retired"]
    assert "retired" not in stats[healthy.base_url]


def test_a_fleet_broken_everywhere_names_each_endpoint(tmp_path):
    missing, refusing = FakeOpenAI().start(), FakeOpenAI().start()
    missing.script(["404"] * 50)
    refusing.script(["401"] * 50)
    try:
        with pytest.raises(TeacherError) as info:
            ask(OpenAITeacher("fake-model", base_url=[missing.base_url, refusing.base_url], max_concurrency=4), 8)
    finally:
        missing.stop()
        refusing.stop()
    line = str(info.value)
    assert f"the teacher at {missing.base_url} cannot serve model" in line
    assert f"the teacher at {refusing.base_url} refused the request (401" in line
    assert "\n" not in line


def test_a_request_waiting_in_a_backoff_stops_when_the_teacher_is_down(fake_server):
    # The first request meets a 503 and waits out a ten-minute backoff; meanwhile another meets
    # a 404. The first must not sit out its wait: the teacher is down, and it says so at once.
    fake_server.script(["503", "404"])
    teacher = OpenAITeacher("fake-model", base_url=fake_server.base_url, max_concurrency=1,
                            backoff_initial=600, backoff_max=600)

    async def run():
        try:
            waiting = asyncio.ensure_future(teacher.complete([PROMPT], DECODING))
            for _ in range(1000):  # until the first request is back from the server, in its backoff
                if len(fake_server.requests) == 1 and fake_server.in_flight == 0:
                    break
                await asyncio.sleep(0.01)
            with pytest.raises(TeacherError, match="cannot serve model"):
                await teacher.complete([PROMPT], DECODING)
            # A hang guard a hundred times what it takes; without the fix it waits 600 s.
            with pytest.raises(TeacherError, match="cannot serve model"):
                await asyncio.wait_for(waiting, 60)
        finally:
            await teacher.aclose()
    asyncio.run(run())
    assert len(fake_server.requests) == 2


# --- what each answer means: a server answering every completion request the same way ---

class Answering(BaseHTTPRequestHandler):
    """Answers GET /models with an empty list, and every POST with the class's status and body."""

    protocol_version = "HTTP/1.1"
    status, content_type, body = 200, "application/json", b"{}"

    def do_GET(self):
        self._send(200, "application/json", b'{"object": "list", "data": []}')

    def do_POST(self):
        self.rfile.read(int(self.headers.get("Content-Length", 0)))
        self._send(self.status, self.content_type, self.body)

    def _send(self, status, content_type, body):
        self.send_response(status)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)


def answering(status, content_type, body):
    return type("Answer", (Answering,), {"status": status, "content_type": content_type, "body": body.encode()})


JSON = "application/json"
# (status, content type, body, what the one line says after "the teacher at URL ")
PERMANENT = [
    (402, JSON, '{"error": {"message": "Insufficient credits"}}', "refused the request (402: Insufficient credits): the account"),
    (403, JSON, '{"error": {"message": "Country not supported"}}', "refused the request (403: Country not supported): check OPENAI_API_KEY"),
    (400, JSON, '{"error": {"message": "The model `m` does not exist", "code": "model_not_found"}}',
     "cannot serve model 'fake-model' (400: The model `m` does not exist)"),
    (404, JSON, '{"detail": "Not Found"}', "does not serve POST /completions (404: Not Found); check --base_url"),
    (405, JSON, '{"detail": "Method Not Allowed"}', "does not serve POST /completions (405: Method Not Allowed); check --base_url"),
    (404, "text/plain", "404 page not found",
     'is not an OpenAI-compatible API: POST /completions answered 404 with the text "404 page not found"; check --base_url'),
    (200, "text/plain", "OK", 'is not an OpenAI-compatible API: POST /completions answered 200 with the text "OK"'),
]


@pytest.mark.parametrize("status,content_type,body,says", PERMANENT, ids=[f"{p[0]}-{p[1]}" for p in PERMANENT])
def test_an_answer_no_retry_can_mend_raises_at_its_first_sight(status, content_type, body, says):
    with Counted(answering(status, content_type, body)) as server:
        teacher = OpenAITeacher("fake-model", base_url=server.url + "/v1", max_concurrency=1, backoff_initial=60)
        with pytest.raises(TeacherError) as info:
            ask(teacher, 3)
    assert str(info.value).startswith(f"the teacher at {server.url}/v1 {says}")
    assert server.requests == ["POST /v1/completions HTTP/1.1"]  # one request: no retry, no other prompt sent


# Answers that leave other requests a chance: (status, body, the failed prompt's error).
NOT_PERMANENT = [
    (429, '{"error": {"message": "Rate limit reached", "type": "requests"}}', "429: "),
    (400, '{"error": {"message": "Unsupported parameter: top_p"}}', "400: "),
]


@pytest.mark.parametrize("status,body,error", NOT_PERMANENT, ids=[str(p[0]) for p in NOT_PERMANENT])
def test_an_answer_that_may_mend_fails_only_its_prompt(status, body, error):
    with Counted(answering(status, JSON, body)) as server:
        (reply,) = ask(OpenAITeacher("fake-model", base_url=server.url + "/v1", max_attempts=2, backoff_initial=0.01), 1)
    assert not reply.ok and reply.error.startswith(error)


def test_a_generate_run_on_a_fleet_records_why_an_endpoint_was_retired(tmp_path, capsys):
    healthy = FakeOpenAI(synthetic=True, tasks_per_reply=4).start()
    with Counted(SimpleHTTPRequestHandler, directory=str(tmp_path)) as files:
        try:
            cli(["--output_dir", str(tmp_path / "out"), "--base_url", f"{files.url}/v1,{healthy.base_url}",
                 "--model_name", "fake-model", "--quiet", "--num_instructions_to_generate", "40", "--num_tasks", "8"])
        finally:
            healthy.stop()
    assert "error" not in capsys.readouterr().err
    state = json.loads((tmp_path / "out" / "state.json").read_text(encoding="utf-8"))
    assert state["kept"] == 40 and state["failed_requests"] == 0
    assert "is not an OpenAI-compatible API" in state["endpoints"][f"{files.url}/v1"]["retired"]
    assert len(files.requests) <= HANDFUL
