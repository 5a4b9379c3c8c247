"""Which records a selection keeps: a score order, a budget, and optionally Deita's diversity rule.

1. Rank: records with a score, best first (ties in input order); those without one are dropped
   with a reason, or, for a judge score with ``unscored="last"``, ranked after every scored one.
2. Walk the ranking and keep records until the budget is full. With a diversity threshold (Deita,
   Liu et al. 2024, "What Makes Good Data for Alignment", its "repr filter": τ = 0.9 in the
   paper), a record is kept only when the cosine similarity of its embedding to every record
   already kept is at or under the threshold; otherwise it is dropped as too similar, and the walk
   goes on.
3. What the walk did not reach is dropped as over the budget.

Each decision is a `Verdict`: kept (with its rank) or dropped (with a reason and a detail).
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable, Sequence

import numpy as np

CHUNK = 256  # records embedded and compared at once during the diversity walk


@dataclass
class Verdict:
    """What became of one record: kept at `rank` (1 is best), or dropped for `reason`."""

    rank: int | None = None
    reason: str | None = None
    detail: str = ""
    extra: dict = field(default_factory=dict)


def budget(total: int, keep: int | None, keep_fraction: float | None) -> int:
    """Records to keep: `keep`, or `keep_fraction` of all records read, rounded down (as Cherry
    and Superfiltering count their sample rate).

    >>> budget(95, None, 0.1), budget(95, 20, None)
    (9, 20)
    """
    return keep if keep is not None else int(total * keep_fraction)


def rank(scores: Sequence[float | None], last: Sequence[int] = ()) -> list[int]:
    """Indices of the scored records, highest score first, ties in input order; then `last`.

    >>> rank([0.5, None, 0.9, 0.5], last=[1])
    [2, 0, 3, 1]
    """
    scored = [i for i, s in enumerate(scores) if s is not None]
    return sorted(scored, key=lambda i: (-scores[i], i)) + list(last)


def walk(order: Sequence[int], keep: int, verdicts: list[Verdict], *, embed: Callable[[list[int]], np.ndarray] | None = None,
         threshold: float | None = None) -> None:
    """Fill `verdicts[i]` for every i in `order`: kept until `keep` records are, with the diversity
    check when `embed` (indices -> one embedding row each) and `threshold` are given."""
    kept = 0
    chosen = np.zeros((0, 0), dtype=np.float32)  # unit embeddings of the records kept so far
    chosen_ids: list[int] = []
    position = 0
    while position < len(order) and kept < keep:
        chunk = list(order[position:position + (CHUNK if embed else keep - kept)])
        position += len(chunk)
        if not embed:
            for i in chunk:
                kept += 1
                verdicts[i] = Verdict(rank=kept)
            continue
        vectors = unit_rows(embed(chunk))
        if not chosen.size:
            chosen = np.zeros((0, vectors.shape[1]), dtype=np.float32)
        before = vectors @ chosen.T  # against records kept before this chunk
        within = vectors @ vectors.T
        taken: list[int] = []  # positions in this chunk kept so far
        for j, i in enumerate(chunk):
            if kept == keep:
                position -= len(chunk) - j  # the rest of the chunk was not reached
                break
            sims = np.concatenate([before[j], within[j, taken]])
            if sims.size and float(sims.max()) > threshold:
                best = int(sims.argmax())
                other = chosen_ids[best] if best < len(chosen_ids) else chunk[taken[best - len(chosen_ids)]]
                verdicts[i] = Verdict(reason="too_similar", detail=f"cosine {float(sims.max()):.4f} > {threshold} to a kept record",
                                      extra={"similar_to": other, "similarity": round(float(sims.max()), 6)})
                continue
            kept += 1
            taken.append(j)
            verdicts[i] = Verdict(rank=kept)
        chosen = np.concatenate([chosen, vectors[taken]])
        chosen_ids += [chunk[j] for j in taken]
    for i in order[position:]:
        verdicts[i] = Verdict(reason="over_budget", detail=f"not among the best {keep}")


def unit_rows(vectors: np.ndarray) -> np.ndarray:
    """Rows scaled to length 1 (a zero row stays zero), so a dot product is the cosine."""
    vectors = np.asarray(vectors, dtype=np.float32)
    norms = np.linalg.norm(vectors, axis=1, keepdims=True)
    return vectors / np.where(norms == 0, 1, norms)
