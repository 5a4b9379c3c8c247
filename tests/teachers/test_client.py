"""One endpoint's client (teachers/client.py): a completion sent past the SDK's request path still
goes out as the SDK would send it, and an error reply raises what the SDK raises."""
import asyncio
import json

import pytest

from self_instruct.teachers.openai_compat import OpenAITeacher
from self_instruct.types import Decoding

PROMPT = "Come up with tasks.\n###\n4. Instruction:"
DECODING = Decoding(max_tokens=300, stop=("6. Instruction:",))


def test_a_completion_goes_out_as_the_sdk_would_send_it(monkeypatch):
    """Completions bypass the SDK's request building: what reaches the server is still the SDK
    client's request, to the path under --base_url, with the key, the SDK's headers (the
    organization from OPENAI_ORG_ID too) and the body as JSON."""
    from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
    import threading

    seen = []

    class Handler(BaseHTTPRequestHandler):
        def log_message(self, *args):
            pass

        def do_POST(self):
            body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
            seen.append((self.path, dict(self.headers), body))
            payload = json.dumps({"choices": [{"text": " A task.", "finish_reason": "stop"}],
                                  "usage": {"prompt_tokens": 5, "completion_tokens": 3}}).encode()
            self.send_response(200)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(payload)))
            self.end_headers()
            self.wfile.write(payload)

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    monkeypatch.setenv("OPENAI_ORG_ID", "org-test")
    try:
        teacher = OpenAITeacher("m", base_url=f"http://127.0.0.1:{server.server_address[1]}/proxy/v1/",
                                api_key="sk-test-key")

        async def ask():
            try:
                return await teacher.complete([PROMPT], DECODING)
            finally:
                await teacher.aclose()
        [completion] = asyncio.run(ask())
    finally:
        server.shutdown()
        server.server_close()
    assert (completion.text, completion.prompt_tokens, completion.completion_tokens) == (" A task.", 5, 3)
    [(path, headers, body)] = seen
    headers = {name.lower(): value for name, value in headers.items()}
    assert path == "/proxy/v1/completions"
    assert headers["authorization"] == "Bearer sk-test-key"
    assert headers["openai-organization"] == "org-test"
    assert headers["content-type"] == "application/json"
    assert "openai/python" in headers["user-agent"].lower()
    assert body["model"] == "m" and body["prompt"] == PROMPT and body["stop"] == ["6. Instruction:"]
    assert body["max_tokens"] == 300 and body["stream"] is True


@pytest.mark.parametrize("status", [400, 401, 403, 404, 409, 418, 422, 429, 500, 503])
@pytest.mark.parametrize("body, kind", [
    (b'{"error": {"message": "no such model", "code": "model_not_found"}}', "application/json"),
    (b'{"detail": "Not Found"}', "application/json"),
    (b"<html><title>502 Bad Gateway</title></html>", "text/html"),
    (b"", "text/plain"),
])
def test_an_error_reply_raises_what_the_sdk_raises(status, body, kind):
    """The SDK's own reading of an error reply is the reference: the same class, message and body
    for every status and kind of body, so faults.py classifies both alike."""
    import openai

    from self_instruct.teachers.client import _http_library, make_client, status_error

    http = _http_library()
    sdk = make_client("http://127.0.0.1:9/v1", "sk-x", 5.0)
    reference = getattr(sdk, "_make_status_error_from_response", None)
    if reference is None:
        pytest.skip("this openai SDK has no _make_status_error_from_response to compare with")
    request = http.Request("POST", "http://127.0.0.1:9/v1/completions")
    response = http.Response(status, headers={"content-type": kind}, content=body, request=request)
    ours, theirs = status_error(response), reference(response)
    assert isinstance(ours, openai.APIStatusError)
    assert (type(ours), str(ours), ours.body, ours.status_code) == (type(theirs), str(theirs), theirs.body, theirs.status_code)
