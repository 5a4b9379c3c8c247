"""Loaders: every supported format made here in tmp_path, read back with its sections, headings,
pages and offsets; a corrupt or unreadable file is one line and the others still load."""
from __future__ import annotations

import posixpath
import re
import zipfile
from pathlib import Path
from urllib.parse import quote, unquote

import pytest

from self_instruct.errors import ConfigError
from self_instruct.sources.document import Document, UnreadableFile, markdown_sections
from self_instruct.sources.loaders import load_document, load_paths

pytest.importorskip("pysbd", reason="needs the [docs] extra")


def body(document: Document) -> list[tuple[tuple[str, ...], str]]:
    return [(s.headings, document.text[s.start:s.end]) for s in document.sections]


# --- makers of test files (also used by test_documents.py) ---

def make_pdf(path: Path, pages: list[tuple[str, list[str]]]) -> Path:
    """A PDF with one page per (title, lines) and a bookmark per title ("" for none)."""
    canvas = pytest.importorskip("reportlab.pdfgen.canvas")
    pdf = canvas.Canvas(str(path))
    for i, (title, lines) in enumerate(pages):
        if title:
            pdf.bookmarkPage(f"p{i}")
            pdf.addOutlineEntry(title, f"p{i}", level=0)
            pdf.drawString(72, 750, title)
        for k, line in enumerate(lines):
            pdf.drawString(72, 730 - 14 * k, line)
        pdf.showPage()
    pdf.save()
    return path


def make_epub(path: Path, chapters: list[str], *, version: int = 3, folder: str = "",
              spine: list[int] | None = None, replace: dict[str, bytes | None] | None = None) -> Path:
    """An EPUB written with zipfile: the chapters are the given XHTML bodies (manifest ids c0, c1,
    ...) in OEBPS/`folder`, their hrefs percent-encoded, read in the order of `spine` (indexes;
    default as given). Version 3 puts a navigation document first in the spine; version 2 has an
    NCX instead, named by the spine's toc. `replace` adds or swaps members, or (None) leaves one out."""
    hrefs = [quote(posixpath.join(folder, f"c{i}.xhtml")) for i in range(len(chapters))]
    manifest = "".join(f'<item id="c{i}" href="{href}" media-type="application/xhtml+xml"/>'
                       for i, href in enumerate(hrefs))
    itemrefs = "".join(f'<itemref idref="c{i}"/>' for i in (range(len(chapters)) if spine is None else spine))
    members = {"META-INF/container.xml": CONTAINER}
    if version == 3:
        manifest += '<item id="nav" href="nav.xhtml" media-type="application/xhtml+xml" properties="nav"/>'
        itemrefs, toc = '<itemref idref="nav"/>' + itemrefs, ""
        links = "".join(f'<li><a href="{href}">Chapter {i + 1}</a></li>' for i, href in enumerate(hrefs))
        members["OEBPS/nav.xhtml"] = XHTML.format(f'<nav epub:type="toc"><ol>{links}</ol></nav>')
    else:
        manifest += '<item id="ncx" href="toc.ncx" media-type="application/x-dtbncx+xml"/>'
        toc = ' toc="ncx"'
        points = "".join(f'<navPoint id="n{i}"><navLabel><text>Chapter {i + 1}</text></navLabel>'
                         f'<content src="{href}"/></navPoint>' for i, href in enumerate(hrefs))
        members["OEBPS/toc.ncx"] = NCX.format(points)
    members["OEBPS/content.opf"] = OPF.format(version=version, manifest=manifest, toc=toc, itemrefs=itemrefs)
    for href, html in zip(hrefs, chapters):
        members["OEBPS/" + unquote(href)] = XHTML.format(html)
    members.update(replace or {})
    with zipfile.ZipFile(path, "w", zipfile.ZIP_DEFLATED) as book:
        # The OCF rule: "mimetype" first and stored, so a reader can sniff the type at a fixed offset.
        book.writestr("mimetype", "application/epub+zip", compress_type=zipfile.ZIP_STORED)
        for name, content in members.items():
            if content is not None:
                book.writestr(name, content)
    return path


