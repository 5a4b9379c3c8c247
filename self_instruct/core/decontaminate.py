"""Benchmark decontamination: find records that share a word n-gram (13 by default) with a test set.

The check GPT-3 and lm-evaluation-harness made standard: a generated record is contaminated when
some run of ``n`` consecutive words of it also occurs in a benchmark. Words come from
:func:`ngram_words`: lowercase, every character that is not a letter, digit or whitespace removed
(``don't`` -> ``dont``, ``state-of-the-art`` -> ``stateoftheart``), split on whitespace. N-grams never
cross from one field (or one list item) to the next.

Each distinct benchmark n-gram is kept as one 64-bit hash in a sorted numpy array (12 bytes with
the number of its file: 16 million n-grams of a million lines take about 190 MB), and a record is
checked by binary search, not against every line. An n-gram's
hash is a polynomial (mod 2**64) over its words' hashes; words are hashed with Python's ``hash()``,
which is keyed afresh in every process, so the set is built and used in one process and never stored.

>>> bench = Decontaminator.from_texts({"test.jsonl": ["The quick brown fox jumps over the lazy dog."]}, n=4)
>>> bench.hit("Write about how a QUICK brown fox jumps.")
('test.jsonl', 'quick brown fox jumps')
>>> bench.hit("quick brown fox") is None
True
"""
from __future__ import annotations

import csv
import itertools
import re
from pathlib import Path
from typing import Any, Iterable, Iterator, Mapping, Sequence

import numpy as np

from ..errors import ConfigError, DataError
from ..io.jsonl import iter_records
from ..types import Example
from .filters import Filter

_NOT_WORD = re.compile(r"[^\w\s]|_")
_MULTIPLIER = 0x9E3779B97F4A7C15  # odd, so it has an inverse modulo 2**64
# Records are hashed this many at a time: numpy's per-call cost is paid once per batch.
_BATCH = 4096


def ngram_words(text: str) -> list[str]:
    """The words of ``text`` as n-grams see them.

    >>> ngram_words("Don't   STOP: state-of-the-art_results, 3.5%!")
    ['dont', 'stop', 'stateoftheartresults', '35']
    """
    return _NOT_WORD.sub("", text.lower()).split()


class Decontaminator:
    """The n-grams of some benchmark files, asked whether a text shares one.

    ``files`` are JSON lists, JSONL, CSV or Parquet (``pip install pyarrow``); ``fields`` names
    the fields (columns) whose text counts, default every string field, nested ones included.
    """

    def __init__(self, files: Iterable[str | Path], n: int = 13, fields: Sequence[str] | None = None):
        self._setup(n)
        for number, path in enumerate(files):
            self._names.append(str(path))
            self._add(number, (text for record in read_benchmark(path) for text in texts_of(record, fields)))
        self._freeze()

    @classmethod
    def from_texts(cls, benchmarks: Mapping[str, Iterable[str]], n: int = 13) -> "Decontaminator":
        """Build from texts in memory, one iterable per benchmark name."""
        self = cls.__new__(cls)
        self._setup(n)
        for number, (name, texts) in enumerate(benchmarks.items()):
            self._names.append(name)
            self._add(number, texts)
        self._freeze()
        return self

    def __len__(self) -> int:
        """How many distinct n-grams the benchmarks hold."""
        return len(self._hashes)

    def hit(self, text: str) -> tuple[str, str] | None:
        """(benchmark, n-gram) of the first n-gram of ``text`` found in a benchmark, else None."""
        return self.hits([text])[0]

    def hits(self, texts: Sequence[str]) -> list[tuple[str, str] | None]:
        """:meth:`hit` for many texts, a batch at a time."""
        found: list[tuple[str, str] | None] = []
        for start in range(0, len(texts), _BATCH):
            found += self._hits_batch(texts[start:start + _BATCH])
        return found

    # -- building -------------------------------------------------------------------------

    def _setup(self, n: int) -> None:
        if isinstance(n, bool) or not isinstance(n, int) or n < 1:
            raise ConfigError(f"--ngram must be a whole number of words, 1 or more (got {n!r})")
        self.n = n
        self._names: list[str] = []
        self._parts: list[tuple[np.ndarray, int]] = []
        self._powers = self._inverse_powers = np.ones(1, dtype=np.uint64)

    def _add(self, number: int, texts: Iterable[str]) -> None:
        batch: list[str] = []
        for text in texts:
            batch.append(text)
            if len(batch) == _BATCH:
                self._parts.append((self._ngram_hashes(batch)[0], number))
                batch = []
        if batch:
            self._parts.append((self._ngram_hashes(batch)[0], number))

    def _freeze(self) -> None:
        """One sorted array of distinct hashes, each with the first benchmark that holds it."""
        hashes = np.concatenate([part for part, _ in self._parts] or [np.zeros(0, np.uint64)])
        owners = np.concatenate([np.full(len(part), number, np.int32) for part, number in self._parts]
                                or [np.zeros(0, np.int32)])
        self._hashes, first = np.unique(hashes, return_index=True)
        self._owners = owners[first]  # np.unique takes the first occurrence: the earliest file
        self._parts = []

    def _ngram_hashes(self, texts: Sequence[str]) -> tuple[np.ndarray, np.ndarray, np.ndarray, list[list[str]]]:
        """Hashes of every n-gram of each text, the text of each and its first word's index, and the words."""
        words = [ngram_words(text) for text in texts]
        lengths = np.array([len(row) for row in words])
        values = np.fromiter(map(hash, itertools.chain.from_iterable(words)), dtype=np.int64,
                             count=int(lengths.sum())).view(np.uint64)
        starts = np.arange(len(values) - self.n + 1)
        ends = np.cumsum(lengths)
        row = np.repeat(np.arange(len(lengths)), lengths)[starts]
        inside = starts + self.n <= ends[row]  # no n-gram runs into the next text
        starts, row = starts[inside], row[inside]
        # A rolling polynomial: with Q the inverse of P modulo 2**64 and C the running sum of
        # v[k] * Q**k, the window at i is sum(v[i+k] * P**(n-1-k)) = (C[i+n] - C[i]) * P**(i+n-1).
        powers, inverse = self._power_tables(len(values) + 1)
        running = np.concatenate([np.zeros(1, np.uint64), np.cumsum(values * inverse[:len(values)], dtype=np.uint64)])
        hashes = (running[starts + self.n] - running[starts]) * powers[starts + self.n - 1]
        return hashes, row, starts - (ends[row] - lengths[row]), words

    def _power_tables(self, size: int) -> tuple[np.ndarray, np.ndarray]:
        """P**k and Q**k modulo 2**64 for k < size (at least), grown as longer batches come."""
        if len(self._powers) < size:
            size = max(size, 2 * len(self._powers))
            self._powers, self._inverse_powers = (
                np.concatenate([np.ones(1, np.uint64), np.cumprod(np.full(size - 1, base, np.uint64), dtype=np.uint64)])
                for base in (_MULTIPLIER, pow(_MULTIPLIER, -1, 2**64)))
        return self._powers, self._inverse_powers

    # -- checking -------------------------------------------------------------------------

    def _hits_batch(self, texts: Sequence[str]) -> list[tuple[str, str] | None]:
        found: list[tuple[str, str] | None] = [None] * len(texts)
        if not len(self._hashes):
            return found
        hashes, row, start, words = self._ngram_hashes(texts)
        # Searching in sorted order keeps the big array's cache lines warm: several times faster.
        order = np.argsort(hashes)
        place = np.empty(len(hashes), dtype=np.int64)
        place[order] = np.minimum(np.searchsorted(self._hashes, hashes[order]), len(self._hashes) - 1)
        match = np.flatnonzero(self._hashes[place] == hashes)
        for k in match[::-1].tolist():  # backwards, so each text ends with its first hit
            r, s = int(row[k]), int(start[k])
            found[r] = (self._names[self._owners[place[k]]], " ".join(words[r][s:s + self.n]))
        return found


