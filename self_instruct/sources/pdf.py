"""PDF files, read with pypdf, then cleaned from the page layout: each line's text comes with
its position and font size (pypdf's text visitor), so running headers, footers and page numbers
(lines repeated at the same height across pages) go, dot-leader lines of contents and index
pages go, words hyphenated across lines are joined where the joined word is a word, and
paragraphs are recovered from vertical gaps, indents, bullets and headings. Sections come from
the outline (bookmarks); every page's start is known, so every chunk knows its pages.

The raw text is pypdf's text of each page, joined by newlines (`Document.raw`); every change
is recorded (`Document.offsets`), so a clean span maps back into it.
"""
from __future__ import annotations

import logging
import re
from collections import Counter
from pathlib import Path
from typing import Iterable, Iterator

from .cleaning import Edit, Hyphenation, Line, apply_edits, is_dot_leader, running_lines
from .document import Document, Section, UnreadableFile, add_section, need


def load_pdf(path: Path) -> Document:
    """Clean text of every page; sections from the outline; page starts in the clean text."""
    pypdf = need("pypdf")
    logging.getLogger("pypdf").setLevel(logging.ERROR)  # its warnings on odd but readable files would flood stderr
    try:
        reader = pypdf.PdfReader(path)
        if reader.is_encrypted and not reader.decrypt(""):
            raise UnreadableFile("the PDF is encrypted")
        pages = [_page_text(page) for page in reader.pages]
        outline = list(_pdf_outline(reader, reader.outline, 1))
    except UnreadableFile:
        raise
    except Exception as exc:  # a damaged file can fail anywhere in pypdf (PdfReadError, struct, zlib, KeyError)
        raise UnreadableFile(f"not a readable PDF ({type(exc).__name__}: {exc})") from None
    raw, starts, lines = _join_pages(pages)
    if not raw.strip():
        raise UnreadableFile("the PDF has no text layer (scanned pages need OCR first)")
    titles = {(page, " ".join(title.split()).lower()) for _, title, page in outline}
    text, offsets = apply_edits(raw, layout_edits(raw, lines, titles))
    page_starts = [offsets.cleaned(s) for s in starts]
    return Document(str(path), text, _outline_sections(text, page_starts, outline), tuple(page_starts),
                    raw=raw, offsets=offsets)


# --- pages and lines ---

Fragment = tuple[str, float, float, float]  # text, x, y, font size


def _page_text(page) -> tuple[str, list[Fragment] | None]:
    """pypdf's text of the page and the fragments it was made of, with their positions (None
    when they do not add up to the text, so no line's position is guessed)."""
    fragments: list[Fragment] = []

    def visit(text, cm, tm, font, size):
        x = tm[4] * cm[0] + tm[5] * cm[2] + cm[4]
        y = tm[4] * cm[1] + tm[5] * cm[3] + cm[5]
        scale = abs(tm[3] * cm[3]) or abs(tm[0] * cm[0]) or 1.0
        fragments.append((text, x, y, (size or 0) * scale))

    text = page.extract_text(visitor_text=visit) or ""
    return text, fragments if "".join(f[0] for f in fragments) == text else None


def _join_pages(pages: list[tuple[str, list[Fragment] | None]]) -> tuple[str, list[int], list[list[Line]]]:
    """The raw text (pages joined by a newline), where each page starts, and each page's lines."""
    raw, starts, lines = [], [], []
    offset = 0
    for number, (text, fragments) in enumerate(pages):
        if starts:
            raw.append("\n")
            offset += 1
        starts.append(offset)
        lines.append(_lines(number, text, fragments, offset))
        raw.append(text)
        offset += len(text)
    return "".join(raw), starts, lines


def _lines(page: int, text: str, fragments: list[Fragment] | None, offset: int) -> list[Line]:
    """The page's non-blank lines, each placed where its first visible character is drawn."""
    where: list[tuple[float, float, float] | None] = []
    for fragment, x, y, size in fragments or ():
        where += [(x, y, size)] * len(fragment)
    lines, start = [], 0
    for index, line in enumerate(text.split("\n")):
        content = line.rstrip()
        if content.strip():
            drawn = [where[i] for i in range(start, start + len(content)) if where and not text[i].isspace()]
            x, y = (drawn[0][0], drawn[0][1]) if drawn else (None, None)
            size = max(d[2] for d in drawn) if drawn else None
            lines.append(Line(page, index, content, x, y, size, offset + start, offset + start + len(content)))
        start += len(line) + 1
    return lines


# --- the layout ---

_BULLET = re.compile(r"^\s*(?:[•◦▪‣∙·●○■□–—*]|\(?\d{1,2}[.)]|\(?[a-z][.)])\s")
_HYPHENATED = re.compile(r"(?<![\w-])([^\W\d_]+)-$")
_CONTINUES = re.compile(r"^([^\W\d_]+)")
_SENTENCE_END = re.compile(r"[.!?:;)\"”’]$")


class _Body:
    """What the body text looks like, over the whole document: its usual font size, line spacing and left margin."""

    def __init__(self, lines: list[Line]) -> None:
        placed = [line for line in lines if line.y is not None and line.size]
        sizes = Counter()
        for line in placed:
            sizes[round(line.size, 1)] += len(line.text)
        self.size = sizes.most_common(1)[0][0] if sizes else None
        body = [line for line in placed if self.size and abs(line.size - self.size) < 0.5]
        gaps = Counter(round(a.y - b.y, 0) for a, b in zip(body, body[1:])
                       if a.page == b.page and 0 < a.y - b.y < 3 * self.size)
        self.leading = gaps.most_common(1)[0][0] if gaps else (1.2 * self.size if self.size else None)
        margins = Counter(round(line.x) for line in body)
        self.margin = margins.most_common(1)[0][0] if margins else None


