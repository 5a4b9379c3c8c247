"""EPUB page-list markers (the print edition's page numbers) leave the text, each removal
recorded, so sentences read on and offsets still point into the extracted text."""
from __future__ import annotations

import pytest
from test_sources import make_epub

from self_instruct.sources.loaders import load_document

pytest.importorskip("lxml", reason="needs the [docs] extra")

CHAPTERS = [
    '<h1>Emigrants</h1><p>She left her mountain village <span epub:type="pagebreak" id="p210" title="210">210</span>'
    ' in county Donegal.</p><div role="doc-pagebreak" aria-label="211">211</div>'
    '<p>The ship sailed in May. <span epub:type="pagebreak" id="p212">212</span></p>'
    '<p>Nobody <span class="pagenum"><a id="p213">[213]</a></span>waved.</p>',
    '<h1><span epub:type="pagebreak" id="p214">214</span>Arrival</h1><p>New York was loud.</p>',
]


@pytest.fixture(scope="module")
def book(tmp_path_factory):
    return load_document(make_epub(tmp_path_factory.mktemp("epub") / "anthology.epub", CHAPTERS))


def test_page_break_markers_leave_the_text_and_sentences_read_on(book):
    assert book.text == ("Emigrants\n\nShe left her mountain village in county Donegal.\n\nThe ship sailed in May."
                         "\n\nNobody waved.\n\nArrival\n\nNew York was loud.")
    assert [(s.headings, book.text[s.start:s.end]) for s in book.sections] == [
        (("Emigrants",), "She left her mountain village in county Donegal.\n\nThe ship sailed in May.\n\nNobody waved."),
        (("Arrival",), "New York was loud."),
    ]


def test_each_removal_is_recorded_against_the_extracted_text(book):
    # (the walk of the chapter's HTML leaves the block of role="doc-pagebreak" out by itself)
    for number in ("210", "212", "[213]", "214"):
        assert number in book.raw
    at = book.text.index("village in county")
    assert book.raw[slice(*book.original(at, at + len("village in county")))] == "village 210 in county"
    at = book.text.index("New York")
    assert book.raw[slice(*book.original(at, len(book.text)))] == "New York was loud."


def test_a_book_without_markers_is_read_as_it_is(tmp_path):
    doc = load_document(make_epub(tmp_path / "plain.epub", ["<h1>One</h1><p>Page 12 of the report.</p>"]))
    assert doc.text == "One\n\nPage 12 of the report." and doc.raw is None