def texts_of(record: Any, fields: Sequence[str] | None = None) -> list[str]:
    """The strings of a record that n-grams are taken from: every one, or those under ``fields``.

    >>> texts_of({"question": "Q?", "choices": ["a", "b"], "id": 7})
    ['Q?', 'a', 'b']
    >>> texts_of({"question": "Q?", "choices": ["a", "b"]}, fields=["choices"])
    ['a', 'b']
    """
    if fields is not None and isinstance(record, dict):
        record = [record.get(name) for name in fields]
    found, stack = [], [record]
    while stack:
        value = stack.pop()
        if isinstance(value, str):
            found.append(value)
        elif isinstance(value, dict):
            stack.extend(reversed(value.values()))
        elif isinstance(value, (list, tuple)):
            stack.extend(reversed(value))
    return found


def read_benchmark(path: str | Path) -> Iterator[Any]:
    """The records of a benchmark file, by suffix: ``.csv``, ``.parquet``, else JSON list or JSONL."""
    suffix = Path(path).suffix.lower()
    if suffix == ".csv":
        return _read_csv(path)
    if suffix in (".parquet", ".pq"):
        return _read_parquet(path)
    return (record for _, record in iter_records(path))


def _read_csv(path: str | Path) -> Iterator[dict]:
    try:
        file = open(path, encoding="utf-8", newline="")
    except FileNotFoundError:
        raise DataError(f"{path}: no such file") from None
    with file:
        reader = csv.DictReader(file)
        try:
            yield from reader
        except (csv.Error, UnicodeDecodeError) as exc:
            raise DataError(f"{path}:{reader.line_num}: not valid CSV ({exc})") from None


def _read_parquet(path: str | Path) -> Iterator[dict]:
    try:
        import pyarrow.parquet as pq
    except ImportError:
        raise ConfigError(f"{path}: reading Parquet needs pyarrow: pip install 'self_instruct[parquet]'") from None
    try:
        file = pq.ParquetFile(path)
    except FileNotFoundError:
        raise DataError(f"{path}: no such file") from None
    except Exception as exc:  # pyarrow raises its own ArrowInvalid for a file that is not Parquet
        raise DataError(f"{path}: not a Parquet file ({exc})") from None
    for batch in file.iter_batches():
        yield from batch.to_pylist()


def decontamination_filter(files: Sequence[str], n: int = 13) -> Filter:
    """A filter dropping examples that share an n-gram with a benchmark file (`--decontaminate`),
    with the benchmark and the n-gram as the detail."""
    from ..core.decontaminate import Decontaminator

    found = Decontaminator(list(files), n=n)

    def contaminated(example: Example):
        for text in (example.instruction, example.input, example.output):  # an n-gram never spans two fields
            hit = found.hit(text)
            if hit is not None:
                return "contaminated", f"{hit[0]}: {hit[1]!r}"
        return None
    return contaminated


def decontamination_filters(decontaminate: str | None) -> list[Filter]:
    """The filters --decontaminate adds to a judge's chain: its benchmark files, comma-separated."""
    files = [f.strip() for f in (decontaminate or "").split(",") if f.strip()]
    return [decontamination_filter(files)] if files else []
