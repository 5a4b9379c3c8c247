"""Quality filters, each a small function returning the reason to drop an Example, or None,
and the named sets of them that fit each kind of data (`FilterSet`).

Alpaca's list and its order reproduce its post_process_gpt3_response: instruction length,
blacklisted words, "Write a program", punctuation or non-ASCII first character; we add an
empty-output check (Alpaca's released data holds empty outputs that slipped through). Those
judge instructions a model made up; a document's own sentences and the questions asked of a
passage are another kind of text (a file-format spec says "file", dialogue opens with a quote),
so each pipeline names the set that fits what it makes:

    FILTER_SETS["alpaca"]     generated instructions: Alpaca's filters, instruction duplicates, ROUGE-L
    FILTER_SETS["grounded"]   questions and tasks on a passage: length only; duplicates by instruction and input
    FILTER_SETS["coverage"]   a document's own text (sentence windows): empty text and exact copies only

A user's own filter is any callable of an Example: `load_filter("my_checks:no_urls")`.
"""
from __future__ import annotations

import hashlib
import importlib
import importlib.util
import os
import re
import string
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterable

from ..errors import ConfigError
from ..types import Example

Filter = Callable[[Example], "str | tuple[str, str] | None"]

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


def output_copies_input(ex: Example) -> str | None:
    """An output that only repeats its input (or its instruction), whitespace and case aside: a
    small model's commonest non-answer. Off in Alpaca's set; the embedded teacher turns it on.

    Example: output_copies_input(Example("Fix the typo.", "Teh cat.", "teh  cat.")) -> "output_copies_input"
    """
    out = duplicate_key(ex.output)
    copied = out and (out == duplicate_key(ex.input) or out == duplicate_key(ex.instruction))
    return "output_copies_input" if copied else None


DEFAULT_FILTERS: tuple[Filter, ...] = (
    too_short, too_long, blacklisted, write_a_program, punctuation_start, non_ascii_start, empty_output,
)
ALPACA_FILTERS = DEFAULT_FILTERS

# A question or task on a passage needs two words ("Define entropy."); one word ("True") is no
# instruction. Alpaca's four-word floor would drop "What is RAM?".
MIN_GROUNDED_WORDS = 2


def empty_instruction(ex: Example) -> str | None:
    return "empty_instruction" if not ex.instruction.strip() else None


def one_word(ex: Example) -> str | None:
    """Example: one_word(Example("True")) -> "too_short"; one_word(Example("Define entropy.")) -> None"""
    return "too_short" if len(ex.instruction.split()) < MIN_GROUNDED_WORDS else None


def empty_text(ex: Example) -> str | None:
    """A pair with nothing on one side: no instruction or no output."""
    return empty_instruction(ex) or empty_output(ex)


GROUNDED_FILTERS: tuple[Filter, ...] = (empty_instruction, one_word, too_long, empty_output)
COVERAGE_FILTERS: tuple[Filter, ...] = (empty_text,)


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


# --- what makes two records the same ---

def instruction_key(ex: Example) -> str:
    """Alpaca's: the same instruction is a duplicate, whatever its answer."""
    return duplicate_key(ex.instruction)


def prompt_key(ex: Example) -> str:
    """The same instruction on the same input: "Summarize the passage." on two chunks is two tasks."""
    return duplicate_key(ex.instruction) + "\x00" + duplicate_key(ex.input)


def record_key(ex: Example) -> str:
    """The same text on every side, exactly: only a verbatim copy of a pair is a duplicate."""
    return "\x00".join((ex.instruction, ex.input, ex.output))


def key_digest(key: str) -> bytes:
    """What a judge remembers of a key: 16 bytes, whatever the text's length (a window's output
    can be pages long, and a book has tens of thousands of them)."""
    return hashlib.blake2b(key.encode("utf-8", "surrogatepass"), digest_size=16).digest()


# --- the sets ---

