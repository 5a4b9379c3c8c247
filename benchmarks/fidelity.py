"""How faithful the text of real documents is: documents that ship inside Debian packages, read
by our loaders and by an independent extractor, compared word for word, with the garbage a
reader would notice counted in ours.

    apt-get install poppler-utils w3m wamerican libtasn1-doc shared-mime-info libidn2-doc \\
        debian-policy developers-reference vim-subtitles     # gnutls-doc too, for a 790-page manual
    python benchmarks/fidelity.py [FILE ...]

The independent extraction: pdftotext (poppler) for a PDF; w3m's dump of each XHTML member of an
EPUB (lxml's text of its body without w3m); the cue lines of a caption file without numbers and
timestamps. Per document:

- recall and precision of our words against the reference's (bags of lowercase words, a line-end
  hyphenation joined on both sides). "body" recall leaves out of the reference what cleaning is
  meant to drop: lines repeated at the top or bottom of the pages (masked digits), bare page
  numbers and dot-leader lines.
- headings kept: PDF outline titles (EPUB: h1-h6 of the chapters) that head one of our sections.
- paragraphs: ours (blocks between blank lines) and the reference's.
- page seams with garbage: pages whose last body words and the next page's first body words are
  in our text with something between them (a running header, a page number).
- headers inside sentences: the reference's running lines found inside our paragraphs.
- unjoined hyphenations: "word-" at a line end and its continuation that form a word of
  /usr/share/dict/words (wamerican) or of the reference.
- dot leaders: characters in runs of four or more dots in our text.
- 3-character sections: sections whose whole body is a few characters ("2.1").
- EPUB page markers: page-break elements in the source whose text reached our text.
"""
from __future__ import annotations

import argparse
import re
import shutil
import subprocess
import sys
import tempfile
import time
import zipfile
from collections import Counter
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from self_instruct.sources.cleaning import is_dot_leader, is_page_number  # noqa: E402
from self_instruct.sources.epub import is_page_break  # noqa: E402
from self_instruct.sources.loaders import load_document  # noqa: E402

DOCUMENTS = [  # (path, Debian package)
    ("/usr/share/doc/libtasn1-doc/libtasn1.pdf", "libtasn1-doc"),
    ("/usr/share/doc/shared-mime-info/shared-mime-info-spec.pdf", "shared-mime-info"),
    ("/usr/share/doc/libidn2-doc/libidn2.pdf", "libidn2-doc"),
    ("/usr/share/doc/gnutls-doc/gnutls.pdf", "gnutls-doc"),
    ("/usr/share/doc/debian-policy/policy.epub", "debian-policy"),
    ("/usr/share/developers-reference/developers-reference.epub", "developers-reference"),
    ("/usr/share/doc/vim-subtitles/examples/subtitle.srt", "vim-subtitles"),
]
DICTIONARY = Path("/usr/share/dict/words")
_HYPHEN_BREAK = re.compile(r"([^\W\d_]+)-[ \t]*\n[ \t]*([^\W\d_]+)")


def words(text: str) -> Counter:
    return Counter(re.findall(r"\w+", _HYPHEN_BREAK.sub(r"\1\2", text).lower()))


def overlap(ours: Counter, reference: Counter) -> tuple[float, float]:
    common = sum((ours & reference).values())
    return common / max(1, sum(reference.values())), common / max(1, sum(ours.values()))


def paragraphs(text: str) -> int:
    return sum(1 for block in re.split(r"\n[ \t]*\n", text) if block.strip())


# --- references ---

def pdf_reference(path: str) -> tuple[list[list[str]], set[str], str]:
    """pdftotext's pages as lines, its running lines (top or bottom lines repeated, masked), and its text."""
    out = subprocess.run(["pdftotext", "-enc", "UTF-8", path, "-"], capture_output=True, text=True, check=True).stdout
    pages = [[line for line in page.split("\n") if line.strip()] for page in out.split("\f")]
    mask = lambda s: re.sub(r"\d+", "#", " ".join(s.split()))  # noqa: E731
    edges = Counter(mask(line) for page in pages for line in page[:1] + page[-1:])
    everywhere = Counter(mask(line) for page in pages for line in page)
    # at a page's edge on two pages or more, and hardly ever inside a page ("[Function]" is body text)
    running = {line for page in pages for line in page[:1] + page[-1:]
               if (edges[mask(line)] >= 3 and edges[mask(line)] >= 0.8 * everywhere[mask(line)] and len(line.strip()) > 3)
               or is_page_number(line)}
    return pages, running, out


def page_labels(pages: list[list[str]]) -> list[set[str]]:
    """The bare numbers at the top or bottom of each page (its printed number)."""
    return [{" ".join(line.split()) for line in page[:1] + page[-1:] if is_page_number(line)} for page in pages]


