"""Documents in: text, Markdown, PDF, HTML, EPUB, DOCX and caption files, read by well-kept
parsers into one `Document` (its text and its sections, each a span under a heading path).

Offsets are character positions in `Document.text`, the text we extracted: for .txt and .md
that is the file itself (newlines normalised to "\\n"); for other formats it is what the
parser gave, headings on their own lines and blocks separated by blank lines. A section's
span holds its body, not its heading line.

    docs, problems = load_paths(["book.epub", "notes/"])
    docs[0].sections[2].headings   # ('Part I', 'Chapter 2')
    problems                       # ['notes/scan.pdf: not a readable PDF (...)']

Parsers: pypdf (.pdf), trafilatura (.html: the main text, without navigation, menus and
footers), lxml over the standard library's zipfile (.epub), python-docx (.docx), webvtt-py
(.vtt and .srt), markdown-it-py (.md headings). They come with `pip install 'self_instruct[docs]'`.
"""
from __future__ import annotations

import bisect
import logging
import posixpath
import re
import zipfile
import zlib
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterable, Iterator
from urllib.parse import unquote

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


# --- sections from headings ---

class _Builder:
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
        _add_section(sections, tuple(t for _, t in stack), text, body_start, offset(token.map[0]))
        level = int(token.tag[1])
        while stack and stack[-1][0] >= level:
            stack.pop()
        stack.append((level, tokens[i + 1].content.strip()))
        body_start = offset(token.map[1])
    _add_section(sections, tuple(t for _, t in stack), text, body_start, len(text))
    return tuple(sections)


def _add_section(sections: list[Section], headings: tuple[str, ...], text: str, start: int, end: int) -> None:
    """Add the span trimmed of surrounding whitespace, if anything is left."""
    body = text[start:end]
    stripped = body.strip()
    if stripped:
        start += len(body) - len(body.lstrip())
        sections.append(Section(headings, start, start + len(stripped)))


# --- one loader per format ---

def load_text(path: Path) -> Document:
    text = _read_utf8(path)
    sections: list[Section] = []
    _add_section(sections, (), text, 0, len(text))
    return Document(str(path), text, tuple(sections))


def load_markdown(path: Path) -> Document:
    text = _read_utf8(path)
    return Document(str(path), text, markdown_sections(text))


def load_html(path: Path) -> Document:
    """The page's main text (trafilatura), as Markdown so its headings are kept."""
    trafilatura = _need("trafilatura")
    raw = path.read_bytes()
    text = trafilatura.extract(raw, output_format="markdown", include_formatting=True, include_comments=False,
                               include_tables=True, favor_recall=True)
    if not text or not text.strip():
        raise UnreadableFile("no main text found in the page")
    return Document(str(path), text, markdown_sections(text))


def load_pdf(path: Path) -> Document:
    """Pages joined by a newline (a sentence may run across pages); sections from the outline."""
    pypdf = _need("pypdf")
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
        _add_section(sections, tuple(t for _, t in stack), text, body_start, begin)
        while stack and stack[-1][0] >= depth:
            stack.pop()
        stack.append((depth, title))
        body_start = body
    _add_section(sections, tuple(t for _, t in stack), text, body_start, len(text))
    return tuple(sections)


def load_epub(path: Path) -> Document:
    """The book's reading order (its spine), each chapter's headings and paragraphs. EPUB 2 and 3
    alike, read with zipfile and lxml: EbookLib is AGPL-3.0, this package Apache-2.0.

    Example: load_epub(Path("garden.epub")).sections[0].headings -> ('Part One', 'Soil')
    """
    _need("lxml")
    from lxml import etree, html

    try:
        book = zipfile.ZipFile(path)
    except zipfile.BadZipFile:
        raise UnreadableFile("not a readable EPUB (not a zip file)") from None
    builder = _Builder()
    with book:
        names = epub_spine(book)
        if _epub_encrypted(book) & set(names):
            raise UnreadableFile("the EPUB's chapters are encrypted (DRM)")
        for name in names:
            try:
                _html_blocks(html.fromstring(_epub_read(book, name)), builder)
            except etree.ParserError:  # "Document is empty": a chapter of whitespace or comments
                continue
    document = builder.build(str(path))
    if not document.sections:
        raise UnreadableFile("the EPUB holds no text")
    return document


_XHTML_TYPES = {"application/xhtml+xml", "text/html"}  # text/html: some EPUB 2 tools wrote it


def epub_spine(book: zipfile.ZipFile) -> list[str]:
    """The zip names of the chapters in reading order: META-INF/container.xml names the package
    (OPF) file, whose spine orders the items of its manifest. The navigation document (a table of
    contents, not text of the book) and items that are not XHTML are left out.

    Example: OEBPS/content.opf with spine [nav, c2, c1] -> ['OEBPS/c2.xhtml', 'OEBPS/c1.xhtml']
    """
    rootfile = _epub_xml(book, "META-INF/container.xml").find(".//{*}rootfile")
    if rootfile is None or not rootfile.get("full-path"):
        raise UnreadableFile("not a readable EPUB (container.xml names no package file)")
    opf_name = unquote(rootfile.get("full-path"))
    package = _epub_xml(book, opf_name)
    manifest = {item.get("id"): item for item in package.iterfind("{*}manifest/{*}item")}
    names = []
    for itemref in package.iterfind("{*}spine/{*}itemref"):
        item = manifest.get(itemref.get("idref"))
        if item is None or item.get("media-type") not in _XHTML_TYPES:
            continue  # images, the EPUB 2 NCX, an idref to nothing
        if "nav" in (item.get("properties") or "").split():
            continue  # the EPUB 3 table of contents may sit in the spine; it is not text of the book
        # An href is a URL relative to the package file: "Text%20Files/c1.xhtml" is "OEBPS/Text Files/c1.xhtml".
        href = unquote(item.get("href", "").partition("#")[0])
        names.append(posixpath.normpath(posixpath.join(posixpath.dirname(opf_name), href)))
    return names


