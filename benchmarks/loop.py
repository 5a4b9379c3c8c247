"""How fast the generation loop runs, against the bound the teacher sets.

1. Throughput: the fake OpenAI server runs in its own process with a latency per request drawn
   from latency * U(1 - jitter, 1 + jitter) (a real server does not answer a burst all at once;
   with jitter 0 every wave of replies lands together and is read one after another) and a fixed
   number of new tasks per reply (made-up words, so none is lost to similarity). No loop can keep
   more than  concurrency / latency * tasks_per_reply  instructions a second; we print kept/s as
   a fraction of that bound for each CONCURRENCY@LATENCY given, with the default
   --request_batch_size of 5 (rounds are bookkeeping, not a barrier: the engine keeps
   `concurrency` requests out whatever the round size), and the same for the bare HTTP client.
2. The loop's own CPU per candidate (parse, filters, exact duplicates, ROUGE-L top-10 and mean,
   pool append) as the pool grows to 20K instructions, with Alpaca's real instructions when
   ../shared/anchors is present.

    python benchmarks/loop.py [--runs 8@1,32@1,128@2] [--jitter 0.5] [--tasks 8] [--rounds 12]
"""
from __future__ import annotations

import argparse
import asyncio
import json
import random
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "tests"))

from fake_openai import make_task  # noqa: E402
from self_instruct.generate import GenerateConfig, generate  # noqa: E402
from self_instruct.engine.judge import Judge  # noqa: E402
from self_instruct.core.parse import parse_completion  # noqa: E402
from self_instruct.engine.pool import InstructionPool  # noqa: E402
from self_instruct.core.seeds import load_seed_tasks  # noqa: E402
from self_instruct.teachers import openai_compat  # noqa: E402,F401  (import the SDK before the clock starts)
from self_instruct.types import Completion  # noqa: E402

ANCHOR = REPO.parent / "shared" / "anchors" / "alpaca_data_5000_sample.json"


def throughput(latency: float, concurrency: int, tasks: int, rounds: int, stream: bool, jitter: float) -> None:
    server = subprocess.Popen(
        [sys.executable, str(REPO / "tests" / "fake_openai.py"), "--latency", str(latency), "--tasks_per_reply", str(tasks),
         "--synthetic", "--jitter", str(jitter)],
        stdout=subprocess.PIPE, text=True,
    )
    try:
        base_url = server.stdout.readline().strip()
        target = concurrency * tasks * rounds
        raw_wall, raw_done = asyncio.run(raw_client(base_url, concurrency, concurrency * rounds))
        with tempfile.TemporaryDirectory() as out:
            started, cpu = time.perf_counter(), time.process_time()
            result = generate(out, base_url=base_url, model_name="fake", num_instructions_to_generate=target,
                              max_concurrency=concurrency, no_stream=not stream, quiet=True)
            wall, cpu = time.perf_counter() - started, time.process_time() - cpu
            done = [json.loads(line)["t"] for line in (Path(out) / "ledger.jsonl").read_text().splitlines()
                    if '"event": "done"' in line]
    finally:
        server.terminate()
        server.wait()
    bound = concurrency / latency * tasks
    rate = result.kept / wall
    print(f"throughput ({'streamed' if stream else 'not streamed'}): latency {latency}s (jitter {jitter:.0%}), concurrency {concurrency}, "
          f"{tasks} tasks/reply -> bound {bound:.0f} kept/s")
    print(f"  kept {result.kept} in {wall:.2f}s = {rate:.0f} kept/s = {rate / bound:.1%} of the bound "
          f"({result.stats.requests} requests, {result.stats.rejects.total()} rejected; "
          f"{cpu / result.stats.requests * 1000:.1f} ms of loop CPU a request, judging included)")
    raw_rate = concurrency * rounds * tasks / raw_wall
    print(f"  reference: the bare client, {concurrency * rounds} requests always {concurrency} in flight, no loop: "
          f"{raw_rate:.0f} tasks/s = {raw_rate / bound:.1%} of the bound; the loop reaches {rate / raw_rate:.1%} of it")
    replies = concurrency / latency
    print(f"  steady state (replies 10% to 90% of the run, no first wave or last stragglers): the loop "
          f"{steady(done) / replies:.1%} of the bound {replies:.0f} replies/s, the bare client {steady(raw_done) / replies:.1%}")


