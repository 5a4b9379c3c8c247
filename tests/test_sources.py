"""Loaders: every supported format made here in tmp_path, read back with its sections, headings,
pages and offsets; a corrupt or unreadable file is one line and the others still load."""
from __future__ import annotations

from pathlib import Path

import pytest

from self_instruct.errors import ConfigError
from self_instruct.sources.loaders import Document, load_document, load_paths, markdown_sections

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


def make_epub(path: Path, chapters: list[str]) -> Path:
    """An EPUB whose chapters are the given XHTML bodies, with a navigation document in its spine."""
    epub = pytest.importorskip("ebooklib.epub")
    book = epub.EpubBook()
    book.set_identifier("test-book")
    book.set_title("Garden Book")
    book.set_language("en")
    items = []
    for i, html in enumerate(chapters):
        item = epub.EpubHtml(title=f"Chapter {i + 1}", file_name=f"c{i}.xhtml", lang="en")
        item.content = f"<html><body>{html}</body></html>"
        book.add_item(item)
        items.append(item)
    book.toc = tuple(items)
    book.add_item(epub.EpubNcx())
    book.add_item(epub.EpubNav())
    book.spine = ["nav", *items]
    epub.write_epub(str(path), book)
    return path


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


def test_epub_follows_the_spine_and_carries_headings_across_chapters(tmp_path):
    path = make_epub(tmp_path / "book.epub", [
        "<h1>Part One</h1><h2>Soil</h2><p>Loam is best. Add compost.</p><div><p>Mulch helps.</p></div>",
        "<h2>Water</h2><p>Water deeply twice a week.</p><ul><li>Morning is best.</li></ul>",
    ])
    doc = load_document(path)
    assert body(doc) == [
        (("Part One", "Soil"), "Loam is best. Add compost.\n\nMulch helps."),
        (("Part One", "Water"), "Water deeply twice a week.\n\nMorning is best."),
    ]
    assert "Chapter 1" not in doc.text  # the table of contents is not text of the book


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
