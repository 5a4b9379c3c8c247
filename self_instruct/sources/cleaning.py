"""Cleaning that keeps the document: every change to the extracted text is an `Edit` (replace
raw[start:end] with a few characters), and the `OffsetMap` they make says where each offset of
the clean text came from, so a chunk's span can be given in the original extraction.

    clean, offsets = apply_edits("manip-\\nulation\\n7\\nNext", [Edit(5, 7, ""), Edit(15, 18, "\\n")])
    clean                          # 'manipulation\\nNext'
    offsets.original(13, 17)       # (18, 22): "Next" in the original

And the judgements a layout-aware loader asks for: which lines of a paged document are running
headers, footers and page numbers (`running_lines`), which are dot leaders of a table of contents
or an index (`is_dot_leader`), and whether a word broken at a line end is one word (`Hyphenation`).
"""
from __future__ import annotations

import bisect
import re
from collections import Counter, defaultdict
from dataclasses import dataclass
from typing import Iterable, Sequence


@dataclass(frozen=True, slots=True)
class Edit:
    """Replace raw[start:end] with `text` (a deletion when empty, an insertion when start == end)."""

    start: int
    end: int
    text: str = ""


class OffsetMap:
    """Offsets of a clean text made by non-overlapping edits of a raw one, both ways."""

    def __init__(self, edits: Sequence[Edit]) -> None:
        self.clean_starts: list[int] = []  # where each edit's text begins in the clean text
        self.raw_starts: list[int] = []
        self.raw_ends: list[int] = []
        self.lengths: list[int] = []
        shift = 0
        for edit in edits:
            self.clean_starts.append(edit.start + shift)
            self.raw_starts.append(edit.start)
            self.raw_ends.append(edit.end)
            self.lengths.append(len(edit.text))
            shift += len(edit.text) - (edit.end - edit.start)

    def _char(self, k: int) -> int:
        """The raw position of clean character k (a character an edit wrote: where the edit began)."""
        i = bisect.bisect_right(self.clean_starts, k) - 1
        if i < 0:
            return k
        inside = k - self.clean_starts[i]
        return self.raw_starts[i] if inside < self.lengths[i] else self.raw_ends[i] + inside - self.lengths[i]

    def original(self, start: int, end: int) -> tuple[int, int]:
        """The raw span of the clean span [start, end): from its first character to its last."""
        if end <= start:
            at = self._char(start)
            return at, at
        return self._char(start), self._char(end - 1) + 1

    def cleaned(self, raw: int) -> int:
        """The clean offset of raw offset `raw`; inside removed text, where the text after it lands."""
        i = bisect.bisect_right(self.raw_starts, raw) - 1
        if i < 0:
            return raw
        if raw < self.raw_ends[i] or (raw == self.raw_starts[i] and self.lengths[i] and raw == self.raw_ends[i]):
            return self.clean_starts[i] + self.lengths[i]
        return self.clean_starts[i] + self.lengths[i] + raw - self.raw_ends[i]


def apply_edits(raw: str, edits: Iterable[Edit]) -> tuple[str, OffsetMap]:
    """The clean text and its offset map. Edits must not overlap; those that change nothing are dropped.

    Example: apply_edits("a-\\nb c", [Edit(1, 3, "")])[0] -> 'ab c'
    """
    kept: list[Edit] = []
    for edit in sorted(edits, key=lambda e: (e.start, e.end)):
        if raw[edit.start:edit.end] == edit.text:
            continue
        if kept and edit.start < kept[-1].end:
            raise ValueError(f"overlapping edits {kept[-1]} and {edit}")
        kept.append(edit)
    parts, cursor = [], 0
    for edit in kept:
        parts += [raw[cursor:edit.start], edit.text]
        cursor = edit.end
    parts.append(raw[cursor:])
    return "".join(parts), OffsetMap(kept)


# --- lines of paged documents ---

@dataclass(frozen=True, slots=True)
class Line:
    """One line of a page: its text, where it sits (PDF points, y upwards; size of its largest
    font; None where the page's geometry is unknown) and its span in the raw text, trailing
    whitespace left out."""

    page: int
    index: int
    text: str
    x: float | None
    y: float | None
    size: float | None
    start: int = 0
    end: int = 0


_DIGITS = re.compile(r"\d+")
# A well-formed Roman numeral below 4,000 ("did" and "mix" are not).
_ROMAN = r"(?=[ivxlcdm])m{0,3}(?:cm|cd|d?c{0,3})(?:xc|xl|l?x{0,3})(?:ix|iv|v?i{0,3})"
_PAGE_NUMBER = re.compile(rf"^(?:page\s+)?[-–—(\[]?\s*(?:\d+|{_ROMAN})\s*[-–—)\]]?(?:\s*(?:of|/)\s*\d+)?$", re.I)
_EDGE_NUMBER = re.compile(r"^\d+\s|\s\d+$")


def is_page_number(text: str) -> bool:
    """Example: is_page_number("- 12 -") -> True, is_page_number("xiv") -> True, is_page_number("12 cats") -> False"""
    return bool(_PAGE_NUMBER.match(text.strip()))


