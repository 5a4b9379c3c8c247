"""The documents pipeline: each chunk of a user's documents becomes instruction records.

Modes (a unit is one chunk, in the order of `chunk_documents`):
- qa: the teacher writes question/answer pairs grounded in the chunk, as a JSON array of
  {"question", "answer"} objects; a number per chunk that grows with its length.
- instruct: Dolly-style tasks (closed QA, summarization, information extraction,
  classification, brainstorming, creative writing) with the chunk as their context.
- backtranslate: the chunk is the answer; the teacher writes the instruction it answers
  (instruction backtranslation, for text that is already good output). With
  `backtranslate_unit="paragraph"` each paragraph of the chunk is an answer of its own, asked
  for at once (see `answer_spans`).
- windows: no teacher. Every n-th sentence of a section is an instruction and the n-1
  sentences after it its output, each an exact slice of the document; each heading with its
  whole section is a coarser pair. Here a unit is the windows of consecutive sections, about
  WINDOW_UNIT_CHARS of text.

In qa and instruct a second, short call asks the teacher whether each answer is supported by
its chunk; unsupported ones are rejected as `ungrounded`. Prompts are built and replies parsed
by pure functions below; `DocumentsPipeline.run_unit` only wires them through the engine's
`ask`, so concurrency, budgets, caching, filters, dedup and the pool stay the engine's. Which
filters fit is the pipeline's to say (`filter_set`): windows are a coverage task, where only empty
text and verbatim copies are dropped; qa, instruct and backtranslate are held to the grounded set,
not to Alpaca's blacklist and ROUGE-L, which judge made-up instructions.
"""
from __future__ import annotations

import asyncio
import json
import re
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any, Sequence

from ..core.filters import COVERAGE, GROUNDED, FilterSet
from ..core.replies import reply_list
from ..core.templates import fill, load_template
from ..errors import ConfigError
from ..sources.chunking import Chunk
from ..types import Decoding, Example, Rejection
from .base import Ask, Pipeline, UnitResult

MODES = ("qa", "instruct", "backtranslate", "windows")
# Dolly's categories that a passage can ground (open_qa and general_qa need none).
CATEGORIES = ("closed_qa", "summarization", "information_extraction", "classification", "brainstorming", "creative_writing")
UNITS = ("chunk", "paragraph")  # what one backtranslated answer is
# Words a paragraph needs to be an answer by itself; shorter ones join the next (a heading-like
# line or a one-sentence transition is no answer to anything).
MIN_PARAGRAPH_WORDS = 40
# Characters of sections in one windows unit: about 30 pages.
WINDOW_UNIT_CHARS = 100_000
# Appended to a prompt whose first reply did not parse: it nudges the teacher, and a prompt
# that differs from the first is not answered from the response cache.
RETRY_NOTE = "\n\nYour previous reply could not be read as JSON. Reply with the JSON only, nothing before or after it."


# --- prompts ---

def source_label(chunk: Chunk) -> str:
    """Example: 'garden.pdf, section "Part One > Soil", page 3'"""
    label = Path(chunk.source).name
    if chunk.headings:
        label += f', section "{" > ".join(chunk.headings)}"'
    if chunk.page is not None:
        label += f", page {chunk.page}" if chunk.last_page in (None, chunk.page) else f", pages {chunk.page}-{chunk.last_page}"
    return label


def count_for(tokens: int, per_chunk: int | None, per_1k_tokens: float) -> int:
    """Questions (or tasks) to ask of a chunk: a fixed number, or a rate per 1,000 tokens, at least 1.

    Example: count_for(512, None, 6.0) -> 3; count_for(512, 4, 6.0) -> 4
    """
    return per_chunk if per_chunk else max(1, round(per_1k_tokens * tokens / 1000))


def categories_for(chunk_index: int, count: int) -> list[str]:
    """Categories of a chunk's tasks: Dolly's six in turn, starting one further each chunk, so
    every category is asked for equally often across a document.

    Example: categories_for(1, 3) -> ['summarization', 'information_extraction', 'classification']
    """
    return [CATEGORIES[(chunk_index + k) % len(CATEGORIES)] for k in range(count)]


def qa_prompt(chunk: Chunk, count: int, template: str) -> str:
    return fill(template, chunk=chunk.text, num_questions=count, source=source_label(chunk))


