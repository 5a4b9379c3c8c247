"""The Batch API client against a real HTTP server: request lines as a plain request's body, each
kind of output and error line read as the Completion a direct reply would be."""
import asyncio

import pytest

from fake_batches import FakeBatches
from self_instruct.errors import TeacherError
from self_instruct.teachers.batch import TAG_KEY, BatchClient, is_failed_in_batch
from self_instruct.types import Decoding


@pytest.fixture
def server():
    server = FakeBatches().start()
    server.reply_fn = lambda prompt, body: f"reply to {prompt}"
    yield server
    server.stop()


def test_request_lines_carry_the_plain_request_body():
    chat = BatchClient("m", base_url="http://127.0.0.1:1/v1", api="chat")
    line = chat.request_line("r3", "Name a river.", Decoding(max_tokens=50, temperature=0.2, stop=("###",), seed=7, json=True))
    assert line == {"custom_id": "r3", "method": "POST", "url": "/v1/chat/completions", "body": {
        "model": "m", "max_tokens": 50, "temperature": 0.2, "top_p": 1.0, "presence_penalty": 0.0,
        "frequency_penalty": 0.0, "stop": ["###"], "seed": 7, "messages": [{"role": "user", "content": "Name a river."}],
        "response_format": {"type": "json_object"}}}
    plain = BatchClient("m", base_url="http://127.0.0.1:1/v1").request_line("r4", "Go", Decoding(max_tokens=9))
    assert plain["url"] == "/v1/completions" and plain["body"]["prompt"] == "Go" and "stream" not in plain["body"]


@pytest.mark.parametrize("line, text, error, fault", [
    ({"custom_id": "r1", "response": {"status_code": 200, "body": {"choices": [{"text": "ok", "finish_reason": "stop"}],
                                                                    "usage": {"prompt_tokens": 5, "completion_tokens": 2}}}},
     "ok", None, None),
    ({"custom_id": "r1", "response": None, "error": {"code": "batch_expired", "message": "window passed"}},
     "", "batch: batch_expired: window passed", "batch_expired"),
    ({"custom_id": "r1", "response": {"status_code": 500, "body": {"error": {"message": "server error"}}}},
     "", "batch: 500: server error", "batch_failed"),
    ({"custom_id": "r1", "response": {"status_code": 200, "body": {"choices": []}}},
     "", "batch: empty_choices: the reply has no choices", "batch_failed"),
])
def test_each_kind_of_result_line_reads_as_a_completion(line, text, error, fault):
    completion = BatchClient("m", base_url="http://127.0.0.1:1/v1").read_result(line)
    assert (completion.text, completion.error) == (text, error)
    assert is_failed_in_batch(completion) == (fault is not None)
    if fault is None:
        assert (completion.prompt_tokens, completion.completion_tokens, completion.finish_reason) == (5, 2, "stop")
    else:
        assert completion.faults == (fault,)


def test_a_batch_round_trip_over_http(server):
    async def go():
        client = BatchClient("m", base_url=server.base_url, backoff=0.01)
        try:
            lines = [client.request_line(f"r{i}", f"prompt {i}", Decoding(max_tokens=8)) for i in range(3)]
            file_id = await client.upload(lines)
            batch_id = await client.create(file_id, "tag-1")
            assert await client.find("tag-1", 0) == batch_id and await client.find("tag-2", 0) is None
            status = await client.poll(batch_id)
            while not status.ended:
                status = await client.poll(batch_id)
            return status, await client.download(status.output_file_id)
        finally:
            await client.aclose()
    status, lines = asyncio.run(go())
    assert status.status == "completed" and status.counts == {"total": 3, "completed": 3, "failed": 0}
    client = BatchClient("m", base_url=server.base_url)
    assert {line["custom_id"]: client.read_result(line).text for line in lines} == {
        "r0": "reply to prompt 0", "r1": "reply to prompt 1", "r2": "reply to prompt 2"}
    [batch] = server.batches.values()
    assert batch["metadata"] == {TAG_KEY: "tag-1"} and batch["endpoint"] == "/v1/completions"


def test_a_server_without_the_batch_api_is_a_refusal_naming_the_fix(server):
    server.offers_batches = False

    async def go():
        client = BatchClient("m", base_url=server.base_url)
        try:
            await client.upload([{"custom_id": "r0"}])  # the first call a batch makes
        finally:
            await client.aclose()
    with pytest.raises(TeacherError, match=r"refused to upload the batch input file \(404.*run without --batch"):
        asyncio.run(go())


def test_a_reply_without_usage_is_counted_by_estimates():
    client = BatchClient("m", base_url="http://127.0.0.1:1/v1", api="chat")
    line = {"custom_id": "r1", "response": {"status_code": 200, "body": {
        "choices": [{"message": {"content": "A reply of some length."}, "finish_reason": "stop"}]}}}
    completion = client.read_result(line, prompt="Name a river in one short sentence.")
    assert (completion.prompt_tokens, completion.completion_tokens) == (12, 8)  # a third of the characters, plus one
    request = client.request_line("r1", "Name a river in one short sentence.", Decoding(max_tokens=9))
    assert client.prompt_of(request) == "Name a river in one short sentence."
