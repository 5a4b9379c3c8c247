"""Every fault a teacher throws, one at a time, against the loopback server: what the loop does
(retry, shrink, drop with a reason) and that the run still reaches its target. Then budgets
and stalls, which must stop a run cleanly and say why.

Runs go through the library (generate) with a short backoff, so each takes a fraction of a second.
Replies are streamed (the teacher's default); the last tests ask the teacher directly about
what streaming adds: a limit on silence rather than length, servers without it, budgets.
"""
import asyncio
import json
import time

import pytest

from self_instruct.errors import TeacherError
from self_instruct.generate import StallError, cli, generate
from self_instruct.teachers.faults import BadReply, is_transient
from self_instruct.teachers.openai_compat import OpenAITeacher
from self_instruct.types import Decoding

TARGET = 12


def read_jsonl(path):
    if not path.exists():  # rejected.jsonl appears with the first rejection
        return []
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines()]


def grow(server, out, target=TARGET, **options):
    options = {"model_name": "fake-model", "num_tasks": 8, "request_batch_size": 2, "retry_backoff": 0.01,
               "request_timeout": 0.5, "max_attempts": 4, **options}
    return generate(str(out), base_url=server.base_url, num_instructions_to_generate=target, quiet=True, **options)


def assert_complete(out, target=TARGET):
    records = read_jsonl(out / "generated.jsonl")
    assert len(records) == target
    assert len({r["instruction"] for r in records}) == target
    regen = json.loads((out / "regen.json").read_text(encoding="utf-8"))
    assert [r["instruction"] for r in regen] == [r["instruction"] for r in records]
    return records


def completion_requests(server):
    return [b for b in server.requests if "prompt" in b or "messages" in b]


# Faults that must be retried until the prompt gets an answer: (scripted fault, name in the summary).
RETRIED = [
    ("429", "429"),
    ("500", "500"),
    ("502", "502"),
    ("503", "503"),
    ("reset", "connection"),
    ("timeout", "timeout"),
    ("malformed", "malformed"),
    ("empty_choices", "empty_choices"),
]


@pytest.mark.parametrize("fault,name", RETRIED, ids=[f for f, _ in RETRIED])
def test_transient_fault_is_retried_and_counted(fake_server, tmp_path, fault, name):
    fake_server.timeout_sleep = 1.0  # past request_timeout=0.5
    fake_server.script([fault, fault])
    result = grow(fake_server, tmp_path / "out")
    assert result.kept == TARGET and result.stopped_by == "target"
    assert result.stats.faults[name] == 2
    # Retried, not dropped: no prompt was lost to the fault.
    assert result.stats.failed_requests == 0
    assert not [r for r in read_jsonl(tmp_path / "out" / "rejected.jsonl") if r["reason"] == "request_failed"]
    assert_complete(tmp_path / "out")
    state = json.loads((tmp_path / "out" / "state.json").read_text())
    assert state["faults"][name] == 2


@pytest.mark.parametrize("fault", ["malformed", "empty_choices", "reset"])
def test_transient_fault_is_retried_with_the_chat_api(fake_server, tmp_path, fault):
    fake_server.script([fault])
    result = grow(fake_server, tmp_path / "out", api="chat")
    assert result.kept == TARGET and result.stats.faults and result.stats.failed_requests == 0


def test_a_stray_page_from_a_server_that_has_answered_is_retried(fake_server, tmp_path):
    # A web page from an endpoint that has answered a completion is a proxy's blip, not a sign
    # that the address is wrong (tests/teachers/test_permanent_faults.py has the other case).
    fake_server.script(["ok", "html", "html"])
    result = grow(fake_server, tmp_path / "out", request_batch_size=1, max_concurrency=1)
    assert result.kept == TARGET and result.stats.faults["malformed"] == 2 and result.stats.failed_requests == 0
    assert_complete(tmp_path / "out")


def test_retry_after_is_honoured_over_our_backoff(fake_server, tmp_path):
    # Three retries on our own 5 s backoff wait 5 + 10 + 20 s; the server's Retry-After says 0.05 s
    # each. The bound is half our own backoff's wait: over a hundred times what honouring it takes,
    # so a busy machine does not fail it, and a client ignoring Retry-After always does.
    fake_server.script(["429-retry-after"] * 3)
    own_backoff = 5.0 + 10.0 + 20.0
    started = time.monotonic()
    result = grow(fake_server, tmp_path / "out", retry_backoff=5.0)
    waited = time.monotonic() - started
    assert waited < own_backoff / 2
    assert result.kept == TARGET and result.stats.faults["429"] == 3


