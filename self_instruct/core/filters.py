"""Quality filters, each a small function returning the reason to drop an Example, or None.

The default list and its order reproduce Alpaca's post_process_gpt3_response: instruction
length, blacklisted words, "Write a program", punctuation or non-ASCII first character; we add
an empty-output check (Alpaca's released data holds empty outputs that slipped through).
"""
from __future__ import annotations

import re
import string
from typing import Callable, Iterable

from ..types import Example

Filter = Callable[[Example], "str | None"]

MIN_WORDS, MAX_WORDS = 3, 150
# Tasks a text-only model cannot do: Alpaca's 18 entries and the plurals it lacked (a task about
# "videos" is no more doable than one about a "video"). Matched as whole words, any case, so
# "mapping", "imagery" and "filesystem" pass.
BLACKLIST = (
    "image", "images", "graph", "graphs", "picture", "pictures", "file", "files", "map", "maps",
    "draw", "draws", "plot", "plots", "go to", "video", "videos", "audio", "audios", "music", "musics",
    "flowchart", "flowcharts", "diagram", "diagrams",
)
_BLACKLIST_RE = re.compile(r"\b(" + "|".join(map(re.escape, BLACKLIST)) + r")\b", re.IGNORECASE)


def too_short(ex: Example) -> str | None:
    """Example: too_short(Example("Summarize this text")) -> "too_short" (3 words)"""
    return "too_short" if len(ex.instruction.split()) <= MIN_WORDS else None


def too_long(ex: Example) -> str | None:
    return "too_long" if len(ex.instruction.split()) > MAX_WORDS else None


def blacklisted(ex: Example) -> str | None:
    """Example: blacklisted(Example("Draw a map of your town")) -> "blacklist" """
    return "blacklist" if _BLACKLIST_RE.search(ex.instruction) else None


def write_a_program(ex: Example) -> str | None:
    # Alpaca saw the model tack "Write a program" tasks on at the end of lists.
    return "write_a_program" if ex.instruction.startswith("Write a program") else None


def punctuation_start(ex: Example) -> str | None:
    return "punctuation_start" if ex.instruction[:1] in string.punctuation and ex.instruction else None


def non_ascii_start(ex: Example) -> str | None:
    """Alpaca's only language check: the first character must be ASCII."""
    return "non_ascii_start" if ex.instruction and not ex.instruction[0].isascii() else None


def empty_output(ex: Example) -> str | None:
    return "empty_output" if not ex.output.strip() else None


DEFAULT_FILTERS: tuple[Filter, ...] = (
    too_short, too_long, blacklisted, write_a_program, punctuation_start, non_ascii_start, empty_output,
)


def first_rejection(ex: Example, filters: Iterable[Filter] = DEFAULT_FILTERS) -> str | None:
    """Run the filters in order and return the first reason to drop, or None to keep."""
    for check in filters:
        reason = check(ex)
        if reason:
            return reason
    return None


def blacklist_word(text: str) -> str | None:
    """Which blacklisted word a text holds, for the reject record. Example: "Plot sales" -> "plot" """
    m = _BLACKLIST_RE.search(text)
    return m.group(1).lower() if m else None


def duplicate_key(instruction: str) -> str:
    """The key under which two instructions are exact duplicates, including texts ROUGE-L cannot
    see (no ASCII letters): whitespace collapsed, case folded.

    Example: duplicate_key("  Name THREE  colors. ") -> "name three colors."
    """
    return re.sub(r"\s+", " ", instruction).strip().casefold()
