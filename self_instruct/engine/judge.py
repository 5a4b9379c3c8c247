"""The judge every pipeline's candidates go through: a filter chain, then exact duplicates, then
ROUGE-L against the seeds and every kept instruction (Alpaca's > 0.7 rule, bit for bit).

Which filters, what makes two records duplicates and whether ROUGE-L applies is a `FilterSet`
(`self_instruct/core/filters.py`), named by the pipeline for the data it makes: Alpaca's for
generated instructions, "grounded" for questions on a passage, "coverage" for a document's own
sentences. A filter is any callable taking an Example and returning a reason to drop it (or a
pair of the reason and a detail for rejected.jsonl), or None; users extend the chain with their
own (`Judge(extra_filters=[no_urls])`).

    judge = Judge(["Name three primary colors."])
    judge(Example("Name three primary colours.", "", "Red, blue, yellow."))  # -> a Rejection("similar")
    Judge(filter_set=COVERAGE)  # empty text and verbatim copies only: every window of a book is kept
"""
from __future__ import annotations

from typing import Iterable, Mapping, Sequence

from ..core.filters import ALPACA, Filter, FilterSet, blacklist_word, key_digest
from ..core.similarity import RougeIndex
from ..types import Example, Rejection


class Judge:
    """Decides, one candidate at a time and in order, what joins the pool.

    `threshold`: ROUGE-L's, a number, or None for the filter set's own (None for sets without
    a similarity check). `filters` replaces the set's chain; `extra_filters` run after it."""

    def __init__(self, known: Iterable[str | Example | Mapping] = (), *, threshold: float | None = None,
                 filter_set: FilterSet = ALPACA, filters: Sequence[Filter] | None = None,
                 extra_filters: Sequence[Filter] = (), top_k: int = 10):
        self.filter_set = filter_set
        self.filters = tuple(filter_set.filters if filters is None else filters) + tuple(extra_filters)
        self.threshold = filter_set.threshold if threshold is None else threshold
        self.index = RougeIndex(threshold=self.threshold) if self.threshold is not None else None
        self.seen: set[bytes] = set()
        self.top_k = top_k
        for item in known:
            self.remember(item)

    def remember(self, item: str | Example | Mapping) -> None:
        """Count an instruction (a seed) or a record (one already in the pool) as known."""
        if isinstance(item, str):
            item = Example(item)
        elif not isinstance(item, Example):
            item = Example(item.get("instruction", ""), item.get("input", ""), item.get("output", ""))
        if self.index is not None:
            self.index.add(item.instruction)
        self.seen.add(key_digest(self.filter_set.key(item)))

    def __call__(self, example: Example) -> dict | Rejection:
        """The pool record for a kept example (with Alpaca's similarity fields), or why not."""
        return self.judge_many([example])[0]

    def judge_many(self, examples: Sequence[Example], limit: int | None = None) -> list[dict | Rejection | None]:
        """Each example's verdict, as calling the judge on each in turn would give, with one
        ROUGE-L kernel call for all of them. After ``limit`` kept, the rest are left unjudged (None)."""
        verdicts: list[dict | Rejection | None] = [None] * len(examples)
        batch = (self.index.batch([example.instruction for example in examples], k=self.top_k, with_mean=True)
                 if self.index is not None else None)
        kept: list[int] = []
        for i, example in enumerate(examples):
            if limit is not None and len(kept) >= limit:
                break
            verdicts[i] = self._filtered(example)
            if verdicts[i] is not None:
                continue
            key = key_digest(self.filter_set.key(example))
            if key in self.seen:
                verdicts[i] = Rejection("duplicate", example)
                continue
            match = batch.decide(i) if batch is not None else None
            if match is not None:
                verdicts[i] = Rejection("similar", example, detail=f"{match.max_score:.4f} vs {match.nearest!r}")
                continue
            self.seen.add(key)
            kept.append(i)
        matches = batch.finish() if batch is not None else {}
        for i in kept:
            example = examples[i]
            record = {"instruction": example.instruction, "input": example.input, "output": example.output}
            if batch is not None:
                record.update(most_similar_instructions=dict(matches[i].most_similar),
                              avg_similarity_score=matches[i].mean)
            verdicts[i] = record | {"metadata": dict(example.metadata)}
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
    record["metadata"] = dict(ex.metadata) if ex is not None else dict(rejection.metadata)
    return record