def layout_edits(raw: str, pages: list[list[Line]], titles: set[tuple[int, str]] = frozenset()) -> list[Edit]:
    """The edits that clean a PDF's raw text: running lines and dot leaders dropped, hyphenation
    joined, a blank line between paragraphs. `titles` are (page, outline title lowercased): a
    line holding one is a heading, a paragraph of its own."""
    running = running_lines(pages)
    kept = [line for lines in pages for line in lines
            if (line.page, line.index) not in running and not is_dot_leader(line.text)]
    if not kept:
        return [Edit(0, len(raw), "")]
    body = _Body(kept)
    hyphenation = Hyphenation(raw)
    by_page: dict[int, list[str]] = {}
    for page, title in titles:
        by_page.setdefault(page, []).append(title)
    headings = {id(line) for line in kept if _is_heading(line, body, by_page.get(line.page, ()))}
    edits = [Edit(0, kept[0].start, "")]
    for a, b in zip(kept, kept[1:]):
        seam = "\n"
        broken, following = _HYPHENATED.search(a.text), _CONTINUES.match(b.text.lstrip())
        if id(a) in headings or id(b) in headings or _BULLET.match(b.text) or _paragraph_gap(a, b, body):
            seam = "\n\n"
        elif broken and following and b.text.lstrip()[0].islower() and _joins(hyphenation, broken.group(1), following.group(1)):
            # the hyphen, the line break and any indent of the next line go
            edits.append(Edit(a.end - 1, b.start + len(b.text) - len(b.text.lstrip()), ""))
            continue
        # a paragraph's first-line indent (pypdf writes it as spaces) goes with the break
        edits.append(Edit(a.end, b.start + (len(b.text) - len(b.text.lstrip()) if seam == "\n\n" else 0), seam))
    edits.append(Edit(kept[-1].end, len(raw), ""))
    return edits


def _joins(hyphenation: Hyphenation, left: str, right: str) -> bool:
    """The word broken at the line end, or in a CamelCase name ("Author-" "ityKeyIdentifier")
    its lowercase part, is a word once joined."""
    lower = re.match(r"[^\W\d_A-Z]+", right).group()
    return hyphenation.joins(left, right) or (lower != right and hyphenation.joins(left, lower))


def _is_heading(line: Line, body: _Body, titles: Iterable[str]) -> bool:
    """A line in a larger font than the body's, or one that holds an outline title of its page."""
    if line.size and body.size and line.size > body.size * 1.15 and len(line.text.split()) <= 20:
        return True
    text = " ".join(line.text.split()).lower()
    return any(title and title in text and len(text) <= len(title) + 16 for title in titles)


def _paragraph_gap(a: Line, b: Line, body: _Body) -> bool:
    """A paragraph starts at b: more space above it than between lines, or a first-line indent."""
    if a.page != b.page or a.y is None or b.y is None or not body.leading:
        return False
    gap = a.y - b.y
    if gap > body.leading * 1.2 + 0.5:
        return True
    if body.margin is None or not body.size or gap <= 0:
        return False
    indent = b.x - body.margin
    return abs(a.x - body.margin) < 1 and 1 < indent <= 3 * body.size and bool(_SENTENCE_END.search(a.text))


# --- outline ---

def _pdf_outline(reader, items, depth: int) -> Iterator[tuple[int, str, int]]:
    """(depth, title, 0-based page) for each bookmark, in document order."""
    for item in items:
        if isinstance(item, list):
            yield from _pdf_outline(reader, item, depth + 1)
        else:
            page = reader.get_destination_page_number(item)
            title = " ".join(str(item.title or "").split())
            if title and page is not None and page >= 0:
                yield depth, title, page


# A section number before a title on its line: "2.1", "2.1.", "A.1", "Chapter 3:", "§4".
_NUMBER = re.compile(r"(?:(?i:chapter|part|section|appendix)\s+)?§?\s*(?:\d+|[A-Z])(?:\.\d+)*\.?:?")


def _outline_sections(text: str, starts: list[int], outline: list[tuple[int, str, int]]) -> tuple[Section, ...]:
    """A section begins where its bookmark's title is found on its page (else at the page top).
    A section number before the title on its line belongs to the heading ("2.1 Naming"), not to
    the section before."""
    marks: list[tuple[int, int, int, str]] = []  # (heading start, body start, depth, heading)
    for depth, title, page in outline:
        page_start = starts[page]
        page_end = starts[page + 1] if page + 1 < len(starts) else len(text)
        found = text.find(title, max(page_start, marks[-1][1] if marks else 0), page_end)
        if found < 0:
            marks.append((page_start, page_start, depth, title))
            continue
        begin, end = found, found + len(title)
        line_start = max(text.rfind("\n", 0, found) + 1, page_start)
        number = text[line_start:found]
        if number.strip() and _NUMBER.fullmatch(number.strip()):
            begin = line_start + len(number) - len(number.lstrip())
            title = " ".join(text[begin:end].split())
        marks.append((begin, end, depth, title))
    marks.sort(key=lambda m: m[0])
    sections: list[Section] = []
    stack: list[tuple[int, str]] = []
    body_start = 0
    for begin, body, depth, title in marks:
        add_section(sections, tuple(t for _, t in stack), text, body_start, begin)
        while stack and stack[-1][0] >= depth:
            stack.pop()
        stack.append((depth, title))
        body_start = body
    add_section(sections, tuple(t for _, t in stack), text, body_start, len(text))
    return tuple(sections)
