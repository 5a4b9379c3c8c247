"""SIGKILL a conversation run (generate --turns) and a Magpie run (generate --pipeline magpie)
while requests are out, then run the same command again: nothing is lost or written twice, the
budget holds across the kill, and the pool ends as an unbroken run's does."""
import importlib.util
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from fake_openai import FakeOpenAI
from scripted_talk import CHATML, PREFIX, aligned_model, assert_conversation, coherent

pytestmark = pytest.mark.slow

REPO = Path(__file__).resolve().parents[2]


def generate(cwd, out, *flags, wait=True):
    env = dict(os.environ, PYTHONPATH=str(REPO))
    cmd = [sys.executable, "-m", "self_instruct.generate", "--output_dir", out, "--model_name", "m", "--quiet",
           "--no_report", "--retry_backoff", "0.01", *map(str, flags)]
    proc = subprocess.Popen(cmd, cwd=cwd, env=env, stderr=subprocess.PIPE, text=True)
    if not wait:
        return proc
    _, err = proc.communicate(timeout=600)
    assert proc.returncode == 0, err
    return err


def killed_mid_run(cwd, server, out, flags, after):
    """Start the run, SIGKILL it once `after` requests have reached the server and one is out."""
    proc = generate(cwd, out, *flags, wait=False)
    deadline = time.monotonic() + 300
    while not (len(server.requests) >= after and server.in_flight > 0):
        assert proc.poll() is None, f"the run ended before the kill: {proc.stderr.read()}"
        assert time.monotonic() < deadline, "the run never got that far"
        time.sleep(0.005)
    proc.send_signal(signal.SIGKILL)
    assert proc.wait(timeout=30) == -signal.SIGKILL


def read_lines(path):
    """The whole lines of a file (a kill may leave half of one at the end)."""
    data = Path(path).read_bytes() if Path(path).exists() else b""
    return data[:data.rfind(b"\n") + 1].decode().splitlines()


def kill_and_resume(tmp_path, server, flags, kill_after, max_requests):
    """An unbroken run to the target; then the same run killed, resumed under --max_requests
    (which stops it), and resumed again without. Returns both pools' records."""
    generate(tmp_path, "straight", *flags)
    server.requests.clear()
    capped = [*flags, "--max_requests", max_requests]
    killed_mid_run(tmp_path, server, "out", capped, kill_after)
    before = read_lines(tmp_path / "out" / "generated.jsonl")
    err = generate(tmp_path, "out", *capped)
    assert "budget max_requests reached" in err
    # the kill and the resume together sent at most --max_requests
    assert len(server.requests) <= max_requests
    capped_lines = read_lines(tmp_path / "out" / "generated.jsonl")
    assert capped_lines[:len(before)] == before  # nothing written before the kill was lost
    generate(tmp_path, "out", *flags)
    lines = read_lines(tmp_path / "out" / "generated.jsonl")
    assert lines[:len(capped_lines)] == capped_lines and len(set(lines)) == len(lines)
    records = [json.loads(line) for line in lines]
    units = [r["provenance"]["unit"] for r in records]
    assert units == sorted(units)
    straight = [json.loads(line) for line in read_lines(tmp_path / "straight" / "generated.jsonl")]
    assert [(r["instruction"], r["output"], r["metadata"]) for r in records] == \
        [(r["instruction"], r["output"], r["metadata"]) for r in straight]
    return records


def test_a_killed_conversation_run_resumes_with_nothing_lost_or_twice(tmp_path):
    server = FakeOpenAI(latency=0.05, jitter=0.5, seed=3).start()
    server.reply_fn = coherent
    try:
        flags = ["--base_url", server.base_url, "--turns", 3, "--num_instructions_to_generate", 12,
                 "--request_batch_size", 2, "--num_tasks", 6]
        records = kill_and_resume(tmp_path, server, flags, kill_after=15, max_requests=40)
    finally:
        server.stop()
    assert len(records) == 12
    for record in records:
        assert_conversation(record, 3)


@pytest.mark.skipif(importlib.util.find_spec("jinja2") is None, reason="Magpie needs jinja2 (the [local] extra)")
def test_a_killed_magpie_run_resumes_with_nothing_lost_or_twice(tmp_path):
    (tmp_path / "chatml.jinja").write_text(CHATML)
    server = FakeOpenAI(latency=0.05, jitter=0.5, seed=4).start()
    server.reply_fn = aligned_model
    try:
        flags = ["--base_url", server.base_url, "--pipeline", "magpie", "--chat_template", "chatml.jinja",
                 "--num_instructions_to_generate", 16, "--request_batch_size", 2]
        records = kill_and_resume(tmp_path, server, flags, kill_after=9, max_requests=20)
    finally:
        server.stop()
    assert len(records) == 16 and len({r["metadata"]["magpie"]["seed"] for r in records}) == 16
    assert all(b["prompt"] == PREFIX or b["prompt"].endswith("<|im_start|>assistant\n") for b in server.requests)
