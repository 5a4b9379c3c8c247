"""A teacher behind several endpoints: how --base_url names them, who gets each request, what
happens when one fails and comes back, and that no password in a URL is ever shown."""
import asyncio
import json
import socket

import pytest

from fake_openai import FakeOpenAI
from self_instruct.errors import ConfigError, TeacherError
from self_instruct.generate import generate
from self_instruct.teachers.fleet import parse_base_urls
from self_instruct.teachers.openai_compat import OpenAITeacher
from self_instruct.types import Decoding

PROMPT = "Come up with tasks.\n###\n4. Instruction:"
DECODING = Decoding(max_tokens=300, stop=("6. Instruction:",))


@pytest.fixture
def servers():
    started = [FakeOpenAI(seed=i, tasks_per_reply=1).start() for i in range(3)]
    yield started
    for server in started:
        server.stop()


def completions(server):
    return [b for b in server.requests if "prompt" in b or "messages" in b]


def ask(teacher, n, prompt=PROMPT):
    async def run():
        try:
            return await teacher.complete([prompt] * n, DECODING)
        finally:
            await teacher.aclose()
    return asyncio.run(run())


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


# --- naming the endpoints ---

def test_base_url_takes_a_comma_list_a_list_or_a_file(tmp_path):
    assert parse_base_urls("http://a:1/v1, http://b:2/v1,") == ["http://a:1/v1", "http://b:2/v1"]
    assert parse_base_urls(["http://a:1/v1", "http://b:2/v1"]) == ["http://a:1/v1", "http://b:2/v1"]
    assert parse_base_urls(None) == [None]
    listed = tmp_path / "teachers.txt"
    listed.write_text("# the lab's servers\nhttp://a:1/v1\n\n  https://b:2/v1  \n", encoding="utf-8")
    assert parse_base_urls(str(listed)) == ["http://a:1/v1", "https://b:2/v1"]


def test_a_bad_endpoint_is_named_with_its_line(tmp_path):
    listed = tmp_path / "teachers.txt"
    listed.write_text("http://a:1/v1\nb:2/v1\n", encoding="utf-8")
    with pytest.raises(ConfigError, match=r"teachers.txt:2: not an http:// or https:// URL .*'b:2/v1'"):
        parse_base_urls(str(listed))
    with pytest.raises(ConfigError, match="listed twice"):
        parse_base_urls("http://a:1/v1,http://a:1/v1/")
    with pytest.raises(ConfigError, match="no URL in the file"):
        (tmp_path / "empty.txt").write_text("# nothing yet\n")
        parse_base_urls(str(tmp_path / "empty.txt"))
    with pytest.raises(ConfigError, match="none of these"):
        parse_base_urls(str(tmp_path / "missing.txt"))
    with pytest.raises(ConfigError, match=r"--base_url: not an http"):
        parse_base_urls("http://a:1/v1,ftp://b/v1")


def test_no_password_in_a_url_is_shown(servers):
    port = free_port()  # nothing listens there
    secret_url = f"http://ann:s3cret-pw@127.0.0.1:{port}/v1"
    teacher = OpenAITeacher("fake-model", base_url=[secret_url, servers[0].base_url], backoff_initial=0.01)
    shown = json.dumps(teacher.describe()) + json.dumps(teacher.endpoint_stats())
    assert "s3cret-pw" not in shown and f"ann:***@127.0.0.1:{port}" in shown
    alone = OpenAITeacher("fake-model", base_url=secret_url)
    with pytest.raises(ConfigError) as info:
        asyncio.run(alone.check())
    assert "s3cret-pw" not in str(info.value) and "ann:***@" in str(info.value)

    servers[0].script(["404"])  # the model is missing there: the error names the endpoint
    missing = OpenAITeacher("fake-model", base_url=servers[0].base_url.replace("http://", "http://bob:hunter22@"))
    with pytest.raises(TeacherError) as info:
        ask(missing, 1)
    assert "hunter22" not in str(info.value) and "bob:***@" in str(info.value)


# --- who gets the requests ---

def test_requests_go_to_the_least_loaded_endpoint(servers):
    for server in servers:
        server.latency = 0.3
    teacher = OpenAITeacher("fake-model", base_url=[s.base_url for s in servers], max_concurrency=6)
    replies = ask(teacher, 6)
    assert all(r.ok for r in replies)
    # Six at once over three idle endpoints: two each, never three on one while another has one.
    assert [len(completions(s)) for s in servers] == [2, 2, 2]
    assert [s.max_in_flight for s in servers] == [2, 2, 2]
    assert {name: stats["requests"] for name, stats in teacher.endpoint_stats().items()} == {s.base_url: 2 for s in servers}