def instruct_prompt(chunk: Chunk, categories: Sequence[str], template: str) -> str:
    return fill(template, chunk=chunk.text, num_tasks=len(categories), categories=", ".join(categories),
                source=source_label(chunk))


def backtranslate_prompt(chunk: Chunk, template: str, text: str | None = None) -> str:
    """`text`: a paragraph of the chunk to backtranslate instead of the whole chunk."""
    return fill(template, chunk=chunk.text if text is None else text, source=source_label(chunk))


def verify_prompt(chunk: Chunk, examples: Sequence[Example], template: str) -> str:
    """The grounding check: every candidate numbered from 1, with its category in instruct mode."""
    items = []
    for k, ex in enumerate(examples, 1):
        category = ex.metadata.get("category")
        items.append(f"{k}." + (f" [{category}]" if category else "") + f"\nQuestion: {ex.instruction}\nAnswer: {ex.output}")
    return fill(template, chunk=chunk.text, items="\n\n".join(items), source=source_label(chunk))


# --- reply shapes ---

# The longest text a shaped reply may put in one field, in characters. A small model that runs on
# inside a string would otherwise spend max_tokens there and leave the JSON unclosed; each sits
# well above what the prompts ask for: a question or instruction of a sentence or two, an answer
# of one to four sentences, a task's response (a summary, a short poem or letter). llama.cpp
# refuses the grammar of a longer cap than 1,000 (too many nested repetitions).
SHORT_TEXT, ANSWER_TEXT, LONG_TEXT = 300, 800, 1000


@dataclass(frozen=True, slots=True)
class ShapedDecoding(Decoding):
    """Decoding options for a reply in JSON of a known shape: `schema` is a JSON Schema, as text
    so the options stay hashable. A teacher that can hold its decoding to a schema (the embedded
    model, through a llama.cpp grammar) does; an HTTP teacher sends JSON mode (`json`) only. The
    reply cache keys on every field, the schema included: it changes what comes back."""

    schema: str = ""


def shaped(decoding: Decoding, schema: dict) -> ShapedDecoding:
    """`decoding` asking for JSON of `schema`.

    Example: shaped(Decoding(max_tokens=64), {"type": "boolean"})
    -> ShapedDecoding(max_tokens=64, temperature=1.0, ..., json=True, schema='{"type": "boolean"}')
    """
    return ShapedDecoding(**asdict(decoding) | {"json": True, "schema": json.dumps(schema)})


def _text(limit: int) -> dict:
    return {"type": "string", "minLength": 1, "maxLength": limit}


def _record(**properties: dict) -> dict:
    """An object with exactly these properties, in this order (a grammar writes them so)."""
    return {"type": "object", "properties": properties, "required": list(properties), "additionalProperties": False}


# The shapes are the ones the prompts show (a bare array; backtranslate's one object), which
# `parse_items` and `parse_grounding` read directly, rather than an object wrapping an array as
# OpenAI's JSON mode would force: a grammar can start at an array, and a model held to the form
# its prompt shows follows it more easily than one pushed into another.

def qa_schema(count: int) -> dict:
    """Exactly `count` {"question", "answer"} objects, as the qa prompt asks."""
    item = _record(question=_text(SHORT_TEXT), answer=_text(ANSWER_TEXT))
    return {"type": "array", "items": item, "minItems": count, "maxItems": count}


def instruct_schema(categories: Sequence[str]) -> dict:
    """One {"category", "instruction", "response"} object per category, in the order asked for,
    each with its category written in."""
    tasks = [_record(category={"const": c}, instruction=_text(SHORT_TEXT), response=_text(LONG_TEXT)) for c in categories]
    return {"type": "array", "prefixItems": tasks, "items": False}


def backtranslate_schema() -> dict:
    return _record(instruction=_text(SHORT_TEXT))


def verify_schema(count: int) -> dict:
    """One {"id": k, "supported": true|false} per item, ids 1..count in order: only the verdicts are left to the model."""
    verdicts = [_record(id={"const": k}, supported={"type": "boolean"}) for k in range(1, count + 1)]
    return {"type": "array", "prefixItems": verdicts, "items": False}


# --- replies ---