def test_context_overflow_shrinks_max_tokens_and_retries(fake_server, tmp_path):
    fake_server.script(["context_length"])
    result = grow(fake_server, tmp_path / "out", max_tokens=1000, request_batch_size=1, max_concurrency=1)
    assert result.kept == TARGET and result.stats.faults["context_length"] == 1
    sent = [b["max_tokens"] for b in completion_requests(fake_server)]
    # The server said 1099 fit and 100 were prompt: the retry asks for exactly what is left.
    assert sent[:2] == [1000, 999]
    assert all(m == 1000 for m in sent[2:])  # the next prompt starts from the configured value


def test_prompt_failing_every_attempt_is_dropped_with_its_reason(fake_server, tmp_path):
    fake_server.script(["503"] * 4)  # max_attempts=4: the first prompt never gets an answer
    result = grow(fake_server, tmp_path / "out", request_batch_size=1, max_concurrency=1)
    assert result.kept == TARGET
    failed = [r for r in read_jsonl(tmp_path / "out" / "rejected.jsonl") if r["reason"] == "request_failed"]
    assert len(failed) == 1 and failed[0]["detail"].startswith("503: ")
    assert result.stats.failed_requests == 1 and result.stats.faults["503"] == 4
    assert_complete(tmp_path / "out")


def test_refusal_is_not_retried(fake_server, tmp_path):
    # A 400 will be a 400 again: one attempt, then the prompt is dropped with the server's words.
    fake_server.script(["400"])
    result = grow(fake_server, tmp_path / "out", request_batch_size=1, max_concurrency=1)
    assert result.kept == TARGET
    assert result.stats.faults["400"] == 1 and result.stats.failed_requests == 1
    failed = [r for r in read_jsonl(tmp_path / "out" / "rejected.jsonl") if r["reason"] == "request_failed"]
    assert "Unsupported parameter" in failed[0]["detail"]


# Replies that arrive fine but carry less than asked: (fault, reason in rejected.jsonl).
DROPPED = [
    ("length", "truncated"),
    ("zero_tasks", "missing_field"),
    ("wrong_numbering", "wrong_number"),
]


@pytest.mark.parametrize("fault,reason", DROPPED, ids=[f for f, _ in DROPPED])
def test_bad_reply_is_dropped_with_a_reason(fake_server, tmp_path, fault, reason):
    fake_server.script([fault, fault])
    result = grow(fake_server, tmp_path / "out")
    assert result.kept == TARGET and result.stats.failed_requests == 0
    rejected = [r for r in read_jsonl(tmp_path / "out" / "rejected.jsonl") if r["reason"] == reason]
    assert len(rejected) >= 2 and all(r["raw"] for r in rejected)
    if fault == "length":
        # Only the cut block is lost: the whole blocks before it were parsed like any other
        # (those past the target are counted apart, as left unjudged).
        assert result.stats.parsed + result.stats.unjudged > TARGET
    if fault == "zero_tasks":
        assert any("Sorry" in r["raw"] for r in rejected)
    assert_complete(tmp_path / "out")


def test_transient_names_the_real_faults_only():
    assert is_transient(BadReply("malformed", "x")) and is_transient(json.JSONDecodeError("x", "doc", 0))
    # A bug of ours must surface, not be retried into a dropped prompt.
    for bug in (TypeError("x"), AttributeError("x"), KeyError("x"), ValueError("x")):
        assert not is_transient(bug)


def test_key_revoked_mid_run_stops_the_run(fake_server, tmp_path):
    # The /models check accepts the key; the server revokes it while answering the first request.
    fake_server.required_key = "sk-valid"

    def revoke(prompt, body):
        fake_server.required_key = "sk-revoked"
        return " Sorry, no tasks today."
    fake_server.reply_fn = revoke
    with pytest.raises(TeacherError, match="refused the request"):
        grow(fake_server, tmp_path / "out", api_key="sk-valid", request_batch_size=1, max_concurrency=1)
    # No retry can fix a refused key: the run stops, and what it did so far is on disk.
    assert len(completion_requests(fake_server)) <= 3
    assert read_jsonl(tmp_path / "out" / "rejected.jsonl")[0]["reason"] == "missing_field"
    assert json.loads((tmp_path / "out" / "regen.json").read_text()) == []


def test_mixed_faults_reach_the_target(tmp_path):
    from fake_openai import FakeOpenAI

    server = FakeOpenAI(seed=3).start()
    server.fault_rate, server.timeout_sleep = 0.3, 1.0
    try:
        result = grow(server, tmp_path / "out", target=40, request_batch_size=4)
    finally:
        server.stop()
    assert result.kept == 40
    assert server.faults_sent and sum(result.stats.faults.values()) > 0
    assert_complete(tmp_path / "out", 40)


# --- budgets and stalls ---

