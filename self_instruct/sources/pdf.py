"""PDF files, read with pypdf: the pages' text joined, sections from the outline (bookmarks),
and where each page begins, so every chunk knows its pages."""
from __future__ import annotations

import logging
from pathlib import Path
from typing import Iterator

from .document import Document, Section, UnreadableFile, add_section, need


def load_pdf(path: Path) -> Document:
    """Pages joined by a newline (a sentence may run across pages); sections from the outline."""
    pypdf = need("pypdf")
    logging.getLogger("pypdf").setLevel(logging.ERROR)  # its warnings on odd but readable files would flood stderr
    try:
        reader = pypdf.PdfReader(path)
        if reader.is_encrypted and not reader.decrypt(""):
            raise UnreadableFile("the PDF is encrypted")
        pages = [page.extract_text() or "" for page in reader.pages]
        outline = list(_pdf_outline(reader, reader.outline, 1))
    except UnreadableFile:
        raise
    except Exception as exc:  # a damaged file can fail anywhere in pypdf (PdfReadError, struct, zlib, KeyError)
        raise UnreadableFile(f"not a readable PDF ({type(exc).__name__}: {exc})") from None
    starts, text = [], ""
    for page in pages:
        text += "\n" if starts else ""
        starts.append(len(text))
        # A page's trailing newline would make a blank line, a paragraph break, at every page
        # seam and cut the sentences that run on to the next page.
        text += page.rstrip()
    if not text.strip():
        raise UnreadableFile("the PDF has no text layer (scanned pages need OCR first)")
    return Document(str(path), text, _outline_sections(text, starts, outline), tuple(starts))


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


def _outline_sections(text: str, starts: list[int], outline: list[tuple[int, str, int]]) -> tuple[Section, ...]:
    """A section begins where its bookmark's title is found on its page (else at the page top)."""
    marks: list[tuple[int, int, int, str]] = []  # (heading start, body start, depth, title)
    for depth, title, page in outline:
        page_start = starts[page]
        page_end = starts[page + 1] if page + 1 < len(starts) else len(text)
        found = text.find(title, max(page_start, marks[-1][1] if marks else 0), page_end)
        begin = found if found >= 0 else page_start
        marks.append((begin, begin + len(title) if found >= 0 else begin, depth, title))
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
