"""Time of `select --by ifd` with the embedded model: seconds per 1,000 records, cold and cached.

    python benchmarks/ifd.py [--records 1000] [--threads 1] [--model PATH] [--batch_size 8]

The records are the first N of the shared Alpaca sample (../shared/anchors), or of any JSON list
given with --data. Each record costs two passes of the model over its answer (after the prompt,
and alone), with the logits of every position; the time covers loading the model, scoring and
writing the outputs, measured in this process through the library entry point. The second run
reads every score from the cache. Prints figures only; nothing here asserts a speed.
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from self_instruct.select import select_file  # noqa: E402

SAMPLE = Path(__file__).resolve().parents[2] / "shared" / "anchors" / "alpaca_data_5000_sample.json"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--records", type=int, default=1000)
    parser.add_argument("--threads", type=int, default=None)
    parser.add_argument("--model", default=None, help="a .gguf file or transformers directory (default the embedded one)")
    parser.add_argument("--batch_size", type=int, default=8)
    parser.add_argument("--data", default=str(SAMPLE))
    args = parser.parse_args()
    records = json.loads(Path(args.data).read_text(encoding="utf-8"))[:args.records]
    with tempfile.TemporaryDirectory() as tmp:
        data = Path(tmp) / "pool.json"
        data.write_text(json.dumps(records), encoding="utf-8")
        times = []
        for run in ("cold", "cached"):
            started = time.perf_counter()
            result = select_file(data, Path(tmp) / "best.jsonl", by="ifd", keep_fraction=0.1, model=args.model,
                                 threads=args.threads, batch_size=args.batch_size, quiet=True)
            times.append(time.perf_counter() - started)
            print(f"{run}: {len(records)} records in {times[-1]:.1f} s = {1000 * times[-1] / len(records):.1f} s "
                  f"per 1,000 records", flush=True)
        rows = [r["selection"] for r in result.kept] + [r["selection"] for r in result.dropped]
        tokens = [r["answer_tokens"] for r in rows if "answer_tokens" in r]
        scores = [r["score"] for r in rows if r["score"] is not None]
        below = sum(s < 1 for s in scores)
        print(f"answer tokens: mean {statistics.mean(tokens):.0f}, {sum(tokens) * 2 / times[0]:.0f} answer tokens "
              f"scored per second (two passes each)")
        print(f"IFD: median {statistics.median(scores):.3f}; {below} of {len(scores)} under 1; kept {len(result.kept)}")
        print(f"model {rows[0]['model']}, threads {args.threads or len(os.sched_getaffinity(0))}, "
              f"cores {os.cpu_count()}, load average {os.getloadavg()[0]:.1f}")


if __name__ == "__main__":
    main()
