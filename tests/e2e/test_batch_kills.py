"""SIGKILL `score --batch` while its batch runs on the server, and resume: the resumed run polls
the batch the first one made, never creates another, and pays for each request once.

The second case leaves on disk what a kill between the create call and its record leaves (the
intent without its "created" line): the resumed run finds the batch by its tag instead of
creating a second one.
"""
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from fake_batches import FakeBatches, verdicts
from self_instruct.engine.ledger import read_spend
from self_instruct.io.jsonl import read_jsonl

pytestmark = pytest.mark.slow

REPO = Path(__file__).resolve().parents[2]
WORDS = ("one", "two", "three", "four", "five", "six", "seven")
RECORDS = [{"instruction": f"Task number {w}.", "input": "", "output": f"Answer {w}."} for w in WORDS]


@pytest.fixture
def server():
    server = FakeBatches().start()
    server.reply_fn = verdicts
    server.hold = True  # batches stay in progress until the test lets them end
    yield server
    server.stop()


def score(tmp_path, server, batch=True) -> subprocess.Popen:
    (tmp_path / "data.json").write_text(json.dumps(RECORDS), encoding="utf-8")
    cmd = [sys.executable, "-m", "self_instruct.score", "data.json", "--output", "scored.jsonl",
           "--records_per_request", "2", "--base_url", server.base_url, "--model_name", "gpt-4o-mini",
           "--batch_poll", "0.01", "--batch_poll_max", "0.05", "--quiet"] + (["--batch"] if batch else [])
    return subprocess.Popen(cmd, cwd=tmp_path, env=dict(os.environ, PYTHONPATH=str(REPO)),
                            stderr=subprocess.PIPE, text=True)


def wait_for(condition, timeout=120.0) -> None:  # a hang guard, many times the expected
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.01)


def kill_while_polled(tmp_path, server, how=signal.SIGKILL) -> Path:
    """Start a run, wait until its batch is recorded and polled, and kill it (SIGTERM: stop it as Ctrl-C does)."""
    run = score(tmp_path, server)
    record = tmp_path / "scored.jsonl.run" / "batches.jsonl"
    wait_for(lambda: server.creations == 1 and record.exists() and '"created"' in record.read_text()
             and any(b["_polls"] >= 2 for b in server.batches.values()))
    run.send_signal(how)
    assert run.wait(timeout=30) == (-signal.SIGKILL if how == signal.SIGKILL else 130)
    err = run.stderr.read()
    assert "Traceback" not in err
    if how == signal.SIGTERM:
        assert err.strip().splitlines()[-1].startswith("self_instruct: interrupted")
    return record


def resume(tmp_path, server, batch=True) -> str:
    server.hold = False
    run = score(tmp_path, server, batch)
    _, err = run.communicate(timeout=120)
    assert run.returncode == 0, err
    return err


def check_done_once(tmp_path, server) -> None:
    assert server.creations == 1 and server.requests == []  # one batch, nothing sent directly
    scored = [json.loads(line) for line in (tmp_path / "scored.jsonl").read_text().splitlines()]
    assert [r["instruction"] for r in scored] == [r["instruction"] for r in RECORDS]
    ledger = read_jsonl(tmp_path / "scored.jsonl.run" / "ledger.jsonl")
    sends = [line["id"] for line in ledger if line["event"] == "send"]
    dones = [line["id"] for line in ledger if line["event"] == "done"]
    assert sorted(sends) == sorted(dones) == [0, 1, 2, 3]  # each request reserved once, settled once
    spend, _ = read_spend(tmp_path / "scored.jsonl.run" / "ledger.jsonl")
    assert spend.reserved_tokens == 0 and spend.cost == pytest.approx(sum(
        line["cost"] for line in ledger if line["event"] == "done"))


@pytest.mark.parametrize("how", [signal.SIGKILL, signal.SIGTERM])
def test_a_run_killed_while_its_batch_runs_polls_the_same_batch(tmp_path, server, how):
    record = kill_while_polled(tmp_path, server, how)
    assert [line["event"] for line in read_jsonl(record)] == ["intent", "created"]
    err = resume(tmp_path, server)
    assert "following batch" in err
    check_done_once(tmp_path, server)
    assert [line["event"] for line in read_jsonl(record)] == ["intent", "created", "ended"]


def test_a_kill_between_create_and_its_record_finds_the_batch_by_its_tag(tmp_path, server):
    record = kill_while_polled(tmp_path, server)
    # what a kill just after the create call, before its record, leaves on disk
    lines = [line for line in read_jsonl(record) if line["event"] != "created"]
    record.write_text("".join(json.dumps(line) + "\n" for line in lines), encoding="utf-8")
    err = resume(tmp_path, server)
    assert "made by an earlier try" in err
    check_done_once(tmp_path, server)


def test_a_rerun_without_batch_still_follows_the_batch_it_paid_for(tmp_path, server):
    kill_while_polled(tmp_path, server)
    err = resume(tmp_path, server, batch=False)
    assert "following batch" in err
    check_done_once(tmp_path, server)