def test_max_requests_stops_exactly_and_resumes(fake_server, tmp_path):
    out = tmp_path / "out"
    result = grow(fake_server, out, target=500, max_requests=5, request_batch_size=2)
    assert result.stopped_by == "max_requests"
    assert len(completion_requests(fake_server)) == 5 and result.stats.requests == 5
    kept = read_jsonl(out / "generated.jsonl")
    assert 0 < len(kept) < 500
    # Rerun with the same budget: nothing more is spent.
    again = grow(fake_server, out, target=500, max_requests=5, request_batch_size=2)
    assert again.stopped_by == "max_requests" and len(completion_requests(fake_server)) == 5
    # Raise it: the run picks up where it stopped.
    grow(fake_server, out, target=len(kept) + 10, request_batch_size=2)
    records = assert_complete(out, len(kept) + 10)
    assert records[: len(kept)] == kept


def test_a_request_sent_again_counts_against_max_requests(fake_server, tmp_path):
    # A server without streaming refuses the first wave of streamed requests; each is sent again
    # plain. The server saw both: together they stay within --max_requests.
    fake_server.refuse_stream = True
    result = grow(fake_server, tmp_path / "out", target=500, max_requests=6, request_batch_size=3)
    assert result.stopped_by == "max_requests"
    sent = completion_requests(fake_server)
    assert any(b.get("stream") for b in sent) and len(sent) <= 6


def test_max_total_tokens_stops_and_resumes(fake_server, tmp_path):
    out = tmp_path / "out"
    result = grow(fake_server, out, target=500, max_total_tokens=12000, max_tokens=500)
    # Each request reserves its prompt's bytes (+32) and max_tokens, so the cap is never passed,
    # not even by the requests in flight when it is reached.
    state = json.loads((out / "state.json").read_text())
    used = state["prompt_tokens"] + state["completion_tokens"]
    assert result.stopped_by == "max_total_tokens" and 0 < used <= result.stats.tokens <= 12000
    reserved = sum(len(b["prompt"].encode()) + 32 + b["max_tokens"] for b in completion_requests(fake_server))
    assert reserved <= 12000
    kept = len(read_jsonl(out / "generated.jsonl"))
    grow(fake_server, out, target=kept + 5)
    assert_complete(out, kept + 5)


def test_budget_stop_at_the_cli_says_how_to_go_on(fake_server, tmp_path, capsys):
    out = tmp_path / "out"
    cli(["--output_dir", str(out), "--base_url", fake_server.base_url, "--model_name", "m", "--quiet",
         "--num_instructions_to_generate", "500", "--max_requests", "2", "--request_batch_size", "2"])
    err = capsys.readouterr().err
    assert "budget max_requests reached; raise it and rerun to resume" in err


