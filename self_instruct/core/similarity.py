"""An index of instructions answering Alpaca's ROUGE-L near-duplicate question, fast and exact.

Scores, the ``F > threshold`` decision, the top-10 ``most_similar_instructions`` and the
``avg_similarity_score`` equal what Stanford Alpaca's generator computes with rouge-score 0.1.2
(``RougeScorer(["rougeL"], use_stemmer=False)``, see :mod:`self_instruct.core.rouge`), bit for bit.

How it avoids Alpaca's all-pairs Python LCS:

* Every token is interned as one character, so a text becomes a short ``str`` that rapidfuzz's
  C++ LCS kernel reads directly; one call scores a candidate against the whole pool.
* Deciding ``F > threshold`` rarely needs the whole pool. Two texts of m and n tokens with an LCS
  of l score ``2l/(m+n)`` (up to rounding), so a match needs ``l >= min_overlap(t, m, n)`` and at
  least that many tokens in common. The prefix filter of similarity joins turns this into an
  inverted index: sort each text's tokens rarest first and index only the first
  ``prefix_length(t, n)`` of them; two texts sharing enough tokens always share one of those.
* The positional filter prunes most of what the prefix filter finds: where two sorted texts
  first share a token, at ranks i and j, every common token lies at or after those ranks, so they
  share at most ``min(m - i, n - j)`` tokens. Postings store each text's length and remaining
  tokens, and a batch of queries is filtered in a few numpy operations over all its postings.
* Only the pairs left are scored, exactly; the bounds are lowered by ``MARGIN``, far above float
  rounding, so a pair is skipped only when it provably scores below the threshold.

:func:`greedy_dedup` runs Alpaca's greedy pass over a whole dataset this way, a batch at a time.
"""
from __future__ import annotations

import math
import zlib
from array import array
from collections import Counter
from dataclasses import dataclass, field
from typing import Iterable, Iterator, Sequence

import numpy as np
from rapidfuzz import process
from rapidfuzz.distance import LCSseq

from ..errors import ConfigError
from .rouge import tokenize

# Slack on the threshold used only for pruning. F is within a few ulps (~1e-16) of 2l/(m+n), so
# a pair whose bound misses the threshold by more than this cannot score above it.
MARGIN = 1e-9

# Below this many texts one C-kernel pass over all of them (needed anyway for a kept text's top-k
# and mean) is cheaper than the filtered search first: check() then decides from the full scores.
FULL_SCAN_BELOW = 5000
# Below this many scores a kept text's top k is found by sorting them all (see RougeIndex._top).
SORT_BELOW = 32_768

_SURROGATES = range(0xD800, 0xE000)
_MAX_TOKENS = 0x110000 - len(_SURROGATES)
# A batch of greedy_dedup aims at this many texts left for the exact in-batch pass, and at most
# this many postings entries (three int64 each) in memory at once.
_SURVIVORS_PER_BATCH = 512
_ENTRIES_PER_BATCH = 2_000_000
# Scores one kernel call makes at most when a batch is scored against itself or the index: a
# batch of a few hundred texts is one call, and a batch of any size takes about 80 MB at most
# (the LCS counts, the F-measures and their temporaries, 8 bytes each).
_CELLS = 1_000_000


def min_overlap(threshold: float, m, n):
    """Fewest common tokens with which a text of ``m`` tokens might score above ``threshold``
    against texts of ``n`` tokens.

    F is at most 2l/(m+n), so it needs l >= t(m+n)/2, and at least one token in common. A pair
    whose answer exceeds min(m, n) cannot match at all:

    >>> min_overlap(0.7, 7, np.array([13, 10, 3])).tolist()   # fmeasure(7, 7, 13) > 0.7
    [7, 6, 4]
    """
    return np.maximum(1, np.ceil((threshold - MARGIN) * (np.asarray(m) + n) / 2)).astype(np.int64)


def prefix_length(threshold: float, n: int) -> int:
    """How many of a text's ``n`` rarest tokens must be indexed so no match above ``threshold`` is lost.

    Whatever the partner's length, l common tokens give F <= 2l/(n+l), so a match needs
    l > t*n/(2-t); two multisets sharing at least l tokens share one among each side's
    first n-l+1 (in any fixed order).

    >>> prefix_length(0.7, 10)   # a match shares at least 6 of the 10 tokens
    5
    >>> prefix_length(0.7, 1)
    1
    """
    t = threshold - MARGIN
    return n - max(1, math.ceil(t * n / (2 - t))) + 1


