"""How fast documents become data.

1. windows over a 300-page book (made here: synthetic prose, about 105,000 words), as
   Markdown and as a PDF: load, split into sections and sentences, make every window and
   heading pair; then the whole command on the Markdown (judge, dedup, output files). The reference is pysbd's own `Segmenter.segment` over the same sections,
   the sentence splitting alone; the ratio says what loading, chunking and windows add to it
   (below 1: we split faster than pysbd's own entry point, whose mapping of sentences back to
   the text is quadratic).
2. qa against the fake OpenAI server (in its own process, a fixed latency per request),
   streamed and with --no_stream: how many requests are in flight at the server, against
   --max_concurrency (over the whole run, and while chunks were left to start, before the
   final drain), and requests a second against the bound  concurrency / latency.

    python benchmarks/documents.py [--pages 300] [--latency 0.25] [--concurrency 16] [--chunks 96]
"""
from __future__ import annotations

import argparse
import json
import random
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "tests"))

from self_instruct.pipelines.documents import window_examples  # noqa: E402
from self_instruct.sources.chunking import _segmenter, chunk_documents, word_counts  # noqa: E402
from self_instruct.sources.loaders import load_document  # noqa: E402

WORDS_PER_PAGE = 350
ABBREVIATED = ("Dr. Hale", "Mr. Ortiz", "e.g. compost", "about 3.5 kg", "St. Louis", "the U.S. market", "at 6 p.m. daily")


def book_text(pages: int, rng: random.Random) -> str:
    """Markdown prose: chapters of sections of paragraphs, sentences of 6 to 28 words with the
    abbreviations and numbers that make sentence splitting hard."""
    # the bundled seed tasks' words: a vocabulary that does not change when the docs do
    vocabulary = [w.strip(".,()`*#|:;'\"") for w in (REPO / "seed_tasks" / "seed_tasks.jsonl").read_text(encoding="utf-8").split()]
    vocabulary = [w for w in vocabulary if w.isalpha()]
    parts, words, chapter = [], 0, 0
    while words < pages * WORDS_PER_PAGE:
        chapter += 1
        parts.append(f"# Chapter {chapter}\n")
        for section in range(1, 6):
            parts.append(f"## Part {chapter}.{section}\n")
            for _ in range(rng.randint(4, 9)):
                sentences = []
                for _ in range(rng.randint(2, 6)):
                    body = [rng.choice(vocabulary) for _ in range(rng.randint(6, 28))]
                    if rng.random() < 0.2:
                        body.insert(rng.randint(1, len(body)), rng.choice(ABBREVIATED))
                    sentences.append(" ".join(body).capitalize() + rng.choice(".....?!"))
                    words += len(body)
                parts.append(" ".join(sentences) + "\n")
    return "\n".join(parts)


def write_pdf(text: str, path: Path) -> int:
    """The same prose as a PDF of wrapped lines, 32 lines a page (about 350 words); returns the page count."""
    import textwrap

    from reportlab.pdfgen import canvas

    pdf = canvas.Canvas(str(path))
    lines = [line for para in text.split("\n") for line in (textwrap.wrap(para.lstrip("# "), 95) or [""])]
    pages = 0
    for start in range(0, len(lines), 32):
        for k, line in enumerate(lines[start:start + 32]):
            pdf.drawString(40, 800 - 22 * k, line)
        pdf.showPage()
        pages += 1
    pdf.save()
    return pages


def windows(path: Path) -> tuple[float, float, int, int]:
    """Wall and CPU seconds from the file to every pair, the pairs and the sentences."""
    wall, cpu = time.perf_counter(), time.process_time()
    document = load_document(path)
    sections = chunk_documents([document], word_counts, size=None, overlap=0)
    pairs = sum(len(window_examples(section, 5)) for section in sections)
    return time.perf_counter() - wall, time.process_time() - cpu, pairs, sum(len(s.sentences) for s in sections)


def pysbd_reference(path: Path) -> float:
    """CPU seconds of pysbd's Segmenter.segment over the document's sections (loaded beforehand)."""
    document = load_document(path)
    segmenter = _segmenter("en")
    cpu = time.process_time()
    for section in document.sections:
        segmenter.segment(document.text[section.start:section.end])
    return time.process_time() - cpu


def bench_windows(pages: int) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        book = Path(tmp) / "book.md"
        book.write_text(book_text(pages, random.Random(0)), encoding="utf-8")
        pdf_pages = write_pdf(book.read_text(encoding="utf-8"), Path(tmp) / "book.pdf")
        words = len(book.read_text(encoding="utf-8").split())
        print(f"windows: a {pages}-page book, {words} words ({pdf_pages} PDF pages)")
        for path in (book, Path(tmp) / "book.pdf"):
            wall, cpu, pairs, sentences = windows(path)
            reference = pysbd_reference(path)
            print(f"  {path.suffix}: {wall:.2f} s wall, {cpu:.2f} s CPU for {sentences} sentences -> {pairs} pairs; "
                  f"pysbd's Segmenter.segment alone {reference:.2f} s CPU (ratio {cpu / reference:.2f})")
        from self_instruct.documents import documents

        wall, cpu = time.perf_counter(), time.process_time()
        result = documents([str(book)], str(Path(tmp) / "out"), mode="windows", quiet=True)
        wall, cpu = time.perf_counter() - wall, time.process_time() - cpu
        print(f"  the whole command on the .md (judge, dedup, files): {wall:.2f} s wall, {cpu:.2f} s CPU, "
              f"{result.kept} kept of {result.stats.parsed} pairs")


