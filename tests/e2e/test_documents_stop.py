"""SIGTERM and Ctrl-C stop a documents run while it still reads and splits its input: the
splitting runs in a thread the event loop leaves when the run is cancelled. A 50 MB line once
ignored SIGTERM for 35 minutes; here the run exits with status 130 at once, having written
nothing."""
import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
pytestmark = pytest.mark.slow


def cpu_seconds(pid: int) -> float:
    """User and system CPU time of a running process, from /proc."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


@pytest.mark.skipif(not Path("/proc/self/stat").exists(), reason="reads a process's CPU time from /proc")
@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT], ids=["SIGTERM", "Ctrl-C"])
def test_a_signal_stops_documents_while_it_splits_a_big_line(tmp_path, sig):
    pytest.importorskip("pysbd", reason="needs the [docs] extra")
    rng = random.Random(0)
    block = " ".join(rng.choice(["garden", "tomato", "water", "soil", "sun", "seed", "harvest"]) for _ in range(2000))
    path = tmp_path / "line.txt"
    path.write_text(" ".join([block] * 1500), encoding="utf-8")  # 20 MB on one line, no sentence end: a minute to split
    env = dict(os.environ, PYTHONPATH=str(REPO))
    run = subprocess.Popen([sys.executable, "-m", "self_instruct.documents", str(path), "--mode", "windows",
                            "--output_dir", "out", "--quiet"], cwd=tmp_path, env=env,
                           stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        # Past the imports (about a second of CPU) and into the splitting; the guard is a hang guard.
        deadline = time.monotonic() + 300
        while cpu_seconds(run.pid) < 3.0:
            assert run.poll() is None, run.communicate()
            assert time.monotonic() < deadline, "the run never got to splitting"
            time.sleep(0.05)
        run.send_signal(sig)
        _, err = run.communicate(timeout=30)  # a hang guard: it exits within a second or two
    finally:
        if run.poll() is None:
            run.kill()
            run.communicate()
    assert run.returncode == 130, err
    assert err.strip().splitlines()[-1] == ("self_instruct: interrupted; every finished chunk is saved, "
                                            "rerun the same command to resume")
    assert not (tmp_path / "out").exists()  # nothing was written: the run had not begun
