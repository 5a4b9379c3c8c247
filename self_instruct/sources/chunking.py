"""Cut documents into chunks that respect their structure: a chunk never spans two sections,
ends at a paragraph break where one falls in its second half, else between sentences, and
never inside a sentence. Consecutive chunks of a section share whole sentences (the overlap).

Sizes are in tokens of a real tokenizer when one is given (a local Hugging Face tokenizer or
the embedded GGUF model's), else in words. A chunk's size is the sum of its sentences' sizes.
A sentence longer than the target is a chunk by itself: it is never cut.

    counter = token_counter(None)                  # words
    chunks = chunk_documents(documents, counter, size=300, overlap=40)
    chunks[0].provenance()  # {'source': 'book.pdf', 'page': 3, 'headings': [...], 'start': 812, ...}

Sentences come from pysbd (rule-based, offline, no model download).
"""
from __future__ import annotations

import re
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path
from typing import Callable, Iterable, Sequence

from ..errors import ConfigError
from .document import Document, Section

#: Token counts of a batch of texts.
TokenCounter = Callable[[Sequence[str]], list[int]]

_PARAGRAPH_BREAK = re.compile(r"\n[ \t\r\f\v]*\n\s*")
_LONE_NEWLINE = re.compile(r"(?<!\n)\n(?!\n)")
_SPACE = re.compile(r"\s")
# Characters given to pysbd at once: its time per character grows with the text it is given
# (a 300-page PDF without paragraph breaks: 3x faster in pieces of 2,000 than of 20,000).
_SEGMENT_PIECE = 2_000


@dataclass(frozen=True, slots=True)
class Chunk:
    """`text` is `Document.text[start:end]`; `sentences` are the (start, end) spans it holds."""

    index: int
    source: str
    start: int
    end: int
    text: str
    headings: tuple[str, ...]
    tokens: int
    sentences: tuple[tuple[int, int], ...]
    page: int | None = None
    last_page: int | None = None
    document: Document | None = field(default=None, repr=False, compare=False)

    def original(self, start: int, end: int) -> tuple[int, int]:
        """Where a span of the document's clean text lies in its raw extraction (Document.original)."""
        return self.document.original(start, end) if self.document is not None else (start, end)

    def provenance(self) -> dict:
        """What each record made from this chunk carries in its metadata: offsets into the raw extraction."""
        start, end = self.original(self.start, self.end)
        return {"source": self.source, "page": self.page, "last_page": self.last_page, "headings": list(self.headings),
                "start": start, "end": end, "chunk": self.index}


# --- sentences ---

@lru_cache(maxsize=4)
def _segmenter(language: str):
    try:
        import pysbd
    except ImportError:
        raise ConfigError("splitting sentences needs pysbd: pip install 'self_instruct[docs]'") from None
    try:
        return pysbd.Segmenter(language=language, clean=False)
    except ValueError as exc:
        raise ConfigError(f"--language: {exc}") from None


def split_sentences(text: str, start: int = 0, end: int | None = None, language: str = "en") -> list[tuple[int, int]]:
    """Sentence spans of `text[start:end]`, trimmed of whitespace. Every non-blank character
    lands in exactly one span, and no span crosses a paragraph break (a blank line).

    Example: split_sentences("Hi there. Bye.\\n\\nNew one") -> [(0, 9), (10, 14), (16, 23)]
    """
    end = len(text) if end is None else end
    spans: list[tuple[int, int]] = []
    pos = start
    while pos < end:
        # pysbd's time grows faster than the text it is given: feed it pieces, and start each
        # piece at the last sentence of the one before, so that sentence is split in context.
        # A piece that holds less than two sentences is doubled until it does.
        size = _SEGMENT_PIECE
        while True:
            stop = _cut_after(text, pos + size, end)
            cuts = _sentence_starts(text[pos:stop], language)
            if stop >= end or len(cuts) > 1:
                break
            size *= 2
        following = pos + cuts.pop() if stop < end else stop
        for a, b in zip(cuts, cuts[1:] + [following - pos]):
            spans += _paragraphs(text, pos + a, pos + b)
        pos = following
    return spans