def body_lines(page: list[str], running: set[str]) -> list[str]:
    return [line for line in page if line not in running and not is_page_number(line) and not is_dot_leader(line)]


def epub_reference(path: str) -> tuple[str, list[str], list[tuple[str, str, str]]]:
    """The text of every XHTML member (w3m's dump, else lxml's), its h1-h6 titles, and each
    page-break marker's (words before, its text, words after)."""
    from lxml import html

    texts, headings, markers = [], [], []
    with zipfile.ZipFile(path) as book, tempfile.TemporaryDirectory() as tmp:
        for name in book.namelist():
            if not name.endswith((".xhtml", ".html", ".htm")) or name.rsplit("/", 1)[-1].startswith("nav"):
                continue
            data = book.read(name)
            root = html.fromstring(data)
            headings += [" ".join(h.text_content().split()) for h in root.iter("h1", "h2", "h3", "h4", "h5", "h6")]
            for element in root.iter():
                if isinstance(element.tag, str) and is_page_break(element):
                    before = " ".join((element.getprevious().text_content() if element.getprevious() is not None
                                       else (element.getparent().text or "")).split()[-3:])
                    after = " ".join((element.tail or "").split()[:3])
                    markers.append((before, " ".join(element.text_content().split()), after))
            if shutil.which("w3m"):
                member = Path(tmp) / "chapter.html"
                member.write_bytes(data)
                texts.append(subprocess.run(["w3m", "-dump", "-cols", "10000", "-T", "text/html", str(member)],
                                            capture_output=True, text=True).stdout)
            else:
                body = root.find(".//body")
                texts.append(" ".join((body if body is not None else root).itertext()))
    return "\n".join(texts), [h for h in headings if h], markers


def caption_reference(path: str) -> str:
    from self_instruct.sources.captions import decode_text

    lines = decode_text(Path(path).read_bytes()).splitlines()
    kept = [re.sub(r"<[^>]+>", "", line) for line in lines
            if line.strip() and not line.strip().isdigit() and "-->" not in line and line.strip() != "WEBVTT"]
    return "\n".join(kept)


# --- measures ---

def seams_with_garbage(text: str, pages: list[list[str]], running: set[str]) -> tuple[int, int]:
    """(seams checked, seams where a running line or a page number sits between a page's last
    body words and the next page's first in our text, inside a paragraph: a chapter's title
    between them, a paragraph of its own, is no garbage)."""
    flat = " ¶ ".join(" ".join(p.split()) for p in re.split(r"\n[ \t]*\n", text))
    marks = {" ".join(line.split()) for line in running if not is_page_number(line)}
    labels = page_labels(pages)
    checked = bad = 0
    for k, (this, following) in enumerate(zip(pages, pages[1:])):
        a, b = body_lines(this, running), body_lines(following, running)
        if not a or not b:
            continue
        last, first = " ".join(a[-1].split()[-3:]), " ".join(b[0].split()[:3])
        at = flat.find(last)
        if len(last) < 8 or len(first) < 8 or at < 0 or flat.count(last) > 1:
            continue
        after = flat[at + len(last):at + len(last) + len(first) + 200]
        where = after.find(first)
        if where < 0:
            continue
        checked += 1
        pieces = [piece.strip() for piece in after[:where].split("¶")]
        if any(mark in piece and mark != piece for piece in pieces for mark in marks if len(mark) > 3) \
                or set(after[:where].split()) & (labels[k] | labels[k + 1]):
            bad += 1
    return checked, bad


def headers_inside(text: str, running: set[str], body: str) -> int:
    """Occurrences of the reference's running lines inside our paragraphs (a heading of its own
    is no header), beyond those in the reference's body ("Shared MIME-info Database" is a header
    there, and also a phrase of its prose)."""
    inside = [" ".join(p.split()) for p in re.split(r"\n[ \t]*\n", text)]
    theirs = " ".join(body.split())
    lines = {" ".join(line.split()) for line in running}
    return sum(max(0, sum(p.count(line) for p in inside if p != line) - theirs.count(line)) for line in lines if len(line) > 8)


def unjoined(text: str, vocabulary: set[str]) -> int:
    return sum(1 for m in re.finditer(r"([^\W\d_]+)-[ \t]*\n[ \t]*([a-z]+)", text)
               if (m.group(1) + m.group(2)).lower() in vocabulary)


def leaders(text: str) -> int:
    return sum(len(m.group()) for m in re.finditer(r"(?:\.[ \t]?){4,}", text))