def test_a_retry_goes_to_another_endpoint(servers):
    first, second = servers[:2]
    first.script(["503"])
    # A backoff of a minute: the retry can only have been sent at once, to the other endpoint.
    teacher = OpenAITeacher("fake-model", base_url=[first.base_url, second.base_url], max_concurrency=1,
                            backoff_initial=60, max_attempts=2)
    (reply,) = ask(teacher, 1)
    assert reply.ok and reply.faults == ("503",)
    assert (len(completions(first)), len(completions(second))) == (1, 1)
    assert teacher.endpoint_stats()[first.base_url]["failures"] == 1


def test_an_endpoint_that_asks_to_wait_gets_nothing_new_meanwhile(servers):
    first, second = servers[:2]
    first.retry_after = "600"
    first.script(["429-retry-after"])
    teacher = OpenAITeacher("fake-model", base_url=[first.base_url, second.base_url], max_concurrency=1)
    replies = ask(teacher, 10)
    assert all(r.ok for r in replies) and replies[0].faults == ("429",)
    # Its retry and every later request went to the other endpoint (none waited the 10 minutes).
    assert (len(completions(first)), len(completions(second))) == (1, 10)


def test_a_failing_endpoint_is_benched_and_comes_back(servers):
    healthy, failing, other = servers
    failing.script(["503"] * 100_000)
    teacher = OpenAITeacher("fake-model", base_url=[s.base_url for s in servers], max_concurrency=6,
                            backoff_initial=0.01, bench_initial=0.05, bench_max=0.2)

    async def run():
        # While it fails: every prompt is answered by the other two; the failing one only gets
        # its first requests and, after each spell on the bench, one probe.
        replies = await teacher.complete([PROMPT] * 60, DECODING)
        assert all(r.ok for r in replies)
        stats = teacher.endpoint_stats()[failing.base_url]
        assert stats["requests"] == stats["failures"] >= 3 and stats["benched"] >= 1
        assert len(completions(failing)) < len(completions(healthy)) + len(completions(other)) < 80
        answered_before = len(completions(healthy)) + len(completions(other))

        failing.scripted.clear()  # it recovers
        for _ in range(1000):  # a hang guard, many times what the probe needs
            assert all(r.ok for r in await teacher.complete([PROMPT] * 6, DECODING))
            stats = teacher.endpoint_stats()[failing.base_url]
            if stats["requests"] - stats["failures"] >= 6:
                break
        benched = stats["benched"]
        await teacher.complete([PROMPT] * 30, DECODING)
        await teacher.aclose()
        return answered_before, benched

    answered_before, benched = asyncio.run(run())
    stats = teacher.endpoint_stats()[failing.base_url]
    # Back in the rotation: it takes its share again and is not benched any more.
    assert stats["requests"] - stats["failures"] >= 6 + 5 and stats["benched"] == benched
    assert len(completions(healthy)) + len(completions(other)) > answered_before


def test_an_endpoint_down_at_the_start_is_benched_not_fatal(servers):
    down = f"http://127.0.0.1:{free_port()}/v1"
    teacher = OpenAITeacher("fake-model", base_url=[down, servers[0].base_url], backoff_initial=0.01)

    async def run():
        await teacher.check()
        replies = await teacher.complete([PROMPT] * 4, DECODING)
        await teacher.aclose()
        return replies

    assert all(r.ok for r in asyncio.run(run()))
    stats = teacher.endpoint_stats()
    assert stats[down]["benched"] == 1 and stats[down]["requests"] == 0
    with pytest.raises(ConfigError, match="cannot reach the teacher at"):
        asyncio.run(OpenAITeacher("m", base_url=[down, f"http://127.0.0.1:{free_port()}/v1"]).check())


def test_generate_runs_on_a_fleet(servers, tmp_path):
    servers[1].script(["reset"] * 3)
    result = generate(str(tmp_path / "out"), base_url=",".join(s.base_url for s in servers), model_name="fake-model",
                      num_instructions_to_generate=30, num_tasks=8, request_batch_size=6, retry_backoff=0.01,
                      quiet=True)
    assert result.kept == 30
    assert all(completions(s) for s in servers)
    lines = (tmp_path / "out" / "generated.jsonl").read_text(encoding="utf-8").split("\n")
    assert len([line for line in lines if line]) == 30

