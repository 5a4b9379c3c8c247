"""Plain text and Markdown: the file itself is the document's text; Markdown's headings
(read by markdown-it-py, so code blocks are not mistaken for headings) make its sections."""
from __future__ import annotations

from pathlib import Path

from .document import Document, Section, add_section, markdown_sections, read_utf8


def load_text(path: Path) -> Document:
    text = read_utf8(path)
    sections: list[Section] = []
    add_section(sections, (), text, 0, len(text))
    return Document(str(path), text, tuple(sections))


def load_markdown(path: Path) -> Document:
    text = read_utf8(path)
    return Document(str(path), text, markdown_sections(text))
