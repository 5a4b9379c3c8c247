"""An index of instructions answering Alpaca's ROUGE-L near-duplicate question.

Scores, the ``> threshold`` decision, the top-10 ``most_similar_instructions`` and the
``avg_similarity_score`` equal what Stanford Alpaca's generator computes with rouge-score 0.1.2
(``RougeScorer(["rougeL"], use_stemmer=False)``): see :mod:`self_instruct.rouge`.
"""
from __future__ import annotations

import heapq
from dataclasses import dataclass, field
from typing import Iterable

import numpy as np

from .rouge import fmeasure, lcs_length, token_masks, tokenize


@dataclass(frozen=True)
class Match:
    """What the index knows about one candidate text."""

    similar: bool
    max_score: float
    nearest: str | None
    most_similar: list[tuple[str, float]] = field(default_factory=list)
    mean: float | None = None


class RougeIndex:
    """Indexed texts with their tokens, queried by ROUGE-L F-measure."""

    def __init__(self, texts: Iterable[str] = (), threshold: float = 0.7):
        self.threshold = threshold
        self._texts: list[str] = []
        self._tokens: list[list[str]] = []
        for text in texts:
            self.add(text)

    def __len__(self) -> int:
        return len(self._texts)

    def add(self, text: str) -> None:
        self._texts.append(text)
        self._tokens.append(tokenize(text))

    def scores(self, text: str) -> list[float]:
        """Exact F-measure of ``text`` against every indexed text, in insertion order."""
        tokens = tokenize(text)
        if not tokens:
            return [0] * len(self._texts)
        masks, m = token_masks(tokens), len(tokens)
        return [fmeasure(lcs_length(masks, m, other), m, len(other)) if other else 0
                for other in self._tokens]

    def check(self, text: str, k: int = 10, with_mean: bool = True) -> Match:
        scores = self.scores(text)
        if not scores:
            return Match(False, 0, None, [], 0.0 if with_mean else None)
        best = max(range(len(scores)), key=scores.__getitem__)
        similar = scores[best] > self.threshold
        return Match(
            similar=similar,
            max_score=scores[best],
            nearest=self._texts[best],
            most_similar=self._top(scores, k),
            mean=float(np.mean(scores)) if with_mean and not similar else None,
        )

    def max_score(self, text: str) -> float:
        return max(self.scores(text), default=0)

    def top_k(self, text: str, k: int = 10) -> list[tuple[str, float]]:
        return self._top(self.scores(text), k)

    def _top(self, scores: list[float], k: int) -> list[tuple[str, float]]:
        # Ties go to the text indexed first.
        best = heapq.nsmallest(k, range(len(scores)), key=lambda i: (-scores[i], i))
        return [(self._texts[i], scores[i]) for i in best]
