"""The cleaning layer: edits and the offsets they keep, and the judgements on lines of a paged
document (running headers and page numbers, dot leaders, hyphenation)."""
from __future__ import annotations

import random

import pytest

from self_instruct.sources.cleaning import (
    Edit,
    Hyphenation,
    Line,
    apply_edits,
    is_dot_leader,
    is_page_number,
    running_lines,
)


def test_edits_keep_every_unchanged_character_at_its_original_offset():
    rng = random.Random(7)
    raw = "".join(rng.choice("abc \n-") for _ in range(2000))
    edits, cursor = [], 0
    while cursor < len(raw) - 10:
        start = cursor + rng.randrange(0, 20)
        end = start + rng.randrange(0, 6)
        edits.append(Edit(start, end, rng.choice(["", "\n", "\n\n", "X"])))
        cursor = end + 1
    clean, offsets = apply_edits(raw, edits)
    written = set()
    shift = 0
    for edit in sorted((e for e in edits if raw[e.start:e.end] != e.text), key=lambda e: e.start):
        written.update(range(edit.start + shift, edit.start + shift + len(edit.text)))
        shift += len(edit.text) - (edit.end - edit.start)
    kept = [k for k in range(len(clean)) if k not in written]
    assert kept and all(raw[slice(*offsets.original(k, k + 1))] == clean[k] for k in kept)
    # and back: each kept character's raw offset leads to it
    assert all(offsets.cleaned(offsets.original(k, k + 1)[0]) == k for k in kept)


def test_a_joined_hyphenation_and_a_dropped_header_map_back():
    raw = "the manip-\nulation of\nRunning Header 7\ndata ends."
    clean, offsets = apply_edits(raw, [Edit(9, 11, ""), Edit(21, 39, "\n")])
    assert clean == "the manipulation of\ndata ends."
    start, end = offsets.original(clean.index("manipulation"), clean.index("manipulation") + 12)
    assert raw[start:end] == "manip-\nulation"
    start, end = offsets.original(clean.index("data"), len(clean))
    assert raw[start:end] == "data ends."
    # the raw offset where the header's line began lands on the text after it
    assert clean[offsets.cleaned(raw.index("Running")):].startswith("data")
    assert offsets.cleaned(raw.index("ends")) == clean.index("ends")


def test_overlapping_edits_are_refused():
    with pytest.raises(ValueError, match="overlapping"):
        apply_edits("abcdef", [Edit(0, 3, ""), Edit(2, 4, "")])


@pytest.mark.parametrize("text, expected", [
    ("2.1 ASN.1 syntax. . . . . . . . . . . . . . 2", True),
    ("Concept Index . . . . . . . . . . . . . . . . 33", True),
    ("asn1_create_element ........................ 10", True),
    ("Preface .......... iv", True),
    ("gnutls_alert_get . . . . . . . . . . . . . . 172, 364", True),
    ("He waited.... and waited.", False),
    ("Wait...", False),
    ("The value is 2.1.3.4 in the table.", False),
])
def test_dot_leaders(text, expected):
    assert is_dot_leader(text) is expected


@pytest.mark.parametrize("text, expected", [
    ("12", True), ("- 12 -", True), ("Page 3", True), ("3 of 17", True), ("xiv", True), ("IV", True),
    ("did", False), ("mild", False), ("12 cats", False), ("Chapter 2", False),
])
def test_page_numbers(text, expected):
    assert is_page_number(text) is expected


def page(number: int, *lines: tuple[float, str]) -> list[Line]:
    return [Line(number, i, text, 72.0, y, 10.0) for i, (y, text) in enumerate(lines)]


def test_running_headers_footers_and_page_numbers_are_found_by_position_and_repetition():
    pages = [
        page(0, (700, "A Garden Guide"), (650, "Soil comes first."), (40, "1")),
        page(1, (760, "Chapter 1: Soil 2"), (700, "Loam holds water."), (660, "Sand drains."), (40, "2")),
        page(2, (760, "Chapter 1: Soil 3"), (700, "Clay is heavy."), (40, "3")),
        page(3, (760, "Chapter 2: Water 4"), (700, "Water deeply."), (40, "4")),
    ]
    found = running_lines(pages)
    texts = {pages[p][i].text for p, i in found}
    # the one-page chapter's header leans on the others at its height; the title page's first
    # line is at no header's height
    assert texts == {"1", "2", "3", "4", "Chapter 1: Soil 2", "Chapter 1: Soil 3", "Chapter 2: Water 4"}


def test_a_body_line_at_the_top_of_every_page_is_not_a_header():
    # every page starts its body at the same height, with different text
    pages = [page(k, (760, f"Paragraph {w} begins here."), (740, f"Then {w} goes on.")) for k, w in
             enumerate(["one", "two", "three"])]
    assert running_lines(pages) == set()


def test_hyphenation_joins_words_the_document_knows_and_keeps_its_compounds():
    text = ("A well-known manipulation of the identifier.\nThe manip-\nulation of the iden-\ntifier is well-\n"
            "known to every-\nbody.")
    words = Hyphenation(text)
    assert words.joins("manip", "ulation") and words.joins("iden", "tifier")
    assert not words.joins("well", "known")


def test_hyphenation_asks_a_word_list_when_the_document_has_no_evidence():
    pytest.importorskip("spellchecker", reason="needs pyspellchecker ([docs])")
    words = Hyphenation("Nothing else here.")
    assert words.joins("process", "ing") and words.joins("individu", "ally")
    assert not words.joins("YYMMDDhhmm", "hh")
