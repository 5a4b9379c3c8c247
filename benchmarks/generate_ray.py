"""generate's requests sent from this process against sent from Ray workers (--executor ray).

    python benchmarks/generate_ray.py [--latency 0.5] [--concurrency 32 128] [--waves 4]

Against the fake OpenAI server (tests/fake_openai.py) answering every request in --latency seconds
with made-up tasks (all new, so every reply is judged in full), a generate run of --request_batch_size
1 at each --concurrency c is stopped by --max_requests (waves * c) and timed from its first request
to its end, in this process, then with --executor ray on a local Ray instance started once before
(its start, and its workers', not timed: they are up before the first request). Prints requests a second, and the share of the bound (c / latency).
"""
from __future__ import annotations

import argparse
import asyncio
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "tests"))

from fake_openai import FakeOpenAI  # noqa: E402

from self_instruct.engine.ledger import read_spend  # noqa: E402
from self_instruct.executors import open_executor  # noqa: E402
from self_instruct.generate import GenerateConfig, agenerate  # noqa: E402


def one(server: FakeOpenAI, out: Path, executor: str, concurrency: int, waves: int) -> float:
    cfg = GenerateConfig(output_dir=str(out), base_url=server.base_url, model_name="fake-model", executor=executor,
                         num_instructions_to_generate=10**6, request_batch_size=1, max_concurrency=concurrency,
                         max_requests=waves * concurrency, max_stall_rounds=10**6, quiet=True, no_report=True)
    first = len(server.arrivals)
    asyncio.run(agenerate(cfg))
    wall = time.monotonic() - server.arrivals[first][0]  # from the run's first request: Ray's start is not in it
    return read_spend(out / "ledger.jsonl")[0].requests / wall


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--latency", type=float, default=0.5)
    parser.add_argument("--concurrency", type=int, nargs="+", default=[32, 128])
    parser.add_argument("--waves", type=int, default=4)
    args = parser.parse_args()
    server = FakeOpenAI(latency=args.latency, synthetic=True, tasks_per_reply=8).start()
    with tempfile.TemporaryDirectory() as tmp, open_executor("ray"):
        print("| c | bound | local | --executor ray |\n|---|---|---|---|")
        for c in args.concurrency:
            rates = {e: one(server, Path(tmp) / f"{e}{c}", e, c, args.waves) for e in ("local", "ray")}
            bound = c / args.latency
            print(f"| {c} | {bound:.0f}/s | " + " | ".join(f"{rates[e]:.1f}/s ({rates[e] / bound:.0%})"
                                                          for e in ("local", "ray")) + " |", flush=True)
    server.stop()


if __name__ == "__main__":
    main()