def _cut_after(text: str, at: int, end: int) -> int:
    """The first whitespace at or after `at` (never inside a word), or `end`."""
    if at >= end:
        return end
    match = _SPACE.search(text, at, end)
    return match.start() if match else end


def _sentence_starts(piece: str, language: str) -> list[int]:
    """Where pysbd starts each sentence of `piece`. Lone newlines (hard-wrapped lines, PDF
    lines) become spaces first, since pysbd ends a sentence at every newline; the replacement
    keeps the length, so positions stay those of the original text."""
    work = _LONE_NEWLINE.sub(" ", piece)
    starts, cursor = [], 0
    # Segmenter.segment would map each sentence back to the text by a regex search from the
    # start of the text (quadratic, half the time on a book); the processor's sentences are
    # found here with one forward scan instead.
    for sentence in _segmenter(language).processor(work).process():
        sentence = sentence.strip()
        found = work.find(sentence, cursor) if sentence else -1
        if found < 0:  # pysbd returned text that is not in the input: keep what we have, lose nothing
            continue
        starts.append(found)
        cursor = found + len(sentence)
    return starts if starts and starts[0] == 0 else [0] + starts


def _paragraphs(text: str, start: int, end: int) -> list[tuple[int, int]]:
    """The non-blank paragraphs of text[start:end], trimmed."""
    spans, cursor = [], start
    for brk in list(_PARAGRAPH_BREAK.finditer(text, start, end)) + [None]:
        stop = brk.start() if brk else end
        chunk = text[cursor:stop]
        if chunk.strip():
            lead = len(chunk) - len(chunk.lstrip())
            spans.append((cursor + lead, cursor + len(chunk.rstrip())))
        cursor = brk.end() if brk else end
    return spans


def section_sentences(document: Document, section: Section, language: str = "en") -> list[tuple[int, int]]:
    return split_sentences(document.text, section.start, section.end, language)


# --- token counters ---

def word_counts(texts: Sequence[str]) -> list[int]:
    """Example: word_counts(["Two words.", ""]) -> [2, 0]"""
    return [len(t.split()) for t in texts]


def token_counter(tokenizer: str | None) -> TokenCounter:
    """The counter `--tokenizer` asks for: None counts words; "local" the bundled embedded
    model's tokens; a .gguf file that model's; a tokenizer.json, or a directory holding one
    (or any local Hugging Face tokenizer directory), that tokenizer's. Nothing is downloaded."""
    if tokenizer is None:
        return word_counts
    if tokenizer == "local" or str(tokenizer).endswith(".gguf"):
        return _gguf_counter(None if tokenizer == "local" else tokenizer)
    path = Path(tokenizer).expanduser()
    if path.is_dir() and (path / "tokenizer.json").is_file():
        path = path / "tokenizer.json"
    if path.is_file():
        return _tokenizers_counter(path)
    if path.is_dir():
        return _transformers_counter(path)
    raise ConfigError(f"--tokenizer: {tokenizer} is neither 'local', a .gguf file, a tokenizer.json nor a tokenizer directory")


def _tokenizers_counter(path: Path) -> TokenCounter:
    try:
        from tokenizers import Tokenizer
    except ImportError:
        raise ConfigError("--tokenizer with a tokenizer.json needs tokenizers: pip install 'self_instruct[docs]'") from None
    try:
        tok = Tokenizer.from_file(str(path))
    except Exception as exc:  # tokenizers raises a bare Exception for a malformed file
        raise ConfigError(f"--tokenizer: {path} is not a tokenizer.json ({exc})") from None
    return lambda texts: [len(e.ids) for e in tok.encode_batch(list(texts), add_special_tokens=False)]


def _transformers_counter(path: Path) -> TokenCounter:
    try:
        from transformers import AutoTokenizer
    except ImportError:
        raise ConfigError("--tokenizer with a tokenizer directory needs transformers: pip install 'self_instruct[train]'") from None
    try:
        tok = AutoTokenizer.from_pretrained(str(path), local_files_only=True)
    except (OSError, ValueError) as exc:
        raise ConfigError(f"--tokenizer: cannot load a tokenizer from {path} ({exc})") from None
    return lambda texts: [len(ids) for ids in tok(list(texts), add_special_tokens=False)["input_ids"]]