def qa_reply(prompt: str, body: dict) -> str:
    """Three grounded pairs for a chunk (questions made of its own words), or every answer supported."""
    if prompt.startswith("Check each answer"):
        return json.dumps([{"id": k, "supported": True} for k in range(1, prompt.count("\nAnswer: ") + 1)])
    words = prompt.split('"""')[1].split()
    return json.dumps([{"question": f"Explain {' '.join(words[k:k + 6])}?", "answer": " ".join(words[k + 6:k + 20])}
                       for k in (0, 20, 40)])


def _prompt(body: dict) -> str:
    return body["messages"][-1]["content"] if "messages" in body else body.get("prompt", "")


def serve(latency: float) -> None:
    """The fake server with qa_reply, in its own process (so its threads do not compete with the
    run for this process's GIL): prints its URL, then, when stdin closes, what it saw from the
    first request in to the last reply out: the requests in flight (at most, and the mean of
    samples every 5 ms) and how long that took."""
    from fake_openai import FakeOpenAI

    server = FakeOpenAI(latency=latency).start()
    server.reply_fn = qa_reply
    samples: list[tuple[float, int]] = []
    done = threading.Event()

    def sample() -> None:
        while not done.wait(0.005):
            samples.append((time.monotonic(), server.in_flight))
    threading.Thread(target=sample, daemon=True).start()
    print(server.base_url, flush=True)
    sys.stdin.read()
    done.set()
    busy = [k for k, (_, n) in enumerate(samples) if n]
    span = samples[busy[-1]][0] - samples[busy[0]][0] if busy else 0.0
    window = [n for _, n in samples[busy[0]:busy[-1] + 1]] if busy else [0]
    # Until the last chunk's first request came in, chunks were left to start; after it the run
    # drains (a chunk's check follows its answer), with fewer than --max_concurrency to send.
    last_start = max((arrived for (arrived, _), body in zip(server.arrivals, server.requests)
                      if not _prompt(body).startswith("Check each answer")), default=0.0)
    filling = [n for t, n in samples[busy[0]:] if t <= last_start] if busy else [0]
    print(json.dumps({"max": server.max_in_flight, "mean": sum(window) / len(window), "span": span,
                      "filling": sum(filling) / max(1, len(filling)), "requests": len(server.requests)}))
    server.stop()


def bench_qa(latency: float, concurrency: int, chunks: int, stream: bool) -> None:
    from self_instruct.documents import documents

    server = subprocess.Popen([sys.executable, __file__, "--serve", str(latency)], stdin=subprocess.PIPE,
                              stdout=subprocess.PIPE, text=True)
    try:
        base_url = server.stdout.readline().strip()
        with tempfile.TemporaryDirectory() as tmp:
            path = Path(tmp) / "book.md"
            # sections of 150 to 1,000 words: one to three chunks each
            path.write_text(book_text(pages=chunks, rng=random.Random(1)), encoding="utf-8")
            result = documents([str(path)], str(Path(tmp) / "out"), mode="qa", chunk_size=400, chunk_overlap=40,
                               base_url=base_url, api_key="sk-bench", model_name="fake", max_concurrency=concurrency,
                               stream=stream, quiet=True)
        seen = json.loads(server.communicate("", timeout=60)[0])
    finally:
        server.kill()
    rate, bound = seen["requests"] / seen["span"], concurrency / latency
    print(f"qa{'' if stream else ' --no_stream'}: {result.chunks} chunks, {seen['requests']} requests (write and check), "
          f"latency {latency}s, --max_concurrency {concurrency}; kept {result.kept}")
    print(f"  from the first request to the last reply: {seen['span']:.2f} s, {rate:.1f} requests/s = "
          f"{rate / bound:.0%} of the bound {bound:.0f}/s; in flight: at most {seen['max']}, mean {seen['mean']:.1f}, "
          f"mean {seen['filling']:.1f} while chunks were left to start")


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--pages", type=int, default=300)
    parser.add_argument("--latency", type=float, default=0.25)
    parser.add_argument("--concurrency", type=int, default=16)
    parser.add_argument("--chunks", type=int, default=96)
    parser.add_argument("--only", choices=("windows", "qa"))
    parser.add_argument("--serve", type=float, help=argparse.SUPPRESS)  # the fake server's process
    args = parser.parse_args()
    if args.serve is not None:
        return serve(args.serve)
    if args.only != "qa":
        bench_windows(args.pages)
    if args.only != "windows":
        for stream in (True, False):  # streamed replies cost the client CPU per token
            bench_qa(args.latency, args.concurrency, args.chunks, stream)


if __name__ == "__main__":
    main()
