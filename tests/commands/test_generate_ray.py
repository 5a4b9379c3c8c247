"""generate with --executor ray on a real local Ray instance: the requests go out from Ray workers,
the engine, judge, ledger and pool stay here, and the run writes what a local run writes."""
import asyncio
import json
import os
import random
import re
import signal
import subprocess
import sys
import tempfile
import threading
import time
import zlib
from pathlib import Path

import pytest

from fake_openai import FakeOpenAI, self_instruct_reply

from self_instruct.engine.ledger import read_spend
from self_instruct.errors import ConfigError, TeacherError
from self_instruct.generate import GenerateConfig, agenerate, generate, ray_teacher

pytestmark = [pytest.mark.slow, pytest.mark.ray]
ROOT = Path(__file__).resolve().parents[2]
KEY = "sk-test-ray-0123456789abcdefSECRET"


def by_prompt(prompt: str, body: dict) -> str:
    """The fake's reply drawn from the prompt alone: whichever worker asks, and whenever, a prompt
    gets the same reply, so the pool depends on the prompts only."""
    num_tasks = int(re.match(r"(\d+)", body["stop"][0]).group(1)) - 1
    return self_instruct_reply(prompt, num_tasks, random.Random(zlib.crc32(prompt.encode())), 4)


def flags(server, **more):
    return dict(base_url=server.base_url, model_name="fake-model", num_instructions_to_generate=40,
                request_batch_size=4, max_concurrency=8, quiet=True, no_report=True) | more


def lines(path: Path) -> list[str]:
    return path.read_text().splitlines()


def requests_in_ledger(out: Path) -> int:
    return read_spend(out / "ledger.jsonl")[0].requests


def test_a_ray_run_writes_the_files_a_local_run_writes(ray_cluster, fake_server, tmp_path):
    fake_server.reply_fn = by_prompt
    fake_server.latency = 0.05
    for executor in ("local", "ray"):
        outcome = generate(str(tmp_path / executor), **flags(fake_server, executor=executor))
        assert outcome.kept == 40
    for name in ("generated.jsonl", "rejected.jsonl"):
        assert lines(tmp_path / "ray" / name) == lines(tmp_path / "local" / name), name
    assert requests_in_ledger(tmp_path / "ray") == requests_in_ledger(tmp_path / "local")


def test_max_requests_holds_and_every_request_the_server_saw_is_in_the_ledger(ray_cluster, tmp_path):
    server = FakeOpenAI(latency=0.05).start()
    try:
        server.reply_fn = by_prompt
        server.script(["500", "429", "reset", "ok", "503"] * 3)  # retries: each one admitted by the driver
        outcome = generate(str(tmp_path / "out"), **flags(server, executor="ray", max_requests=9,
                                                          retry_backoff=0.01))
        assert outcome.stopped_by == "max_requests" and outcome.kept < 40
        assert len(server.requests) == requests_in_ledger(tmp_path / "out") <= 9
    finally:
        server.stop()


def test_a_worker_killed_mid_run_loses_and_duplicates_nothing(ray_cluster, tmp_path):
    server = FakeOpenAI(latency=0.3).start()
    try:
        server.reply_fn = by_prompt
        generate(str(tmp_path / "local"), **flags(server))
        before = len(server.requests)
        cfg = GenerateConfig(output_dir=str(tmp_path / "ray"), **flags(server, executor="ray"))
        teacher = ray_teacher(cfg)
        victim = teacher.actors[0]
        pid = ray_cluster.get(victim.pid.remote())
        restarted = []
        killed = threading.Event()

        def kill_mid_run():
            deadline = time.monotonic() + 120
            while len(server.requests) - before < 6 and time.monotonic() < deadline:
                time.sleep(0.02)
            os.kill(pid, signal.SIGKILL)  # with requests of its own in flight: it takes the least busy
            killed.set()
            while not restarted and time.monotonic() < deadline:  # Ray starts it again
                try:
                    restarted.append(ray_cluster.get(victim.pid.remote(), timeout=120))
                except ray_cluster.exceptions.ActorUnavailableError:
                    time.sleep(0.2)

        killer = threading.Thread(target=kill_mid_run, daemon=True)
        killer.start()
        async def run():
            try:
                return await agenerate(cfg, teacher=teacher)
            finally:
                await asyncio.to_thread(killer.join, 150)  # its restart seen before the workers go
                await teacher.aclose()

        outcome = asyncio.run(run())
        assert killed.is_set() and teacher.deaths >= 1  # the kill came mid-run, under requests
        assert restarted and restarted[0] != pid
    finally:
        server.stop()
    assert outcome.kept == 40
    generated = [json.loads(line) for line in lines(tmp_path / "ray" / "generated.jsonl")]
    assert len({r["instruction"] for r in generated}) == len(generated) == 40
    assert lines(tmp_path / "ray" / "generated.jsonl") == lines(tmp_path / "local" / "generated.jsonl")
    # a request whose worker died may or may not have reached the server: the ledger counts it either way
    seen, counted = len(server.requests) - before, requests_in_ledger(tmp_path / "ray")
    assert seen <= counted <= seen + teacher.deaths


