"""SIGTERM stops a generate run whose requests go from Ray workers as it stops a local one: exit
status 130, every unit back kept, every request the server saw in the ledger, the local Ray
instance gone with it; rerun (here, locally) it ends with an uninterrupted run's generated.jsonl."""
import json
import os
import random
import re
import signal
import subprocess
import sys
import time
import zlib
from pathlib import Path

import pytest

from fake_openai import FakeOpenAI, self_instruct_reply
from test_ray_stops import alive, command_line, descendants

from self_instruct.engine.ledger import read_spend

REPO = Path(__file__).resolve().parents[2]
pytestmark = [pytest.mark.slow, pytest.mark.ray]


def by_prompt(prompt: str, body: dict) -> str:
    num_tasks = int(re.match(r"(\d+)", body["stop"][0]).group(1)) - 1
    return self_instruct_reply(prompt, num_tasks, random.Random(zlib.crc32(prompt.encode())), 4)


def generate(out: Path, server: FakeOpenAI, *more: str, env: dict) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "self_instruct.generate", "--output_dir", str(out), "--base_url",
                             server.base_url, "--model_name", "fake-model", "--num_instructions_to_generate", "60",
                             "--request_batch_size", "4", "--max_concurrency", "8", "--quiet", "--no_report", *more],
                            env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


@pytest.mark.skipif(not Path("/proc/self/stat").exists(), reason="reads the process tree from /proc")
def test_sigterm_stops_a_generate_run_on_ray_and_a_rerun_ends_as_an_uninterrupted_one(tmp_path):
    pytest.importorskip("ray", reason="Ray is not installed (pip install 'self_instruct[ray]')")
    server = FakeOpenAI(latency=0.3).start()
    server.reply_fn = by_prompt
    env = dict(os.environ, PYTHONPATH=str(REPO), RAY_USAGE_STATS_ENABLED="0")
    env.pop("RAY_ADDRESS", None)
    started = []
    try:
        whole = generate(tmp_path / "whole", server, env=env)
        assert whole.wait(timeout=300) == 0, whole.communicate()  # a hang guard: it takes seconds
        before = len(server.requests)
        run = generate(tmp_path / "out", server, "--executor", "ray", env=env)
        try:
            deadline = time.monotonic() + 300  # a hang guard: Ray starts in seconds
            while len(server.requests) - before < 12:
                assert run.poll() is None, run.communicate()
                assert time.monotonic() < deadline, "the Ray workers never sent their requests"
                time.sleep(0.05)
            started = descendants(run.pid)
            assert any("Requester" in command_line(pid) for pid in started)  # the requests' workers
            run.send_signal(signal.SIGTERM)
            _, err = run.communicate(timeout=120)
        finally:
            if run.poll() is None:
                run.kill()
                run.communicate()
        assert run.returncode == 130, err
        assert "interrupted" in err.strip().splitlines()[-1]
        stopped = (tmp_path / "out" / "generated.jsonl").read_text().splitlines()
        assert 0 < len(stopped) < 60
        assert len(server.requests) - before <= read_spend(tmp_path / "out" / "ledger.jsonl")[0].requests
        rerun = generate(tmp_path / "out", server, env=env)
        assert rerun.wait(timeout=300) == 0, rerun.communicate()
    finally:
        server.stop()
    final = (tmp_path / "out" / "generated.jsonl").read_text().splitlines()
    assert final[:len(stopped)] == stopped  # nothing written is lost or rewritten
    assert final == (tmp_path / "whole" / "generated.jsonl").read_text().splitlines()
    assert len({json.loads(line)["instruction"] for line in final}) == 60
    deadline = time.monotonic() + 120
    while (left := [pid for pid in started if alive(pid)]):
        assert time.monotonic() < deadline, f"Ray processes left running: {[command_line(pid) for pid in left]}"
        time.sleep(0.5)