@dataclass(frozen=True)
class Match:
    """What the index says about one candidate text.

    ``max_score`` and ``nearest`` are exact (earliest indexed text on ties). For a similar text only
    pairs that may pass the threshold are scored, so ``most_similar`` is empty and ``mean`` None.
    Otherwise ``most_similar`` is the exact top k, ties in insertion order (Alpaca's numpy sort
    leaves their order unspecified), and ``mean`` is Alpaca's ``avg_similarity_score``, the numpy
    mean of every score (0.0 for an empty index, where numpy would give nan).
    """

    similar: bool
    max_score: float
    nearest: str | None
    most_similar: list[tuple[str, float]] = field(default_factory=list)
    mean: float | None = None


@dataclass(frozen=True)
class Pairs:
    """Scored pairs, parallel arrays sorted by query then indexed position."""

    query: np.ndarray
    position: np.ndarray
    score: np.ndarray
    scanned: int = 0  # postings entries read to find them


class RougeIndex:
    """Texts indexed for ROUGE-L queries; duplicates are allowed and kept.

    ``vocabulary`` optionally lists tokens most frequent first (say, counted over a whole dataset);
    it only makes the prefix filter faster. Without it tokens rank by first appearance, later ones
    taken as rarer, which the first texts indexed (seed tasks) make a fair guess.
    """

    def __init__(self, texts: Iterable[str] = (), threshold: float = 0.7, vocabulary: Iterable[str] = ()):
        if not 0 <= threshold <= 1:
            raise ConfigError(f"threshold must be between 0 and 1 (got {threshold})")
        self.threshold = threshold
        self._codes = _Codes()
        self._texts: list[str] = []
        self._encoded: list[str] = []
        self._lengths = array("q")
        # (token, occurrence) -> (position, length, tokens from this one on) of each text holding
        # it in its prefix, flattened; the n-th occurrence of a token is keyed by its character
        # repeated n times.
        self._postings: dict[str, array] = {}
        # (shard, shards) when this index is one shard of a join: it holds only the prefix keys the shard owns.
        self._shard: tuple[int, int] | None = None
        for token in vocabulary:
            self._code(token)
        for text in texts:
            self.add(text)

    def __len__(self) -> int:
        return len(self._texts)

    def add(self, text: str) -> None:
        self._add(text, self._encode(text))

    def check(self, text: str, k: int = 10, with_mean: bool = True) -> Match:
        """Decide whether ``text`` is a near duplicate; for a text that is not, also its top ``k`` and mean.

        A text that is not similar costs one C-kernel pass over the whole index (the top-k and
        the mean need every score); a similar one only the pairs the filters leave.
        """
        encoded = self._encode(text)
        if not self._texts:
            return Match(False, 0, None, [], 0.0 if with_mean else None)
        if len(self._texts) > FULL_SCAN_BELOW:
            hit = self._best_above_threshold(encoded)
            if hit is not None:
                return Match(True, hit[1], self._texts[hit[0]])
        scores = self._scores(encoded)
        best = int(np.argmax(scores))  # the first of equal maxima: the earliest indexed
        if scores[best] > self.threshold:
            return Match(True, float(scores[best]), self._texts[best])
        return Match(
            similar=False,
            max_score=self._value(scores, best, encoded),
            nearest=self._texts[best],
            most_similar=self._top(scores, k, encoded),
            mean=float(np.mean(scores)) if with_mean else None,
        )

    def batch(self, texts: Sequence[str], k: int = 10, with_mean: bool = True) -> "Batch":
        """Checks of several texts in order, each against the index as the ones before it left it
        (see :class:`Batch`): what :meth:`check` then :meth:`add` do one text at a time, with one
        kernel call for the scores of all of them."""
        return Batch(self, texts, k, with_mean)

    def similar_to(self, text: str) -> tuple[str, float] | None:
        """The indexed text scoring highest against ``text`` if that is above the threshold, else None.

        This is the decision alone, the cheap query a dedup pass needs.
        """
        hit = self._best_above_threshold(self._encode(text))
        return None if hit is None else (self._texts[hit[0]], hit[1])

    def max_score(self, text: str) -> float:
        """Highest F-measure of ``text`` against the index (0 for an empty index)."""
        return self.check(text, k=0, with_mean=False).max_score

    def top_k(self, text: str, k: int = 10) -> list[tuple[str, float]]:
        """The ``k`` highest-scoring indexed texts, highest first, ties in insertion order."""
        encoded = self._encode(text)
        return self._top(self._scores(encoded), k, encoded) if self._texts else []

    # -- encoding -------------------------------------------------------------------------

    def _code(self, token: str) -> str:
        return self._codes[token]

    def _encode(self, text: str) -> str:
        return "".join(map(self._codes.__getitem__, tokenize(text)))

    def _encode_ranked(self, texts: Sequence[str]) -> list[str]:
        """Encode ``texts`` with codes re-assigned by frequency over them, most frequent first.

        Only for an empty index: with the whole dataset known, its own counts make the prefix
        filter probe the truly rare tokens. Tokenizes each text once.
        """
        assert not self._texts, "codes may only be re-ranked before anything is indexed"
        encoded = [self._encode(text) for text in texts]
        counts = Counter("".join(encoded))
        ranked = sorted(self._codes.values(), key=lambda code: (-counts[code], code))
        table = {ord(old): _char(rank) for rank, old in enumerate(ranked)}
        self._codes = _Codes((token, table[ord(code)]) for token, code in self._codes.items())
        return [text.translate(table) for text in encoded]

    def _prefix(self, encoded: str) -> list[str]:
        """Posting keys of the rarest ``prefix_length`` tokens; rarer means a larger code."""
        keys = []
        previous, repeat = "", 1
        for char in sorted(encoded, reverse=True)[: prefix_length(self.threshold, len(encoded))]:
            repeat = repeat + 1 if char == previous else 1
            keys.append(char * repeat)
            previous = char
        return keys

    def _keys(self, encoded: str) -> list[tuple[int, str]]:
        """(rank, posting key) of each prefix token; in a shard only the keys it owns, ranks unchanged."""
        keys = list(enumerate(self._prefix(encoded)))
        if self._shard is None:
            return keys
        shard, shards = self._shard
        return [(rank, key) for rank, key in keys if key_shard(key, shards) == shard]

    def _add(self, text: str, encoded: str) -> None:
        position, n = len(self._texts), len(encoded)
        self._texts.append(text)
        self._encoded.append(encoded)
        self._lengths.append(n)
        for rank, key in self._keys(encoded):
            posting = self._postings.get(key)
            if posting is None:
                posting = self._postings[key] = array("q")
            posting.extend((position, n, n - rank))

    # -- queries --------------------------------------------------------------------------

    def _pairs(self, queries: Sequence[str], keys: Sequence[list[tuple[int, str]]] | None = None) -> Pairs:
        """Every (query number, indexed position, F) with F > threshold, for encoded ``queries``;
        with ``keys``, only those found through these (rank, key) of each query."""
        chunks, owners, ranks, sizes = [], [], [], []
        for number, encoded in enumerate(queries):
            for rank, key in self._keys(encoded) if keys is None else keys[number]:
                posting = self._postings.get(key)
                if posting:
                    chunks.append(posting)
                    owners.append(number)
                    ranks.append(rank)
                    sizes.append(len(posting) // 3)
        if not chunks:
            return Pairs(np.zeros(0, dtype=np.int64), np.zeros(0, dtype=np.int64), np.zeros(0))
        entries = np.frombuffer(b"".join(chunks), dtype=np.int64).reshape(-1, 3)
        query = np.repeat(np.array(owners), sizes)
        query_lengths = np.array([len(encoded) for encoded in queries])
        m = query_lengths[query]
        n = entries[:, 1]
        need = min_overlap(self.threshold, m, n)
        # Positional filter: from the first shared token on, the query has m - rank tokens left
        # and the indexed text entries[:, 2]. A later shared token leaves fewer on both sides, so
        # a pair passes at some entry exactly when it passes at its first.
        fits = (need <= n) & (need <= np.minimum(m - np.repeat(np.array(ranks), sizes), entries[:, 2]))
        size = len(self._texts)
        query, position = np.divmod(_distinct(query[fits] * size + entries[fits, 0]), size)
        if not query.size:
            return Pairs(query, position, np.zeros(0), len(entries))
        lcs = process.cpdist(list(map(queries.__getitem__, query.tolist())),
                             list(map(self._encoded.__getitem__, position.tolist())),
                             scorer=LCSseq.similarity, dtype=np.int64, workers=_workers(len(query)))
        lengths = np.frombuffer(self._lengths, dtype=np.int64)[position]
        scores = _fmeasures(lcs, query_lengths[query], lengths)
        above = scores > self.threshold
        return Pairs(query[above], position[above], scores[above], len(entries))

    def _best_above_threshold(self, encoded: str) -> tuple[int, float] | None:
        """(position, F) of the best-scoring text with F > threshold, earliest on ties; or None."""
        pairs = self._pairs([encoded])
        if not pairs.score.size:
            return None
        best = int(np.argmax(pairs.score))  # the first of equal maxima: the earliest indexed
        return int(pairs.position[best]), float(pairs.score[best])

    def _keep_batch(self, texts: Sequence[str], encoded: Sequence[str]) -> tuple[np.ndarray, int]:
        """Greedy decisions for a batch, in order, against the index and each other; adds what is kept.

        Returns the decisions and how many postings entries were read.

        The batch is first scored against the index as it stands: through each query's rarest
        token alone, which finds most near duplicates for a fraction of the pairs, then fully for
        the queries left. What survives is compared among itself, all pairs at once, and a
        survivor is kept unless an earlier kept one of the batch matches it.
        """
        keep = np.ones(len(encoded), dtype=bool)
        keys = [self._keys(text) for text in encoded]
        quick = self._pairs(encoded, [found[:1] for found in keys])
        keep[quick.query] = False
        left = np.flatnonzero(keep).tolist()
        pairs = self._pairs([encoded[i] for i in left], [keys[i] for i in left])
        left = np.array(left, dtype=np.int64)
        keep[left[pairs.query]] = False
        survivors = np.flatnonzero(keep)
        kept = self._greedy_among([encoded[i] for i in survivors.tolist()])
        keep[survivors[~kept]] = False
        for i in survivors[kept].tolist():
            self._add(texts[i], encoded[i])
        return keep, quick.scanned + pairs.scanned

    def _greedy_among(self, batch: Sequence[str]) -> np.ndarray:
        """Which of ``batch`` (encoded) the greedy pass keeps among themselves: each unless an
        earlier kept one scores above the threshold against it. Scored a block of rows at a time
        against the rows before them, so memory holds ``_CELLS`` scores whatever the batch's size."""
        lengths = np.array([len(text) for text in batch], dtype=np.int64)
        kept = np.ones(len(batch), dtype=bool)
        for first, rows, lcs in _row_blocks(batch, lambda stop: batch[:stop]):
            last = first + len(rows)
            above = _fmeasures(lcs, lengths[first:last, None], lengths[None, :last]) > self.threshold
            above &= np.arange(last)[None, :] < np.arange(first, last)[:, None]  # earlier ones only
            for row in np.flatnonzero(above.any(axis=1)).tolist():
                kept[first + row] = not (above[row] & kept[:last]).any()
        return kept

    def _scores(self, encoded: str) -> np.ndarray:
        """Exact F of ``encoded`` against every indexed text, as float64 in insertion order."""
        if not encoded:
            return np.zeros(len(self._texts))
        lcs = process.cdist([encoded], self._encoded, scorer=LCSseq.similarity, dtype=np.int64)[0]
        # A copy, so no numpy view keeps the array from growing on the next add().
        lengths = np.frombuffer(self._lengths, dtype=np.int64).copy()
        return _fmeasures(lcs, len(encoded), lengths)

    def _top(self, scores: np.ndarray, k: int, encoded: str) -> list[tuple[str, float]]:
        if k <= 0:
            return []
        if k < len(scores):
            # The k-th highest score. numpy's selection slows down a score array of few distinct values
            # (short instructions give many ties: 160 against 7 us at 11K scores of two values), which a
            # sort does not; past SORT_BELOW scores the sort's n log n costs more than the ties do.
            kth = (np.sort(scores) if len(scores) < SORT_BELOW else np.partition(scores, len(scores) - k))[len(scores) - k]
            order = np.flatnonzero(scores >= kth)
        else:
            order = np.arange(len(scores))
        order = order[np.argsort(-scores[order], kind="stable")][:k]
        return [(self._texts[i], self._value(scores, i, encoded)) for i in order]

    def _value(self, scores: np.ndarray, position: int, encoded: str) -> float:
        """A score as rouge-score returns it: the int 0 when either side has no tokens."""
        if not encoded or not self._lengths[position]:
            return 0
        return float(scores[position])


class Batch:
    """Several texts checked in order against one index, adding each that is kept.

    ``decide(n)`` says whether text ``n`` is similar to the index as it stands (the texts kept
    before it included) and, when it is not, adds it; ``finish()`` then gives each kept text's
    :class:`Match` as :meth:`RougeIndex.check` would have given it just before its add, bit for
    bit. A caller may skip texts (an exact duplicate needs no score), but decides in order.

    Scores are kernel calls over blocks of rows: the texts against the index as it stood, and
    each text against the batch's texts before it. A block holds at most ``_CELLS`` scores, so a
    batch of any size (a book's windows) takes bounded memory; a batch of ordinary size is one
    block, one call. Below FULL_SCAN_BELOW indexed texts the decisions read those scores; above
    it the filtered search decides and only the kept texts are scored in full.

        batch = index.batch(["Name a color.", "Name a colour."])
        batch.decide(0), batch.decide(1)   # -> (None, Match(similar=True, ...)) when 0 is new
        batch.finish()                     # -> {0: Match(similar=False, most_similar=..., mean=...)}
    """

    def __init__(self, index: RougeIndex, texts: Sequence[str], k: int, with_mean: bool):
        self.index, self.texts, self.k, self.with_mean = index, list(texts), k, with_mean
        self.encoded = [index._encode(text) for text in self.texts]
        self.start = len(index)
        self.added: list[int] = []  # batch numbers of the texts kept, in the order they were added
        self.lengths = np.array([len(encoded) for encoded in self.encoded], dtype=np.int64)
        # F of each text against the batch's texts up to it, and against the start when every score is needed anyway.
        self._inner = _Rows(range(len(self.encoded)), len(self.encoded), self._against_batch)
        self._outer = (_Rows(range(len(self.encoded)), self.start, self._against_start)
                       if 0 < self.start <= FULL_SCAN_BELOW else None)

    def decide(self, n: int) -> Match | None:
        """The Match of a similar text ``n``; None for one that is not, which joins the index."""
        index, encoded = self.index, self.encoded[n]
        if self._outer is None and self.start:
            hit = index._best_above_threshold(encoded)
            if hit is not None:
                return Match(True, hit[1], index._texts[hit[0]])
        elif len(index):
            scores = self._scores(n, self._start_scores(self._outer, n))
            best = int(np.argmax(scores))
            if scores[best] > index.threshold:
                return Match(True, float(scores[best]), index._texts[best])
        index._add(self.texts[n], encoded)
        self.added.append(n)
        return None

    def finish(self) -> dict[int, Match]:
        """Each kept text's Match (top k, mean), by batch number."""
        outer = self._outer
        if outer is None and self.start and self.added:
            outer = _Rows(self.added, self.start, self._against_start)
        matches = {}
        for place, n in enumerate(self.added):
            scores = self._scores(n, self._start_scores(outer, n), before=self.added[:place])
            matches[n] = self._match(scores, self.encoded[n])
        return matches

    @staticmethod
    def _start_scores(outer: "_Rows | None", n: int) -> np.ndarray:
        return outer[n] if outer is not None else np.zeros(0)  # None: the index began empty

    def _against_start(self, numbers: Sequence[int]) -> np.ndarray:
        """F of the texts ``numbers`` against every text the index held when the batch began."""
        encoded = [self.encoded[n] for n in numbers]
        lcs = process.cdist(encoded, self.index._encoded[:self.start], scorer=LCSseq.similarity, dtype=np.int64,
                            workers=_workers(len(encoded) * self.start))
        lengths = np.frombuffer(self.index._lengths, dtype=np.int64)[:self.start].copy()
        return _fmeasures(lcs, self.lengths[list(numbers)][:, None], lengths[None, :])

    def _against_batch(self, numbers: Sequence[int]) -> np.ndarray:
        """F of the texts ``numbers`` (consecutive) against the batch's texts up to the last of them."""
        stop = numbers[-1] + 1
        lcs = process.cdist([self.encoded[n] for n in numbers], self.encoded[:stop], scorer=LCSseq.similarity,
                            dtype=np.int64, workers=_workers(len(numbers) * stop))
        return _fmeasures(lcs, self.lengths[list(numbers)][:, None], self.lengths[None, :stop])

    def _scores(self, n: int, start_scores: np.ndarray, before: Sequence[int] | None = None) -> np.ndarray:
        """F of text n against the index's texts in insertion order: those it held at the start,
        then the ones this batch added before n (all added so far, when deciding n). Elementwise
        the same float operations as RougeIndex._scores, so the same bits."""
        before = self.added if before is None else before
        return np.concatenate([start_scores, self._inner[n][before]]) if before else start_scores

    def _match(self, scores: np.ndarray, encoded: str) -> Match:
        if not scores.size:
            return Match(False, 0, None, [], 0.0 if self.with_mean else None)
        index, best = self.index, int(np.argmax(scores))
        return Match(False, index._value(scores, best, encoded), index._texts[best],
                     index._top(scores, self.k, encoded), float(np.mean(scores)) if self.with_mean else None)


class _Rows:
    """Rows of a score matrix made a block at a time by ``make(numbers)``, for ``numbers`` read in
    order; only the block in use is kept. A block holds about ``_CELLS`` scores: as many rows as
    fit for ``width`` columns (at least one)."""

    def __init__(self, numbers: Sequence[int], width: int, make):
        self.numbers = list(numbers)
        self.place = {n: k for k, n in enumerate(self.numbers)}
        self.size = max(1, _CELLS // max(1, width))
        self.make = make
        self.block, self.values = -1, None

    def __getitem__(self, n: int) -> np.ndarray:
        k = self.place[n]
        block = k // self.size
        if block != self.block:
            self.values = None  # let the block before go before the next is made
            self.values = self.make(self.numbers[block * self.size:(block + 1) * self.size])
            self.block = block
        return self.values[k - block * self.size]


def _row_blocks(texts: Sequence[str], columns) -> Iterator[tuple[int, Sequence[str], np.ndarray]]:
    """(first row, rows, LCS of the rows against ``columns(last row + 1)``) for consecutive blocks
    of ``texts`` of at most ``_CELLS`` scores each."""
    size = max(1, _CELLS // max(1, len(texts)))
    for first in range(0, len(texts), size):
        rows = texts[first:first + size]
        against = columns(first + len(rows))
        yield first, rows, process.cdist(rows, against, scorer=LCSseq.similarity, dtype=np.int64,
                                         workers=_workers(len(rows) * len(against)))


def greedy_dedup(texts: Sequence[str], threshold: float = 0.7, against: Sequence[str] = ()) -> Iterator[np.ndarray]:
    """Alpaca's greedy pass: for each text in order, whether it is kept, as one bool array per batch.

    A text is dropped when it scores above ``threshold`` against an earlier kept one or any of
    ``against``. Tokens are ranked by their frequency over everything first (the prefix filter
    then probes truly rare ones), and a text whose tokens equal an earlier one's is dropped
    without a query: it scores 1.0 against that one if it was kept, and whatever dropped that
    one drops it too.

    >>> [batch.tolist() for batch in greedy_dedup(["Name a fruit.", "name a FRUIT", "Sum 2 and 3."])]
    [[True, False, True]]
    """
    index = RougeIndex(threshold=threshold)
    encoded = index._encode_ranked([*against, *texts])
    for text, code in zip(against, encoded):
        index._add(text, code)
    seen: set[str] = set()
    start, size = len(against), 256
    while start < len(encoded):
        batch = range(start, min(start + size, len(encoded)))
        keep = np.zeros(len(batch), dtype=bool)
        fresh = []
        for i, position in enumerate(batch):
            code = encoded[position]
            if not (code and threshold < 1 and code in seen):
                seen.add(code)
                fresh.append(i)
        keep[fresh], scanned = index._keep_batch([texts[batch[i] - len(against)] for i in fresh],
                                                 [encoded[batch[i]] for i in fresh])
        yield keep
        start = batch.stop
        size = _next_batch_size(len(fresh), int(keep.sum()), scanned)


def key_shard(key: str, shards: int) -> int:
    """The shard owning a posting key: a stable hash (CRC-32 of its UTF-8), the same on every machine.

    >>> key_shard("a", 4), key_shard("b", 4)
    (3, 1)
    """
    return zlib.crc32(key.encode("utf-8")) % shards


def shard_pairs(encoded: Sequence[str], threshold: float, shard: int, shards: int, batch: int = 1024) -> np.ndarray:
    """Pairs ``(i, j)``, i < j, of ``encoded`` texts (coded with one vocabulary) scoring above
    ``threshold`` and sharing a prefix key that ``shard`` owns, as an int64 array of shape (pairs, 2).

    Run for every shard on the texts holding a key it owns, the union is every pair above the
    threshold: a pair's first shared prefix key belongs to some shard, and the positional filter
    passes there (it may also turn up in other shards: dedupe when merging).

    >>> shard_pairs(["ab", "abc", "xy", "ab"], 0.7, 0, 1).tolist()
    [[0, 1], [0, 3], [1, 3]]
    """
    index = RougeIndex(threshold=threshold)
    index._shard = (shard, shards)
    found = [np.zeros((0, 2), dtype=np.int64)]
    for start in range(0, len(encoded), batch):
        texts = encoded[start:start + batch]
        for text in texts:
            index._add("", text)
        pairs = index._pairs(texts)
        later = pairs.query + start
        earlier = pairs.position < later
        found.append(np.stack([pairs.position[earlier], later[earlier]], axis=1))
    return np.concatenate(found)


def _next_batch_size(probed: int, kept: int, scanned: int) -> int:
    """Size batches so about ``_SURVIVORS_PER_BATCH`` texts reach the all-pairs step, within a memory bound.

    >>> _next_batch_size(probed=1000, kept=100, scanned=50_000)
    5120
    """
    by_survivors = _SURVIVORS_PER_BATCH * max(1, probed) / max(1, kept)
    by_memory = _ENTRIES_PER_BATCH * max(1, probed) / max(1, scanned)
    return int(max(64, min(by_survivors, by_memory, 16384)))


def _workers(pairs: int) -> int:
    """rapidfuzz threads for scoring ``pairs`` pairs: every core for big calls; starting threads
    costs more than a few thousand short pairs take."""
    return -1 if pairs > 20_000 else 1


class _Codes(dict):
    """Token -> its one-character code; a new token gets the next code (C speed for known ones)."""

    def __missing__(self, token: str) -> str:
        code = self[token] = _char(len(self))
        return code


def _distinct(values: np.ndarray) -> np.ndarray:
    """Sorted distinct values (np.unique's hash table is slower on these arrays than a sort).

    >>> _distinct(np.array([5, 1, 5, 3])).tolist()
    [1, 3, 5]
    """
    values = np.sort(values)
    return values[np.concatenate([[True], values[1:] != values[:-1]])] if values.size else values


def _char(number: int) -> str:
    """The character coding token number ``number``; lone surrogates are skipped to keep text well formed."""
    if number >= _MAX_TOKENS:
        raise ConfigError(f"more than {_MAX_TOKENS} distinct tokens: split the data")
    return chr(number if number < _SURROGATES.start else number + len(_SURROGATES))


def _fmeasures(lcs: np.ndarray, m, lengths: np.ndarray) -> np.ndarray:
    """:func:`~self_instruct.core.rouge.fmeasure` elementwise: the same float64 operations in the same order.

    ``m`` (the query's length) and ``lengths`` broadcast against ``lcs``.

    >>> _fmeasures(np.array([7, 0]), 7, np.array([13, 5])).tolist()
    [0.7000000000000001, 0.0]
    """
    lcs = np.asarray(lcs)
    shape = np.broadcast_shapes(lcs.shape, np.shape(m), np.shape(lengths))
    # Every cell computed, then those without a common token set to 0 (they divide 0 by 0): the
    # same operations on the cells that count, without gathering them first, which took two to
    # three times as long (8 texts against 11K indexed, benchmarks/throughput.py). Every
    # candidate the loop keeps is scored here against the whole pool, for its top 10 and mean.
    top = np.broadcast_to(lcs, shape).astype(np.float64)
    with np.errstate(divide="ignore", invalid="ignore"):
        precision = top / lengths
        recall = np.divide(top, m, out=top)
        denominator = precision + recall
        precision *= 2
        precision *= recall
        precision /= denominator
    np.copyto(precision, 0.0, where=lcs == 0)
    return precision
