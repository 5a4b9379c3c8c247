"""What every loader gives: one `Document`, its text and its sections, each a span under a
heading path; and what loaders share to make one (sections from a stream of headings and
paragraphs, sections from Markdown headings, UTF-8 reading, optional parsers).

Offsets are character positions in `Document.text`, the clean text: for .txt and .md that is
the file itself (newlines normalised to "\\n"); for other formats it is what the parser gave,
headings on their own lines and blocks separated by blank lines, cleaned where the format needs
it (PDF running headers, hyphenation, dot leaders; EPUB page-break markers). A cleaned document
keeps the text as extracted in `raw`, and `original(start, end)` gives a clean span's place in
it. A section's span holds its body, not its heading line.
"""
from __future__ import annotations

import bisect
import re
from dataclasses import dataclass
from pathlib import Path

from ..errors import ConfigError
from .cleaning import OffsetMap

INSTALL_HINT = "pip install 'self_instruct[docs]'"


@dataclass(frozen=True, slots=True)
class Section:
    """The body of one section: `Document.text[start:end]`, under `headings` (outermost first)."""

    headings: tuple[str, ...]
    start: int
    end: int


@dataclass(frozen=True, slots=True)
class Document:
    path: str
    text: str
    sections: tuple[Section, ...]
    #: PDFs only: the offset in `text` where each page begins.
    page_starts: tuple[int, ...] = ()
    #: The text as extracted, before cleaning (None for formats read as they are: text, Markdown).
    raw: str | None = None
    #: How offsets of `text` map to `raw` (sources/cleaning.py).
    offsets: OffsetMap | None = None

    def original(self, start: int, end: int) -> tuple[int, int]:
        """The span of `raw` that the clean span text[start:end] came from (the same span when
        nothing was cleaned). Example: "manip-\\nulation" cleaned to "manipulation": (0, 12) -> (0, 14)"""
        return self.offsets.original(start, end) if self.offsets is not None else (start, end)

    def page_at(self, offset: int) -> int | None:
        """The 1-based page holding `offset`, or None for formats without pages."""
        if not self.page_starts:
            return None
        return bisect.bisect_right(self.page_starts, offset)


class UnreadableFile(Exception):
    """One file that cannot be loaded; the message says why, in a few words."""


#: The most bytes a file, or one member of an EPUB or DOCX file (or all the members read from
#: one file, together), may hold uncompressed; `--max_file_mb` of the documents command.
DEFAULT_MAX_BYTES = 128 * 2**20


class TooLarge(UnreadableFile):
    """A file or an archive member over the size cap: skipped without being read into memory."""


def megabytes(size: int) -> str:
    return f"{size / 2**20:,.1f} MB"


class MemberReader:
    """Reads members of a zip archive (EPUB, DOCX) within the cap: a member whose declared
    size passes it is refused before a byte is inflated, and so is the running total. zipfile
    never inflates past a member's declared size (a member that lies fails its CRC check), so
    what is read is bounded by the cap whatever the archive claims.

    Example: MemberReader(book, 2**20).read("OEBPS/c1.xhtml") -> b"<html>..."
    """

    def __init__(self, archive, max_bytes: int, kind: str) -> None:
        self.archive, self.max_bytes, self.kind, self.total = archive, max_bytes, kind, 0

    def check(self, name: str, size: int) -> None:
        if size > self.max_bytes:
            raise TooLarge(f"{self.kind} member {name} holds {megabytes(size)} uncompressed, over the "
                           f"{megabytes(self.max_bytes)} cap (--max_file_mb)")
        if self.total + size > self.max_bytes:
            raise TooLarge(f"the {self.kind}'s members hold over {megabytes(self.max_bytes)} uncompressed, "
                           f"the cap (--max_file_mb)")

    def read(self, name: str) -> bytes:
        self.check(name, self.archive.getinfo(name).file_size)
        with self.archive.open(name) as member:
            data = member.read(self.max_bytes - self.total + 1)
        self.check(name, len(data))
        self.total += len(data)
        return data


class SectionBuilder:
    """Assemble a Document from a stream of headings and paragraphs (EPUB, DOCX).

    Example: b.heading(1, "Intro"); b.paragraph("Hi."); b.build("x").text -> "Intro\\n\\nHi."
    """

    def __init__(self) -> None:
        self.parts: list[str] = []
        self.length = 0
        self.stack: list[tuple[int, str]] = []
        self.sections: list[Section] = []
        self.body_start = 0

    def _write(self, text: str) -> None:
        if self.parts:
            self.parts.append("\n\n")
            self.length += 2
        self.parts.append(text)
        self.length += len(text)

    def heading(self, level: int, text: str) -> None:
        text = " ".join(text.split())
        if not text:
            return
        self._close()
        while self.stack and self.stack[-1][0] >= level:
            self.stack.pop()
        self.stack.append((level, text))
        self._write(text)
        self.body_start = self.length

    def paragraph(self, text: str) -> None:
        text = text.strip()
        if text:
            self._write(text)

    def code(self, text: str) -> None:
        """A preformatted block as written: only the blank lines around it go, so the first
        line keeps its indent."""
        text = re.sub(r"\A(?:[ \t]*\n)+", "", text).rstrip()
        if text:
            self._write(text)

    def _close(self) -> None:
        if self.length > self.body_start:
            body_start = self.body_start + (2 if self.body_start else 0)  # after the blank line
            self.sections.append(Section(tuple(t for _, t in self.stack), body_start, self.length))

    def build(self, path: str) -> Document:
        self._close()
        return Document(path, "".join(self.parts), tuple(self.sections))


def markdown_sections(text: str) -> tuple[Section, ...]:
    """Sections of a Markdown text, from its ATX and setext headings (code blocks are not
    mistaken for headings: markdown-it-py parses the text).

    Example: markdown_sections("# A\\nx\\n## B\\ny\\n") -> (Section(('A',), 4, 5), Section(('A', 'B'), 11, 12))
    """
    from markdown_it import MarkdownIt

    line_starts = [0] + [m.end() for m in re.finditer("\n", text)]
    offset = lambda line: line_starts[line] if line < len(line_starts) else len(text)  # noqa: E731
    tokens = MarkdownIt("commonmark").parse(text)
    sections: list[Section] = []
    stack: list[tuple[int, str]] = []
    body_start = 0
    for i, token in enumerate(tokens):
        if token.type != "heading_open" or token.map is None:
            continue
        add_section(sections, tuple(t for _, t in stack), text, body_start, offset(token.map[0]))
        level = int(token.tag[1])
        while stack and stack[-1][0] >= level:
            stack.pop()
        stack.append((level, tokens[i + 1].content.strip()))
        body_start = offset(token.map[1])
    add_section(sections, tuple(t for _, t in stack), text, body_start, len(text))
    return tuple(sections)


def add_section(sections: list[Section], headings: tuple[str, ...], text: str, start: int, end: int) -> None:
    """Add the span trimmed of surrounding whitespace, if anything is left."""
    body = text[start:end]
    stripped = body.strip()
    if stripped:
        start += len(body) - len(body.lstrip())
        sections.append(Section(headings, start, start + len(stripped)))


def read_utf8(path: Path) -> str:
    # newline=None: "\r\n" and "\r" become "\n", so offsets agree with markdown-it's line numbers.
    with open(path, encoding="utf-8-sig", newline=None) as f:
        return f.read()


def need(module: str, package: str | None = None):
    """Import an optional parser, or say how to install it."""
    import importlib

    try:
        return importlib.import_module(module)
    except ImportError:
        raise ConfigError(f"reading this file type needs {package or module}: {INSTALL_HINT}") from None
