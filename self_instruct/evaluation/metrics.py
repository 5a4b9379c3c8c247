"""Scores of an answer against its reference, and their means with bootstrap intervals.

Exact match and token F1 follow the SQuAD evaluation script: lower case, punctuation and the
articles a/an/the removed, whitespace collapsed; F1 over the multiset of the remaining tokens.
ROUGE-L is our exact rouge-score 0.1.2 F-measure (self_instruct.core.rouge), answer against reference.

    score_answer("The Eiffel Tower.", "Eiffel tower")
    # -> {"exact_match": 1.0, "f1": 1.0, "rouge_l": 0.8}  (ROUGE-L keeps "the")
"""
from __future__ import annotations

import re
import string
from collections import Counter
from typing import Sequence

import numpy as np

from ..core.rouge import rouge_l

METRICS = ("exact_match", "f1", "rouge_l")
_ARTICLES = re.compile(r"\b(a|an|the)\b")
_PUNCTUATION = str.maketrans("", "", string.punctuation)


def normalize_answer(text: str) -> str:
    """SQuAD's answer normalisation.

    >>> normalize_answer("The  Cat's hat!")
    'cats hat'
    """
    return " ".join(_ARTICLES.sub(" ", text.lower().translate(_PUNCTUATION)).split())


def exact_match(answer: str, reference: str) -> float:
    """1.0 when the normalised texts are equal.

    >>> exact_match("An apple.", "apple")
    1.0
    """
    return float(normalize_answer(answer) == normalize_answer(reference))


def token_f1(answer: str, reference: str) -> float:
    """Harmonic mean of token precision and recall after normalisation (1.0 when both are empty).

    >>> token_f1("red green blue", "green red")
    0.8
    """
    got, want = normalize_answer(answer).split(), normalize_answer(reference).split()
    if not got or not want:
        return float(got == want)
    common = sum((Counter(got) & Counter(want)).values())
    if common == 0:
        return 0.0
    precision, recall = common / len(got), common / len(want)
    return 2 * precision * recall / (precision + recall)


def score_answer(answer: str, reference: str) -> dict[str, float]:
    return {"exact_match": exact_match(answer, reference), "f1": token_f1(answer, reference),
            "rouge_l": float(rouge_l(answer, reference))}


def bootstrap_interval(values: Sequence[float], resamples: int = 2000, confidence: float = 0.95,
                       seed: int = 0) -> tuple[float, float, float]:
    """Mean and percentile bootstrap interval over questions (resampled with replacement, seeded).

    >>> bootstrap_interval([1.0, 1.0, 1.0])
    (1.0, 1.0, 1.0)
    """
    data = np.asarray(values, dtype=float)
    if data.size == 0:
        return float("nan"), float("nan"), float("nan")
    rng = np.random.default_rng(seed)
    means = data[rng.integers(0, data.size, size=(resamples, data.size))].mean(axis=1)
    tail = (1 - confidence) / 2 * 100
    low, high = np.percentile(means, [tail, 100 - tail])
    return float(data.mean()), float(low), float(high)
