"""EPUB books (2 and 3), read with the standard library's zipfile and lxml (EbookLib is
AGPL-3.0, this package Apache-2.0): container.xml names the package file, whose spine orders
the chapters; each chapter's headings and paragraphs are walked as HTML. Page-list markers
(the print edition's page numbers) are taken out of the text, each removal recorded; every
member is read within the size cap (`MemberReader`), so a zip bomb is skipped, not inflated."""
from __future__ import annotations

import bisect
import posixpath
import re
import zipfile
import zlib
from pathlib import Path
from urllib.parse import unquote

from .cleaning import Edit, apply_edits
from .document import (
    DEFAULT_MAX_BYTES,
    Document,
    MemberReader,
    Section,
    SectionBuilder,
    UnreadableFile,
    add_section,
    need,
)
from .html import html_blocks


def load_epub(path: Path, max_bytes: int = DEFAULT_MAX_BYTES) -> Document:
    """The book's reading order (its spine), each chapter's headings and paragraphs. EPUB 2 and 3
    alike, read with zipfile and lxml: EbookLib is AGPL-3.0, this package Apache-2.0.

    Example: load_epub(Path("garden.epub")).sections[0].headings -> ('Part One', 'Soil')
    """
    need("lxml")
    from lxml import etree, html

    try:
        book = zipfile.ZipFile(path)
    except zipfile.BadZipFile:
        raise UnreadableFile("not a readable EPUB (not a zip file)") from None
    builder = SectionBuilder()
    with book:
        reader = MemberReader(book, max_bytes, "EPUB")
        names = epub_spine(reader)
        if _epub_encrypted(reader) & set(names):
            raise UnreadableFile("the EPUB's chapters are encrypted (DRM)")
        for name in names:
            try:
                chapter = html.fromstring(_epub_read(reader, name))
            except etree.ParserError:  # "Document is empty": a chapter of whitespace or comments
                continue
            _mark_page_breaks(chapter)
            html_blocks(chapter, builder)
    document = _without_page_breaks(builder.build(str(path)))
    if not document.sections:
        raise UnreadableFile("the EPUB holds no text")
    return document


# --- page-list markers ---

# Private-use characters around a marker's text while the chapter is walked; never in a book's text.
_OPEN, _CLOSE = "\ue000", "\ue001"
_MARKED = re.compile(f"{_OPEN}[^{_CLOSE}]*{_CLOSE}")


def is_page_break(element) -> bool:
    """A print page's marker: epub:type="pagebreak" (EPUB 3), role="doc-pagebreak" (DPUB-ARIA),
    or a class named for it (EPUB 2 books, which have neither)."""
    for name, value in element.attrib.items():
        name = name.rsplit("}", 1)[-1].rsplit(":", 1)[-1]
        words = value.lower().split()
        if (name == "type" and "pagebreak" in words) or (name == "role" and "doc-pagebreak" in words):
            return True
        if name == "class" and {"pagebreak", "page-break", "pagenum", "page-number", "pagenumber"} & set(words):
            return True
    return False


def _mark_page_breaks(root) -> None:
    """Wrap each marker's text in _OPEN/_CLOSE (its tail, the book's text after it, stays)."""
    for element in list(root.iter()):
        if isinstance(element.tag, str) and is_page_break(element):
            text = " ".join(element.text_content().split())
            for child in list(element):
                element.remove(child)  # its text, and its tail, are in `text` already
            element.text = f"{_OPEN}{text}{_CLOSE}" if text else None


def _without_page_breaks(marked: Document) -> Document:
    """The document without the markers' text: `raw` is the text with them (the walk's text),
    and each removal, with the space it leaves, is an edit of it."""
    if _OPEN not in marked.text:
        return marked
    sentinels = [m.start() for m in re.finditer(f"[{_OPEN}{_CLOSE}]", marked.text)]
    raw = re.sub(f"[{_OPEN}{_CLOSE}]", "", marked.text)

    def to_raw(offset: int) -> int:
        return offset - bisect.bisect_left(sentinels, offset)

    edits = []
    for match in _MARKED.finditer(marked.text):
        start, end = to_raw(match.start()), to_raw(match.end())
        before = len(raw[:start]) - len(raw[:start].rstrip(" \t"))
        after = len(raw[end:]) - len(raw[end:].lstrip())
        if before and (after or end == len(raw)):
            start -= before  # "village 210 in" -> "village in"; "said. 210\n\nNext" -> "said.\n\nNext"
        elif after or start == 0 or raw[start - 1] == "\n":
            end += after  # a marker opening a paragraph, or one of its own: "\n\n210\n\nNext" -> "\n\nNext"
        edits.append(Edit(start, end, ""))
    text, offsets = apply_edits(raw, _merged(edits))
    sections: list[Section] = []
    for section in marked.sections:
        headings = tuple(_MARKED.sub("", h).strip() for h in section.headings)
        add_section(sections, headings, text, offsets.cleaned(to_raw(section.start)), offsets.cleaned(to_raw(section.end)))
    return Document(marked.path, text, tuple(sections), raw=raw, offsets=offsets)


def _merged(edits: list[Edit]) -> list[Edit]:
    """Deletions that touch or overlap (two markers in a row) as one."""
    merged: list[Edit] = []
    for edit in sorted(edits, key=lambda e: e.start):
        if merged and edit.start <= merged[-1].end:
            merged[-1] = Edit(merged[-1].start, max(merged[-1].end, edit.end), "")
        else:
            merged.append(edit)
    return merged


_XHTML_TYPES = {"application/xhtml+xml", "text/html"}  # text/html: some EPUB 2 tools wrote it


def epub_spine(book: MemberReader) -> list[str]:
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


def _epub_encrypted(book: MemberReader) -> set[str]:
    """The members META-INF/encryption.xml lists. Fonts alone are common (obfuscation, harmless);
    encrypted chapters mean DRM, whose bytes would read as no text or as noise."""
    if "META-INF/encryption.xml" not in book.archive.namelist():
        return set()
    listing = _epub_xml(book, "META-INF/encryption.xml")
    return {unquote(ref.get("URI", "")) for ref in listing.iter("{*}CipherReference")}


def _epub_xml(book: MemberReader, name: str):
    from lxml import etree

    # A book is untrusted input: no entities expanded, nothing fetched.
    parser = etree.XMLParser(resolve_entities=False, no_network=True)
    try:
        return etree.fromstring(_epub_read(book, name), parser)
    except etree.XMLSyntaxError as exc:
        raise UnreadableFile(f"not a readable EPUB (bad XML in {name}: {exc})") from None


def _epub_read(book: MemberReader, name: str) -> bytes:
    try:
        return book.read(name)
    except KeyError:
        raise UnreadableFile(f"not a readable EPUB ({name} is missing)") from None
    # A damaged or encrypted member: bad CRC, corrupt deflate data, cut short, a password, an odd method.
    except (zipfile.BadZipFile, zlib.error, EOFError, RuntimeError, NotImplementedError) as exc:
        raise UnreadableFile(f"not a readable EPUB ({name}: {exc})") from None
