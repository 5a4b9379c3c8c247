"""Answering a question set with one system, as a pipeline on the engine: a unit is one
question, its record the answer with the question, reference, source and retrieved snippets.

Units are the questions still unanswered when the run starts, numbered on from the pool's
next unit: a question answered before (in this pool) is never asked again, and one whose
request failed is asked again on the next run. Questions are independent of each other, so
their numbering may differ from one run to the next.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

from ..pipelines.base import Ask, Pipeline, UnitResult
from ..types import Example, Rejection
from .questions import Question
from .systems import cut_at_stop


@dataclass(frozen=True)
class Asked:
    question: Question
    prompt: str
    snippets: tuple[dict, ...]


class AnswerPipeline(Pipeline):
    unit_name = "question"

    def __init__(self, todo: Sequence[Asked], first_unit: int, stop: Sequence[str]):
        self.todo, self.first_unit, self.stop = list(todo), first_unit, tuple(stop)

    def unit(self, index: int, pool=None) -> Asked | None:
        position = index - self.first_unit
        return self.todo[position] if 0 <= position < len(self.todo) else None

    async def run_unit(self, asked: Asked, ask: Ask) -> UnitResult:
        reply = await ask(asked.prompt)
        q = asked.question
        if not reply.ok:
            return UnitResult([], [Rejection("request_failed", Example(q.question, "", "", {"id": q.id}),
                                             detail=reply.error or "")])
        metadata = {"id": q.id, "reference": q.answer, "source": q.source, "snippets": list(asked.snippets),
                    "prompt_tokens": reply.prompt_tokens, "completion_tokens": reply.completion_tokens}
        return UnitResult([Example(q.question, "", cut_at_stop(reply.text, self.stop), metadata)])


def answered_ids(records: Sequence[dict]) -> set[int]:
    """The questions a system's pool already holds an answer to."""
    return {r["metadata"]["id"] for r in records}
