"""A run that has to survive: 500 instructions from a server that fails 30% of its requests.

The loopback fake OpenAI server (tests/fake_openai.py) draws a fault for each request with the
given probability, evenly among all it knows: 429 with and without Retry-After, 500/502/503,
connections reset mid-body, read timeouts, HTTP 200 with broken JSON or no choices, replies cut
by max_tokens, replies with no tasks or the wrong numbering, context overflows. The run must end
with exactly --target unique, valid records and say which faults it met.

    python benchmarks/fault_run.py [--target 500] [--fault_rate 0.3] [--seed 0]
"""
from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "tests"))

from fake_openai import FakeOpenAI  # noqa: E402
from self_instruct.core.filters import first_rejection  # noqa: E402
from self_instruct.core.filters import duplicate_key  # noqa
from self_instruct.generate import generate  # noqa: E402
from self_instruct.types import Example  # noqa: E402


def check_output(out: Path, target: int) -> None:
    """Exactly target records, each a whole JSON line that passes the filters, no instruction
    twice, and regen.json holding the same records."""
    lines = (out / "generated.jsonl").read_text(encoding="utf-8").splitlines()
    records = [json.loads(line) for line in lines]
    assert len(records) == target, f"{len(records)} records, expected {target}"
    assert len({duplicate_key(r["instruction"]) for r in records}) == target, "duplicate instructions"
    for r in records:
        assert first_rejection(Example(r["instruction"], r["input"], r["output"])) is None, r
    regen = json.loads((out / "regen.json").read_text(encoding="utf-8"))
    assert [r["instruction"] for r in regen] == [r["instruction"] for r in records], "regen.json differs"
    for line in (out / "rejected.jsonl").read_text(encoding="utf-8").splitlines():
        assert json.loads(line)["reason"]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--target", type=int, default=500)
    parser.add_argument("--fault_rate", type=float, default=0.3)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()

    server = FakeOpenAI(latency=0.02, seed=args.seed).start()
    server.fault_rate = args.fault_rate
    server.timeout_sleep = 1.5  # past the 1 s request timeout below
    try:
        with tempfile.TemporaryDirectory() as tmp:
            out = Path(tmp) / "out"
            started = time.perf_counter()
            result = generate(str(out), base_url=server.base_url, model_name="fake-model", num_instructions_to_generate=args.target,
                              request_batch_size=8, max_concurrency=8, request_timeout=1.0, retry_backoff=0.05,
                              seed=args.seed, quiet=True)
            wall = time.perf_counter() - started
            check_output(out, args.target)
    finally:
        server.stop()
    answered = len([b for b in server.requests if "prompt" in b])
    injected = Counter(server.faults_sent)
    print(f"fault run: {result.kept}/{args.target} unique, valid records in {wall:.1f}s; the server faulted "
          f"{sum(injected.values())} of {answered} requests ({sum(injected.values()) / answered:.0%}): "
          + ", ".join(f"{k} {v}" for k, v in sorted(injected.items())))
    print(f"  the run's summary: {result.stats.summary()}")


if __name__ == "__main__":
    main()
