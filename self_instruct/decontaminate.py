"""Benchmark decontamination: find records that share a word n-gram (13 by default) with a test set.

The check GPT-3 and lm-evaluation-harness made standard: a generated record is contaminated when
some run of ``n`` consecutive words of it also occurs in a benchmark. Words come from
:func:`normalize`: lowercase, every character that is not a letter, digit or whitespace removed
(``don't`` -> ``dont``, ``state-of-the-art`` -> ``stateoftheart``), split on whitespace. N-grams never
cross from one field (or one list item) to the next.

Each benchmark n-gram is kept as one 64-bit hash in a sorted numpy array, so a million benchmark
lines cost a few hundred MB at most and a record is checked by binary search, not against every line.
The hash is a polynomial over random 64-bit word values (two different n-grams collide with
probability 2**-64); the values are drawn per process and never stored, so nothing depends on
Python's salted ``hash()`` staying the same.

>>> bench = Decontaminator.from_texts({"test.jsonl": ["The quick brown fox jumps over the lazy dog."]}, n=4)
>>> bench.hit("Write about how a QUICK brown fox jumps.")
('test.jsonl', 'quick brown fox jumps')
>>> bench.hit("quick brown fox") is None
True
"""
from __future__ import annotations

import csv
import re
from pathlib import Path
from typing import Any, Iterable, Iterator, Mapping, Sequence

import numpy as np

from .errors import ConfigError, DataError
from .jsonl import iter_records

_NOT_WORD = re.compile(r"[^\w\s]|_")
_MULTIPLIER = np.uint64(0x9E3779B97F4A7C15)  # odd, so multiplying by its powers loses no bits
_SEED = 13
# Records are hashed this many at a time: numpy's per-call cost is paid once per batch.
_BATCH = 4096


def normalize(text: str) -> list[str]:
    """The words of ``text`` as n-grams see them.

    >>> normalize("Don't   STOP: state-of-the-art_results, 3.5%!")
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
        self._words: dict[str, int] = {}
        self._parts: list[tuple[np.ndarray, int]] = []
        self._powers = _MULTIPLIER ** np.arange(n - 1, -1, -1, dtype=np.uint64)
        self._random = np.random.default_rng(_SEED)
        self._table = np.zeros(0, dtype=np.uint64)

    def _add(self, number: int, texts: Iterable[str]) -> None:
        words = self._words
        batch: list[list[int]] = []
        for text in texts:
            ids = [words.setdefault(word, len(words)) for word in normalize(text)]
            if len(ids) >= self.n:
                batch.append(ids)
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

    def _values(self, count: int) -> np.ndarray:
        """Random 64-bit values of word ids 0..count-1, drawn as new words appear."""
        if count > len(self._table):
            fresh = self._random.integers(0, 2**64, max(count, 2 * len(self._table)) - len(self._table),
                                          dtype=np.uint64, endpoint=False)
            self._table = np.concatenate([self._table, fresh])
        return self._table

    def _ngram_hashes(self, rows: list[list[int]]) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Hashes of every n-gram of each row of word ids (-1: a word no benchmark has), the row
        of each and its first word's index; n-grams with an unknown word are left out."""
        lengths = np.array([len(row) for row in rows])
        ids = np.fromiter((i for row in rows for i in row), dtype=np.int64, count=int(lengths.sum()))
        values = self._values(len(self._words))[np.maximum(ids, 0)]
        starts = np.arange(len(ids) - self.n + 1)
        if not starts.size:
            return np.zeros(0, np.uint64), starts, starts
        ends = np.cumsum(lengths)
        row = np.searchsorted(ends, starts, side="right")
        unknown = np.concatenate([[0], np.cumsum(ids < 0)])
        valid = (starts + self.n <= ends[row]) & (unknown[starts + self.n] == unknown[starts])
        hashes = np.zeros(len(starts), dtype=np.uint64)
        for offset, power in enumerate(self._powers):
            hashes += values[offset:offset + len(starts)] * power
        return hashes[valid], row[valid], (starts - (ends[row] - lengths[row]))[valid]

    # -- checking -------------------------------------------------------------------------

    def _hits_batch(self, texts: Sequence[str]) -> list[tuple[str, str] | None]:
        found: list[tuple[str, str] | None] = [None] * len(texts)
        words = [normalize(text) for text in texts]
        rows = [[self._words.get(word, -1) for word in text] for text in words]
        if not len(self._hashes) or sum(map(len, rows)) < self.n:
            return found
        hashes, row, start = self._ngram_hashes(rows)
        place = np.minimum(np.searchsorted(self._hashes, hashes), len(self._hashes) - 1)
        match = np.flatnonzero(self._hashes[place] == hashes)
        for k in match[::-1].tolist():  # backwards, so each text ends with its first hit
            r, s = int(row[k]), int(start[k])
            found[r] = (self._names[self._owners[place[k]]], " ".join(words[r][s:s + self.n]))
        return found


def texts_of(record: Any, fields: Sequence[str] | None = None) -> Iterator[str]:
    """The strings of a record that n-grams are taken from: every one, or those under ``fields``.

    >>> list(texts_of({"question": "Q?", "choices": ["a", "b"], "id": 7}))
    ['Q?', 'a', 'b']
    >>> list(texts_of({"question": "Q?", "choices": ["a", "b"]}, fields=["choices"]))
    ['a', 'b']
    """
    if fields is not None and isinstance(record, dict):
        for name in fields:
            yield from texts_of(record.get(name))
    elif isinstance(record, str):
        yield record
    elif isinstance(record, dict):
        for value in record.values():
            yield from texts_of(value)
    elif isinstance(record, (list, tuple)):
        for value in record:
            yield from texts_of(value)


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
