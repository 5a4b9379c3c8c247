"""Greedy ROUGE-L dedup: rouge-score 0.1.2 (Alpaca's way) against self_instruct's RougeIndex.

    python benchmarks/rouge_dedup.py [--records 5000] [--large 50000] [--scale 100000,1000000] [--shards 8]

1. One process runs both on the same stream of --records instructions (Alpaca's 175 seed tasks
   count as kept): the reference scores pairs with ``rouge_scorer._score_lcs`` on cached tokens,
   stopping at the first score above 0.7 (kinder than Alpaca, which scores the whole pool); ours
   runs the generation loop's query (``RougeIndex.check``: exact top-10 and mean) and the dedup
   tool's (``greedy_keep``). Decisions must be identical; wall and CPU ratios are printed
   (CPU is the steadier one on a shared machine).
2. ``python -m self_instruct.dedup`` on --large records in a child process: wall time and peak RSS.
3. The loop's cost per kept candidate once the pool holds --large instructions.
4. --scale: ``greedy_keep`` alone on longer streams, CPU and wall seconds (no reference can run there).
5. --shards N: the sharded plan on --large records, one shard after another in this process:
   pairs found and written per shard, copies of each text sent, the greedy pass over the merged
   graph; its decisions must equal ``greedy_keep``'s.

Records are real Alpaca instructions (../shared/anchors, next to the repository) with dropped,
swapped and inserted words, case, punctuation and non-ASCII changes, so the stream has both near
duplicates and new texts. Without the anchors the benchmark says so and exits.
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

import numpy as np
from rouge_score import rouge_scorer

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from self_instruct.dedup import greedy_keep, greedy_pass, write_shard_pairs  # noqa: E402
from self_instruct.core.similarity import RougeIndex, key_shard  # noqa: E402

# Beside the repository; a git worktree under wt/ has it one level further up.
ANCHORS = next((path for path in (REPO.parent / "shared" / "anchors", REPO.parent.parent / "shared" / "anchors")
                if path.is_dir()), REPO.parent / "shared" / "anchors")
# Runs the dedup CLI and reports the peak RSS of its own address space: a child's ru_maxrss would
# also count the parent's pages it held between fork and exec.
CLI_WITH_PEAK = """
import re, runpy, sys
try:
    runpy.run_module("self_instruct.dedup", run_name="__main__", alter_sys=True)
finally:
    print(re.search(r"VmHWM:\\s*(\\d+)", open("/proc/self/status").read()).group(1), file=sys.stderr)