def _gguf_counter(model_path: str | None) -> TokenCounter:
    from ..teachers.local import import_llama_cpp, resolve_model_path

    llama = import_llama_cpp().Llama(str(resolve_model_path(model_path)), vocab_only=True, verbose=False)
    return lambda texts: [len(llama.tokenize(t.encode("utf-8"), add_bos=False, special=False)) for t in texts]


# --- chunks ---

def pack_sentences(tokens: Sequence[int], paragraph_starts: Sequence[bool], size: int | None, overlap: int) -> list[tuple[int, int]]:
    """Group sentences [i, j) into chunks of at most `size` tokens (a sentence over the size
    stands alone), ending at a paragraph break when one falls in the chunk's second half; the
    next chunk repeats the last sentences of this one that fit in `overlap` tokens.

    Example: pack_sentences([4, 4, 4, 4], [True, False, False, False], size=8, overlap=4) -> [(0, 2), (1, 3), (2, 4)]
    """
    n, ranges, i = len(tokens), [], 0
    while i < n:
        j = _chunk_end(tokens, paragraph_starts, i, size)
        if ranges and j <= ranges[-1][1]:
            # Nothing new fits after the shared sentences (a long sentence follows): this chunk
            # would repeat part of the one before and add nothing, so it starts after it instead.
            i = ranges[-1][1]
            j = _chunk_end(tokens, paragraph_starts, i, size)
        ranges.append((i, j))
        if j >= n:
            break
        back, shared = j, 0
        while back - 1 > i and shared + tokens[back - 1] <= overlap:
            back -= 1
            shared += tokens[back]
        i = back
    return ranges


def _chunk_end(tokens: Sequence[int], paragraph_starts: Sequence[bool], i: int, size: int | None) -> int:
    """Where a chunk starting at sentence i ends: as many sentences as fit in `size`, cut back
    to the last paragraph break that still leaves it at least half full."""
    n = len(tokens)
    if size is None:
        return n
    j, total = i + 1, tokens[i]
    while j < n and total + tokens[j] <= size:
        total += tokens[j]
        j += 1
    if j < n:
        running = 0
        breaks = []
        for k in range(i + 1, j + 1):
            running += tokens[k - 1]
            if paragraph_starts[k] and running * 2 >= size:
                breaks.append(k)
        j = breaks[-1] if breaks else j
    return j


def chunk_document(document: Document, counter: TokenCounter, size: int | None, overlap: int, first_index: int = 0,
                   language: str = "en") -> list[Chunk]:
    """The chunks of one document, numbered from `first_index`. `size=None`: a chunk per section."""
    chunks: list[Chunk] = []
    text = document.text
    for section in document.sections:
        spans = section_sentences(document, section, language)
        if not spans:
            continue
        tokens = counter([text[a:b] for a, b in spans])
        para_starts = [True] + [_PARAGRAPH_BREAK.search(text, spans[k - 1][1], spans[k][0]) is not None
                                for k in range(1, len(spans))]
        for i, j in pack_sentences(tokens, para_starts, size, overlap):
            start, end = spans[i][0], spans[j - 1][1]
            chunks.append(Chunk(
                index=first_index + len(chunks), source=document.path, start=start, end=end, text=text[start:end],
                headings=section.headings, tokens=sum(tokens[i:j]), sentences=tuple(spans[i:j]),
                page=document.page_at(start), last_page=document.page_at(max(start, end - 1)), document=document,
            ))
    return chunks


def chunk_documents(documents: Iterable[Document], counter: TokenCounter, size: int | None = 512, overlap: int = 64,
                    language: str = "en") -> list[Chunk]:
    """Chunks of every document, numbered in document order: the run's units, stable across resumes."""
    if size is not None and (not isinstance(size, int) or size < 1):
        raise ConfigError(f"--chunk_size must be a positive whole number of tokens (got {size!r})")
    if not isinstance(overlap, int) or overlap < 0 or (size is not None and overlap >= size):
        raise ConfigError(f"--chunk_overlap must be a whole number from 0 to below --chunk_size (got {overlap!r})")
    chunks: list[Chunk] = []
    for document in documents:
        chunks += chunk_document(document, counter, size, overlap, len(chunks), language)
    return chunks
