"""How fast documents become data.

1. windows over a 300-page book (made here: 30 chapters of synthetic prose, about 105,000
   words), as Markdown and as a PDF: load, split into sections and sentences, make every window
   and heading pair. The reference is pysbd's own `Segmenter.segment` over the same sections,
   the sentence splitting alone; the ratio says what loading, chunking and windows add to it
   (below 1: we split faster than pysbd's own entry point, whose mapping of sentences back to
   the text is quadratic).
2. qa against the fake OpenAI server (in this process, a fixed latency per request): how many
   requests are in flight at the server, against --max_concurrency, and chunks a second
   against the bound  concurrency / latency / requests per chunk.

    python benchmarks/documents.py [--pages 300] [--latency 0.25] [--concurrency 16] [--chunks 96]
"""
from __future__ import annotations

import argparse
import random
import sys
import tempfile
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
    vocabulary = [w.strip(".,()`*#|:;'\"") for w in (REPO / "README.md").read_text(encoding="utf-8").split()]
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


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--pages", type=int, default=300)
    args = parser.parse_args()
    bench_windows(args.pages)


if __name__ == "__main__":
    main()