CONTAINER = """<?xml version="1.0"?>
<container version="1.0" xmlns="urn:oasis:names:tc:opendocument:xmlns:container">
<rootfiles><rootfile full-path="OEBPS/content.opf" media-type="application/oebps-package+xml"/></rootfiles>
</container>"""

OPF = """<?xml version="1.0" encoding="utf-8"?>
<package xmlns="http://www.idpf.org/2007/opf" version="{version}.0" unique-identifier="id">
<metadata xmlns:dc="http://purl.org/dc/elements/1.1/"><dc:identifier id="id">test-book</dc:identifier>
<dc:title>Garden Book</dc:title><dc:language>en</dc:language></metadata>
<manifest>{manifest}</manifest>
<spine{toc}>{itemrefs}</spine>
</package>"""

XHTML = """<?xml version="1.0" encoding="utf-8"?>
<html xmlns="http://www.w3.org/1999/xhtml" xmlns:epub="http://www.idpf.org/2007/ops">
<head><title>Garden Book</title></head><body>{}</body></html>"""

NCX = """<?xml version="1.0" encoding="utf-8"?>
<ncx xmlns="http://www.daisy.org/z3986/2005/ncx/" version="2005-1"><head/><docTitle><text>Garden Book</text></docTitle>
<navMap>{}</navMap></ncx>"""


def make_docx(path: Path, blocks: list[tuple[str, str]]) -> Path:
    """A DOCX from (style, text) pairs: style "h1".."h3" for headings, "p" for paragraphs."""
    docx = pytest.importorskip("docx")
    word = docx.Document()
    for style, text in blocks:
        if style == "p":
            word.add_paragraph(text)
        else:
            word.add_heading(text, level=int(style[1]))
    word.save(str(path))
    return path


PAGE = """<html><head><title>Growing tomatoes</title></head><body>
<nav><ul><li><a href="/">Home</a></li><li><a href="/shop">Shop our seed catalogue</a></li></ul></nav>
<div class="menu">Menu: Products | Pricing | Contact</div>
<article><h1>Growing tomatoes</h1>
<p>Tomatoes need at least six hours of direct sun each day. Water them deeply twice a week rather than a little every day.</p>
<h2>Soil</h2>
<p>Loamy soil rich in organic matter works best. Add compost before planting, and keep the pH between 6.2 and 6.8.</p>
<h2>Pests</h2><p>Hornworms can strip a plant in days. Pick them off by hand in the early morning.</p>
</article>
<footer>Copyright 2024 Garden Corp. All rights reserved. Privacy policy and cookie settings.</footer>
</body></html>"""

SRT = """1
00:00:00,000 --> 00:00:02,500
Welcome to the talk. Today we look

2
00:00:02,500 --> 00:00:05,000
at <i>tomatoes</i> and how
they grow.
"""

VTT = """WEBVTT

00:00:00.000 --> 00:00:02.000
<v Ann>Welcome to the talk.

00:00:02.000 --> 00:00:04.000 align:start position:0%
Welcome to the talk.
Today we look at <c.yellow>tomatoes</c>.
"""


# --- formats ---

def test_text_file_is_one_section_at_its_own_offsets(tmp_path):
    path = tmp_path / "notes.txt"
    path.write_bytes(b"\n\nFirst line.\r\nSecond line.\r\n\r\n")
    doc = load_document(path)
    assert doc.text == "\n\nFirst line.\nSecond line.\n\n"
    assert body(doc) == [((), "First line.\nSecond line.")]
    assert doc.sections[0].start == 2 and doc.page_at(5) is None


def test_markdown_sections_follow_heading_paths_and_skip_code_blocks():
    text = "Intro text.\n\n# Book\n\nPreface.\n\n## One\n\nFirst.\n\n```\n# not a heading\n```\n\n## Two\nSecond\n---\n\nThird.\n"
    sections = markdown_sections(text)
    # "## Two" has no body of its own: it gives no section, and the setext "Second" replaces it.
    assert [(s.headings, text[s.start:s.end]) for s in sections] == [
        ((), "Intro text."),
        (("Book",), "Preface."),
        (("Book", "One"), "First.\n\n```\n# not a heading\n```"),
        (("Book", "Second"), "Third."),
    ]