def parse_items(text: str, fields: Sequence[str]) -> tuple[list[dict[str, str]], list[Rejection]]:
    """The objects of a reply that hold every field as text, and a rejection for each that does not.

    Example: parse_items('[{"question": "Q?", "answer": "A."}, {"question": "R?"}]', ("question", "answer"))
    -> ([{'question': 'Q?', 'answer': 'A.'}], [Rejection('missing_field', raw='{"question": "R?"}', ...)])
    """
    def missing(item: Any) -> list[str]:
        return [f for f in fields if not (isinstance(item, dict) and isinstance(item.get(f), str) and item[f].strip())]

    items, rejections = [], []
    for item in reply_list(text, (dict,), lambda d: any(f in d for f in fields)):
        if missing(item):
            rejections.append(Rejection("missing_field", raw=json.dumps(item, ensure_ascii=False)[:2000],
                                        detail=f"needs text in {', '.join(missing(item))}"))
        else:
            items.append({k: v.strip() if k in fields else v for k, v in item.items()})
    return items, rejections


def parse_grounding(text: str, count: int) -> list[bool | None]:
    """One verdict per item (True supported, False not, None not given) from the check's reply:
    objects with "id" and "supported" (true/false or "yes"/"no"), or bare booleans in order.

    Example: parse_grounding('[{"id": 2, "supported": "no"}, {"id": 1, "supported": true}]', 3) -> [True, False, None]
    """
    verdicts: list[bool | None] = [None] * count
    for position, item in enumerate(reply_list(text, (dict, bool), lambda d: "supported" in d)):
        slot, answer = position, item
        if isinstance(item, dict):
            number = str(item.get("id", ""))
            slot = int(number) - 1 if number.isdigit() else position
            answer = item.get("supported")
        if isinstance(answer, str):
            answer = {"yes": True, "true": True, "no": False, "false": False}.get(answer.strip().lower())
        if 0 <= slot < count and isinstance(answer, bool):
            verdicts[slot] = answer
    return verdicts


_META = re.compile(
    r"\b(?:(?:according to|in|from|based on|by|of|within)\s+(?:the|this|that)\s+(?:given\s+|above\s+|provided\s+|following\s+)?"
    r"(?:text|passage|excerpt|extract|document|article|context|paragraph|snippet|chunk|reading|author)s?"
    r"|(?:this|the above|the given|the provided)\s+(?:text|passage|excerpt|extract|document|article|paragraph|snippet|section|chunk)"
    r"|the author|the passage)\b",
    re.IGNORECASE,
)


def meta_reference(question: str) -> str | None:
    """The words by which a question leans on a text the reader of the data set will not have.

    Example: meta_reference("According to the passage, when do tomatoes ripen?") -> 'According to the passage'
    """
    match = _META.search(question)
    return match.group(0) if match else None


# --- backtranslated paragraphs ---

_BLANK_LINE = re.compile(r"\n\s*\n")


def chunk_paragraphs(chunk: Chunk, since: int) -> list[tuple[int, int]]:
    """Source spans of the chunk's paragraphs that start at or after `since` (the end of the
    chunk before it, so the sentences it repeats as overlap are left to that one). Sentences
    never cross a blank line, so a paragraph is a run of sentences with no blank line between.

    Example: for a chunk "A b. C d.\\n\\nE f." at offset 100, since 100 -> [(100, 109), (111, 115)]
    """
    spans: list[tuple[int, int]] = []
    for start, end in chunk.sentences:
        if start < since:
            continue
        if spans and not _BLANK_LINE.search(chunk.text, spans[-1][1] - chunk.start, start - chunk.start):
            spans[-1] = (spans[-1][0], end)
        else:
            spans.append((start, end))
    return spans


def merge_short(spans: Sequence[tuple[int, int]], words: Sequence[int], minimum: int) -> list[tuple[int, int, int]]:
    """Join consecutive spans until each holds `minimum` words: a short one joins the next; a
    short last one joins the one before it; if all together are short, they are one. Returns
    (start, end, how many spans joined); nothing is dropped.

    Example: merge_short([(0, 9), (11, 60), (62, 70)], [3, 45, 2], 40) -> [(0, 70, 3)]
    """
    merged: list[tuple[int, int, int]] = []
    first, total = 0, 0
    for k, n in enumerate(words):
        total += n
        if total >= minimum:
            merged.append((spans[first][0], spans[k][1], k + 1 - first))
            first, total = k + 1, 0
    if first < len(spans):  # a short tail
        if merged:
            start, _, joined = merged.pop()
            merged.append((start, spans[-1][1], joined + len(spans) - first))
        else:
            merged.append((spans[first][0], spans[-1][1], len(spans) - first))
    return merged