def test_rounds_keeping_nothing_stop_the_run_with_the_cause(fake_server, tmp_path):
    fake_server.reply_fn = lambda prompt, body: " Sorry, I only answer questions about cooking."
    with pytest.raises(StallError) as info:
        grow(fake_server, tmp_path / "out", max_stall_rounds=3)
    message = str(info.value)
    assert "3 rounds in a row kept no instruction" in message and "missing_field" in message
    assert "--prompt_path" in message and "rerun" in message
    # The stalled rounds, plus what was out when the third came back: at most 8 requests in
    # flight (--max_concurrency) and a bounded queue of rounds behind the oldest (2 * 8/2 + 2).
    assert len(completion_requests(fake_server)) <= (3 + 2 * 8 // 2 + 2) * 2


def test_a_teacher_that_repeats_itself_is_told_apart(fake_server, tmp_path):
    same = " Explain how tides form along a rocky coast.\n4. Input:\n<noinput>\n4. Output:\nThe moon pulls the sea.\n"
    fake_server.reply_fn = lambda prompt, body: same
    with pytest.raises(StallError, match="repeating"):
        grow(fake_server, tmp_path / "out", target=50, max_stall_rounds=3)
    assert len(read_jsonl(tmp_path / "out" / "generated.jsonl")) == 1


def test_an_endpoint_failing_every_request_stops_with_the_last_error(fake_server, tmp_path, capsys):
    fake_server.script(["503"] * 200)
    out = tmp_path / "out"
    with pytest.raises(SystemExit) as info:
        cli(["--output_dir", str(out), "--base_url", fake_server.base_url, "--model_name", "m", "--quiet",
             "--max_attempts", "1", "--max_stall_rounds", "2", "--retry_backoff", "0.01"])
    assert info.value.code == 1
    err = capsys.readouterr().err.strip()
    assert err.startswith("self_instruct: stopped: 2 rounds in a row") and "every request failed (last: 503:" in err
    assert "Traceback" not in err
    # The stop leaves a run that resumes.
    fake_server.scripted.clear()
    assert grow(fake_server, out, target=5, model_name="m", num_tasks=20, max_stall_rounds=2).kept == 5


# --- streamed replies: silence, length, servers without streaming, budgets ---

PROMPT = "Come up with tasks.\n###\n4. Instruction:"
DECODING = Decoding(max_tokens=300, stop=("6. Instruction:",))


def ask(teacher, *batches):
    """The replies to batches of prompts sent one batch after the other (one prompt by default)."""
    async def run():
        try:
            return [r for n in batches or (1,) for r in await teacher.complete([PROMPT] * n, DECODING)]
        finally:
            await teacher.aclose()
    return asyncio.run(run())


def test_a_long_reply_is_not_a_timeout_while_tokens_keep_coming(fake_server):
    # About 40 tokens 50 ms apart: 2 s in all, four times the limit, which bounds only silence.
    fake_server.tasks_per_reply, fake_server.token_delay = 1, 0.05
    (reply,) = ask(OpenAITeacher("fake-model", base_url=fake_server.base_url, request_timeout=0.5))
    assert reply.ok and reply.finish_reason == "stop" and not reply.faults
    assert "4. Output:" in reply.text and reply.completion_tokens == len(reply.text.split())


def test_silence_mid_stream_times_out_and_is_retried(fake_server):
    fake_server.tasks_per_reply, fake_server.timeout_sleep = 1, 1.0
    fake_server.script(["stall"])
    (reply,) = ask(OpenAITeacher("fake-model", base_url=fake_server.base_url, request_timeout=0.3, backoff_initial=0.01))
    assert reply.ok and reply.faults == ("timeout",)
    assert "4. Output:" in reply.text  # the retry's whole reply, nothing of the stalled one


def test_a_reply_still_streaming_at_the_total_cap_is_a_timeout(fake_server):
    fake_server.tasks_per_reply, fake_server.token_delay = 1, 0.05
    teacher = OpenAITeacher("fake-model", base_url=fake_server.base_url, request_timeout=0.5, total_timeout=0.5, max_attempts=1)
    (reply,) = ask(teacher)
    assert not reply.ok and reply.error.startswith("timeout: the reply was still coming after 0.5 s")


def test_a_server_without_streaming_is_asked_without_it(fake_server):
    fake_server.refuse_stream = True
    replies = ask(OpenAITeacher("fake-model", base_url=fake_server.base_url), 3, 3)
    assert all(r.ok and not r.faults for r in replies)
    # The first three went out streamed (at once), were refused and asked again; the rest went out
    # plain. A retry may reach the server before the third first try does, so count, not order.
    streamed = [bool(b.get("stream")) for b in completion_requests(fake_server)]
    assert len(streamed) == 9 and sum(streamed) == 3 and not any(streamed[6:])


def test_a_server_without_stream_usage_is_streamed_and_counted_by_chunks(fake_server):
    fake_server.refuse_stream_options = True
    fake_server.tasks_per_reply = 1
    replies = ask(OpenAITeacher("fake-model", base_url=fake_server.base_url), 1, 2)
    assert all(r.ok and not r.faults for r in replies)
    sent = completion_requests(fake_server)
    assert "stream_options" in sent[0] and all(b.get("stream") and "stream_options" not in b for b in sent[1:])
    assert len(sent) == 4
    # No usage reported: one token a chunk (the fake sends a word a chunk), the prompt estimated.
    assert all(r.completion_tokens == len(r.text.split()) and r.prompt_tokens > 0 for r in replies)


def test_usage_reported_at_the_end_of_the_stream_is_taken(fake_server):
    (reply,) = ask(OpenAITeacher("fake-model", base_url=fake_server.base_url))
    assert reply.prompt_tokens == len(PROMPT.split()) and reply.completion_tokens == len(reply.text.split())


def test_no_retry_once_the_budget_says_no(fake_server):
    fake_server.script(["503", "503", "503"])
    asked = []

    async def allow_one_retry():
        asked.append(1)
        return len(asked) <= 1
    teacher = OpenAITeacher("fake-model", base_url=fake_server.base_url, backoff_initial=0.01)
    teacher.before_retry = allow_one_retry
    (reply,) = ask(teacher)
    assert not reply.ok and reply.error.startswith("budget: ") and reply.faults == ("503", "503")
    assert len(completion_requests(fake_server)) == 2 and len(asked) == 2


def test_the_teacher_works_unstreamed_as_before(fake_server):
    fake_server.script(["429", "reset", "malformed"])
    teacher = OpenAITeacher("fake-model", base_url=fake_server.base_url, stream=False, backoff_initial=0.01)
    (reply,) = ask(teacher)
    assert reply.ok and reply.faults == ("429", "connection", "malformed")
    assert not any(b.get("stream") for b in completion_requests(fake_server))
