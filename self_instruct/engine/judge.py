"""The judge every pipeline's candidates go through: a filter chain, then exact duplicates, then
ROUGE-L against the seeds and every kept instruction (Alpaca's > 0.7 rule, bit for bit).

A filter is any callable taking an Example and returning a reason to drop it (or a pair of the
reason and a detail for rejected.jsonl), or None; users extend the chain with their own
(`Judge(extra_filters=[no_urls])`).

    judge = Judge(["Name three primary colors."])
    judge(Example("Name three primary colours.", "", "Red, blue, yellow."))  # -> a Rejection("similar")
"""
from __future__ import annotations

from typing import Iterable, Sequence

from ..core.filters import DEFAULT_FILTERS, Filter, blacklist_word, duplicate_key
from ..core.similarity import RougeIndex
from ..types import Example, Rejection


class Judge:
    """Decides, one candidate at a time and in order, what joins the pool."""

    def __init__(self, known: Iterable[str] = (), *, threshold: float = 0.7,
                 filters: Sequence[Filter] = DEFAULT_FILTERS, extra_filters: Sequence[Filter] = (),
                 top_k: int = 10):
        self.filters = tuple(filters) + tuple(extra_filters)
        self.index = RougeIndex(threshold=threshold)
        self.seen: set[str] = set()
        self.top_k = top_k
        for text in known:
            self.remember(text)

    def remember(self, instruction: str) -> None:
        """Count an instruction as known (a seed, or a record already in the pool)."""
        self.index.add(instruction)
        self.seen.add(duplicate_key(instruction))

    def __call__(self, example: Example) -> dict | Rejection:
        """The pool record for a kept example (with Alpaca's similarity fields), or why not."""
        return self.judge_many([example])[0]

    def judge_many(self, examples: Sequence[Example], limit: int | None = None) -> list[dict | Rejection | None]:
        """Each example's verdict, as calling the judge on each in turn would give, with one
        ROUGE-L kernel call for all of them. After ``limit`` kept, the rest are left unjudged (None)."""
        verdicts: list[dict | Rejection | None] = [None] * len(examples)
        batch = self.index.batch([example.instruction for example in examples], k=self.top_k, with_mean=True)
        kept = 0
        for i, example in enumerate(examples):
            if limit is not None and kept >= limit:
                break
            verdicts[i] = self._filtered(example)
            if verdicts[i] is not None:
                continue
            key = duplicate_key(example.instruction)
            if key in self.seen:
                verdicts[i] = Rejection("duplicate", example)
                continue
            match = batch.decide(i)
            if match is not None:
                verdicts[i] = Rejection("similar", example, detail=f"{match.max_score:.4f} vs {match.nearest!r}")
                continue
            self.seen.add(key)
            kept += 1
        for i, match in batch.finish().items():
            example = examples[i]
            verdicts[i] = {
                "instruction": example.instruction, "input": example.input, "output": example.output,
                "most_similar_instructions": dict(match.most_similar), "avg_similarity_score": match.mean,
                "metadata": dict(example.metadata),
            }
        return verdicts

    def _filtered(self, example: Example) -> Rejection | None:
        for check in self.filters:
            reason = check(example)
            if reason:
                reason, detail = reason if isinstance(reason, tuple) else (reason, "")
                if reason == "blacklist":
                    detail = blacklist_word(example.instruction) or ""
                return Rejection(reason, example, detail=detail)
        return None


def reject_record(rejection: Rejection) -> dict:
    """A rejected candidate as rejected.jsonl holds it: reason first, then the text and its metadata."""
    ex = rejection.example
    record = {"reason": rejection.reason, "detail": rejection.detail}
    if ex is not None:
        record.update(instruction=ex.instruction, input=ex.input, output=ex.output)
    if rejection.raw:
        record["raw"] = rejection.raw
    record["metadata"] = dict(ex.metadata) if ex is not None else {}
    return record
