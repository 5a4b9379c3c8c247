"""The client's own ceiling: `generate` against a bare HTTP client, same server, same run.

A fake OpenAI server runs in its own process (asyncio, pre-encoded event templates, so it costs
little CPU a request; its CPU is read from /proc and printed, with the one-core ceiling it
implies, and how busy it was) and answers every completion after a fixed delay with an event
stream of one word a chunk, as vLLM streams one token a chunk, and a usage chunk at the end (the
events are written together when the delay ends, not paced). Each reply continues the prompt's
list with `--tasks` new tasks made of made-up words, so none is lost to similarity. No client
can get more than  concurrency / delay  replies a second out of it.

For each concurrency, in one run:
- the bare client: the HTTP library the teacher uses (the one under the `openai` SDK), one
  client per CONNECTIONS_PER_CLIENT connections as the teacher has, the same request body, every event's JSON
  decoded and the text joined, `concurrency` requests always in flight, nothing else;
- `generate` through the library API with its defaults (streamed, quiet), to as many kept
  instructions as the bare client's requests can bring;
- the bare client again, so that a change in the machine's load during the run shows.
Rates are replies a second, over the whole run and in the steady state (the 10th to the 90th
percentile of reply times: no first wave, no last stragglers), and the ratio generate/bare on
each (against the mean of the two bare runs). Client CPU a request is the process's, threads
included, over the whole call (generate's start and end too); the part its commit thread spent
judging and writing units is shown apart.

    python benchmarks/throughput.py [--runs 8,32,128,128@2] [--delay 0.5] [--tasks 8] [--rounds 12]
    python benchmarks/throughput.py --runs 128 --profile generate.prof   # cProfile of generate's loop
"""
from __future__ import annotations

import argparse
import asyncio
import cProfile
import json
import os
import pstats
import random
import re
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "tests"))

from fake_openai import make_task  # noqa: E402

import openai  # noqa: E402  (imported before any clock starts)
from self_instruct.generate import GenerateConfig, generate  # noqa: E402
from self_instruct.engine.scheduler import Engine  # noqa: E402
from self_instruct.teachers.fleet import CONNECTIONS_PER_CLIENT  # noqa: E402

THREAD_CPU = [0.0]  # CPU spent judging and writing units in the commit thread, off the event loop
_judge_and_write = Engine._judge_and_write


def _timed_judge_and_write(self, *args):
    started = time.thread_time()
    try:
        return _judge_and_write(self, *args)
    finally:
        THREAD_CPU[0] += time.thread_time() - started


Engine._judge_and_write = _timed_judge_and_write

COMMITS: dict[str, list[float]] = {"commit": [], "judge and write": [], "pool write": [], "state.json": []}


def _clocked(owner, name: str, key: str) -> None:
    """Keep the wall time of each call of owner.name under COMMITS[key] (a coroutine's too)."""
    real = getattr(owner, name)
    if asyncio.iscoroutinefunction(real):
        async def clocked(*args, **kwargs):
            started = time.perf_counter()
            try:
                return await real(*args, **kwargs)
            finally:
                COMMITS[key].append(time.perf_counter() - started)
    else:
        def clocked(*args, **kwargs):
            started = time.perf_counter()
            try:
                return real(*args, **kwargs)
            finally:
                COMMITS[key].append(time.perf_counter() - started)
    setattr(owner, name, clocked)


from self_instruct.engine.pool import InstructionPool  # noqa: E402

_clocked(Engine, "_commit_ready", "commit")
_clocked(Engine, "_judge_and_write", "judge and write")
_clocked(InstructionPool, "write_units", "pool write")
_clocked(InstructionPool, "save_state", "state.json")

TICKS = os.sysconf("SC_CLK_TCK")


# -- the server (its own process) -----------------------------------------------------------

def _task_block(i: int, first: bool, rng: random.Random) -> str:
    instruction, inp, out = make_task(rng, synthetic=True)
    head = f" {instruction}" if first else f"{i}. Instruction: {instruction}"
    return f"{head}\n{i}. Input:\n{inp or '<noinput>'}\n{i}. Output:\n{out}\n"