def test_pdf_pages_outline_and_sentences_across_pages(tmp_path):
    path = make_pdf(tmp_path / "garden.pdf", [
        ("Chapter One", ["Tomatoes need sun. They grow fast in warm"]),
        ("Chapter Two", ["Peppers like heat. Harvest them when red."]),
    ])
    doc = load_document(path)
    assert body(doc) == [(("Chapter One",), "Tomatoes need sun. They grow fast in warm"),
                         (("Chapter Two",), "Peppers like heat. Harvest them when red.")]
    second = doc.sections[1]
    assert doc.page_at(doc.sections[0].start) == 1 and doc.page_at(second.start) == 2
    assert doc.text[doc.page_starts[1]:].startswith("Chapter Two")


def test_html_keeps_the_main_text_and_drops_navigation_and_footer(tmp_path):
    path = tmp_path / "page.html"
    path.write_text(PAGE, encoding="utf-8")
    doc = load_document(path)
    assert [h for h, _ in body(doc)] == [("Growing tomatoes",), ("Growing tomatoes", "Soil"), ("Growing tomatoes", "Pests")]
    assert body(doc)[1][1].startswith("Loamy soil rich in organic matter works best.")
    for boilerplate in ("Home", "seed catalogue", "Pricing", "Copyright", "cookie"):
        assert boilerplate not in doc.text


@pytest.mark.parametrize("version", [3, 2])
def test_epub_follows_the_spine_and_carries_headings_across_chapters(tmp_path, version):
    path = make_epub(tmp_path / "book.epub", [
        "<h1>Part One</h1><h2>Soil</h2><p>Loam is best. Add compost.</p><div><p>Mulch helps.</p></div>",
        "<h2>Water</h2><p>Water deeply twice a week.</p><ul><li>Morning is best.</li></ul>",
    ], version=version)
    doc = load_document(path)
    assert body(doc) == [
        (("Part One", "Soil"), "Loam is best. Add compost.\n\nMulch helps."),
        (("Part One", "Water"), "Water deeply twice a week.\n\nMorning is best."),
    ]
    assert "Chapter 1" not in doc.text  # the table of contents (nav or NCX) is not text of the book


def test_epub_reads_in_spine_order_from_a_percent_encoded_subfolder(tmp_path):
    chapters = ["<h1>Seeds</h1><p>Sow in spring.</p>", "<h1>Harvest</h1><p>Pick when ripe.</p>",
                "<h1>Preface</h1><p>Why we garden.</p>"]
    path = make_epub(tmp_path / "book.epub", chapters, folder="Text files é", spine=[2, 0, 1])
    with zipfile.ZipFile(path) as book:
        assert "OEBPS/Text files é/c2.xhtml" in book.namelist()
    doc = load_document(path)
    assert [h for h, _ in body(doc)] == [("Preface",), ("Seeds",), ("Harvest",)]


@pytest.mark.parametrize("replace, why", [
    ({"META-INF/container.xml": None}, "META-INF/container.xml is missing"),
    ({"META-INF/container.xml": b"<container/>"}, "container.xml names no package file"),
    ({"OEBPS/content.opf": None}, "OEBPS/content.opf is missing"),
    ({"OEBPS/c1.xhtml": None}, "OEBPS/c1.xhtml is missing"),
    ({"OEBPS/content.opf": b"<package><manifest>"}, "bad XML in OEBPS/content.opf"),
])
def test_a_damaged_epub_is_unreadable_and_says_why(tmp_path, replace, why):
    path = make_epub(tmp_path / "book.epub", ["<p>One.</p>", "<p>Two.</p>"], replace=replace)
    with pytest.raises(UnreadableFile, match=f"^not a readable EPUB \\({re.escape(why)}"):
        load_document(path)


def encryption_xml(*uris: str) -> bytes:
    """META-INF/encryption.xml listing the given members as encrypted."""
    refs = "".join(f'<enc:EncryptedData><enc:CipherData><enc:CipherReference URI="{uri}"/>'
                   f'</enc:CipherData></enc:EncryptedData>' for uri in uris)
    return (f'<encryption xmlns="urn:oasis:names:tc:opendocument:xmlns:container" '
            f'xmlns:enc="http://www.w3.org/2001/04/xmlenc#">{refs}</encryption>').encode()