def _epub_encrypted(book: zipfile.ZipFile) -> set[str]:
    """The members META-INF/encryption.xml lists. Fonts alone are common (obfuscation, harmless);
    encrypted chapters mean DRM, whose bytes would read as no text or as noise."""
    if "META-INF/encryption.xml" not in book.namelist():
        return set()
    listing = _epub_xml(book, "META-INF/encryption.xml")
    return {unquote(ref.get("URI", "")) for ref in listing.iter("{*}CipherReference")}


def _epub_xml(book: zipfile.ZipFile, name: str):
    from lxml import etree

    # A book is untrusted input: no entities expanded, nothing fetched.
    parser = etree.XMLParser(resolve_entities=False, no_network=True)
    try:
        return etree.fromstring(_epub_read(book, name), parser)
    except etree.XMLSyntaxError as exc:
        raise UnreadableFile(f"not a readable EPUB (bad XML in {name}: {exc})") from None


def _epub_read(book: zipfile.ZipFile, name: str) -> bytes:
    try:
        return book.read(name)
    except KeyError:
        raise UnreadableFile(f"not a readable EPUB ({name} is missing)") from None
    # A damaged or encrypted member: bad CRC, corrupt deflate data, cut short, a password, an odd method.
    except (zipfile.BadZipFile, zlib.error, EOFError, RuntimeError, NotImplementedError) as exc:
        raise UnreadableFile(f"not a readable EPUB ({name}: {exc})") from None


_HEADING = re.compile(r"h([1-6])")
_BLOCKS = {"p", "li", "pre", "blockquote", "dd", "dt", "td", "th", "figcaption", "div", "section", "article",
           "h1", "h2", "h3", "h4", "h5", "h6", "table", "tr", "ul", "ol", "dl", "aside", "header", "footer"}


def _html_blocks(root, builder: _Builder) -> None:
    """Headings and the innermost blocks (a <div> that holds <p>s gives the <p>s, not itself)."""
    body = root.find(".//body")
    for element in (body if body is not None else root).iter():
        tag = element.tag if isinstance(element.tag, str) else ""
        heading = _HEADING.fullmatch(tag)
        if heading:
            builder.heading(int(heading.group(1)), element.text_content())
        elif tag in _BLOCKS and not any(isinstance(d.tag, str) and d.tag in _BLOCKS for d in element.iterdescendants()):
            if not any(_HEADING.fullmatch(a.tag) for a in element.iterancestors() if isinstance(a.tag, str)):
                builder.paragraph(element.text_content())


def load_docx(path: Path) -> Document:
    """Paragraphs and tables in order; "Heading N" and "Title" styles make the sections."""
    docx = _need("docx", "python-docx")
    from docx.table import Table

    try:
        word = docx.Document(str(path))
        builder = _Builder()
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


def load_captions(path: Path) -> Document:
    """Caption text without timestamps or tags, lines joined so sentences span cues. Rolling
    captions repeat the previous line in the next cue; a line equal to the last one is dropped."""
    webvtt = _need("webvtt", "webvtt-py")
    try:
        captions = webvtt.from_srt(str(path)) if path.suffix.lower() == ".srt" else webvtt.read(str(path))
        lines: list[str] = []
        for caption in captions:
            for line in caption.text.split("\n"):
                line = " ".join(line.split())
                if line and (not lines or line != lines[-1]):
                    lines.append(line)
    except Exception as exc:  # webvtt-py raises MalformedFileError, MalformedCaptionError, ValueError
        raise UnreadableFile(f"not a readable caption file ({type(exc).__name__}: {exc})") from None
    text = " ".join(lines)
    if not text:
        raise UnreadableFile("the caption file holds no text")
    return Document(str(path), text, (Section((), 0, len(text)),))


LOADERS: dict[str, Callable[[Path], Document]] = {
    ".txt": load_text, ".text": load_text, ".md": load_markdown, ".markdown": load_markdown,
    ".pdf": load_pdf, ".html": load_html, ".htm": load_html, ".xhtml": load_html,
    ".epub": load_epub, ".docx": load_docx, ".srt": load_captions, ".vtt": load_captions,
}


# --- files and directories ---

def load_document(path: str | Path) -> Document:
    """Load one file by its suffix; raises UnreadableFile with the reason."""
    path = Path(path)
    loader = LOADERS.get(path.suffix.lower())
    if loader is None:
        raise UnreadableFile(f"unsupported file type {path.suffix or '(no suffix)'!r} (supported: {', '.join(sorted(LOADERS))})")
    try:
        return loader(path)
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


def load_paths(paths: Iterable[str | Path]) -> tuple[list[Document], list[str]]:
    """Load every file; one that cannot be read becomes one line `path: why` and the rest go on."""
    files, problems = expand_paths(paths)
    documents = []
    for path in files:
        try:
            documents.append(load_document(path))
        except UnreadableFile as exc:
            problems.append(f"{path}: {exc}")
    return documents, problems


def _read_utf8(path: Path) -> str:
    # newline=None: "\r\n" and "\r" become "\n", so offsets agree with markdown-it's line numbers.
    with open(path, encoding="utf-8-sig", newline=None) as f:
        return f.read()


def _need(module: str, package: str | None = None):
    """Import an optional parser, or say how to install it."""
    import importlib

    try:
        return importlib.import_module(module)
    except ImportError:
        raise ConfigError(f"reading this file type needs {package or module}: {INSTALL_HINT}") from None