def test_the_key_reaches_the_workers_and_no_file_of_the_run_or_of_ray(tmp_path):
    pytest.importorskip("ray")
    server = FakeOpenAI(api_key=KEY).start()  # refuses any other key: the workers must send it
    ray_tmp = tempfile.mkdtemp(prefix="rk", dir="/tmp")  # Ray's session files, short for its socket paths
    try:
        server.reply_fn = by_prompt
        env = dict(os.environ, OPENAI_API_KEY=KEY, RAY_TMPDIR=ray_tmp, PYTHONPATH=str(ROOT))
        env.pop("RAY_ADDRESS", None)
        done = subprocess.run([sys.executable, "-m", "self_instruct.generate", "--executor", "ray",
                               "--base_url", server.base_url, "--model_name", "fake-model", "--output_dir",
                               str(tmp_path / "out"), "--num_instructions_to_generate", "10", "--quiet", "--no_report"],
                              env=env, capture_output=True, text=True, timeout=600)
        assert done.returncode == 0, done.stderr
        assert len(lines(tmp_path / "out" / "generated.jsonl")) == 10
        assert KEY not in done.stdout + done.stderr
        files = [p for p in [*tmp_path.rglob("*"), *Path(ray_tmp).rglob("*")] if p.is_file() and not p.is_symlink()]
        assert any("session_" in str(p) for p in files)  # Ray's session was there to search
        assert [str(p) for p in files if KEY.encode() in p.read_bytes()] == []
    finally:
        server.stop()
        subprocess.run(["rm", "-rf", ray_tmp])


def test_workers_without_the_key_stop_the_run_with_the_line_about_it(ray_cluster, tmp_path, monkeypatch):
    """A cluster started without the key in its environment (as this session's was): the check from
    here passes with --api_key, the workers' requests are refused, and the run stops in one line."""
    monkeypatch.delenv("OPENAI_API_KEY", raising=False)  # restored after, whatever the run sets
    server = FakeOpenAI(api_key=KEY).start()
    try:
        server.reply_fn = by_prompt
        with pytest.raises(TeacherError) as stopped:
            generate(str(tmp_path / "out"), **flags(server, executor="ray", api_key=KEY))
    finally:
        server.stop()
    assert "refused the request (401" in str(stopped.value) and "OPENAI_API_KEY" in str(stopped.value)
    assert KEY not in str(stopped.value)
    assert not (tmp_path / "out" / "generated.jsonl").exists() or lines(tmp_path / "out" / "generated.jsonl") == []


def test_a_base_url_with_a_password_is_refused_before_it_reaches_ray(ray_cluster, tmp_path):
    with pytest.raises(ConfigError) as refused:
        generate(str(tmp_path / "out"), base_url="http://user:hunter2pw@127.0.0.1:9/v1", model_name="m",
                 executor="ray", quiet=True, no_report=True)
    assert "password" in str(refused.value) and "hunter2pw" not in str(refused.value)
    assert not (tmp_path / "out").exists()


def test_executor_ray_without_a_server_is_one_line(tmp_path, capsys):
    from self_instruct.generate import cli
    with pytest.raises(SystemExit) as exit_:
        cli(["--output_dir", str(tmp_path / "out"), "--executor", "ray", "--teacher", "local"])
    assert exit_.value.code == 2
    assert "--executor ray sends requests" in capsys.readouterr().err
    assert not (tmp_path / "out").exists()