def steady(times: list[float]) -> float:
    """Replies a second between the 10th and the 90th percentile of their arrival times."""
    times = sorted(times)
    first, last = len(times) // 10, len(times) * 9 // 10
    return (last - first) / (times[last] - times[first])


async def raw_client(base_url: str, concurrency: int, requests: int) -> float:
    """What the server and the HTTP client allow with no loop at all: every request queued at
    once. Returns the wall time and when each reply came back."""
    teacher = openai_compat.OpenAITeacher("fake", base_url=base_url, max_concurrency=concurrency, stream=False)
    prompt, decoding, done = "###\n4. Instruction:", GenerateConfig().decoding(), []

    async def one() -> None:
        await teacher.complete([prompt], decoding)
        done.append(time.time())
    started = time.perf_counter()
    await asyncio.gather(*(one() for _ in range(requests)))
    wall = time.perf_counter() - started
    await teacher.aclose()
    return wall, done


def candidate_texts(n: int, rng: random.Random) -> list[str]:
    """Realistic instructions: Alpaca's own when the anchor is present, else made-up ones."""
    if ANCHOR.exists():
        real = [r["instruction"] for r in json.loads(ANCHOR.read_text())]
        words = [w for text in real for w in text.split()]
        out = list(real)
        while len(out) < n:  # splice real words into new sentences of real lengths
            out.append(" ".join(rng.choice(words) for _ in range(len(rng.choice(real).split()))))
        rng.shuffle(out)
        return out[:n]
    return [make_task(rng, synthetic=True)[0] for _ in range(n)]


def reply_for(instructions: list[str], first: int) -> str:
    blocks = []
    for i, text in enumerate(instructions, first):
        head = f" {text}" if i == first else f"{i}. Instruction: {text}"
        blocks.append(f"{head}\n{i}. Input:\n<noinput>\n{i}. Output:\nAn answer of a few words.\n")
    return "###\n".join(blocks)


def cpu_per_candidate(sizes: list[int], per_point: int = 400, per_reply: int = 10) -> None:
    rng = random.Random(0)
    texts = candidate_texts(max(sizes) + per_point * len(sizes), rng)
    probes = texts[max(sizes):]
    print(f"loop CPU per candidate ({'Alpaca instructions' if ANCHOR.exists() else 'made-up instructions'}; "
          f"parse + filters + duplicates + ROUGE-L top-10/mean + append):")
    with tempfile.TemporaryDirectory() as out, InstructionPool.open(out) as pool:
        judge = Judge(t.instruction for t in load_seed_tasks())
        filled = 0
        for point, size in enumerate(sizes):
            for text in texts[filled:size]:  # grow the pool directly to the measured size
                judge.remember(text)
                pool.records.append({"instruction": text})
            filled = size
            batch = probes[point * per_point:(point + 1) * per_point]
            replies = [Completion(reply_for(batch[i:i + per_reply], 4)) for i in range(0, len(batch), per_reply)]
            started = time.process_time()
            kept = []
            for reply in replies:  # what the engine does with a unit's replies
                examples, _ = parse_completion(reply.text, reply.finish_reason, 3)
                kept += [v for v in judge.judge_many(examples) if isinstance(v, dict)]
            pool.append(point, kept, [])
            cpu = time.process_time() - started
            print(f"  pool {size:>6,}: {cpu / len(batch) * 1000:6.2f} ms CPU per candidate ({len(kept)}/{len(batch)} kept)")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--runs", default="8@1,32@1,128@2", help="CONCURRENCY@LATENCY,... (seconds a request)")
    parser.add_argument("--jitter", type=float, default=0.5)
    parser.add_argument("--tasks", type=int, default=8)
    parser.add_argument("--rounds", type=int, default=12, help="requests a slot (the pool reaches concurrency*tasks*rounds)")
    parser.add_argument("--sizes", default="1000,5000,10000,20000")
    parser.add_argument("--stream", action="store_true", help="stream replies (generate's default; costs client CPU per token)")
    args = parser.parse_args()
    for run in args.runs.split(","):
        concurrency, _, latency = run.partition("@")
        throughput(float(latency or 1), int(concurrency), args.tasks, args.rounds, args.stream, args.jitter)
    cpu_per_candidate([int(s) for s in args.sizes.split(",")])


if __name__ == "__main__":
    main()
