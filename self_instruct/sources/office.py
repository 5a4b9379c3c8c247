"""Word documents (.docx), read with python-docx: paragraphs and tables in order, "Heading N"
and "Title" styles make the sections. python-docx inflates every member of the zip, so their
declared sizes are checked against the cap first (zipfile never inflates past them)."""
from __future__ import annotations

import re
import zipfile
from pathlib import Path

from .document import (
    DEFAULT_MAX_BYTES,
    Document,
    MemberReader,
    SectionBuilder,
    UnreadableFile,
    need,
)


def load_docx(path: Path, max_bytes: int = DEFAULT_MAX_BYTES) -> Document:
    """Paragraphs and tables in order; "Heading N" and "Title" styles make the sections."""
    docx = need("docx", "python-docx")
    from docx.table import Table

    try:
        with zipfile.ZipFile(path) as archive:
            sizes = MemberReader(archive, max_bytes, "DOCX")
            for info in archive.infolist():
                sizes.check(info.filename, info.file_size)
                sizes.total += info.file_size
    except zipfile.BadZipFile:
        raise UnreadableFile("not a readable DOCX (not a zip file)") from None
    try:
        word = docx.Document(str(path))
        builder = SectionBuilder()
        for block in word.iter_inner_content():
            if isinstance(block, Table):
                for row in block.rows:
                    builder.paragraph(" | ".join(cell.text.strip() for cell in row.cells))
                continue
            level = _docx_heading_level(block.style.name if block.style is not None else "")
            if level:
                builder.heading(level, block.text)
            else:
                builder.paragraph(block.text)
    except Exception as exc:  # python-docx raises PackageNotFoundError, KeyError, XMLSyntaxError, BadZipFile
        raise UnreadableFile(f"not a readable DOCX ({type(exc).__name__}: {exc})") from None
    return builder.build(str(path))


def _docx_heading_level(style: str) -> int:
    """Example: "Heading 2" -> 2, "Title" -> 1, "Normal" -> 0"""
    if style == "Title":
        return 1
    match = re.fullmatch(r"Heading (\d)", style)
    return int(match.group(1)) if match else 0
