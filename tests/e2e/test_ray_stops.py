"""SIGTERM stops a documents run whose files are being read by Ray tasks as it stops a local one:
exit status 130, nothing written, and the local Ray instance the run started is gone with it."""
import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
pytestmark = [pytest.mark.slow, pytest.mark.ray]


def children() -> dict[int, list[int]]:
    tree: dict[int, list[int]] = {}
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            pid, rest = stat.read_text().split(" (", 1)
        except OSError:
            continue
        tree.setdefault(int(rest.rsplit(")", 1)[1].split()[1]), []).append(int(pid))
    return tree


def descendants(pid: int) -> list[int]:
    tree, found, todo = children(), [], [pid]
    while todo:
        for child in tree.get(todo.pop(), []):
            found.append(child)
            todo.append(child)
    return found


def alive(pid: int) -> bool:
    """Running, not exited (a zombie waits only for its parent to read its status)."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return False


def command_line(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
    except OSError:
        return ""


@pytest.mark.skipif(not Path("/proc/self/stat").exists(), reason="reads the process tree from /proc")
def test_sigterm_stops_a_documents_run_reading_on_ray_and_its_ray_with_it(tmp_path):
    pytest.importorskip("ray", reason="Ray is not installed (pip install 'self_instruct[ray]')")
    pytest.importorskip("pysbd", reason="needs the [docs] extra")
    rng = random.Random(0)
    block = " ".join(rng.choice(["garden", "tomato", "water", "soil", "sun", "seed", "harvest"]) for _ in range(2000))
    path = tmp_path / "line.txt"
    path.write_text(" ".join([block] * 1500), encoding="utf-8")  # 20 MB on one line: a minute to split
    env = dict(os.environ, PYTHONPATH=str(REPO), RAY_USAGE_STATS_ENABLED="0")
    env.pop("RAY_ADDRESS", None)
    run = subprocess.Popen([sys.executable, "-m", "self_instruct.documents", str(path), "--mode", "windows",
                            "--output_dir", "out", "--quiet", "--executor", "ray"], cwd=tmp_path, env=env,
                           stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    started = []
    try:
        deadline = time.monotonic() + 300  # a hang guard: Ray starts and takes the task in seconds
        while not any("read_and_chunk" in command_line(pid) for pid in descendants(run.pid)):
            assert run.poll() is None, run.communicate()
            assert time.monotonic() < deadline, "no Ray task ever read the file"
            time.sleep(0.1)
        started = descendants(run.pid)
        run.send_signal(signal.SIGTERM)
        _, err = run.communicate(timeout=120)  # a hang guard: it takes seconds
    finally:
        if run.poll() is None:
            run.kill()
            run.communicate()
    assert run.returncode == 130, err
    assert err.strip().splitlines()[-1] == ("self_instruct: interrupted; every finished chunk is saved, "
                                            "rerun the same command to resume")
    assert not (tmp_path / "out").exists()
    deadline = time.monotonic() + 120
    while (left := [pid for pid in started if alive(pid)]):
        assert time.monotonic() < deadline, f"Ray processes left running: {[command_line(pid) for pid in left]}"
        time.sleep(0.5)
