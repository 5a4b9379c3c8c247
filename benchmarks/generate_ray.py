"""generate's requests sent from this process against sent from Ray workers (--executor ray).

    python benchmarks/generate_ray.py [--latency 0.5] [--concurrency 32 128] [--waves 4]

Against the fake server of benchmarks/throughput.py, in its own process (asyncio, 0.3 ms of CPU a
request, so neither the server nor its threads share this process's interpreter lock), answering
every request in --latency seconds with a stream of 8 made-up tasks (all new, so every reply is
judged in full), a generate run of --request_batch_size 1 at each --concurrency c is stopped by
--max_requests (waves * c) and timed from its first request's send line to its last reply's done
line in the ledger, in this process, then with --executor ray on a local Ray instance started once
before (its start, and its workers', not timed: they are up before the first request). Prints
requests a second, and the share of the bound (c / latency).
"""
from __future__ import annotations

import argparse
import asyncio
import json
import subprocess
import sys
import tempfile
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))
from self_instruct.engine.ledger import read_spend  # noqa: E402
from self_instruct.executors import open_executor  # noqa: E402
from self_instruct.generate import GenerateConfig, agenerate  # noqa: E402


def one(base_url: str, out: Path, executor: str, concurrency: int, waves: int) -> float:
    cfg = GenerateConfig(output_dir=str(out), base_url=base_url, model_name="fake", executor=executor,
                         num_instructions_to_generate=10**6, request_batch_size=1, max_concurrency=concurrency,
                         max_requests=waves * concurrency, max_stall_rounds=10**6, quiet=True, no_report=True)
    asyncio.run(agenerate(cfg))
    lines = [json.loads(line) for line in (out / "ledger.jsonl").read_text().splitlines()]
    wall = max(line["t"] for line in lines if line["event"] == "done") - min(line["t"] for line in lines if line["event"] == "send")
    return read_spend(out / "ledger.jsonl")[0].requests / wall


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--latency", type=float, default=0.5)
    parser.add_argument("--concurrency", type=int, nargs="+", default=[32, 128])
    parser.add_argument("--waves", type=int, default=4)
    args = parser.parse_args()
    server = subprocess.Popen([sys.executable, str(REPO / "benchmarks" / "throughput.py"), "--serve",
                               "--delay", str(args.latency), "--tasks", "8"], stdout=subprocess.PIPE, text=True)
    try:
        base_url = server.stdout.readline().strip()
        with tempfile.TemporaryDirectory() as tmp, open_executor("ray"):
            print("| c | bound | local | --executor ray |\n|---|---|---|---|")
            for c in args.concurrency:
                rates = {e: one(base_url, Path(tmp) / f"{e}{c}", e, c, args.waves) for e in ("local", "ray")}
                bound = c / args.latency
                print(f"| {c} | {bound:.0f}/s | " + " | ".join(f"{rates[e]:.1f}/s ({rates[e] / bound:.0%})"
                                                              for e in ("local", "ray")) + " |", flush=True)
    finally:
        server.terminate()
        server.wait()


if __name__ == "__main__":
    main()
