"""The engine's promises, from outside: one writer per output directory, budgets that hold across
stops and kills, prompts that are the same whether a run was killed or not, and one line (never a
traceback) for a corrupt state file, a full disk or a path that cannot be used."""
import asyncio
import hashlib
import json
import os
import random
import signal
import subprocess
import sys
import time
import tracemalloc
from pathlib import Path
from types import SimpleNamespace

import pytest

from fake_openai import FakeOpenAI, self_instruct_reply
from self_instruct.engine.scheduler import Engine
from self_instruct.pipelines.base import Pipeline, UnitResult
from self_instruct.generate import generate
from self_instruct.engine.judge import Judge
from self_instruct.engine.ledger import Ledger
from self_instruct.pipelines.alpaca import AlpacaPipeline
from self_instruct.engine.pool import InstructionPool
from self_instruct.core.prompts import load_list_template
from self_instruct.core.seeds import load_seed_tasks
from self_instruct.teachers.openai_compat import OpenAITeacher
from self_instruct.types import Decoding, Example

REPO = Path(__file__).resolve().parents[2]


def cli_run(cwd, *args, wait=True):
    env = dict(os.environ, PYTHONPATH=str(REPO))
    cmd = [sys.executable, "-m", "self_instruct.generate", "--quiet", *map(str, args)]
    proc = subprocess.Popen(cmd, cwd=cwd, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    if wait:
        out, err = proc.communicate(timeout=300)
        return proc.returncode, err
    return proc


def snapshot(directory: Path) -> dict:
    return {p.name: (p.read_bytes(), p.stat().st_mtime_ns) for p in sorted(directory.iterdir())}


def wait_for(condition, what, timeout=120.0):
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.01)


def test_a_second_run_on_a_busy_directory_is_refused_and_touches_nothing(tmp_path):
    server = FakeOpenAI(latency=0.3).start()
    try:
        flags = ["--output_dir", "out", "--base_url", server.base_url, "--model_name", "m",
                 "--num_instructions_to_generate", "400"]
        first = cli_run(tmp_path, *flags, wait=False)
        out = tmp_path / "out"
        wait_for(lambda: (out / "generated.jsonl").exists(), "the first run to write")
        before = snapshot(out)
        rc, err = cli_run(tmp_path, *flags)
        assert rc == 2 and err.count("\n") == 1, err
        assert f"another run (pid {first.pid}) is writing to this output directory" in err
        # The first run may have appended meanwhile; the second must not have written anything.
        first.send_signal(signal.SIGKILL)
        first.wait(timeout=60)
        after = snapshot(out)
        assert after[".lock"] == before[".lock"]
        # The kernel released the dead run's lock: the same command resumes at once.
        rc, err = cli_run(tmp_path, *flags[:-1], "20")
        assert rc == 0, err
    finally:
        server.stop()


def test_max_requests_holds_across_a_sigterm_and_a_resume(tmp_path):
    """Requests in flight at a stop are counted (they were on disk before they went), so the two
    runs together send the server at most --max_requests."""
    server = FakeOpenAI(latency=0.2).start()
    try:
        flags = ["--output_dir", "out", "--base_url", server.base_url, "--model_name", "m", "--max_requests", "40",
                 "--num_instructions_to_generate", "5000", "--request_batch_size", "3", "--max_concurrency", "8"]
        first = cli_run(tmp_path, *flags, wait=False)
        wait_for(lambda: len(server.requests) >= 15 and server.in_flight >= 4, "requests in flight")
        first.send_signal(signal.SIGTERM)
        assert first.wait(timeout=60) == 130
        rc, err = cli_run(tmp_path, *flags)
        assert rc == 0 and "budget max_requests reached" in err, err
        completions = [b for b in server.requests if "prompt" in b]
        assert 30 <= len(completions) <= 40
        state = json.loads((tmp_path / "out" / "state.json").read_text())
        assert state["requests"] == 40  # the interrupted ones count, answered or not
    finally:
        server.stop()


def test_max_cost_is_never_passed_and_shows_in_the_summary(fake_server, tmp_path, capsys):
    from self_instruct.generate import cli
    out = tmp_path / "out"
    cli(["--output_dir", str(out), "--base_url", fake_server.base_url, "--model_name", "m", "--quiet",
         "--num_instructions_to_generate", "5000", "--max_tokens", "600", "--max_cost", "0.05",
         "--price_prompt", "2.5", "--price_completion", "10"])
    err = capsys.readouterr().err
    assert "budget max_cost reached" in err and "cost $" in err
    state = json.loads((out / "state.json").read_text())
    worst = sum((len(b["prompt"].encode()) + 32) * 2.5 + b["max_tokens"] * 10 for b in fake_server.requests if "prompt" in b) / 1e6
    assert worst <= 0.05 and 0 < state["cost"] <= worst