def test_an_epub_with_encrypted_chapters_is_unreadable_but_obfuscated_fonts_are_fine(tmp_path):
    fonts = make_epub(tmp_path / "fonts.epub", ["<p>One.</p>"],
                      replace={"META-INF/encryption.xml": encryption_xml("OEBPS/font.otf")})
    assert load_document(fonts).text == "One."
    drm = make_epub(tmp_path / "drm.epub", ["<p>One.</p>"],
                    replace={"META-INF/encryption.xml": encryption_xml("OEBPS/c0.xhtml")})
    with pytest.raises(UnreadableFile, match=r"^the EPUB's chapters are encrypted \(DRM\)$"):
        load_document(drm)


def test_an_epub_without_text_is_unreadable(tmp_path):
    # An empty chapter (only a comment here) is skipped, not an error; a book of them has no text.
    path = make_epub(tmp_path / "book.epub", ["<p> </p>", "<div><img src='x.png' alt=''/></div>", ""],
                     replace={"OEBPS/c2.xhtml": b'<?xml version="1.0"?>\n<!-- empty -->\n'})
    with pytest.raises(UnreadableFile, match="^the EPUB holds no text$"):
        load_document(path)


def test_docx_headings_paragraphs_and_levels(tmp_path):
    path = make_docx(tmp_path / "rules.docx", [
        ("p", "Front matter."), ("h1", "Rules"), ("h2", "Scoring"), ("p", "A goal is one point."),
        ("p", "A penalty is two."), ("h2", "Fouls"), ("p", "No pushing."),
    ])
    doc = load_document(path)
    assert body(doc) == [((), "Front matter."), (("Rules", "Scoring"), "A goal is one point.\n\nA penalty is two."),
                         (("Rules", "Fouls"), "No pushing.")]


@pytest.mark.parametrize("name, text, expected", [
    ("talk.srt", SRT, "Welcome to the talk. Today we look at tomatoes and how they grow."),
    # The second cue repeats the first line, as rolling captions do; tags and settings are dropped.
    ("talk.vtt", VTT, "Welcome to the talk. Today we look at tomatoes."),
])
def test_captions_drop_timestamps_and_join_lines(tmp_path, name, text, expected):
    path = tmp_path / name
    path.write_text(text, encoding="utf-8")
    doc = load_document(path)
    assert doc.text == expected and body(doc) == [((), expected)]


# --- bad files ---

def test_corrupt_and_unreadable_files_are_one_line_each_and_the_rest_load(tmp_path):
    folder = tmp_path / "docs"
    (folder / "sub").mkdir(parents=True)
    (folder / "a.txt").write_text("Good text.", encoding="utf-8")
    (folder / "sub" / "broken.pdf").write_bytes(b"%PDF-1.4\n1 0 obj garbage\n%%EOF")
    (folder / "latin1.txt").write_bytes("caf\xe9 au lait".encode("latin-1"))
    (folder / "empty.epub").write_bytes(b"PK not really a zip")
    (folder / "photo.png").write_bytes(b"\x89PNG")
    docs, problems = load_paths([folder])
    assert [Path(d.path).name for d in docs] == ["a.txt"]
    assert len(problems) == 4
    lines = dict((line.split(": ", 1)[0], line) for line in problems)
    assert "not a readable PDF" in lines[str(folder / "sub" / "broken.pdf")]
    assert "not UTF-8 text" in lines[str(folder / "latin1.txt")]
    assert "not a readable EPUB" in lines[str(folder / "empty.epub")]
    assert "1 .png" in problems[0] and "\n" not in "".join(problems)


def test_a_missing_path_is_an_error_naming_it(tmp_path):
    with pytest.raises(ConfigError, match="nope.txt: no such file"):
        load_paths([tmp_path / "nope.txt"])


def test_directory_order_is_sorted_and_recursive(tmp_path):
    for name in ("b/z.md", "a.txt", "b/a.txt"):
        (tmp_path / name).parent.mkdir(exist_ok=True)
        (tmp_path / name).write_text(f"Text of {name}.", encoding="utf-8")
    docs, problems = load_paths([tmp_path])
    assert [Path(d.path).relative_to(tmp_path).as_posix() for d in docs] == ["a.txt", "b/a.txt", "b/z.md"]
    assert problems == []
