"""SIGKILL the generate process at six different moments and resume each time: at the end the
output holds exactly the target, nothing twice, every line whole, and regen.json agrees.

Kills land mid-write for certain: such a run goes through pausing.py, which stops a chosen write
halfway through its last line (through the package's one write seam, patched in that process);
kills during a request wait until the loopback server holds one.
"""
import json
import os
import signal
import subprocess
import sys
import threading
import time
from collections import Counter
from pathlib import Path

import pytest

from fake_openai import FakeOpenAI
from pausing import PAUSED
from self_instruct.core.filters import duplicate_key

pytestmark = pytest.mark.slow

REPO = Path(__file__).resolve().parents[2]
PAUSING = Path(__file__).resolve().parent / "pausing.py"
TARGET = 100  # far enough that replies cached before a kill cannot reach it on the next resume alone


class Run:
    """One generate process, its stderr read as it comes."""

    started: list["Run"] = []

    def __init__(self, cwd: Path, base_url: str, pause: str | None = None):
        env = dict(os.environ, PYTHONPATH=str(REPO))
        pausing = [str(PAUSING), pause] if pause else []  # FILE@N: stop inside that write, to be killed there
        cmd = [sys.executable, *pausing, "-m", "self_instruct.generate", "--output_dir", "out", "--base_url", base_url,
               "--model_name", "fake-model", "--num_instructions_to_generate", str(TARGET), "--num_tasks", "5",
               "--request_batch_size", "2", "--retry_backoff", "0.01", "--request_timeout", "2", "--quiet"]
        self.proc = subprocess.Popen(cmd, cwd=cwd, env=env, stderr=subprocess.PIPE, text=True)
        Run.started.append(self)
        self.lines: list[str] = []
        self.paused = threading.Event()
        self.reader = threading.Thread(target=self._read, daemon=True)
        self.reader.start()

    def _read(self) -> None:
        for line in self.proc.stderr:
            self.lines.append(line)
            if line.startswith(PAUSED):
                self.paused.set()

    @property
    def stderr(self) -> str:
        self.reader.join(timeout=10)
        return "".join(self.lines)

    def kill(self) -> None:
        self.proc.send_signal(signal.SIGKILL)
        assert self.proc.wait(timeout=10) == -signal.SIGKILL
        assert "Traceback" not in self.stderr

    def wait_paused(self) -> None:
        assert self.paused.wait(timeout=180), f"the run never reached its pause point: {self.stderr}"


def wait_for(condition, timeout=180.0) -> None:  # hang guards, many times the expected
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.005)


def completions(server) -> int:
    return sum(1 for b in server.requests if "prompt" in b)


@pytest.fixture(autouse=True)
def no_run_outlives_its_test():
    """A test that fails while a run sleeps in its pause must not leave it behind."""
    yield
    while Run.started:
        run = Run.started.pop()
        if run.proc.poll() is None:
            run.proc.kill()
            run.proc.wait(timeout=10)


@pytest.fixture
def slow_server():
    # Some latency, so that a request is in flight long enough to be killed in, and faults, so
    # that retries and rejections happen across the kills.
    server = FakeOpenAI(latency=0.05, seed=11).start()
    server.fault_rate = 0.25
    server.timeout_sleep = 3.0
    yield server
    server.stop()


def test_six_kills_lose_nothing_and_duplicate_nothing(slow_server, tmp_path):
    out = tmp_path / "out"
    generated, rejected = out / "generated.jsonl", out / "rejected.jsonl"

    # 1. During the very first request: nothing but run.json may be written.
    run = Run(tmp_path, slow_server.base_url)
    wait_for(lambda: slow_server.in_flight > 0)
    run.kill()
    assert not generated.exists() or generated.read_bytes().endswith(b"\n")

    # 2. Halfway through the second append to generated.jsonl: a torn last line.
    run = Run(tmp_path, slow_server.base_url, pause="generated.jsonl@2")
    run.wait_paused()
    run.kill()
    assert not generated.read_bytes().endswith(b"\n")

    # 3. Halfway through an append to rejected.jsonl; this resume first repairs kill 2's tear.
    run = Run(tmp_path, slow_server.base_url, pause="rejected.jsonl@2")
    run.wait_paused()
    run.kill()
    assert "generated.jsonl: cut off " in run.stderr
    assert not rejected.read_bytes().endswith(b"\n")

    # 4. During a request, a few rounds into a resumed run.
    run = Run(tmp_path, slow_server.base_url)
    sent = completions(slow_server)
    wait_for(lambda: completions(slow_server) >= sent + 3 and slow_server.in_flight > 0)
    run.kill()
    assert "rejected.jsonl: cut off " in run.stderr

    # 5. Halfway through writing state.json's temp file.
    run = Run(tmp_path, slow_server.base_url, pause="state.json@2")
    run.wait_paused()
    run.kill()
    assert list(out.glob(".state.json.*.tmp"))

    # 6. Halfway through writing regen.json, once the target is reached.
    run = Run(tmp_path, slow_server.base_url, pause="regen.json@1")
    run.wait_paused()
    run.kill()
    assert len(generated.read_text().splitlines()) == TARGET

    # The last resume has nothing left to ask for: it writes regen.json and stops.
    sent = completions(slow_server)
    run = Run(tmp_path, slow_server.base_url)
    assert run.proc.wait(timeout=60) == 0, run.stderr
    assert f"{TARGET} instructions in out" in run.stderr
    assert completions(slow_server) == sent
    assert not list(out.glob(".*.tmp"))

    kept_lines = generated.read_text(encoding="utf-8").splitlines()
    kept = [json.loads(line) for line in kept_lines]
    assert len(kept) == TARGET
    assert len({duplicate_key(r["instruction"]) for r in kept}) == TARGET
    regen = json.loads((out / "regen.json").read_text(encoding="utf-8"))
    assert regen == [{k: r[k] for k in ("instruction", "input", "output", "most_similar_instructions", "avg_similarity_score")} for r in kept]

    rejected_lines = rejected.read_text(encoding="utf-8").splitlines()
    rejects = [json.loads(line) for line in rejected_lines]
    assert rejects and all(r["reason"] and isinstance(r["provenance"]["unit"], int) for r in rejects)
    # No round was written twice: round numbers only grow through a file, and no line repeats.
    for lines, records in ((kept_lines, kept), (rejected_lines, rejects)):
        rounds = [r["provenance"]["unit"] for r in records]
        assert rounds == sorted(rounds)
        assert len(set(lines)) == len(lines)
    state = json.loads((out / "state.json").read_text())
    assert state["kept"] == TARGET and Counter(state["rejects"]) == Counter(r["reason"] for r in rejects)
