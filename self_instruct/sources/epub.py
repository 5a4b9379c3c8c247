"""EPUB books (2 and 3), read with the standard library's zipfile and lxml (EbookLib is
AGPL-3.0, this package Apache-2.0): container.xml names the package file, whose spine orders
the chapters; each chapter's headings and paragraphs are walked as HTML."""
from __future__ import annotations

import posixpath
import zipfile
import zlib
from pathlib import Path
from urllib.parse import unquote

from .document import Document, SectionBuilder, UnreadableFile, need
from .html import html_blocks


def load_epub(path: Path) -> Document:
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
        names = epub_spine(book)
        if _epub_encrypted(book) & set(names):
            raise UnreadableFile("the EPUB's chapters are encrypted (DRM)")
        for name in names:
            try:
                html_blocks(html.fromstring(_epub_read(book, name)), builder)
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
