"""JSON mode: a Decoding that asks for JSON sends response_format on the chat API, and a server
that refuses it is asked again without it, once for all later requests."""
import asyncio

import pytest

from self_instruct.teachers.openai_compat import OpenAITeacher
from self_instruct.types import Decoding


def ask(server, api, decodings):
    async def main():
        teacher = OpenAITeacher("m", base_url=server.base_url, api=api, max_attempts=2, backoff_initial=0.01)
        try:
            return [(await teacher.complete(["Reply with a JSON array."], d))[0] for d in decodings]
        finally:
            await teacher.aclose()
    return asyncio.run(main())


@pytest.mark.parametrize("refuse", [False, True], ids=["supported", "refused"])
def test_json_decoding_sends_response_format_on_chat(fake_server, refuse):
    fake_server.reply_fn = lambda prompt, body: '[{"question": "q", "answer": "a"}]'
    fake_server.raw_chat = True
    fake_server.refuse_json_mode = refuse
    replies = ask(fake_server, "chat", [Decoding(max_tokens=50, json=True)] * 2)
    assert all(r.ok and r.text.startswith("[") for r in replies)
    asked = [b.get("response_format") for b in fake_server.requests if "messages" in b]
    if refuse:  # refused once, then never sent again
        assert asked == [{"type": "json_object"}, None, None]
    else:
        assert asked == [{"type": "json_object"}] * 2


def test_plain_decodings_and_completions_never_send_it(fake_server):
    fake_server.reply_fn = lambda prompt, body: "[]"
    ask(fake_server, "chat", [Decoding(max_tokens=20)])
    ask(fake_server, "completions", [Decoding(max_tokens=20, json=True)])
    assert not any("response_format" in b for b in fake_server.requests)
