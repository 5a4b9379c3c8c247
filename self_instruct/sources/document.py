"""What every loader gives: one `Document`, its text and its sections, each a span under a
heading path; and what loaders share to make one (sections from a stream of headings and
paragraphs, sections from Markdown headings, UTF-8 reading, optional parsers).

Offsets are character positions in `Document.text`, the text we extracted: for .txt and .md
that is the file itself (newlines normalised to "\\n"); for other formats it is what the
parser gave, headings on their own lines and blocks separated by blank lines. A section's
span holds its body, not its heading line.
"""
from __future__ import annotations

import bisect
import re
from dataclasses import dataclass
from pathlib import Path

from ..errors import ConfigError

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

    def page_at(self, offset: int) -> int | None:
        """The 1-based page holding `offset`, or None for formats without pages."""
        if not self.page_starts:
            return None
        return bisect.bisect_right(self.page_starts, offset)


class UnreadableFile(Exception):
    """One file that cannot be loaded; the message says why, in a few words."""


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
