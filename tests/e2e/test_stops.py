"""SIGTERM on every command that asks a teacher: it stops as Ctrl-C does (what came back in order
is recorded, state.json written, exit status 130), and the same command resumes. These commands
all run through one setup (engine/run.py), so budgets hold across the stop for each of them."""
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from fake_openai import FakeOpenAI

REPO = Path(__file__).resolve().parents[2]
pytestmark = pytest.mark.slow


def start(module, *args, cwd):
    env = dict(os.environ, PYTHONPATH=str(REPO))
    return subprocess.Popen([sys.executable, "-m", f"self_instruct.{module}", *map(str, args), "--quiet"], cwd=cwd,
                            env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def wait_for(condition, what, timeout=120.0):
    """A hang guard, many times what the wait takes."""
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.02)


def lines(path: Path) -> int:
    return path.read_bytes().count(b"\n") if path.exists() else 0


def scores_every_record(prompt, body):
    count = prompt.count("### Record ")
    return json.dumps([{"index": i, "score": 4, "reason": "fine"} for i in range(1, count + 1)])


def test_score_stops_on_sigterm_with_its_state_saved_and_resumes(tmp_path):
    records = [{"instruction": f"Task number {i}.", "input": "", "output": f"Answer {i}.", "metadata": {"n": i}}
               for i in range(40)]
    (tmp_path / "data.json").write_text(json.dumps(records))
    server = FakeOpenAI(latency=0.3, seed=1).start()
    server.reply_fn = scores_every_record
    args = ["data.json", "--output", "scored.json", "--records_per_request", 1, "--max_concurrency", 4,
            "--base_url", server.base_url, "--model_name", "judge"]
    run_dir = tmp_path / "scored.json.run"
    try:
        first = start("score", *args, cwd=tmp_path)
        wait_for(lambda: lines(run_dir / "commits.jsonl") >= 5, "five batches recorded")
        first.send_signal(signal.SIGTERM)
        _, err = first.communicate(timeout=120)
        assert first.returncode == 130, err
        assert not (tmp_path / "scored.json").exists()  # written once every record is rated
        state = json.loads((run_dir / "state.json").read_text())
        committed = lines(run_dir / "commits.jsonl")
        assert state["units"] == committed == lines(run_dir / "generated.jsonl") >= 5
        asked_before = len(server.requests)

        second = start("score", *args, cwd=tmp_path)
        _, err = second.communicate(timeout=300)
        assert second.returncode == 0, err
    finally:
        server.stop()
    scored = json.loads((tmp_path / "scored.json").read_text())
    assert [r["metadata"]["n"] for r in scored] == list(range(40))
    # The resumed run asked only what was not recorded: at most the 4 in flight at the stop again.
    assert len(server.requests) <= 40 + 4 and len(server.requests) - asked_before <= 40 - committed + 4


def test_evaluate_max_requests_holds_across_a_sigterm_and_a_resume(tmp_path):
    questions = [{"question": f"Question {i}?", "answer": "yes"} for i in range(30)]
    (tmp_path / "q.jsonl").write_text("".join(json.dumps(q) + "\n" for q in questions))
    server = FakeOpenAI(latency=0.3, seed=2).start()
    server.reply_fn = lambda prompt, body: ('{"verdict": "correct", "reason": "same"}' if body["model"] == "judge"
                                            else "yes")
    url = server.base_url
    args = ["--questions", "q.jsonl", "--output_dir", "eval", "--batch_size", 3, "--max_requests", 25, "--no_report",
            "--system", f"a=openai:m@{url}", f"b=openai:m@{url}", "--judge", f"openai:judge@{url}"]
    try:
        first = start("evaluate", *args, cwd=tmp_path)
        wait_for(lambda: lines(tmp_path / "eval" / "answers" / "a" / "generated.jsonl") >= 6, "six answers recorded")
        first.send_signal(signal.SIGTERM)
        _, err = first.communicate(timeout=120)
        assert first.returncode == 130, err
        second = start("evaluate", *args, cwd=tmp_path)
        out, err = second.communicate(timeout=300)
        assert second.returncode == 0, err
    finally:
        server.stop()
    assert len(server.requests) <= 25  # answers and grades together, across the stop
    results = json.loads((tmp_path / "eval" / "results.json").read_text())
    assert results["stopped_by"] == "max_requests" and "Stopped by max_requests" in out
    assert json.loads((tmp_path / "eval" / "state.json").read_text())["requests"] == len(server.requests)
