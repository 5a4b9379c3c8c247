"""An index of instructions answering Alpaca's ROUGE-L near-duplicate question, fast and exact.

Scores, the ``F > threshold`` decision, the top-10 ``most_similar_instructions`` and the
``avg_similarity_score`` equal what Stanford Alpaca's generator computes with rouge-score 0.1.2
(``RougeScorer(["rougeL"], use_stemmer=False)``, see :mod:`self_instruct.rouge`), bit for bit.

How it avoids Alpaca's all-pairs Python LCS:

* Every token is interned as one character, so a text becomes a short ``str`` that rapidfuzz's
  C++ LCS kernel reads directly; one call scores a candidate against the whole pool.
* Deciding ``F > threshold`` rarely needs the whole pool. Two texts of m and n tokens with an LCS
  of l score ``2l/(m+n)`` (up to rounding), so a match needs ``l >= min_overlap(t, m, n)`` and at
  least that many tokens in common. The prefix filter of similarity joins turns this into an
  inverted index: sort each text's tokens rarest first and index only the first
  ``prefix_length(t, n)`` of them; two texts sharing enough tokens always share one of those.
  Only texts found through the query's own prefix are scored, exactly.
* The bounds are lowered by ``MARGIN``, far above float rounding, so a pair is skipped only when
  it provably scores below the threshold; every pair near it gets rouge-score's exact float.
"""
from __future__ import annotations

import math
from array import array
from dataclasses import dataclass, field
from typing import Iterable

import numpy as np
from rapidfuzz import process
from rapidfuzz.distance import LCSseq

from .errors import ConfigError
from .rouge import tokenize

# Slack on the threshold used only for pruning. F is within a few ulps (~1e-16) of 2l/(m+n), so
# a pair whose bound misses the threshold by more than this cannot score above it.
MARGIN = 1e-9

_SURROGATES = range(0xD800, 0xE000)
_MAX_TOKENS = 0x110000 - len(_SURROGATES)


def min_overlap(threshold: float, m: int, n: np.ndarray) -> np.ndarray:
    """Fewest common tokens with which a text of ``m`` tokens might score above ``threshold``
    against texts of ``n`` tokens.

    F is at most 2l/(m+n), so it needs l >= t(m+n)/2, and at least one token in common. A pair
    whose answer exceeds min(m, n) cannot match at all:

    >>> min_overlap(0.7, 7, np.array([13, 10, 3])).tolist()   # fmeasure(7, 7, 13) > 0.7
    [7, 6, 4]
    """
    return np.maximum(1, np.ceil((threshold - MARGIN) * (m + n) / 2)).astype(np.int64)


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
        self._codes: dict[str, str] = {}
        self._texts: list[str] = []
        self._encoded: list[str] = []
        self._lengths = array("q")
        # (token, occurrence) -> indices of the texts holding it in their prefix; the n-th
        # occurrence of a token is keyed by its character repeated n times.
        self._postings: dict[str, list[int]] = {}
        for token in vocabulary:
            self._code(token)
        for text in texts:
            self.add(text)

    def __len__(self) -> int:
        return len(self._texts)

    def add(self, text: str) -> None:
        encoded = self._encode(text)
        position = len(self._texts)
        self._texts.append(text)
        self._encoded.append(encoded)
        self._lengths.append(len(encoded))
        for key in self._prefix(encoded):
            self._postings.setdefault(key, []).append(position)

    def check(self, text: str, k: int = 10, with_mean: bool = True) -> Match:
        """Decide whether ``text`` is a near duplicate; for a text that is not, also its top ``k`` and mean.

        A text that is not similar costs one C-kernel pass over the whole index (the top-k and
        the mean need every score); a similar one only the pairs the prefix filter leaves.
        """
        encoded = self._encode(text)
        hit = self._best_above_threshold(encoded)
        if hit is not None:
            return Match(True, hit[1], self._texts[hit[0]])
        if not self._texts:
            return Match(False, 0, None, [], 0.0 if with_mean else None)
        scores = self._scores(encoded)
        best = int(np.argmax(scores))
        return Match(
            similar=False,
            max_score=self._value(scores, best, encoded),
            nearest=self._texts[best],
            most_similar=self._top(scores, k, encoded),
            mean=float(np.mean(scores)) if with_mean else None,
        )

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
        code = self._codes.get(token)
        if code is None:
            number = len(self._codes)
            if number >= _MAX_TOKENS:
                raise ConfigError(f"more than {_MAX_TOKENS} distinct tokens: split the data")
            # Lone surrogates are legal in a Python str but skipped to keep the text well formed.
            code = chr(number if number < _SURROGATES.start else number + len(_SURROGATES))
            self._codes[token] = code
        return code

    def _encode(self, text: str) -> str:
        return "".join([self._code(token) for token in tokenize(text)])

    def _prefix(self, encoded: str) -> list[str]:
        """Posting keys of the rarest ``prefix_length`` tokens; rarer means a larger code."""
        keys = []
        previous, repeat = "", 1
        for char in sorted(encoded, reverse=True)[: prefix_length(self.threshold, len(encoded))]:
            repeat = repeat + 1 if char == previous else 1
            keys.append(char * repeat)
            previous = char
        return keys

    # -- queries --------------------------------------------------------------------------

    def _best_above_threshold(self, encoded: str) -> tuple[int, float] | None:
        """(position, F) of the best-scoring text with F > threshold, earliest on ties; or None."""
        candidates: set[int] = set()
        for key in self._prefix(encoded):
            candidates.update(self._postings.get(key, ()))
        if not candidates:
            return None
        m = len(encoded)
        positions = np.fromiter(candidates, dtype=np.int64, count=len(candidates))
        positions.sort()
        lengths = np.frombuffer(self._lengths, dtype=np.int64)[positions]
        need = min_overlap(self.threshold, m, lengths)
        fits = need <= np.minimum(m, lengths)
        positions, lengths, need = positions[fits], lengths[fits], need[fits]
        if not positions.size:
            return None
        others = [self._encoded[p] for p in positions.tolist()]
        lcs = process.cdist([encoded], others, scorer=LCSseq.similarity, dtype=np.int64,
                            score_cutoff=int(need.min()))[0]
        scores = _fmeasures(lcs, m, lengths)
        best = int(np.argmax(scores))  # the first of equal maxima: the earliest indexed
        if scores[best] > self.threshold:
            return int(positions[best]), float(scores[best])
        return None

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
            kth = np.partition(scores, len(scores) - k)[len(scores) - k]
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


def _fmeasures(lcs: np.ndarray, m: int, lengths: np.ndarray) -> np.ndarray:
    """:func:`~self_instruct.rouge.fmeasure` elementwise: the same float64 operations in the same order.

    >>> _fmeasures(np.array([7, 0]), 7, np.array([13, 5])).tolist()
    [0.7000000000000001, 0.0]
    """
    scores = np.zeros(len(lcs))
    hits = np.flatnonzero(lcs)
    precision = lcs[hits] / lengths[hits]
    recall = lcs[hits] / m
    scores[hits] = 2 * precision * recall / (precision + recall)
    return scores