def answer_spans(chunk: Chunk, since: int, minimum: int) -> tuple[tuple[int, int, int, int], ...]:
    """The answers of a chunk backtranslated by paragraph: (start, end) in the source and the
    range [i, j) of the chunk's new paragraphs each one holds."""
    spans = chunk_paragraphs(chunk, since)
    words = [len(chunk.text[a - chunk.start:b - chunk.start].split()) for a, b in spans]
    answers, first = [], 0
    for start, end, joined in merge_short(spans, words, minimum):
        answers.append((start, end, first, first + joined))
        first += joined
    return tuple(answers)


# --- windows ---

def window_count(count: int, n: int) -> int:
    """How many windows a section of `count` sentences has (see window_ranges).

    Example: window_count(11, 5) -> 2; window_count(12, 5) -> 3; window_count(1, 5) -> 0
    """
    if count < 2:
        return 0
    windows = -(-count // n)
    return windows - 1 if count % n == 1 else windows


def window_range(count: int, n: int, k: int) -> tuple[int, int]:
    """Sentence range [i, j) of window k of a section of `count` sentences."""
    return k * n, count if k == window_count(count, n) - 1 else k * n + n


def window_ranges(count: int, n: int) -> list[tuple[int, int]]:
    """Sentence ranges [i, j) of the window pairs of a section of `count` sentences: sentence i
    is the instruction, i+1..j-1 its output. A last window of one sentence has no output, so
    that sentence joins the window before it; every sentence is in exactly one range. A section
    of one sentence has no window (its heading pair holds it).

    Example: window_ranges(11, 5) -> [(0, 5), (5, 11)]; window_ranges(12, 5) -> [(0, 5), (5, 10), (10, 12)]
    """
    return [window_range(count, n, k) for k in range(window_count(count, n))]


def window_examples(chunk: Chunk, n: int, windows: tuple[int, int] | None = None, heading: bool = True) -> list[Example]:
    """The pairs of one section (a chunk spanning it): its sentence windows (those numbered
    [first, last) of `windows`, default all), then, with `heading`, the heading pair: the
    heading path as instruction (the path rather than the last heading, since "Summary" ends
    many chapters), the whole section as output. Every text is an exact slice of the document,
    line breaks and all, and a window names the pages of its own first and last character."""
    count = len(chunk.sentences)
    first, last = windows if windows is not None else (0, window_count(count, n))
    provenance = chunk.provenance()
    provenance["section"] = provenance.pop("chunk")  # here a chunk spans its section

    def text(a: int, b: int) -> str:
        return chunk.text[a - chunk.start:b - chunk.start]

    examples = []
    for k in range(first, last):
        i, j = window_range(count, n, k)
        (start, instruction_end), output_start, end = chunk.sentences[i], chunk.sentences[i + 1][0], chunk.sentences[j - 1][1]
        raw_start, raw_end = chunk.original(start, end)  # offsets into the raw extraction, as the chunk's are
        meta = provenance | {"page": chunk.page_at(start), "last_page": chunk.page_at(end - 1), "mode": "windows",
                             "kind": "window", "start": raw_start, "end": raw_end, "sentences": [i, j]}
        examples.append(Example(text(start, instruction_end), "", text(output_start, end), meta))
    if heading and chunk.headings:
        meta = provenance | {"mode": "windows", "kind": "heading"}
        examples.append(Example(" > ".join(chunk.headings), "", chunk.text, meta))
    return examples


# --- the pipeline ---

@dataclass(frozen=True, slots=True)
class SectionPart:
    """Windows [first, last) of a section, and whether its heading pair comes with them (it
    comes with the section's last part)."""

    section: Chunk
    first: int
    last: int
    heading: bool


@dataclass(frozen=True, slots=True)
class WindowsUnit:
    """Windows mode's work: the windows of consecutive sections, about WINDOW_UNIT_CHARS of
    text. No teacher is asked, so a unit is as big as makes writing it to disk cheap (each unit
    is fsynced: 230 one-section units of a book waited 25 s on the disk here), and no bigger: a
    book with no headings is one section, split across units."""

    index: int
    parts: tuple[SectionPart, ...]
    requests: int = 0


def plan_windows(sections: Sequence[Chunk], n: int, chars: int) -> list[tuple[SectionPart, ...]]:
    """The units of windows mode: sections in order, whole where they fit, cut between windows
    where a unit reaches `chars` characters of text (a heading pair counts its section's).

    Example: five sections of one 31-character window each, no headings, chars=70 -> units of 3 and 2 sections
    """
    units: list[tuple[SectionPart, ...]] = []
    parts: list[SectionPart] = []
    size = 0
    for section in sections:
        spans, count = section.sentences, window_count(len(section.sentences), n)
        first = 0
        for k in range(count):
            i, j = window_range(len(spans), n, k)
            size += spans[j - 1][1] - spans[i][0]
            if size >= chars and k + 1 < count:  # the unit is full, the section goes on in the next
                units.append((*parts, SectionPart(section, first, k + 1, False)))
                parts, size, first = [], 0, k + 1
        parts.append(SectionPart(section, first, count, True))
        size += len(section.text) if section.headings else 0
        if size >= chars:
            units.append(tuple(parts))
            parts, size = [], 0
    return units + [tuple(parts)] if parts else units


@dataclass(frozen=True, slots=True)
class ChunkUnit:
    """One chunk's work: what to ask for (`count` questions or tasks, or in backtranslate by
    paragraph the `answers` of `answer_spans`) and the teacher calls it has in flight at once."""

    index: int
    chunk: Chunk
    count: int
    requests: int
    answers: tuple[tuple[int, int, int, int], ...] = ()


@dataclass
class DocumentSettings:
    """The mode's options (the command's flags of the same names)."""

    mode: str = "qa"
    questions_per_chunk: int | None = None
    questions_per_1k_tokens: float = 6.0
    open_book: bool = False
    verify: bool = True
    window: int = 5
    backtranslate_unit: str = "chunk"
    min_paragraph_words: int = MIN_PARAGRAPH_WORDS
    prompt_path: str | None = None
    verify_prompt_path: str | None = None

    def validate(self) -> None:
        if self.mode not in MODES:
            raise ConfigError(f"--mode must be one of {', '.join(MODES)} (got {self.mode!r})")
        if self.backtranslate_unit not in UNITS:
            raise ConfigError(f"--backtranslate_unit must be one of {', '.join(UNITS)} (got {self.backtranslate_unit!r})")
        if self.by_paragraph and self.mode != "backtranslate":
            raise ConfigError(f"--backtranslate_unit paragraph needs --mode backtranslate (got --mode {self.mode})")
        if not isinstance(self.min_paragraph_words, int) or isinstance(self.min_paragraph_words, bool) or self.min_paragraph_words < 1:
            raise ConfigError(f"--min_paragraph_words must be a positive whole number (got {self.min_paragraph_words!r})")
        if self.questions_per_chunk is not None and (not isinstance(self.questions_per_chunk, int) or self.questions_per_chunk < 1):
            raise ConfigError(f"--questions_per_chunk must be a positive whole number (got {self.questions_per_chunk!r})")
        if not isinstance(self.questions_per_1k_tokens, (int, float)) or self.questions_per_1k_tokens <= 0:
            raise ConfigError(f"--questions_per_1k_tokens must be a positive number (got {self.questions_per_1k_tokens!r})")
        if not isinstance(self.window, int) or self.window < 2:
            raise ConfigError(f"--window must be a whole number of at least 2 (got {self.window!r})")

    @property
    def uses_teacher(self) -> bool:
        return self.mode != "windows"

    @property
    def by_paragraph(self) -> bool:
        return self.backtranslate_unit == "paragraph"

    @property
    def verifies(self) -> bool:
        return self.verify and self.mode in ("qa", "instruct")


class DocumentsPipeline(Pipeline):
    """Units are chunks, numbered as `chunk_documents` numbered them; in windows mode, groups of
    sections (`chunks` are then whole sections)."""

    name = "documents"

    def __init__(self, chunks: Sequence[Chunk], settings: DocumentSettings, decoding: Decoding | None = None):
        settings.validate()
        self.chunks, self.settings = list(chunks), settings
        self.decoding = decoding
        self.unit_name = "chunk" if settings.uses_teacher else "section group"
        self.groups = [] if settings.uses_teacher else plan_windows(self.chunks, settings.window, WINDOW_UNIT_CHARS)
        self.template = load_template(f"documents_{settings.mode}.txt", settings.prompt_path) if settings.uses_teacher else ""
        self.verify_template = (load_template("documents_verify.txt", settings.verify_prompt_path, "--verify_prompt_path")
                                if settings.verifies else "")

    @property
    def unit_count(self) -> int:
        return len(self.chunks) if self.settings.uses_teacher else len(self.groups)

    @property
    def filter_set(self) -> FilterSet:
        """What the judge holds this mode's records to: a document's own sentences are kept
        whatever their words (coverage); questions and tasks on a passage are checked for length,
        and grounding and standalone questions are checked here, before the judge (grounded)."""
        return COVERAGE if self.settings.mode == "windows" else GROUNDED

    def unit(self, index: int, pool: Any = None) -> ChunkUnit | WindowsUnit | None:
        if index >= self.unit_count:
            return None
        if not self.settings.uses_teacher:
            return WindowsUnit(index, self.groups[index])
        chunk = self.chunks[index]
        if self.settings.by_paragraph:
            # every paragraph's request goes at once, so all of them are in flight together
            answers = answer_spans(chunk, self.new_text_start(index), self.settings.min_paragraph_words)
            return ChunkUnit(index, chunk, len(answers), requests=len(answers), answers=answers)
        count = 1 if self.settings.mode == "backtranslate" else count_for(
            chunk.tokens, self.settings.questions_per_chunk, self.settings.questions_per_1k_tokens)
        # The engine counts `requests` as in flight until each returns; a chunk's calls go one
        # after another (the check needs the reply), so one is in flight at a time. Counting 2
        # held the server at half the concurrency (benchmarks/documents.py: 50% against 84% of
        # the bound).
        return ChunkUnit(index, chunk, count, requests=1)

    def requests(self, unit: ChunkUnit | WindowsUnit) -> int:
        return unit.requests

    def new_text_start(self, index: int) -> int:
        """Where chunk `index`'s own text starts: after the sentences it shares with the chunk
        before it (the overlap), which that chunk answers for."""
        chunk = self.chunks[index]
        before = self.chunks[index - 1] if index else None
        if before is not None and before.source == chunk.source and before.start <= chunk.start < before.end:
            return before.end
        return chunk.start

    def prompts(self, unit: ChunkUnit) -> list[str]:
        """The first prompt of each request a chunk makes: one, or one a paragraph."""
        mode, chunk = self.settings.mode, unit.chunk
        if mode == "qa":
            return [qa_prompt(chunk, unit.count, self.template)]
        if mode == "instruct":
            return [instruct_prompt(chunk, categories_for(chunk.index, unit.count), self.template)]
        if unit.answers:
            return [backtranslate_prompt(chunk, self.template, text=self.answer_text(chunk, a)) for a in unit.answers]
        return [backtranslate_prompt(chunk, self.template)]

    def prompt(self, unit: ChunkUnit) -> str:
        """The first prompt a chunk sends (what --dry_run shows)."""
        return self.prompts(unit)[0]

    @staticmethod
    def answer_text(chunk: Chunk, answer: tuple[int, int, int, int]) -> str:
        return chunk.text[answer[0] - chunk.start:answer[1] - chunk.start]

    async def run_unit(self, unit: ChunkUnit | WindowsUnit, ask: Ask) -> UnitResult:
        if isinstance(unit, WindowsUnit):
            return UnitResult([e for part in unit.parts
                               for e in window_examples(part.section, self.settings.window, (part.first, part.last),
                                                        part.heading)])
        if unit.answers:
            return await self._backtranslate_paragraphs(unit, ask)
        fields = {"qa": ("question", "answer"), "instruct": ("instruction", "response"),
                  "backtranslate": ("instruction",)}[self.settings.mode]
        items, rejections = await self._ask_items(self.prompt(unit), fields, self.writing_decoding(unit), ask)
        examples = []
        for item in items:
            example = self._example(unit.chunk, item)
            reference = meta_reference(example.instruction) if self.settings.mode == "qa" else None
            if reference:
                rejections.append(Rejection("not_standalone", example, detail=f"leans on the source: {reference!r}"))
            else:
                examples.append(example)
        if self.settings.verifies and examples:
            examples, ungrounded = await self._check_grounding(unit.chunk, examples, ask)
            rejections += ungrounded
        # a reply that failed or did not parse still names the chunk it was about
        where = unit.chunk.provenance() | {"mode": self.settings.mode}
        return UnitResult(examples, [r if r.example is not None else replace(r, metadata=where) for r in rejections])

    async def _backtranslate_paragraphs(self, unit: ChunkUnit, ask: Ask) -> UnitResult:
        """One request a paragraph, all at once. Every request is waited for before an error
        (the budget's refusal) is passed on, so none is left running behind the unit."""
        decoding = self.writing_decoding(unit)
        replies = await asyncio.gather(*(self._ask_items(p, ("instruction",), decoding, ask) for p in self.prompts(unit)),
                                       return_exceptions=True)
        errors = [r for r in replies if isinstance(r, BaseException)]
        if errors:
            raise errors[0]
        result = UnitResult()
        for answer, (items, rejections) in zip(unit.answers, replies):
            start, end, first, last = answer
            meta = unit.chunk.provenance() | {"mode": "backtranslate", "unit": "paragraph",
                                              **dict(zip(("start", "end"), unit.chunk.original(start, end))),
                                              "paragraphs": [first, last]}
            result.examples += [Example(item["instruction"], "", self.answer_text(unit.chunk, answer), dict(meta))
                                for item in items]
            # a reply that failed or did not parse names its paragraph and where it lies in the source
            where = f"paragraph {first}" if last - first == 1 else f"paragraphs {first}-{last - 1}"
            result.rejections += [replace(r, detail=f"{where} ({start}:{end}): {r.detail}",
                                          metadata=r.metadata if r.example is not None else dict(meta))
                                  for r in rejections]
        return result

    def writing_decoding(self, unit: ChunkUnit) -> Decoding | None:
        """The run's decoding (None: the engine's), asking for the JSON shape of the unit's reply."""
        if self.decoding is None:
            return None
        mode = self.settings.mode
        schema = (qa_schema(unit.count) if mode == "qa" else
                  instruct_schema(categories_for(unit.chunk.index, unit.count)) if mode == "instruct" else
                  backtranslate_schema())
        return shaped(self.decoding, schema)

    @staticmethod
    def check_decoding(count: int) -> Decoding:
        """Greedy, in JSON mode where the server has one, and room for `count` short verdicts."""
        return shaped(Decoding(max_tokens=32 + 16 * count, temperature=0.0), verify_schema(count))

    def _example(self, chunk: Chunk, item: dict[str, str]) -> Example:
        meta = chunk.provenance() | {"mode": self.settings.mode}
        if self.settings.mode == "qa":
            return Example(item["question"], chunk.text if self.settings.open_book else "", item["answer"], meta)
        if self.settings.mode == "instruct":
            category = str(item.get("category", "")).strip().lower().replace(" ", "_")
            return Example(item["instruction"], chunk.text, item["response"], meta | {"category": category})
        return Example(item["instruction"], "", chunk.text, meta)

    async def _ask_items(self, prompt: str, fields: Sequence[str], decoding: Decoding | None,
                         ask: Ask) -> tuple[list[dict], list[Rejection]]:
        """Ask, and ask once more (with RETRY_NOTE) when nothing in the reply parses."""
        rejections: list[Rejection] = []
        for attempt in range(2):
            completion = await ask(prompt + (RETRY_NOTE if attempt else ""), decoding)
            if not completion.ok:
                rejections.append(Rejection("request_failed", detail=completion.error or ""))
                return [], rejections
            items, bad = parse_items(completion.text, fields)
            rejections += bad
            if items or bad:
                return items, rejections
            detail = "no JSON in the reply" + (" (cut by max_tokens)" if completion.finish_reason == "length" else "")
            rejections.append(Rejection("unparseable", raw=completion.text[:2000], detail=detail))
        return [], rejections

    async def _check_grounding(self, chunk: Chunk, examples: list[Example], ask: Ask) -> tuple[list[Example], list[Rejection]]:
        """The second call: is each answer supported by the chunk? A missing verdict keeps
        nothing: the example is rejected as `unverified`."""
        completion = await ask(verify_prompt(chunk, examples, self.verify_template), self.check_decoding(len(examples)))
        verdicts = parse_grounding(completion.text, len(examples)) if completion.ok else [None] * len(examples)
        kept, rejections = [], []
        for example, verdict in zip(examples, verdicts):
            if verdict:
                example.metadata["grounded"] = True
                kept.append(example)
            elif verdict is False:
                rejections.append(Rejection("ungrounded", example, detail="the teacher found the answer not supported by its chunk"))
            else:
                why = completion.error if not completion.ok else "no verdict for it in the check's reply"
                rejections.append(Rejection("unverified", example, raw=completion.text[:2000], detail=why or ""))
        return kept, rejections