@dataclass(frozen=True)
class FilterSet:
    """What a pipeline's candidates must pass: `filters` in order, then no exact duplicate by
    `key`, then, where `threshold` is a number, no ROUGE-L F-measure above it against any known
    instruction (None: no similarity check unless the run asks for one)."""

    name: str
    filters: tuple[Filter, ...]
    key: Callable[[Example], str]
    threshold: float | None


ALPACA = FilterSet("alpaca", ALPACA_FILTERS, instruction_key, 0.7)
GROUNDED = FilterSet("grounded", GROUNDED_FILTERS, prompt_key, None)
COVERAGE = FilterSet("coverage", COVERAGE_FILTERS, record_key, None)
FILTER_SETS = {s.name: s for s in (ALPACA, GROUNDED, COVERAGE)}


# --- a user's own filters ---

def load_filters(specs: str | Iterable[str] | None, flag: str = "--filter") -> tuple[Filter, ...]:
    """The filters a flag names, comma-separated: `module:function` (a module on the import path)
    or `path/to/file.py:function`. Each must be a callable taking an Example and returning a reason
    to drop it (a short name, or a (name, detail) pair) or None. A spec that does not resolve is a
    ConfigError naming the flag; so is a filter that raises or returns anything else, when it runs.

    Example: load_filters("self_instruct.core.filters:blacklisted") -> (<filter --filter self_instruct.core.filters:blacklisted>,)
    """
    if specs is None:
        return ()
    items = specs.split(",") if isinstance(specs, str) else list(specs)
    return tuple(_load_filter(str(spec).strip(), flag) for spec in items if str(spec).strip())


def _load_filter(spec: str, flag: str) -> Filter:
    where, sep, name = spec.rpartition(":")
    if not sep or not where or not name:
        raise ConfigError(f"{flag} {spec}: expected module:function or path/to/file.py:function")
    if where.endswith(".py") and not Path(where).is_file():
        raise ConfigError(f"{flag} {spec}: no such file: {where}")
    try:
        module = _import_file(Path(where)) if where.endswith(".py") else _import_module(where)
    except Exception as exc:  # an import can fail any way the user's code does
        raise ConfigError(f"{flag} {spec}: cannot import {where} ({type(exc).__name__}: {exc})") from None
    check = getattr(module, name, None)
    if not callable(check):
        raise ConfigError(f"{flag} {spec}: {where} has no function {name}")
    return _Checked(check, f"{flag} {spec}")


def _import_module(name: str):
    """A module on the import path, or else in the current directory (as `python -m` finds it;
    a console script's path does not hold the directory it was started in)."""
    try:
        return importlib.import_module(name)
    except ModuleNotFoundError as exc:
        if exc.name != name.partition(".")[0] or os.getcwd() in sys.path:
            raise
        sys.path.append(os.getcwd())
        return importlib.import_module(name)


def _import_file(path: Path):
    name = f"self_instruct_filter_{hashlib.sha1(str(path.resolve()).encode()).hexdigest()[:12]}"
    if name in sys.modules:  # checked when the flags were, and again by the run's judge: run the file once
        return sys.modules[name]
    spec = importlib.util.spec_from_file_location(name, path)
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    try:
        spec.loader.exec_module(module)
    except BaseException:
        del sys.modules[name]
        raise
    return module


class _Checked:
    """A user's filter whose failures name the flag that brought it in, rather than crash a run
    with a traceback from the judge's thread."""

    def __init__(self, check: Callable, where: str):
        self.check, self.where = check, where
        self.__name__ = getattr(check, "__name__", "filter")

    def __call__(self, ex: Example) -> str | tuple[str, str] | None:
        try:
            reason = self.check(ex)
        except Exception as exc:
            raise ConfigError(f"{self.where} raised {type(exc).__name__}: {exc}") from None
        if reason is None or reason == "" or (isinstance(reason, str) and reason.strip()):
            return reason or None
        if isinstance(reason, tuple) and len(reason) == 2 and all(isinstance(r, str) for r in reason) and reason[0].strip():
            return reason
        raise ConfigError(f"{self.where} returned {reason!r}: a filter returns None, a reason, or a (reason, detail) pair")

    def __repr__(self) -> str:
        return f"<filter {self.where}>"
