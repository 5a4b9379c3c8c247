"""PDF text as a reader sees it: a book written here with reportlab, with what real PDFs have
(running headers and footers, page numbers, a contents page with dot leaders, numbered
headings, words hyphenated across lines, paragraphs set off by space or by an indent, a sentence
across a page break), read back clean, with offsets into pypdf's raw text."""
from __future__ import annotations

import pytest

from self_instruct.sources.chunking import chunk_documents, word_counts
from self_instruct.sources.loaders import load_document

pytest.importorskip("pypdf", reason="needs the [docs] extra")
canvas = pytest.importorskip("reportlab.pdfgen.canvas", reason="needs reportlab ([test])")

BODY, LEADING, LEFT = 11, 14, 72

# Each page: (header, [(kind, text, x)], footer); kinds: h1/h2 (headings, with a bookmark of
# the title without its number), p (a body line), gap (a blank line's space).
BOOK = [
    ("", [("title", "A Garden Guide", LEFT), ("h0", "Contents", LEFT),
          ("p", "1 Soil . . . . . . . . . . . . . . . . . . . . . . . . . 2", LEFT),
          ("p", "1.1 Loam . . . . . . . . . . . . . . . . . . . . . . . 2", LEFT + 15),
          ("p", "2 Water . . . . . . . . . . . . . . . . . . . . . . . . 4", LEFT)], "i"),
    ("Chapter 1: Soil 2", [
        ("h1", "1 Soil", LEFT),
        ("p", "Soil is the ground a garden grows in. Its manip-", LEFT),
        ("p", "ulation decides what thrives, and careful", LEFT),
        ("p", "manipulation of soil pays back every season.", LEFT),
        ("gap", "", LEFT),
        ("h2", "1.1 Loam", LEFT),
        ("p", "Loam holds water and air in balance. Gardeners", LEFT),
        ("p", "prize it above sand and clay. Information found in a", LEFT)], "2"),
    ("Chapter 1: Soil 3", [
        ("p", "directory of samples shows the same.", LEFT),
        ("p", "A second paragraph starts here, indented.", LEFT + 18),
        ("p", "It ends on this line.", LEFT)], "3"),
    ("Chapter 2: Water 4", [
        ("h1", "2 Water", LEFT),
        ("p", "Water deeply twice a week.", LEFT)], "4"),
]

CLEAN = ("A Garden Guide\n\nContents\n\n1 Soil\n\n"
         "Soil is the ground a garden grows in. Its manipulation decides what thrives, and careful\n"
         "manipulation of soil pays back every season.\n\n1.1 Loam\n\n"
         "Loam holds water and air in balance. Gardeners\nprize it above sand and clay. Information found in a\n"
         "directory of samples shows the same.\n\n"
         "A second paragraph starts here, indented.\nIt ends on this line.\n\n2 Water\n\nWater deeply twice a week.")


def make_book(path):
    pdf = canvas.Canvas(str(path), pagesize=(612, 792))
    for number, (header, lines, footer) in enumerate(BOOK):
        if header:
            pdf.setFont("Helvetica", 9)
            pdf.drawString(LEFT, 760, header)
        y = 700
        for kind, text, x in lines:
            if kind == "gap":
                y -= LEADING
                continue
            size = {"title": 20, "h0": 15, "h1": 16, "h2": 13}.get(kind, BODY)
            if kind in ("h1", "h2"):
                key = f"{number}-{text}"
                pdf.bookmarkPage(key)
                pdf.addOutlineEntry(text.split(" ", 1)[1], key, level=0 if kind == "h1" else 1)
            pdf.setFont("Helvetica-Bold" if kind != "p" else "Helvetica", size)
            pdf.drawString(x, y, text)
            y -= LEADING + (12 if kind != "p" else 0)
        pdf.setFont("Helvetica", 9)
        pdf.drawCentredString(306, 40, footer)
        pdf.showPage()
    pdf.save()
    return path


@pytest.fixture(scope="module")
def book(tmp_path_factory):
    return load_document(make_book(tmp_path_factory.mktemp("pdf") / "guide.pdf"))


def test_the_clean_text_keeps_the_prose_and_drops_headers_page_numbers_and_leaders(book):
    assert book.text == CLEAN
    for noise in ("Chapter 1: Soil", "Chapter 2", ". . .", "manip-"):
        assert noise not in book.text
    assert "Chapter 1: Soil 2" in book.raw and "manip-\nulation" in book.raw  # the raw text is pypdf's


def test_numbered_headings_are_whole_and_sections_follow_the_outline(book):
    assert [(s.headings, book.text[s.start:s.end].split("\n")[0]) for s in book.sections] == [
        ((), "A Garden Guide"),
        (("1 Soil",), "Soil is the ground a garden grows in. Its manipulation decides what thrives, and careful"),
        (("1 Soil", "1.1 Loam"), "Loam holds water and air in balance. Gardeners"),
        (("2 Water",), "Water deeply twice a week."),
    ]


def test_paragraphs_come_from_space_and_indents(book):
    loam = book.text[book.sections[2].start:book.sections[2].end]
    assert loam.split("\n\n") == [
        "Loam holds water and air in balance. Gardeners\nprize it above sand and clay. Information found in a\n"
        "directory of samples shows the same.",
        "A second paragraph starts here, indented.\nIt ends on this line.",
    ]


def test_clean_offsets_map_into_the_raw_text_and_pages(book):
    at = book.text.index("manipulation")
    assert book.raw[slice(*book.original(at, at + len("manipulation")))] == "manip-\nulation"
    across = book.text.index("found in a\ndirectory")
    start, end = book.original(across, across + len("found in a\ndirectory"))
    assert book.raw[start:end].startswith("found in a\n") and book.raw[start:end].endswith("\ndirectory")
    assert "Chapter 1: Soil 3" in book.raw[start:end]  # the header between them is still in the raw text
    assert book.page_at(across) == 2 and book.page_at(across + len("found in a\n")) == 3
    assert book.page_at(book.text.index("Water deeply")) == 4


def test_chunk_provenance_points_into_the_raw_text(book):
    chunks = chunk_documents([book], word_counts, size=20, overlap=0)
    assert len(chunks) > 3
    for chunk in chunks:
        meta = chunk.provenance()
        raw = book.raw[meta["start"]:meta["end"]]
        assert raw.split()[0] == chunk.text.split()[0] and raw.split()[-1] == chunk.text.split()[-1]