def deterministic_reply(prompt, body):
    """A teacher whose reply depends on the prompt alone, so two runs that send the same prompts
    grow the same pool."""
    rng = random.Random(hashlib.sha256(prompt.encode()).hexdigest())
    return self_instruct_reply(prompt, 8, rng, synthetic=True)


@pytest.mark.parametrize("machine", [0, 2], ids=["seeds_only", "machine_instructions"])
def test_a_killed_and_resumed_run_sends_the_prompts_of_an_uninterrupted_one(tmp_path, machine):
    flags = ["--model_name", "m", "--num_tasks", "8", "--request_batch_size", "3", "--max_concurrency", "6",
             "--num_machine_instructions", machine, "--seed", "7", "--num_instructions_to_generate", "120"]
    servers = [FakeOpenAI(latency=0.02).start() for _ in range(2)]
    for server in servers:
        server.reply_fn = deterministic_reply
    try:
        straight, killed = servers
        assert cli_run(tmp_path, "--output_dir", "a", "--base_url", straight.base_url, *flags)[0] == 0
        for kills in range(2):
            proc = cli_run(tmp_path, "--output_dir", "b", "--base_url", killed.base_url, *flags, wait=False)
            wait_for(lambda: sum("prompt" in b for b in killed.requests) >= 12 * (kills + 1), "requests")
            proc.send_signal(signal.SIGKILL)
            proc.wait(timeout=60)
        assert cli_run(tmp_path, "--output_dir", "b", "--base_url", killed.base_url, *flags)[0] == 0
    finally:
        for server in servers:
            server.stop()
    a, b = (tmp_path / name / "generated.jsonl" for name in "ab")
    assert a.read_bytes() == b.read_bytes()
    # Every round's prompts, recomputed from the final pool, reached both servers; the killed
    # run sent nothing else for those rounds (the replies it had were not asked for twice).
    with InstructionPool.open(tmp_path / "a") as pool:
        pipeline = AlpacaPipeline(load_seed_tasks(), load_list_template(), num_prompt_instructions=3, num_machine_instructions=machine,
                                  num_tasks=8, request_batch_size=3, seed=7)
        rounds = [pipeline.unit(r, pool).prompts for r in range(pool.next_unit)]
    expected = {p for prompts in rounds for p in prompts}
    received = [{b["prompt"] for b in server.requests} for server in servers]
    assert expected <= received[0] and expected <= received[1]
    if machine:  # later rounds showed grown tasks, and still came out the same
        grown = {json.loads(line)["instruction"] for line in a.read_text().splitlines()}
        assert any(text in p for p in expected for text in grown)


def test_corrupt_state_json_is_rebuilt_from_the_jsonl_files(fake_server, tmp_path, capsys):
    out = tmp_path / "out"
    generate(str(out), base_url=fake_server.base_url, model_name="m", num_instructions_to_generate=10, quiet=True)
    for broken in ('[1]', '{"rounds": "7", "units_done": "x"}', '{"kept": 3'):
        (out / "state.json").write_text(broken)
        result = generate(str(out), base_url=fake_server.base_url, model_name="m", num_instructions_to_generate=15, quiet=True)
        assert result.kept == 15
        state = json.loads((out / "state.json").read_text())
        rejected = out / "rejected.jsonl"
        assert state["kept"] == 15
        assert sum(state["rejects"].values()) == (len(rejected.read_text().split("\n")) - 1 if rejected.exists() else 0)
        (out / "state.json").write_text(broken)
        rc, err = cli_run(tmp_path, "--output_dir", "out", "--base_url", fake_server.base_url, "--model_name", "m",
                          "--num_instructions_to_generate", "15")
        assert rc == 0 and "Traceback" not in err


def completions(server) -> int:
    return sum("prompt" in body for body in server.requests)


def budget_flags(server, *extra) -> list:
    return ["--output_dir", "out", "--base_url", server.base_url, "--model_name", "m", "--request_batch_size", "3",
            "--max_concurrency", "1", "--num_instructions_to_generate", "1000", *extra]


def test_a_deleted_ledger_does_not_reset_the_budget_of_the_command(fake_server, tmp_path):
    rc, err = cli_run(tmp_path, *budget_flags(fake_server, "--max_requests", "6"))
    assert rc == 0 and "budget max_requests reached" in err and completions(fake_server) == 6
    (tmp_path / "out" / "ledger.jsonl").unlink()  # state.json still says 6 were sent
    rc, err = cli_run(tmp_path, *budget_flags(fake_server, "--max_requests", "6"))
    assert rc == 0 and "budget max_requests reached" in err, err
    assert completions(fake_server) == 6


