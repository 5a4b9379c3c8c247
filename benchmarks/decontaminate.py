"""13-gram decontamination: self_instruct's Decontaminator against a plain Python set of word tuples.

    python benchmarks/decontaminate.py [--lines 1000000] [--records 100000] [--reference-lines 200000]

A benchmark file of --lines JSONL lines (16 to 40 words each from a 20,000-word vocabulary,
seeded) is written to a temporary folder; --records generated records (instruction, input,
output) are checked against it, one in ten with a benchmark 13-gram planted. Printed: lines/s to
build the n-gram set (reading the file included), records/s to check, and the same two rates for
the obvious way (a set of 13-word tuples over the same normalised words) on the first
--reference-lines lines, in this process. Both must find the same records. Rates are per CPU
second (steadier than wall time on a shared machine); wall seconds are printed beside them.
"""
from __future__ import annotations

import argparse
import json
import random
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from self_instruct.core.decontaminate import Decontaminator, ngram_words, read_benchmark, texts_of  # noqa: E402

N = 13


def benchmark_lines(count: int, rng: random.Random) -> list[str]:
    words = [f"word{i}" for i in range(20_000)]
    return [" ".join(rng.choices(words, k=rng.randint(16, 40))) for _ in range(count)]


def records(count: int, lines: list[str], rng: random.Random) -> list[dict]:
    words = [f"term{i}" for i in range(5_000)]
    found = []
    for i in range(count):
        text = " ".join(rng.choices(words, k=30))
        if i % 10 == 0:
            source = rng.choice(lines).split()
            start = rng.randrange(len(source) - N + 1)
            text += " " + " ".join(source[start:start + N])
        found.append({"instruction": " ".join(rng.choices(words, k=12)), "input": "", "output": text})
    return found


class TupleSet:
    """The obvious way: every n-gram of the benchmark as a tuple of words in one Python set."""

    def __init__(self, path: Path, limit: int):
        self.grams = set()
        for number, record in enumerate(read_benchmark(path)):
            if number == limit:
                break
            for text in texts_of(record):
                words = ngram_words(text)
                self.grams.update(tuple(words[i:i + N]) for i in range(len(words) - N + 1))

    def hit(self, text: str) -> bool:
        words = ngram_words(text)
        return any(tuple(words[i:i + N]) in self.grams for i in range(len(words) - N + 1))


def timed(function, *args):
    start = time.perf_counter(), time.process_time()
    result = function(*args)
    return result, time.perf_counter() - start[0], time.process_time() - start[1]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--lines", type=int, default=1_000_000)
    parser.add_argument("--records", type=int, default=100_000)
    parser.add_argument("--reference-lines", type=int, default=200_000)
    args = parser.parse_args()
    rng = random.Random(13)
    lines = benchmark_lines(args.lines, rng)
    checked = records(args.records, lines[:args.reference_lines], rng)
    texts = [record["output"] for record in checked]
    with tempfile.TemporaryDirectory() as directory:
        path = Path(directory) / "bench.jsonl"
        path.write_text("".join(json.dumps({"question": line, "id": i}) + "\n" for i, line in enumerate(lines)))
        print(f"== {args.lines} benchmark lines, {args.records} records, {N}-grams")
        index, wall, cpu = timed(Decontaminator, [path])
        build_rate = args.lines / cpu
        print(f"Decontaminator build   {build_rate:10.0f} lines/s  ({wall:.1f} s wall, {cpu:.1f} s CPU, "
              f"{len(index)} distinct n-grams, {index._hashes.nbytes / 2**20:.0f} MiB)")
        hits, check_wall, check_cpu = timed(index.hits, texts)
        print(f"Decontaminator check   {len(texts) / check_cpu:10.0f} records/s ({check_wall:.2f} s wall, {check_cpu:.2f} s CPU), "
              f"{sum(hit is not None for hit in hits)} contaminated")
        reference, ref_wall, ref_cpu = timed(TupleSet, path, args.reference_lines)
        ref_build = args.reference_lines / ref_cpu
        print(f"tuple set build        {ref_build:10.0f} lines/s  ({ref_wall:.1f} s wall on {args.reference_lines} lines; "
              f"ours {build_rate / ref_build:.1f}x)")
        expected, ref_check_wall, ref_check_cpu = timed(lambda: [reference.hit(text) for text in texts])
        print(f"tuple set check        {len(texts) / ref_check_cpu:10.0f} records/s ({ref_check_wall:.2f} s wall)")
    small = Decontaminator.from_texts({"b": lines[:args.reference_lines]}).hits(texts)
    same = [hit is not None for hit in small] == expected
    print(f"check speed ratio {ref_check_cpu / check_cpu:.1f}x; "
          f"same records found as the tuple set: {same}")
    if not same:
        sys.exit(1)


if __name__ == "__main__":
    main()
