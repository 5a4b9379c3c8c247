"""What the engine spends on --batch itself: score N records, one a request, through one batch
against the loopback fake (tests/fake_batches.py, in this process), and the same records as
direct requests, each in a fresh directory.

Printed per N: requests, batches made, the client's CPU seconds (the process's, less the fake
server's threads cannot be told apart: both run here, so the figures are upper bounds of the
client's share), CPU milliseconds per request, and the ratio of batch to direct CPU. A flat
figure per request from 1,000 to 10,000 says the parking, the flush check and the reading of the
output file are linear in the batch.

    python benchmarks/batch_scale.py [--sizes 1000,10000]
"""
from __future__ import annotations

import argparse
import json
import resource
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT), str(ROOT / "tests")]

from fake_batches import FakeBatches  # noqa: E402
from self_instruct.score import score_file  # noqa: E402


def cpu() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def run(n: int, batch: bool) -> tuple[float, float, int, int]:
    server = FakeBatches().start()
    server.reply_fn = lambda prompt, body: '[{"index": 1, "score": 4, "reason": "fine"}]'
    try:
        with tempfile.TemporaryDirectory() as tmp:
            data = Path(tmp) / "data.jsonl"
            data.write_text("".join(json.dumps({"instruction": f"Task number {i}.", "input": "", "output": f"Answer {i}."}) + "\n"
                                    for i in range(n)), encoding="utf-8")
            start, wall = cpu(), time.perf_counter()
            result = score_file(str(data), str(Path(tmp) / "scored.jsonl"), records_per_request=1, base_url=server.base_url,
                                model_name="gpt-4o-mini", quiet=True, batch=batch, batch_poll=0.01,
                                max_concurrency=64)
            used, wall = cpu() - start, time.perf_counter() - wall
            assert result.stopped_by == "done" and len(result.kept) == n
            return used, wall, len(server.batch_requests) + len(server.requests), server.creations
    finally:
        server.stop()


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--sizes", default="1000,10000")
    args = parser.parse_args()
    print(f"{'records':>8} {'mode':>7} {'requests':>9} {'batches':>8} {'cpu s':>7} {'wall s':>7} {'cpu ms/req':>10}")
    for n in map(int, args.sizes.split(",")):
        figures = {}
        for batch in (True, False):
            used, wall, requests, batches = run(n, batch)
            figures[batch] = used
            print(f"{n:>8} {'batch' if batch else 'direct':>7} {requests:>9} {batches:>8} {used:>7.2f} {wall:>7.2f} "
                  f"{1000 * used / n:>10.3f}")
        print(f"{n:>8} batch/direct cpu: {figures[True] / figures[False]:.2f}")


if __name__ == "__main__":
    main()