def test_a_corrupt_reply_cache_is_dropped_line_by_line_and_the_run_goes_on(fake_server, tmp_path):
    """A cache only saves requests: its bad lines go, with a note, and its good ones still count."""
    rc, err = cli_run(tmp_path, *budget_flags(fake_server, "--max_requests", "4"))
    assert rc == 0 and completions(fake_server) == 4
    cache = tmp_path / "out" / "responses.jsonl"
    good = cache.read_text()
    assert good.count("\n") == 1  # round 1's first reply: round 1 was cut by the budget
    cache.write_text('garbage{\n' + good + '{"key": 7, "unit": "x"}\n["a"]\n{"key": "half", "unit": 1, "te')
    rc, err = cli_run(tmp_path, *budget_flags(fake_server, "--max_requests", "6"))
    assert rc == 0 and "Traceback" not in err, err
    assert "responses.jsonl: dropped 4 line(s) that are not cached replies" in err
    assert completions(fake_server) == 6  # round 1's other two prompts; its first came from the cache
    assert len((tmp_path / "out" / "generated.jsonl").read_text().splitlines()) > 0


def test_a_corrupt_ledger_line_names_the_line_and_what_to_do(fake_server, tmp_path):
    rc, err = cli_run(tmp_path, *budget_flags(fake_server, "--max_requests", "3"))
    ledger = tmp_path / "out" / "ledger.jsonl"
    lines = ledger.read_text().splitlines()
    for broken in ("xx", '{"event": "send", "tokens": 10}'):
        ledger.write_text("\n".join([lines[0], broken, *lines[2:]]) + "\n")
        before = {p.name: p.read_bytes() for p in (tmp_path / "out").glob("*.jsonl")}
        rc, err = cli_run(tmp_path, *budget_flags(fake_server, "--max_requests", "6"))
        assert rc == 2 and err.count("\n") == 1 and f"{Path('out') / 'ledger.jsonl'}:2: " in err, err
        assert "restore that line, or delete ledger.jsonl and the budget counts on from state.json" in err
        assert {p.name: p.read_bytes() for p in (tmp_path / "out").glob("*.jsonl")} == before
        assert completions(fake_server) == 3


@pytest.mark.parametrize("broken", ['[1]', '{"model_name": ', '\xff'], ids=["list", "cut", "not_utf8"])
def test_corrupt_run_json_is_one_line_naming_the_fix(fake_server, tmp_path, broken):
    out = tmp_path / "out"
    generate(str(out), base_url=fake_server.base_url, model_name="m", num_instructions_to_generate=5, quiet=True)
    (out / "run.json").write_bytes(broken.encode("latin-1"))
    before = snapshot(out)
    rc, err = cli_run(tmp_path, "--output_dir", "out", "--base_url", fake_server.base_url, "--model_name", "m")
    assert rc == 2 and err.count("\n") == 1 and "run.json" in err and "--overwrite" in err, err
    assert snapshot(out) == before


def test_a_write_that_fails_midway_is_one_line_and_leaves_no_half_line(fake_server, tmp_path):
    """A file size limit (ulimit -f) makes a write fail partway, as a full disk does: the run stops
    with one line, every file keeps only whole lines, and the same command resumes afterwards."""
    import resource
    out = tmp_path / "out"
    generate(str(out), base_url=fake_server.base_url, model_name="m", num_instructions_to_generate=5, quiet=True)
    limit = max(p.stat().st_size for p in out.iterdir()) + 6000
    env = dict(os.environ, PYTHONPATH=str(REPO))
    cmd = [sys.executable, "-m", "self_instruct.generate", "--quiet", "--output_dir", "out", "--base_url",
           fake_server.base_url, "--model_name", "m", "--num_instructions_to_generate", "300"]
    proc = subprocess.run(cmd, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300,
                          preexec_fn=lambda: resource.setrlimit(resource.RLIMIT_FSIZE, (limit, limit)))
    assert proc.returncode == 2 and proc.stderr.count("\n") == 1 and "Traceback" not in proc.stderr, proc.stderr
    assert "file grew past" in proc.stderr or "disk is full" in proc.stderr
    for path in out.glob("*.jsonl"):
        data = path.read_bytes()
        assert data.endswith(b"\n"), path
        assert all(json.loads(line) for line in data.split(b"\n")[:-1])
    rc, err = cli_run(tmp_path, "--output_dir", "out", "--base_url", fake_server.base_url, "--model_name", "m",
                      "--num_instructions_to_generate", "40")
    assert rc == 0, err
    assert len((out / "generated.jsonl").read_text().split("\n")) == 41