def running_lines(pages: Sequence[Sequence[Line]], edge_lines: int = 2, tolerance: float = 2.0) -> set[tuple[int, int]]:
    """(page, index) of the lines that are running headers, footers and page numbers.

    Only the `edge_lines` topmost and bottommost lines of a page are candidates, taken from the
    edge inwards while they qualify. A candidate qualifies when it is a page number, when its
    text with the numbers masked ("Chapter # Function reference #") sits at the same height on
    another page, or when it carries a number at its start or end at a height where other pages
    have running lines (a one-page chapter's header: "Chapter 1: Introduction 1").
    """
    candidates: list[tuple[str, int, Line]] = []  # (edge, depth, line)
    for lines in pages:
        ordered = sorted((line for line in lines if line.text.strip() and line.y is not None), key=lambda line: -line.y)
        for depth in range(min(edge_lines, len(ordered))):
            candidates.append(("top", depth, ordered[depth]))
            if len(ordered) > 2 * edge_lines or depth < len(ordered) - 1 - depth:
                candidates.append(("bottom", depth, ordered[-1 - depth]))
    slots: dict[tuple[str, int], list[Line]] = defaultdict(list)
    for edge, _, line in candidates:
        slots[(edge, round(line.y / tolerance))].append(line)

    def near(edge: str, y: float) -> list[Line]:
        k = round(y / tolerance)
        return [line for d in (-1, 0, 1) for line in slots.get((edge, k + d), [])]

    repeated: dict[str, Counter] = {"top": Counter(), "bottom": Counter()}
    for edge, _, line in candidates:
        repeated[edge][(round(line.y / tolerance), _mask(line.text))] += 1

    def qualifies(edge: str, line: Line, strong: set[tuple[int, int]]) -> bool:
        if is_page_number(line.text):
            return True
        k, masked = round(line.y / tolerance), _mask(line.text)
        if sum(repeated[edge][(k + d, masked)] for d in (-1, 0, 1)) >= 2:
            return True
        if _EDGE_NUMBER.search(line.text.strip()):
            others = {(o.page, o.index) for o in near(edge, line.y) if o.page != line.page}
            return len(others & strong) >= 2
        return False

    found: set[tuple[int, int]] = set()
    for strict in (True, False):  # first the lines that qualify on their own, then those that lean on them
        for edge in ("top", "bottom"):
            blocked: set[int] = set()  # pages whose run of edge lines stopped: nothing further in qualifies
            for _, _depth, line in sorted((c for c in candidates if c[0] == edge), key=lambda c: c[1]):
                if line.page in blocked:
                    continue
                if (line.page, line.index) in found or qualifies(edge, line, found if not strict else set()):
                    found.add((line.page, line.index))
                else:
                    blocked.add(line.page)
    return found


def _mask(text: str) -> str:
    return _DIGITS.sub("#", " ".join(text.split()).lower())


# A run of four or more dots (spaced or not) before page numbers ("190, 733") or at the line's end.
_LEADER = re.compile(r"(?:\.\s?){4,}\s*(?:(?:\d+|[ivxlcdm]+)(?:\s*[,–-]\s*(?:\d+|[ivxlcdm]+))*)?\s*$", re.I)


def is_dot_leader(text: str) -> bool:
    """A line of a table of contents or an index: a title, dot leaders, a page number.

    Example: is_dot_leader("2.1 ASN.1 syntax. . . . . . . . 2") -> True; is_dot_leader("Wait....") -> False
    """
    match = _LEADER.search(text)
    return bool(match) and match.group().count(".") >= 4 and (bool(re.search(r"\d\s*$", text)) or match.group().count(".") >= 8)


# --- hyphenation ---

_WORD = re.compile(r"[^\W\d_]+")


class Hyphenation:
    """Decides whether "manip-" at a line's end and "ulation" at the next line's start are one word:
    yes when the joined word occurs elsewhere in the document or in a word list (pyspellchecker's,
    for English, when installed); no when the hyphenated compound occurs elsewhere ("well-known").

    Example: Hyphenation("the identifier of an iden-\\ntifier").joins("iden", "tifier") -> True
    """

    def __init__(self, text: str) -> None:
        # Words of the document outside line-end breaks, so a broken word is not its own evidence.
        unbroken = re.sub(r"[^\W\d_]+-[ \t]*\n[ \t]*[^\W\d_]+", " ", text)
        self.words = Counter(w.lower() for w in _WORD.findall(unbroken))
        self.compounds = Counter(m.lower() for m in re.findall(r"[^\W\d_]+(?:-[^\W\d_]+)+", unbroken))
        self._known = None

    def joins(self, left: str, right: str) -> bool:
        joined = (left + right).lower()
        if self.words[joined]:
            return True
        if self.compounds[f"{left}-{right}".lower()]:
            return False
        return joined in self._word_list(joined)

    def _word_list(self, word: str) -> set[str] | frozenset:
        if self._known is None:
            try:
                from spellchecker import SpellChecker
            except ImportError:
                self._known = frozenset()
            else:
                checker = SpellChecker(language="en")
                self._known = _Known(checker)
        return self._known


class _Known:
    """`word in known`: the spell checker's word list, case-insensitive."""

    def __init__(self, checker) -> None:
        self.checker = checker

    def __contains__(self, word: str) -> bool:
        return bool(self.checker.known([word]))
