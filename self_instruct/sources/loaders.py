"""Documents in: text, Markdown, PDF, HTML, EPUB, DOCX and caption files, each read by its own
module (a well-kept parser per format) into one `Document`; here, which module reads which
suffix, and files and directories in, one line for each file that cannot be read.

    docs, problems = load_paths(["book.epub", "notes/"])
    docs[0].sections[2].headings   # ('Part I', 'Chapter 2')
    problems                       # ['notes/scan.pdf: not a readable PDF (...)']

Parsers: pypdf (.pdf), lxml (.html; .epub over the standard library's zipfile),
python-docx (.docx), webvtt-py (.vtt and .srt), markdown-it-py (.md headings). They come with
`pip install 'self_instruct[docs]'`.

A file over `max_bytes` (on disk, or uncompressed: an EPUB or DOCX member, or the members read
from one) is skipped unread, like any file that cannot be read.
"""
from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Iterable

from ..errors import ConfigError
from .captions import load_captions
from .document import DEFAULT_MAX_BYTES, Document, TooLarge, UnreadableFile, megabytes
from .epub import load_epub
from .html import load_html
from .office import load_docx
from .pdf import load_pdf
from .text import load_markdown, load_text

LOADERS: dict[str, Callable[[Path], Document]] = {
    ".txt": load_text, ".text": load_text, ".md": load_markdown, ".markdown": load_markdown,
    ".pdf": load_pdf, ".html": load_html, ".htm": load_html, ".xhtml": load_html,
    ".epub": load_epub, ".docx": load_docx, ".srt": load_captions, ".vtt": load_captions,
}
#: Loaders of zip archives, which take the cap themselves: it bounds what they inflate.
ARCHIVES = {load_epub, load_docx}


# --- files and directories ---

def load_document(path: str | Path, max_bytes: int = DEFAULT_MAX_BYTES) -> Document:
    """Load one file by its suffix; raises UnreadableFile with the reason (TooLarge when it
    passes `max_bytes`)."""
    path = Path(path)
    loader = LOADERS.get(path.suffix.lower())
    if loader is None:
        raise UnreadableFile(f"unsupported file type {path.suffix or '(no suffix)'!r} (supported: {', '.join(sorted(LOADERS))})")
    try:
        size = path.stat().st_size
        if size > max_bytes:
            raise TooLarge(f"the file holds {megabytes(size)}, over the {megabytes(max_bytes)} cap (--max_file_mb)")
        return loader(path, max_bytes) if loader in ARCHIVES else loader(path)
    except UnicodeDecodeError as exc:
        raise UnreadableFile(f"not UTF-8 text ({exc.reason} at byte {exc.start})") from None
    except OSError as exc:
        raise UnreadableFile(exc.strerror or str(exc)) from None


def expand_paths(paths: Iterable[str | Path]) -> tuple[list[Path], list[str]]:
    """The files to load, in a fixed order: each path as given, a directory's supported files
    recursively in sorted order. A path that does not exist is an error (a typo, most likely);
    files of other types found inside directories are skipped and counted in one line."""
    files: list[Path] = []
    skipped: Counter[str] = Counter()
    for given in paths:
        path = Path(given)
        if path.is_dir():
            for found in sorted(p for p in path.rglob("*") if p.is_file()):
                if found.suffix.lower() in LOADERS:
                    files.append(found)
                else:
                    skipped[found.suffix.lower() or "(no suffix)"] += 1
        elif path.exists() or path.is_symlink():
            files.append(path)
        else:
            raise ConfigError(f"{path}: no such file or directory")
    notes = []
    if skipped:
        kinds = ", ".join(f"{n} {suffix}" for suffix, n in sorted(skipped.items()))
        notes.append(f"skipped files of unsupported types in the directories given: {kinds}")
    return files, notes


@dataclass
class Loaded:
    """What reading the paths gave: the documents, the files skipped (path, why), in order, and
    notes on what the directories held besides."""

    documents: list[Document] = field(default_factory=list)
    skipped: list[tuple[str, str]] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)

    def problems(self) -> list[str]:
        """One line for each: the notes, then `path: why` for each file skipped."""
        return self.notes + [f"{path}: {why}" for path, why in self.skipped]


def load_files(paths: Iterable[str | Path], max_bytes: int = DEFAULT_MAX_BYTES) -> Loaded:
    """Load every file; one that cannot be read (or passes `max_bytes`) is skipped with its reason
    and the rest go on."""
    files, notes = expand_paths(paths)
    loaded = Loaded(notes=notes)
    for path in files:
        try:
            loaded.documents.append(load_document(path, max_bytes))
        except UnreadableFile as exc:
            loaded.skipped.append((str(path), str(exc)))
    return loaded


def load_paths(paths: Iterable[str | Path], max_bytes: int = DEFAULT_MAX_BYTES) -> tuple[list[Document], list[str]]:
    """Load every file; one that cannot be read becomes one line `path: why` and the rest go on."""
    loaded = load_files(paths, max_bytes)
    return loaded.documents, loaded.problems()