@pytest.mark.parametrize("where", ["output_dir_under_a_file", "output_dir_symlink_loop", "seed_symlink_loop"])
def test_unusable_paths_are_one_line(tmp_path, where):
    (tmp_path / "afile").write_text("x")
    os.symlink(tmp_path / "loop_a", tmp_path / "loop_b")
    os.symlink(tmp_path / "loop_b", tmp_path / "loop_a")
    flags = {"output_dir_under_a_file": ["--output_dir", "afile/sub"],
             "output_dir_symlink_loop": ["--output_dir", "loop_a/out"],
             "seed_symlink_loop": ["--seed_tasks_path", "loop_a"]}[where]
    rc, err = cli_run(tmp_path, "--base_url", "http://127.0.0.1:9/v1", *flags)
    assert rc == 2 and err.count("\n") == 1 and "Traceback" not in err, err


def test_resume_reads_a_large_rejects_file_in_constant_memory(tmp_path):
    out = tmp_path / "out"
    out.mkdir()
    line = json.dumps({"reason": "similar", "detail": "x" * 400, "instruction": "y" * 600, "input": "", "output": "z" * 900,
                       "metadata": {"round": 3}}) + "\n"
    with open(out / "rejected.jsonl", "w") as f:
        for _ in range(20_000):  # 40 MB
            f.write(line)
    size = (out / "rejected.jsonl").stat().st_size  # committed as the last of four units
    (out / "commits.jsonl").write_text("".join(json.dumps({"unit": u, "generated.jsonl": 0, "kept_total": 0,
                                                           "rejected.jsonl": size if u == 3 else 0}) + "\n"
                                               for u in range(4)))
    tracemalloc.start()
    with InstructionPool.open(out) as pool:
        peak = tracemalloc.get_traced_memory()[1]
    tracemalloc.stop()
    assert pool.reject_counts["similar"] == 20_000 and pool.next_unit == 4
    assert peak < 5_000_000, f"peak {peak} bytes"


class AskTwiceInTurn(Pipeline):
    """A pipeline whose every unit asks a question, then a second one after the first answer
    (as documents' qa asks for pairs, then checks them), declaring both requests."""

    def unit(self, index, pool):
        return SimpleNamespace(index=index) if index < 24 else None

    def requests(self, unit):
        return 2

    async def run_unit(self, unit, ask):
        first = await ask(f"### first question of unit {unit.index}\n4. Instruction:")
        second = await ask(f"### second question of unit {unit.index}, after {len(first.text)} chars\n4. Instruction:")
        return UnitResult([Example(f"Unit {unit.index} answer {second.text[:40]}", "", "out")], [])


def test_units_asking_in_turn_keep_every_slot_busy(tmp_path):
    """A unit counts the requests it has out, not all it declared: units asking one thing after
    another still fill --max_concurrency (they reached half of it when each counted both)."""
    server = FakeOpenAI(latency=0.3, tasks_per_reply=1, synthetic=True).start()
    teacher = OpenAITeacher("m", base_url=server.base_url, max_concurrency=8, stream=False)

    async def run():
        with InstructionPool.open(tmp_path / "out") as pool:
            engine = Engine(teacher, pool, Judge(), Ledger(pool.dir, None, pool.next_unit),
                            decoding=Decoding(max_tokens=64), max_concurrency=8, max_stall_units=None,
                            quiet=True)
            try:
                return await engine.run(AskTwiceInTurn())
            finally:
                await teacher.aclose()
    try:
        assert asyncio.run(asyncio.wait_for(run(), timeout=120)) == "done"
    finally:
        server.stop()
    assert len(server.requests) == 48
    assert server.max_in_flight == 8


def test_requests_stop_when_those_out_will_reach_the_target(tmp_path):
    """Replies already back in units still running count toward the target: no round is
    launched once the records kept and those the requests out should bring reach it (tokens
    past the target are money thrown away), and no more than max_concurrency are ever out.
    Asserted on the rounds the ledger shows sent, not on the server's count, which a retry on a
    loaded machine raises without a round being wasted."""
    server = FakeOpenAI(latency=0.2, tasks_per_reply=8, synthetic=True).start()
    try:
        result = generate(str(tmp_path / "out"), base_url=server.base_url, model_name="m",
                          num_instructions_to_generate=480, request_batch_size=5, max_concurrency=40,
                          no_stream=True, quiet=True)
    finally:
        server.stop()
    assert result.kept == 480
    ledger = [json.loads(line) for line in (tmp_path / "out" / "ledger.jsonl").read_text().splitlines()]
    # 8 kept a reply, 5 replies a round: 12 rounds make 480; a 13th would only add to what is thrown away.
    assert len({line["unit"] for line in ledger if line["event"] == "send"}) == 12
    assert len(server.requests) == sum(line["event"] in ("send", "retry") for line in ledger)  # all counted
    assert server.max_in_flight <= 40
