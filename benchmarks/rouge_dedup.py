"""Greedy ROUGE-L dedup: rouge-score 0.1.2 (Alpaca's way) against self_instruct's RougeIndex.

    python benchmarks/rouge_dedup.py [--records 5000] [--large 50000]

1. One process runs both on the same stream of --records instructions (Alpaca's 175 seed tasks
   count as kept): the reference scores pairs with ``rouge_scorer._score_lcs`` on cached tokens,
   stopping at the first score above 0.7 (kinder than Alpaca, which scores the whole pool); ours
   runs the generation loop's query (``RougeIndex.check``: exact top-10 and mean) and the dedup
   tool's (``greedy_keep``). Decisions must be identical; wall and CPU ratios are printed
   (CPU is the steadier one on a shared machine).
2. ``python -m self_instruct.dedup`` on --large records in a child process: wall time and peak RSS.
3. The loop's cost per kept candidate once the pool holds --large instructions.

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

from rouge_score import rouge_scorer

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from self_instruct.dedup import greedy_keep  # noqa: E402
from self_instruct.similarity import RougeIndex  # noqa: E402

ANCHORS = REPO.parent / "shared" / "anchors"
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


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--records", type=int, default=5000, help="stream length for the comparison")
    parser.add_argument("--large", type=int, default=50000, help="records for the wall-time and memory run")
    args = parser.parse_args()
    if not ANCHORS.is_dir():
        sys.exit(f"skipped: {ANCHORS} is not present (it holds the Alpaca data this benchmark perturbs)")
    data = json.loads((ANCHORS / "alpaca_data_5000_sample.json").read_text(encoding="utf-8"))
    seeds_path = ANCHORS / "alpaca_seed_tasks.jsonl"
    seeds = [json.loads(line)["instruction"] for line in seeds_path.read_text(encoding="utf-8").splitlines()]
    originals = [record["instruction"] for record in data]
    compare(stream(originals, args.records, seed=1), seeds)
    rng = random.Random(2)
    large = [dict(rng.choice(data), instruction=text) for text in stream(originals, args.large, seed=2)]
    dedup_large(large, seeds_path)
    # The loop's pool never holds near duplicates of what it is asked next: grow it from the first
    # 4,000 instructions, ask about the last 1,000.
    loop_cost_at_scale(stream(originals[:4000], args.large, seed=3), originals[4000:])


if __name__ == "__main__":
    main()
