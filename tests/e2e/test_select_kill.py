"""SIGKILL `select --by ifd` while it scores, then run it again: the second run computes only
what the cache lacks, writes exactly what an uninterrupted run writes, and the killed one left
no output behind.

The process is slowed down (each batch of the tiny model waits 0.2 s, patched in that process
alone) so that the kill lands between batches whatever the machine's load.
"""
import json
import os
import signal
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path

import pytest

from tiny_models import short_records, tiny_model_dir

pytestmark = pytest.mark.slow

REPO = Path(__file__).resolve().parents[2]
SLOW_BATCHES = """
import sys, time
from self_instruct.selection import ifd
scored = ifd.TransformersScorer.mean_nll
ifd.TransformersScorer.mean_nll = lambda self, pairs: (time.sleep(0.2), scored(self, pairs))[1]
from self_instruct.select import cli
cli(sys.argv[1:])
"""


def command(data, out, model):
    return [sys.executable, "-c", SLOW_BATCHES, str(data), str(out), "--by", "ifd", "--model", str(model),
            "--keep_fraction", "0.1", "--batch_size", "2", "--quiet"]


def test_a_killed_selection_resumes_from_its_cache(tmp_path):
    pytest.importorskip("torch")
    pytest.importorskip("transformers")
    records = short_records(40)
    model = tiny_model_dir(tmp_path / "tiny", [" ".join(r.values()) for r in records])
    data = tmp_path / "pool.jsonl"
    data.write_text("".join(json.dumps(r) + "\n" for r in records), encoding="utf-8")
    env = {**os.environ, "PYTHONPATH": str(REPO), "HF_HUB_OFFLINE": "1"}

    whole = subprocess.run(command(data, tmp_path / "whole.jsonl", model), env=env, capture_output=True, text=True, timeout=600)
    assert whole.returncode == 0, whole.stderr

    cache = tmp_path / "killed.ifd-cache.jsonl"
    proc = subprocess.Popen(command(data, tmp_path / "killed.jsonl", model), env=env, stderr=subprocess.PIPE)
    deadline = time.monotonic() + 300
    while time.monotonic() < deadline and (not cache.exists() or cache.read_bytes().count(b"\n") < 6):
        assert proc.poll() is None, proc.stderr.read()
        time.sleep(0.02)
    proc.send_signal(signal.SIGKILL)
    proc.wait(timeout=60)
    proc.stderr.close()
    done_before = cache.read_bytes().count(b"\n")
    assert 6 <= done_before < len(records)
    assert not (tmp_path / "killed.jsonl").exists() and not (tmp_path / "killed.dropped.jsonl").exists()

    again = subprocess.run(command(data, tmp_path / "killed.jsonl", model), env=env, capture_output=True, text=True,
                           timeout=600)
    assert again.returncode == 0, again.stderr
    assert (tmp_path / "killed.jsonl").read_bytes() == (tmp_path / "whole.jsonl").read_bytes()
    assert (tmp_path / "killed.dropped.jsonl").read_bytes() == (tmp_path / "whole.dropped.jsonl").read_bytes()
    keys = Counter(json.loads(line)["key"] for line in cache.read_text().splitlines())
    assert max(keys.values()) == 1 and len(keys) == len({json.dumps(r, sort_keys=True) for r in records})
