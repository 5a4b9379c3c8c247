"""Grading answers against their references with a judge model, as a pipeline on the engine.

Each distinct (question, reference, answer) is one unit, asked once: systems often give the same
answer ("I do not know."). The verdict (correct, partly, wrong, with a reason) is the unit's
record, keyed by the judge model, the rubric and the three texts, so the grades pool is the cache
of verdicts: a rerun, or new answers beside old ones, asks only what it has not graded. A reply
without a verdict is rejected (no_verdict), and asked again on the next run.
"""
from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from typing import Sequence

from ..core.replies import json_values
from ..core.templates import fill
from ..pipelines.base import Ask, Pipeline, UnitResult
from ..types import Decoding, Example, Rejection

VERDICTS = {"correct": 1.0, "partly": 0.5, "wrong": 0.0}
RUBRIC = """You grade an answer to a question against a reference answer.
- correct: it states what the reference states (wording may differ; extra detail is fine if it is not wrong).
- partly: it holds part of the reference, or the right fact mixed with a wrong one.
- wrong: it misses or contradicts the reference, or does not answer.

Question: {question}
Reference answer: {reference}
Answer to grade: {answer}

Reply with JSON only, on one line: {"verdict": "correct" | "partly" | "wrong", "reason": "<one short sentence>"}"""
DECODING = Decoding(max_tokens=200, temperature=0.0)


def parse_grade(text: str) -> dict | None:
    """The judge's {"verdict", "reason"}, found in its reply; None when there is none.

    >>> parse_grade('Sure. {"verdict": "Partly", "reason": "Names the city,\\nnot the year."}')
    {'verdict': 'partly', 'reason': 'Names the city, not the year.'}
    """
    for obj in json_values(text):
        verdict = obj.get("verdict") if isinstance(obj, dict) else None
        if isinstance(verdict, str) and verdict.strip().lower() in VERDICTS:
            reason = obj.get("reason")
            return {"verdict": verdict.strip().lower(), "reason": " ".join(str(reason or "").split())}
    return None


def grade_key(judge_model: str, answer: dict) -> str:
    fields = [judge_model, RUBRIC, answer["question"], answer["reference"], answer["answer"]]
    return hashlib.sha256(json.dumps(fields).encode()).hexdigest()


@dataclass(frozen=True)
class ToGrade:
    key: str
    answer: dict  # question, reference, answer


class GradePipeline(Pipeline):
    unit_name = "answer"

    def __init__(self, todo: Sequence[ToGrade], first_unit: int):
        self.todo, self.first_unit = list(todo), first_unit

    def unit(self, index: int, pool=None) -> ToGrade | None:
        position = index - self.first_unit
        return self.todo[position] if 0 <= position < len(self.todo) else None

    async def run_unit(self, item: ToGrade, ask: Ask) -> UnitResult:
        a = item.answer
        reply = await ask(fill(RUBRIC, question=a["question"], reference=a["reference"], answer=a["answer"]), DECODING)
        graded = Example(a["question"], a["answer"], a["reference"], {"key": item.key})
        if not reply.ok:
            return UnitResult([], [Rejection("request_failed", graded, detail=reply.error or "")])
        verdict = parse_grade(reply.text)
        if verdict is None:
            return UnitResult([], [Rejection("no_verdict", graded, raw=reply.text[:2000])])
        graded.metadata.update(verdict)
        return UnitResult([graded])


def verdicts_of(records: Sequence[dict]) -> dict[str, dict]:
    """key -> {"verdict", "reason"}, from the grades pool's records."""
    return {r["metadata"]["key"]: {"verdict": r["metadata"]["verdict"], "reason": r["metadata"]["reason"]}
            for r in records}