"""
INSERTED = ["please", "the", "briefly", "new", "also", "café", "naïve", "über", "résumé", "東京", "quickly"]


def perturb(text: str, rng: random.Random) -> str:
    """Apply 0 to 4 random edits of the kinds real near duplicates show."""
    words = text.split()
    for _ in range(rng.randint(0, 4)):
        i = rng.randrange(len(words))
        edit = rng.randrange(6)
        if edit == 0 and len(words) > 1:
            del words[i]
        elif edit == 1:
            j = rng.randrange(len(words))
            words[i], words[j] = words[j], words[i]
        elif edit == 2:
            words.insert(i, rng.choice(INSERTED))
        elif edit == 3:
            words[i] = words[i].upper() if rng.random() < 0.5 else words[i].capitalize()
        elif edit == 4:
            words[i] += rng.choice(",.;:!?")
        else:
            words[i] = words[i].replace("e", "é", 1).replace("a", "à", 1)
    return " ".join(words)


def stream(originals: list[str], count: int, seed: int) -> list[str]:
    rng = random.Random(seed)
    return [perturb(rng.choice(originals), rng) for _ in range(count)]


def reference_keep(instructions: list[str], against: list[str]) -> list[bool]:
    scorer = rouge_scorer.RougeScorer(["rougeL"], use_stemmer=False)
    pool = [scorer._tokenizer.tokenize(text) for text in against]
    flags = []
    for text in instructions:
        tokens = scorer._tokenizer.tokenize(text)
        keep = not any(rouge_scorer._score_lcs(tokens, other).fmeasure > 0.7 for other in pool)
        if keep:
            pool.append(tokens)
        flags.append(keep)
    return flags


def loop_keep(instructions: list[str], against: list[str]) -> list[bool]:
    """What the generation loop does: check() with top-10 and mean, add what is kept."""
    index = RougeIndex(against)
    flags = []
    for text in instructions:
        keep = not index.check(text, k=10, with_mean=True).similar
        if keep:
            index.add(text)
        flags.append(keep)
    return flags


def timed(function, *args):
    wall, cpu = time.perf_counter(), time.process_time()
    result = function(*args)
    return result, time.perf_counter() - wall, time.process_time() - cpu


def compare(instructions: list[str], seeds: list[str]) -> None:
    print(f"== {len(instructions)} instructions after {len(seeds)} seed tasks, threshold 0.7")
    expected, ref_wall, ref_cpu = timed(reference_keep, instructions, seeds)
    print(f"{'rouge-score reference':34s} {ref_wall:8.2f} s wall {ref_cpu:8.2f} s CPU   kept {sum(expected)}")
    for name, function in [("RougeIndex.check (top-10 + mean)", loop_keep),
                           ("greedy_keep (dedup tool)", lambda texts, against: list(greedy_keep(texts, 0.7, against)))]:
        flags, wall, cpu = timed(function, instructions, seeds)
        verdict = "identical decisions" if flags == expected else "DECISIONS DIFFER"
        print(f"{name:34s} {wall:8.3f} s wall {cpu:8.3f} s CPU   "
              f"{ref_wall / wall:5.0f}x faster (wall), {ref_cpu / cpu:5.0f}x (CPU)   {verdict}")
        if flags != expected:
            sys.exit(1)


def dedup_large(records: list[dict], seeds_path: Path) -> None:
    print(f"== python -m self_instruct.dedup on {len(records)} records --against the seed tasks")
    with tempfile.TemporaryDirectory() as directory:
        source = Path(directory) / "large.json"
        source.write_text(json.dumps(records, ensure_ascii=False), encoding="utf-8")
        start = time.perf_counter()
        command = [sys.executable, "-c", CLI_WITH_PEAK, str(source), "--against", str(seeds_path)]
        result = subprocess.run(command, cwd=REPO, capture_output=True, text=True)
        wall = time.perf_counter() - start
    if result.returncode:
        sys.exit(result.stderr)
    *_, summary, peak_kib = result.stderr.splitlines()
    print(f"{summary}\nwall {wall:.2f} s (process start to exit), peak RSS {int(peak_kib) / 1024:.0f} MiB")


def loop_cost_at_scale(pool: list[str], queries: list[str]) -> None:
    index = RougeIndex(pool)
    fresh = [text for text in queries if not index.check(text, k=0, with_mean=False).similar][:200]
    print(f"== RougeIndex.check on a {len(index)}-text pool, {len(fresh)} candidates that are kept")
    for name, query in [("check(k=10, with_mean=True)", lambda text: index.check(text)),
                        ("check(k=10, with_mean=False)", lambda text: index.check(text, with_mean=False)),
                        ("similar_to (decision only)", index.similar_to)]:
        start = time.process_time()
        for text in fresh:
            query(text)
        print(f"{name:30s} {(time.process_time() - start) / len(fresh) * 1000:7.3f} ms CPU per candidate")


def scale(originals: list[str], seeds: list[str], sizes: list[int]) -> None:
    for size in sizes:
        texts = stream(originals, size, seed=2)
        flags, wall, cpu = timed(lambda: list(greedy_keep(texts, 0.7, seeds)))
        print(f"== greedy_keep on {size} instructions: kept {sum(flags)}, {cpu:.1f} s CPU, {wall:.1f} s wall")


def shards_simulation(originals: list[str], seeds: list[str], size: int, shards: int) -> None:
    texts = stream(originals, size, seed=2)
    expected, _, sequential_cpu = timed(lambda: list(greedy_keep(texts, 0.7, seeds)))
    print(f"== {shards} shards on {size} instructions (sequential greedy: {sequential_cpu:.1f} s CPU)")
    every = [*seeds, *texts]
    encoded = RougeIndex()._encode_ranked(every)
    first: dict[str, int] = {}
    ids = [i for i, code in enumerate(encoded) if not code or first.setdefault(code, i) == i or i < len(seeds)]
    print(f"distinct token sequences: {len(ids)} of {len(every)}")
    with tempfile.TemporaryDirectory() as directory:
        files, _, join_cpu = timed(write_shard_pairs, ids, encoded, 0.7, shards, directory)
        sizes = [len(np.load(file)) for file in files]
        disk = sum(file.stat().st_size for file in files)
        print(f"pairs per shard: min {min(sizes)}, max {max(sizes)}, total {sum(sizes)} "
              f"({sum(sizes) / len(ids):.1f} per text, {disk / 2**20:.1f} MiB on disk); "
              f"joins {join_cpu:.1f} s CPU in all, {join_cpu / shards:.1f} s per shard")
        pairs = np.concatenate([np.load(file) for file in files])
    print(f"distinct pairs {len(np.unique(pairs, axis=0))} (a pair found in several shards is written by each)")
    index = RougeIndex()
    copies = sum(len({key_shard(key, shards) for key in index._prefix(encoded[i])}) for i in ids) / len(ids)
    keep, _, pass_cpu = timed(greedy_pass, pairs, len(every), len(seeds))
    duplicate = set(range(len(every))) - set(ids)
    flags = [bool(keep[i]) and i not in duplicate for i in range(len(seeds), len(every))]
    verdict = "identical decisions" if flags == expected else "DECISIONS DIFFER"
    print(f"each text sent to {copies:.2f} shards on average; greedy pass over {len(pairs)} pairs "
          f"{pass_cpu:.2f} s CPU; kept {sum(flags)}: {verdict}")
    if flags != expected:
        sys.exit(1)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--records", type=int, default=5000, help="stream length for the comparison")
    parser.add_argument("--large", type=int, default=50000, help="records for the wall-time and memory run")
    parser.add_argument("--scale", default="", help="comma-separated stream lengths for greedy_keep alone")
    parser.add_argument("--shards", type=int, default=0, help="simulate the sharded plan with this many shards")
    parser.add_argument("--skip", default="", help="comma-separated parts to skip: compare,large,loop")
    args = parser.parse_args()
    if not ANCHORS.is_dir():
        sys.exit(f"skipped: {ANCHORS} is not present (it holds the Alpaca data this benchmark perturbs)")
    data = json.loads((ANCHORS / "alpaca_data_5000_sample.json").read_text(encoding="utf-8"))
    seeds_path = ANCHORS / "alpaca_seed_tasks.jsonl"
    seeds = [json.loads(line)["instruction"] for line in seeds_path.read_text(encoding="utf-8").splitlines()]
    originals = [record["instruction"] for record in data]
    skip = set(args.skip.split(","))
    if "compare" not in skip:
        compare(stream(originals, args.records, seed=1), seeds)
    if "large" not in skip:
        rng = random.Random(2)
        large = [dict(rng.choice(data), instruction=text) for text in stream(originals, args.large, seed=2)]
        dedup_large(large, seeds_path)
    if "loop" not in skip:
        # The loop's pool never holds near duplicates of what it is asked next: grow it from the
        # first 4,000 instructions, ask about the last 1,000.
        loop_cost_at_scale(stream(originals[:4000], args.large, seed=3), originals[4000:])
    if args.scale:
        scale(originals, seeds, [int(size) for size in args.scale.split(",")])
    if args.shards:
        shards_simulation(originals, seeds, args.large, args.shards)


if __name__ == "__main__":
    main()
