"""dedup of a million perturbed Alpaca records: sequential, local shards, and Ray; time and peak memory per process.

    python benchmarks/dedup_ray.py [--records 1000000] [--runs sequential,local:2,ray:2]

Writes --records full Alpaca records (instruction perturbed as in rouge_dedup.py, input and output
copied) as JSONL, then runs each plan in a child process, from process start to exit, with
Alpaca's seed tasks as --against:

* ``sequential``: ``python -m self_instruct.dedup`` as it is by default (the whole file read);
* ``local:N``: ``--shards N``, the N workers in the one process, one after another;
* ``ray:N``: ``--executor ray --shards N``, a local Ray instance started for the run (its start
  is in the time), the N workers as Ray actors.

Each prints the wall time, the driver's peak RSS (VmHWM of its own address space) and, for Ray,
each worker's; the kept files must be byte for byte the sequential run's. Ray's own daemons
(GCS, raylet) are not counted. Without ../shared/anchors the benchmark says so and exits.
"""
from __future__ import annotations

import argparse
import json
import random
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO / "benchmarks"))
from rouge_dedup import ANCHORS, stream  # noqa: E402

CHILD = """
import json, re, sys
sys.path.insert(0, sys.argv[1])
from pathlib import Path
from self_instruct import dedup
from self_instruct.executors import open_executor

def peak():
    return int(re.search(r"VmHWM:\\s*(\\d+)", open("/proc/self/status").read()).group(1))

plan, source, output, seeds = sys.argv[2:6]
if plan == "sequential":
    summary, workers = dedup.dedup_file(source, output, against=[seeds]), []
else:
    name, shards = plan.split(":")

    class Recording:
        # the executor, remembering the workers so their peaks can be asked at the end
        def __init__(self, executor):
            self.executor = executor
        def actors(self, cls, count, *args):
            self.replicas = self.executor.actors(cls, count, *args)
            return self.replicas
        def call(self, actor, method, *args):
            return self.executor.call(actor, method, *args)
        def get(self, handles):
            return self.executor.get(handles)

    with open_executor(name) as executor:
        recording = Recording(executor)
        summary = dedup._dedup_streamed(Path(source), Path(output), 0.7, [seeds], None, recording, int(shards))
        workers = recording.get([recording.call(r, "peak_kib") for r in recording.replicas]) if name == "ray" else []
print(json.dumps({"summary": str(summary), "driver_kib": peak(), "workers_kib": workers}))
"""


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--records", type=int, default=1_000_000)
    parser.add_argument("--runs", default="sequential,local:2,ray:2")
    args = parser.parse_args()
    if not ANCHORS.is_dir():
        sys.exit(f"skipped: {ANCHORS} is not present (it holds the Alpaca data this benchmark perturbs)")
    data = json.loads((ANCHORS / "alpaca_data_5000_sample.json").read_text(encoding="utf-8"))
    originals = [record["instruction"] for record in data]
    seeds = ANCHORS / "alpaca_seed_tasks.jsonl"
    rng = random.Random(2)
    with tempfile.TemporaryDirectory() as directory:
        source = Path(directory) / "large.jsonl"
        with open(source, "w", encoding="utf-8") as f:
            for text in stream(originals, args.records, seed=2):
                f.write(json.dumps(dict(rng.choice(data), instruction=text), ensure_ascii=False) + "\n")
        print(f"== {args.records} records, {source.stat().st_size / 2**20:.0f} MiB of JSONL, --against the seed tasks")
        outputs = {}
        for plan in args.runs.split(","):
            output = Path(directory) / f"out-{plan.replace(':', '-')}.jsonl"
            start = time.perf_counter()
            result = subprocess.run([sys.executable, "-c", CHILD, str(REPO), plan, str(source), str(output), str(seeds)],
                                    capture_output=True, text=True)
            wall = time.perf_counter() - start
            if result.returncode:
                sys.exit(f"{plan}: {result.stderr[-2000:]}")
            figures = json.loads(result.stdout.splitlines()[-1])
            outputs[plan] = output.read_bytes()
            same = "" if plan == "sequential" or "sequential" not in outputs else (
                ", output identical to sequential" if outputs[plan] == outputs["sequential"] else ", OUTPUT DIFFERS")
            workers = ", ".join(f"{kib / 1024:.0f}" for kib in figures["workers_kib"])
            print(f"{plan:12s} {wall:7.1f} s wall, driver peak {figures['driver_kib'] / 1024:5.0f} MiB"
                  + (f", workers' peaks {workers} MiB" if workers else "") + same)
            print(f"{'':12s} {figures['summary']}")
            if "DIFFERS" in same:
                sys.exit(1)


if __name__ == "__main__":
    main()
