"""dedup on a real local Ray instance: the same decisions and files as the sequential run, and a
worker killed mid-run changes nothing."""
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

from self_instruct.dedup import greedy_keep, parallel_keep
from self_instruct.executors import open_executor

from test_dedup import RECORDS, perturbed_alpaca, run

pytestmark = [pytest.mark.slow, pytest.mark.ray]
REPO = Path(__file__).resolve().parents[2]


def seeds_of(anchors):
    return [json.loads(line)["instruction"] for line in open(anchors / "alpaca_seed_tasks.jsonl")]


def test_ray_decisions_equal_the_sequential_greedy_on_perturbed_alpaca(ray_cluster, anchors):
    stream = perturbed_alpaca(anchors, count=4000, seed=7)
    seeds = seeds_of(anchors)
    with open_executor("ray") as executor:
        flags = parallel_keep(stream, 0.7, seeds, executor, shards=2)
    assert flags == list(greedy_keep(stream, 0.7, seeds))
    assert ray_cluster.is_initialized()  # a Ray the process had joined is left running


def test_executor_ray_writes_the_same_files_as_the_sequential_run(ray_cluster, tmp_path, capsys, anchors):
    rows = [dict(RECORDS[i % len(RECORDS)], instruction=text) for i, text in enumerate(perturbed_alpaca(anchors, 1500))]
    source = tmp_path / "data.jsonl"
    source.write_text("".join(json.dumps(row, ensure_ascii=False) + "\n" for row in rows), encoding="utf-8")
    assert run(capsys, source, "--output", tmp_path / "local.jsonl", "--report", tmp_path / "local.report")[0] == 0
    status, err = run(capsys, source, "--executor", "ray", "--output", tmp_path / "ray.jsonl",
                      "--report", tmp_path / "ray.report")
    assert status == 0, err
    assert (tmp_path / "ray.jsonl").read_bytes() == (tmp_path / "local.jsonl").read_bytes()
    assert (tmp_path / "ray.report").read_bytes() == (tmp_path / "local.report").read_bytes()
    assert 0 < len((tmp_path / "ray.jsonl").read_bytes().splitlines()) < len(rows)


class KillingExecutor:
    """The Ray executor, but the first replica's worker process is killed (SIGKILL) just before
    the driver's ``kill_at``-th round of calls, mid-run; it records what the replicas answered."""

    def __init__(self, executor, kill_at):
        self.executor, self.kill_at, self.rounds, self.killed, self.stale = executor, kill_at, 0, None, 0

    def actors(self, cls, count, *args):
        self.replicas = self.executor.actors(cls, count, *args)
        return self.replicas

    def call(self, actor, method, *args):
        if method == "match" and actor is self.replicas[0]:
            self.rounds += 1
            if self.rounds == self.kill_at:
                self.killed = self.executor.get([self.executor.call(actor, "pid")])[0]
                os.kill(self.killed, signal.SIGKILL)
        return self.executor.call(actor, method, *args)

    def get(self, handles):
        answers = self.executor.get(handles)
        self.stale += sum(answer is None for answer in answers)
        return answers


def test_a_killed_worker_is_restarted_and_no_decision_is_lost_or_changed(ray_cluster, anchors):
    stream = perturbed_alpaca(anchors, count=4000, seed=11)
    seeds = seeds_of(anchors)
    with open_executor("ray") as executor:
        killing = KillingExecutor(executor, kill_at=4)
        flags = parallel_keep(stream, 0.7, seeds, killing, shards=2)
        after = executor.get([executor.call(killing.replicas[0], "pid")])[0]
    assert killing.rounds > killing.kill_at  # the kill came mid-run, with rounds after it
    assert killing.killed and after != killing.killed  # Ray started a new worker process
    assert killing.stale == 1  # it came back empty once, was sent the kept texts, and asked again
    assert flags == list(greedy_keep(stream, 0.7, seeds))


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_a_cluster_started_with_ray_start_is_joined_by_its_address(tmp_path, anchors):
    pytest.importorskip("ray", reason="Ray is not installed (pip install 'self_instruct[ray]')")
    # the ray command of this interpreter's environment, not another one's on PATH
    beside = Path(sys.executable).parent / "ray"
    ray_cli = str(beside) if beside.exists() else shutil.which("ray")
    if ray_cli is None:
        pytest.skip("the ray command is not on PATH")
    rows = [dict(RECORDS[i % len(RECORDS)], instruction=text) for i, text in enumerate(perturbed_alpaca(anchors, 800))]
    source = tmp_path / "data.jsonl"
    source.write_text("".join(json.dumps(row, ensure_ascii=False) + "\n" for row in rows), encoding="utf-8")
    port = free_port()
    env = dict(os.environ, RAY_USAGE_STATS_ENABLED="0")
    env.pop("RAY_ADDRESS", None)
    head = subprocess.Popen([ray_cli, "start", "--head", "--port", str(port), "--num-cpus", "2", "--include-dashboard=false",
                             "--disable-usage-stats", "--block"], env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                            cwd=tmp_path)
    try:
        for _ in range(600):  # a hang guard far above the few seconds it takes
            try:
                socket.create_connection(("127.0.0.1", port), timeout=1).close()
                break
            except OSError:
                assert head.poll() is None, "ray start --head exited"
                time.sleep(0.1)
        command = [sys.executable, "-m", "self_instruct.dedup", str(source)]
        local = subprocess.run([*command, "--output", str(tmp_path / "local.jsonl")], capture_output=True, text=True,
                               cwd=REPO, env=env, timeout=600)
        joined = subprocess.run([*command, "--executor", "ray", "--output", str(tmp_path / "ray.jsonl")],
                                capture_output=True, text=True, cwd=tmp_path, timeout=600,
                                env=dict(env, RAY_ADDRESS=f"127.0.0.1:{port}", PYTHONPATH=str(REPO)))
    finally:
        head.terminate()  # ray start --block stops what it started
        head.wait(timeout=120)
    assert local.returncode == 0, local.stderr
    assert joined.returncode == 0, joined.stderr[-3000:]
    assert (tmp_path / "ray.jsonl").read_bytes() == (tmp_path / "local.jsonl").read_bytes()
