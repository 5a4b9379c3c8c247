"""Speed of the embedded teacher: our decode loop against raw llama-cpp-python, then the loop.

    python benchmarks/local_teacher.py [--model PATH.gguf] [--max_tokens 256] [--repeats 8]
                                       [--instructions 20] [--skip_loop]

1. Tokens per second of LocalTeacher.complete() and of llama_cpp.Llama.create_completion()
   on the same self-instruct prompts, in this process, with the same model file, threads,
   context, sampler settings and greedy decoding (continuation off, so both produce the same
   tokens: the texts are compared too). The two are timed alternately so that other load on
   the machine falls on both alike. Times include evaluating the prompt.
2. When self_instruct.generate is importable, the whole loop with LocalTeacher.default_options:
   kept instructions per minute and the acceptance rate kept / parsed / requested, where
   requested is the tasks the prompts asked for (requests x (num_tasks - examples shown)).

Prints figures only; nothing here asserts a speed.
"""
from __future__ import annotations

import argparse
import asyncio
import random
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from self_instruct.core.prompts import encode_prompt, load_list_template, stop_sequences  # noqa: E402
from self_instruct.core.seeds import load_seed_tasks, seed_examples  # noqa: E402
from self_instruct.teachers.local import LocalTeacher, import_llama_cpp  # noqa: E402
from self_instruct.types import Decoding  # noqa: E402

NUM_TASKS = 20


def sample_prompts(count: int, seed: int = 0) -> list[str]:
    """Self-instruct prompts as the loop renders them, from the bundled seeds."""
    rng = random.Random(seed)
    seeds = load_seed_tasks()
    template = load_list_template(LocalTeacher.default_template)
    return [encode_prompt(seed_examples(rng.sample(seeds, 3), rng), template, NUM_TASKS) for _ in range(count)]


def time_ours(teacher: LocalTeacher, prompt: str, decoding: Decoding) -> tuple[float, int, str]:
    started = time.perf_counter()
    [completion] = teacher.complete_sync([prompt], decoding)
    return time.perf_counter() - started, completion.completion_tokens, completion.text


def time_raw(llm, prompt: str, decoding: Decoding, teacher: LocalTeacher) -> tuple[float, int, str]:
    started = time.perf_counter()
    reply = llm.create_completion(
        prompt, max_tokens=decoding.max_tokens, temperature=decoding.temperature, top_p=decoding.top_p,
        top_k=teacher.top_k, min_p=teacher.min_p, repeat_penalty=teacher.repeat_penalty,
        stop=list(decoding.stop), seed=decoding.seed,
    )
    return time.perf_counter() - started, reply["usage"]["completion_tokens"], reply["choices"][0]["text"]


def compare_speed(model: str | None, max_tokens: int, repeats: int) -> None:
    llama_cpp = import_llama_cpp()
    started = time.perf_counter()
    ours = LocalTeacher(model, continuation=None)
    load_s = time.perf_counter() - started
    raw = llama_cpp.Llama(
        model_path=str(ours.model_path), n_ctx=ours.n_ctx, n_threads=ours.n_threads,
        n_threads_batch=ours.n_threads, verbose=False,
    )
    print(f"model {ours.model_path.name}: n_ctx {ours.n_ctx}, {ours.n_threads} threads, loaded in {load_s:.2f}s")
    decoding = Decoding(max_tokens=max_tokens, temperature=0.0, stop=stop_sequences(NUM_TASKS), seed=0)
    totals = {"ours": [0.0, 0], "raw": [0.0, 0]}
    ratios, same = [], 0
    prompts = sample_prompts(repeats)
    time_ours(ours, prompts[0], decoding), time_raw(raw, prompts[0], decoding, ours)  # warm-up
    for i, prompt in enumerate(prompts):
        # Alternate which goes first, so a burst of load elsewhere does not always hit one side.
        if i % 2:
            b, a = time_raw(raw, prompt, decoding, ours), time_ours(ours, prompt, decoding)
        else:
            a, b = time_ours(ours, prompt, decoding), time_raw(raw, prompt, decoding, ours)
        for name, (seconds, tokens, _) in (("ours", a), ("raw", b)):
            totals[name][0] += seconds
            totals[name][1] += tokens
        same += a[2] == b[2]
        ratios.append((a[1] / a[0]) / (b[1] / b[0]))
        print(f"  ours {a[1] / a[0]:6.1f} tok/s ({a[1]} tokens)   raw {b[1] / b[0]:6.1f} tok/s ({b[1]} tokens)")
    rate = {name: tokens / seconds for name, (seconds, tokens) in totals.items()}
    print(f"tokens/s: ours {rate['ours']:.1f}, raw llama-cpp-python {rate['raw']:.1f}, "
          f"ratio {rate['ours'] / rate['raw']:.2f} (median of pairs {statistics.median(ratios):.2f}); "
          f"identical text in {same}/{len(prompts)} prompts")
    asyncio.run(ours.aclose())
    raw.close()


def loop_throughput(model: str | None, instructions: int) -> None:
    try:
        from self_instruct.generate import generate
    except ImportError:
        print("self_instruct.generate is not importable: loop throughput skipped")
        return
    teacher = LocalTeacher(model)
    options = dict(LocalTeacher.default_options)
    with tempfile.TemporaryDirectory() as out:
        started = time.perf_counter()
        result = generate(out, teacher=teacher, num_instructions_to_generate=instructions, quiet=True, **options)
        minutes = (time.perf_counter() - started) / 60
    stats = result.stats
    requested = stats.requests * (options["num_tasks"] - 3)
    print(f"loop with {options}: {result.kept} kept in {minutes * 60:.0f}s = {result.kept / minutes:.1f} kept/minute; "
          f"kept/parsed/requested {result.kept}/{stats.parsed}/{requested} over {stats.requests} requests "
          f"({stats.completion_tokens} tokens); rejects {dict(stats.rejects)}")
    asyncio.run(teacher.aclose())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", default=None, help="a GGUF file (default: the bundled SmolLM2-135M)")
    parser.add_argument("--max_tokens", type=int, default=256)
    parser.add_argument("--repeats", type=int, default=8)
    parser.add_argument("--instructions", type=int, default=20)
    parser.add_argument("--skip_loop", action="store_true")
    args = parser.parse_args()
    compare_speed(args.model, args.max_tokens, args.repeats)
    if not args.skip_loop:
        loop_throughput(args.model, args.instructions)


if __name__ == "__main__":
    main()