async def serve(delay: float, tasks: int) -> None:
    rng = random.Random(0)
    created = int(time.time())

    def events(body: dict) -> tuple[bytes, str]:
        prompt = body.get("prompt") or ""
        m = re.search(r"(\d+)\. Instruction:\s*$", prompt)
        k = int(m.group(1)) if m else 4
        text = "###\n".join(_task_block(i, i == k, rng) for i in range(k, k + tasks))
        usage = {"prompt_tokens": len(prompt) // 4, "completion_tokens": len(text.split()),
                 "total_tokens": len(prompt) // 4 + len(text.split())}
        if not body.get("stream"):
            reply = {"id": "cmpl", "object": "text_completion", "created": created, "model": body.get("model"),
                     "choices": [{"index": 0, "text": text, "finish_reason": "stop", "logprobs": None}], "usage": usage}
            return json.dumps(reply).encode(), "application/json"
        head = ('data: {"id":"cmpl","object":"text_completion","created":%d,"model":%s,"choices":[{"index":0,"text":'
                % (created, json.dumps(body.get("model"))))
        pieces = re.findall(r"\S+\s*|\s+", text)
        parts = [f'{head}{json.dumps(p)},"finish_reason":null,"logprobs":null}}]}}\n\n' for p in pieces[:-1]]
        parts.append(f'{head}{json.dumps(pieces[-1])},"finish_reason":"stop","logprobs":null}}]}}\n\n')
        if (body.get("stream_options") or {}).get("include_usage"):
            parts.append(head.partition(',"choices"')[0] + ',"choices":[],"usage":' + json.dumps(usage) + "}\n\n")
        parts.append("data: [DONE]\n\n")
        return "".join(parts).encode(), "text/event-stream"

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            while True:
                head = await reader.readuntil(b"\r\n\r\n")
                line, *headers = head.decode("latin-1").split("\r\n")
                length = next((int(h.split(":", 1)[1]) for h in headers if h.lower().startswith("content-length:")), 0)
                body = json.loads(await reader.readexactly(length)) if length else {}
                if line.startswith("GET"):
                    payload, kind = json.dumps({"object": "list", "data": [{"id": "fake", "object": "model"}]}).encode(), "application/json"
                else:
                    await asyncio.sleep(delay)
                    payload, kind = events(body)
                writer.write(b"HTTP/1.1 200 OK\r\nContent-Type: %s\r\nContent-Length: %d\r\n\r\n%s"
                             % (kind.encode(), len(payload), payload))
        except (asyncio.IncompleteReadError, ConnectionError):
            pass
        finally:
            writer.close()

    server = await asyncio.start_server(handle, "127.0.0.1", 0, backlog=1024)
    print(f"http://127.0.0.1:{server.sockets[0].getsockname()[1]}/v1", flush=True)
    async with server:
        await server.serve_forever()


def cpu_seconds(pid: int) -> float:
    """User and system CPU of a process so far, from /proc."""
    fields = Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()
    return (int(fields[11]) + int(fields[12])) / TICKS


# -- the two clients --------------------------------------------------------------------------

def request_body(prompt: str) -> dict:
    decoding = GenerateConfig().decoding()
    return {"model": "fake", "prompt": prompt, "max_tokens": decoding.max_tokens, "temperature": decoding.temperature,
            "top_p": decoding.top_p, "presence_penalty": decoding.presence_penalty,
            "frequency_penalty": decoding.frequency_penalty, "stop": list(decoding.stop), "stream": True,
            "stream_options": {"include_usage": True}}


async def bare(base_url: str, concurrency: int, requests: int) -> tuple[float, list[float]]:
    """`requests` requests, `concurrency` always in flight, read as the minimum any client must:
    every event's JSON decoded, the text joined. Returns the wall time and each reply's time."""
    http = sys.modules[openai.DefaultAsyncHttpxClient.__mro__[1].__module__.partition(".")[0]]
    clients = [http.AsyncClient(base_url=base_url, timeout=60,
                                limits=http.Limits(max_connections=CONNECTIONS_PER_CLIENT))
               for _ in range(-(-concurrency // CONNECTIONS_PER_CLIENT))]
    body = request_body("###\n4. Instruction:")
    done: list[float] = []
    left = iter(range(requests))

    async def slot(client) -> None:
        for _ in left:
            parts = []
            async with client.stream("POST", "/completions", json=body) as response:
                async for line in response.aiter_lines():
                    if line.startswith("data: ") and line != "data: [DONE]":
                        choices = json.loads(line[6:])["choices"]
                        if choices:
                            parts.append(choices[0]["text"])
            assert "".join(parts)
            done.append(time.time())

    started = time.perf_counter()
    await asyncio.gather(*(slot(clients[i % len(clients)]) for i in range(concurrency)))
    wall = time.perf_counter() - started
    for client in clients:
        await client.aclose()
    return wall, done


def run_generate(base_url: str, concurrency: int, target: int, profile: str | None) -> tuple[float, list[float], int, float, float, int]:
    """generate to `target` kept instructions; wall time, reply times, requests, client CPU, the
    part of it spent judging and writing in the commit thread, and the units committed."""
    with tempfile.TemporaryDirectory() as out:
        profiler = cProfile.Profile() if profile else None
        THREAD_CPU[0] = 0.0
        for times in COMMITS.values():
            times.clear()
        started, cpu = time.perf_counter(), time.process_time()
        if profiler:
            profiler.enable()
        result = generate(out, base_url=base_url, model_name="fake", num_instructions_to_generate=target,
                          max_concurrency=concurrency, quiet=True)
        if profiler:
            profiler.disable()
            profiler.dump_stats(profile)
        wall, cpu = time.perf_counter() - started, time.process_time() - cpu
        done = [json.loads(line)["t"] for line in (Path(out) / "ledger.jsonl").read_text().splitlines()
                if '"event": "done"' in line]
        units = len((Path(out) / "commits.jsonl").read_text().splitlines())
    return wall, done, result.stats.requests, cpu, THREAD_CPU[0], units


def steady(times: list[float]) -> float:
    """Replies a second between the 10th and the 90th percentile of their times."""
    times = sorted(times)
    first, last = len(times) // 10, len(times) * 9 // 10
    return (last - first) / (times[last] - times[first])


def measure(server_pid: int, base_url: str, concurrency: int, delay: float, tasks: int, rounds: int,
            profile: str | None) -> dict:
    requests = concurrency * rounds
    bound = concurrency / delay
    row = {"c": concurrency, "bound": bound}
    server_cpu, server_wall = 0.0, 0.0
    for name in ("bare", "generate", "bare again"):
        before, t0, cpu0 = cpu_seconds(server_pid), time.perf_counter(), time.process_time()
        if name == "generate":
            # 90% of what the replies hold: the loop's filters drop a few made-up tasks
            wall, done, sent, cpu, judging, units = run_generate(base_url, concurrency, int(requests * tasks * 0.9), profile)
        else:
            wall, done = asyncio.run(bare(base_url, concurrency, requests))
            sent, cpu, judging = requests, time.process_time() - cpu0, 0.0
        server_cpu += cpu_seconds(server_pid) - before
        server_wall += time.perf_counter() - t0
        row[name] = {"whole": len(done) / wall, "steady": steady(done), "requests": sent, "cpu_ms": cpu / sent * 1000,
                     "thread_ms": judging / sent * 1000}
        if name == "generate":
            row["commit_ms"] = {key: sum(times) / max(1, units) * 1000 for key, times in COMMITS.items()}
            row["units"], row["groups"] = units, len(COMMITS["commit"])
    row["server_cpu_ms"] = server_cpu / (row["bare"]["requests"] * 2 + row["generate"]["requests"]) * 1000
    row["server_busy"] = server_cpu / server_wall
    return row


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--runs", default="8,32,128", help="CONCURRENCY[@DELAY],... (DELAY: --delay's, by default)")
    parser.add_argument("--delay", type=float, default=0.5, help="seconds the server takes to answer")
    parser.add_argument("--tasks", type=int, default=8, help="new tasks a reply")
    parser.add_argument("--rounds", type=int, default=12, help="requests a slot")
    parser.add_argument("--profile", help="write a cProfile of the generate runs to this file")
    parser.add_argument("--serve", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.serve:
        asyncio.run(serve(args.delay, args.tasks))
        return
    rows = []
    for run in args.runs.split(","):
        concurrency, _, delay = run.partition("@")
        delay = float(delay or args.delay)
        server = subprocess.Popen([sys.executable, __file__, "--serve", "--delay", str(delay), "--tasks", str(args.tasks)],
                                  stdout=subprocess.PIPE, text=True)
        try:
            base_url = server.stdout.readline().strip()
            rows.append(row := measure(server.pid, base_url, int(concurrency), delay, args.tasks, args.rounds, args.profile))
            row["delay"] = delay
            print(json.dumps(row), file=sys.stderr, flush=True)
        finally:
            server.terminate()
            server.wait()
    print(f"{args.tasks} tasks a reply streamed one word a chunk, {args.rounds} requests a slot; "
          f"replies/s (steady state / whole run)")
    print("| concurrency @ delay | bound | bare | generate | bare again | generate / bare | client CPU a request: bare, generate (of which judging and writing in a thread) | server CPU a request, busy |")
    print("|---|---|---|---|---|---|---|---|")
    for r in rows:
        b1, g, b2 = r["bare"], r["generate"], r["bare again"]
        ratio_steady = g["steady"] / ((b1["steady"] + b2["steady"]) / 2)
        ratio_whole = g["whole"] / ((b1["whole"] + b2["whole"]) / 2)
        print(f"| {r['c']} @ {r['delay']:g} s | {r['bound']:.0f} | {b1['steady']:.0f} / {b1['whole']:.0f} | {g['steady']:.0f} / {g['whole']:.0f} "
              f"| {b2['steady']:.0f} / {b2['whole']:.0f} | **{ratio_steady:.0%}** / {ratio_whole:.0%} "
              f"| {b1['cpu_ms']:.1f} ms, {g['cpu_ms']:.1f} ms ({g['thread_ms']:.1f} ms) | {r['server_cpu_ms']:.2f} ms "
              f"(ceiling {1000 / r['server_cpu_ms']:.0f}/s), {r['server_busy']:.0%} |")
    print()
    print("generate's commits (the units back in order, written together, in its commit thread): wall time a unit")
    print("| concurrency @ delay | units | commits (units together) | a unit's commit | judging and writing | of it, the pool's write | state.json |")
    print("|---|---|---|---|---|---|---|")
    for r in rows:
        t = r["commit_ms"]
        print(f"| {r['c']} @ {r['delay']:g} s | {r['units']} | {r['groups']} | {t['commit']:.1f} ms | {t['judge and write']:.1f} ms "
              f"| {t['pool write']:.1f} ms | {t['state.json']:.1f} ms |")
    print()
    parse_cost(args.tasks)
    kernel_cost()
    judge_cost(args.tasks)
    if args.profile:
        pstats.Stats(args.profile).sort_stats("tottime").print_stats(25)


def parse_cost(tasks: int, replies: int = 300) -> None:
    """CPU to read one streamed reply that came in one read: the teacher's reader against the
    SDK's event decoder (what its stream iterator is built on) with the same JSON decoding."""
    from openai._streaming import SSEDecoder
    from self_instruct.teachers.openai_compat import _Reply

    body = events_of(tasks)
    count = body.count(b"\n\n") - 1

    class Response:
        request = None

        async def aiter_bytes(self):
            yield body

    class Endpoint:
        streaming, first_token = 0, None

    async def teacher() -> None:
        for _ in range(replies):
            await _Reply(0.0).take_stream(Response(), Endpoint(), chat=False)

    async def sdk_decoder() -> None:
        for _ in range(replies):
            reply = _Reply(0.0)
            async for event in SSEDecoder().aiter_bytes(Response().aiter_bytes()):
                if event.data.startswith("[DONE]"):
                    break
                reply.add(json.loads(event.data), chat=False)

    for name, read in (("the SDK's event decoder", sdk_decoder), ("the teacher's reader", teacher)):
        started = time.process_time()
        asyncio.run(read())
        cpu = time.process_time() - started
        print(f"reading a streamed reply of {count} events in one read, {name}: "
              f"{cpu / replies * 1000:.2f} ms, {cpu / replies / count * 1e6:.1f} us an event")


def events_of(tasks: int) -> bytes:
    """The event stream the server sends for one reply (its events, without the delay)."""
    rng = random.Random(1)
    text = "###\n".join(_task_block(i, i == 4, rng) for i in range(4, 4 + tasks))
    pieces = re.findall(r"\S+\s*|\s+", text)
    chunk = {"id": "cmpl", "object": "text_completion", "created": 0, "model": "fake",
             "choices": [{"index": 0, "text": "", "finish_reason": None, "logprobs": None}]}
    events = []
    for piece in pieces:
        chunk["choices"][0]["text"] = piece
        events.append(f"data: {json.dumps(chunk)}\n\n")
    return ("".join(events) + "data: [DONE]\n\n").encode()


def kernel_cost(rows: int = 8, pool: int = 11_000, repeat: int = 200) -> None:
    """ROUGE-L F of `rows` kept candidates against a pool (the commit thread's largest cost):
    the kernel as it is, and the version it replaced, which gathered the cells with a common
    token first (kept here as the reference; both give the same bits)."""
    import numpy as np
    from self_instruct.core.similarity import _fmeasures

    def gathered(lcs, m, lengths):
        lcs, m, lengths = np.broadcast_arrays(lcs, m, lengths)
        scores = np.zeros(lcs.shape)
        hits = lcs > 0
        precision = lcs[hits] / lengths[hits]
        recall = lcs[hits] / m[hits]
        scores[hits] = 2 * precision * recall / (precision + recall)
        return scores

    rng = np.random.default_rng(0)
    lengths, m = rng.integers(1, 40, pool), rng.integers(1, 40, rows)
    lcs = np.minimum(rng.integers(0, 6, (rows, pool)), np.minimum(lengths[None, :], m[:, None]))
    assert np.array_equal(_fmeasures(lcs, m[:, None], lengths[None, :]).view(np.int64),
                          gathered(lcs, m[:, None], lengths[None, :]).view(np.int64))
    for name, kernel in (("gathering first (before)", gathered), ("as it is", _fmeasures)):
        started = time.process_time()
        for _ in range(repeat):
            kernel(lcs, m[:, None], lengths[None, :])
        print(f"ROUGE-L F of {rows} candidates against {pool:,} texts, {name}: "
              f"{(time.process_time() - started) / repeat * 1000:.2f} ms")


def judge_cost(tasks: int, requests_a_unit: int = 5, pool: int = 11_000, units: int = 40) -> None:
    """The judge alone, in this thread, on units as generate's are (5 replies of `tasks` made-up
    tasks) once the pool holds `pool` instructions: CPU a unit, and where it goes (cProfile)."""
    from self_instruct.engine.judge import Judge
    from self_instruct.types import Example

    rng = random.Random(0)
    judge = Judge()
    size = requests_a_unit * tasks
    while judge.index is not None and len(judge.index) < pool:
        judge.judge_many([Example(*make_task(rng, synthetic=True)) for _ in range(size)])
    batches = [[Example(*make_task(rng, synthetic=True)) for _ in range(size)] for _ in range(units)]
    profiler = cProfile.Profile()
    started = time.process_time()
    profiler.enable()
    for batch in batches:
        judge.judge_many(batch)
    profiler.disable()
    spent = time.process_time() - started
    print(f"judging a unit of {size} candidates at a pool of {pool:,} and more, alone in one thread: "
          f"{spent / units * 1000:.1f} ms of CPU; the largest parts a unit:")
    stats = pstats.Stats(profiler).stats
    for (_, _, name), (_, _, own, _, _) in sorted(stats.items(), key=lambda item: -item[1][2])[:4]:
        print(f"  {name}: {own / units * 1000:.1f} ms")


if __name__ == "__main__":
    main()