def measure(path: str, dictionary: set[str]) -> dict | None:
    suffix = Path(path).suffix.lower()
    if suffix == ".pdf" and not shutil.which("pdftotext"):
        return None
    started = time.process_time()
    document = load_document(path)
    seconds = time.process_time() - started
    text = document.text
    row = {"document": Path(path).name, "cpu_s": seconds, "paragraphs": paragraphs(text),
           "leaders": leaders(text), "tiny_sections": sum(1 for s in document.sections if s.end - s.start <= 4)}
    if suffix == ".pdf":
        import pypdf

        pages, running, reference = pdf_reference(path)
        body = "\n".join("\n".join(body_lines(page, running)) for page in pages)
        # the dictionary alone: pdftotext joins every line-end hyphen, so its words include "PEMencoded"
        vocabulary = dictionary
        reader = pypdf.PdfReader(path)
        started = time.process_time()
        for page in reader.pages:
            page.extract_text()
        plain = time.process_time() - started
        titles = _outline_titles(reader)
        heads = {" ".join(h.split()) for s in document.sections for h in s.headings}
        row |= {"headings": (sum(1 for t in titles if any(h.endswith(t) for h in heads)), len(titles)),
                "ref_paragraphs": paragraphs(reference), "seams": seams_with_garbage(text, pages, running),
                "headers_inside": headers_inside(text, running, body), "unjoined": unjoined(text, vocabulary),
                "ref_unjoined": unjoined(reference, vocabulary), "ref_leaders": leaders(reference),
                "pypdf_plain_s": plain}
    elif suffix == ".epub":
        reference, titles, markers = epub_reference(path)
        body = reference
        heads = {" ".join(h.split()) for s in document.sections for h in s.headings}
        flat = " ".join(text.split())
        leaked = sum(1 for before, mark, after in markers if mark and f"{before} {mark} {after}".strip() in flat)
        row |= {"headings": (sum(1 for t in titles if t in heads), len(titles)), "ref_paragraphs": None,
                "markers": (leaked, len(markers)), "unjoined": unjoined(text, dictionary)}
    else:
        reference = body = caption_reference(path)
    row["recall"], row["precision"] = overlap(words(text), words(reference))
    row["body_recall"], _ = overlap(words(text), words(body))
    return row


def _outline_titles(reader) -> list[str]:
    titles = []

    def walk(items):
        for item in items:
            if isinstance(item, list):
                walk(item)
            else:
                titles.append(" ".join(str(item.title or "").split()))
    walk(reader.outline)
    return [t for t in titles if t]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("files", nargs="*", help="documents to measure (default: the Debian ones installed)")
    args = parser.parse_args()
    files = args.files or [path for path, _ in DOCUMENTS if Path(path).exists()]
    missing = [f"{path} ({package})" for path, package in DOCUMENTS if not args.files and not Path(path).exists()]
    if missing:
        print("absent, skipped: " + ", ".join(missing), file=sys.stderr)
    dictionary = set(DICTIONARY.read_text(encoding="utf-8", errors="replace").lower().split()) if DICTIONARY.exists() else set()
    if not dictionary:
        print("no /usr/share/dict/words (apt-get install wamerican): hyphenations judged by the reference's words only",
              file=sys.stderr)
    for path in files:
        row = measure(path, dictionary)
        if row is None:
            print(f"{path}: needs pdftotext (apt-get install poppler-utils)", file=sys.stderr)
            continue
        print(f"\n{row['document']}  ({row['cpu_s']:.1f} s CPU" + (
            f"; pypdf's plain extraction alone {row['pypdf_plain_s']:.1f} s)" if "pypdf_plain_s" in row else ")"))
        print(f"  words: recall {row['recall']:.3f} (body {row['body_recall']:.3f}), precision {row['precision']:.3f}")
        if "headings" in row:
            print(f"  headings kept: {row['headings'][0]}/{row['headings'][1]}")
        ref = row.get("ref_paragraphs")
        print(f"  paragraphs: {row['paragraphs']}" + (f" (reference {ref})" if ref is not None else ""))
        if "seams" in row:
            print(f"  page seams with a header or page number between the words: {row['seams'][1]} of {row['seams'][0]} checked")
            print(f"  running headers left in the text: {row['headers_inside']}")
            print(f"  unjoined hyphenations: {row['unjoined']} (reference {row['ref_unjoined']})")
            print(f"  dot-leader characters: {row['leaders']} (reference {row['ref_leaders']})")
            print(f"  sections of 4 characters or fewer: {row['tiny_sections']}")
        if "markers" in row:
            print(f"  page-break markers in the text: {row['markers'][0]} of {row['markers'][1]}")
            print(f"  unjoined hyphenations: {row['unjoined']}, dot-leader characters: {row['leaders']}")


if __name__ == "__main__":
    main()
