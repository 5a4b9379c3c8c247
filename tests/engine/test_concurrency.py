"""Many requests in flight against a slow server without deadlock, and a stop (Ctrl-C,
SIGTERM, a cancelled task) that is quick and leaves a state the next run resumes from."""
import asyncio
import json
import os
import random
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from fake_openai import FakeOpenAI, self_instruct_reply
from self_instruct.core.filters import duplicate_key
from self_instruct.generate import GenerateConfig, agenerate
from self_instruct.engine.pool import InstructionPool
from self_instruct.teachers.fake import FakeTeacher

REPO = Path(__file__).resolve().parents[2]


def read_jsonl(path):
    return [json.loads(line) for line in Path(path).read_text(encoding="utf-8").splitlines()]


def assert_consistent(out: Path, target: int | None = None):
    kept = read_jsonl(out / "generated.jsonl")
    if target is not None:
        assert len(kept) == target
    assert len({duplicate_key(r["instruction"]) for r in kept}) == len(kept)
    regen = json.loads((out / "regen.json").read_text())
    assert [r["instruction"] for r in regen] == [r["instruction"] for r in kept]
    assert json.loads((out / "state.json").read_text())["kept"] == len(kept)
    return kept


def test_64_requests_in_flight_against_a_slow_server(tmp_path):
    server = FakeOpenAI(latency=0.4, tasks_per_reply=1, seed=4).start()
    server.fault_rate = 0.15  # retries wait outside the semaphore: they must not starve the rest
    server.timeout_sleep = 1.0
    cfg = GenerateConfig(output_dir=str(tmp_path / "out"), base_url=server.base_url, model_name="m",
                         num_instructions_to_generate=100, request_batch_size=64, max_concurrency=64,
                         retry_backoff=0.01, request_timeout=0.8, quiet=True)
    try:
        result = asyncio.run(asyncio.wait_for(agenerate(cfg), timeout=30))
    finally:
        server.stop()
    assert result.kept == 100
    # Never past 64, but for requests the client had already given up on (a timed-out request
    # still sleeps in its server thread while its retry takes the slot); concurrency is cut on
    # 429s and timeouts, so 64 at once is certain only for the first burst.
    assert 32 <= server.max_in_flight <= 64 + server.faults_sent.count("timeout")
    assert_consistent(tmp_path / "out", 100)


class Run:
    def __init__(self, cwd: Path, base_url: str, target: int):
        env = dict(os.environ, PYTHONPATH=str(REPO))
        cmd = [sys.executable, "-m", "self_instruct.generate", "--output_dir", "out", "--base_url", base_url,
               "--model_name", "m", "--num_instructions_to_generate", str(target), "--num_tasks", "5",
               "--request_batch_size", "8", "--max_concurrency", "8", "--quiet"]
        # A shell's background job (and so a test runner started with &) ignores SIGINT, and a
        # child inherits that: give it SIGINT's default handler, as a terminal's process has.
        self.proc = subprocess.Popen(cmd, cwd=cwd, env=env, stderr=subprocess.PIPE, text=True,
                                     preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))


@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM], ids=["SIGINT", "SIGTERM"])
def test_signal_stops_without_waiting_for_replies_and_the_run_resumes(tmp_path, sig):
    # Replies then take 10 minutes: the signal always finds requests in flight, and a stop that
    # waited for them could not end inside the 60 s hang guard below (a stop takes well under a second).
    server = FakeOpenAI(latency=0.05, seed=6).start()
    out = tmp_path / "out"
    try:
        run = Run(tmp_path, server.base_url, target=200)
        deadline = time.monotonic() + 180  # a hang guard: the run starts in seconds
        while not ((out / "generated.jsonl").exists() and len(server.requests) >= 16):
            assert time.monotonic() < deadline and run.proc.poll() is None
            time.sleep(0.01)
        server.latency = 600.0
        while server.in_flight < 8:
            time.sleep(0.01)
        run.proc.send_signal(sig)
        rc = run.proc.wait(timeout=60)
        err = run.proc.stderr.read()
        assert rc == 130, err
        assert "interrupted" in err and "rerun the same command to resume" in err and "Traceback" not in err
        stopped_at = len(assert_consistent(out))
        assert 0 < stopped_at < 200

        server.latency = 0.0
        run = Run(tmp_path, server.base_url, target=stopped_at + 20)
        assert run.proc.wait(timeout=60) == 0, run.proc.stderr.read()
        kept = assert_consistent(out, stopped_at + 20)
    finally:
        server.stop()
    assert [r["provenance"]["unit"] for r in kept] == sorted(r["provenance"]["unit"] for r in kept)


def test_cancel_while_a_round_is_being_written_waits_for_the_write(tmp_path, monkeypatch):
    """The round's append runs in a worker thread; a cancel arriving meanwhile must not let the
    closing regen.json and state.json be written before that round is on disk."""
    entered, release = threading.Event(), threading.Event()
    write = InstructionPool.write_units

    def slow_write(self, units):
        entered.set()
        release.wait(5)
        write(self, units)
    monkeypatch.setattr(InstructionPool, "write_units", slow_write)
    rng = random.Random(0)
    teacher = FakeTeacher(respond=lambda prompt: self_instruct_reply(prompt, 20, rng))
    cfg = GenerateConfig(output_dir=str(tmp_path / "out"), num_instructions_to_generate=500, quiet=True)

    async def main():
        task = asyncio.create_task(agenerate(cfg, teacher=teacher))
        while not entered.is_set():
            await asyncio.sleep(0.005)
        task.cancel()
        await asyncio.sleep(0.05)  # the cancel is delivered while the write is still held
        release.set()
        with pytest.raises(asyncio.CancelledError):
            await task

    asyncio.run(main())
    kept = assert_consistent(tmp_path / "out")
    assert kept  # the held round made it to disk, and regen.json and state.json count it
