"""Preference pairs for DPO, as an engine pipeline: each unit is one instruction of the input.

The teacher answers it `samples` times (at the temperatures given in turn, each draw with its own
seed so no two are one cached reply; with a rival teacher, the draws alternate between the two),
then a rater scores every answer 1-10 in one request, side by side. The best answer becomes the
record's output (`chosen`), the worst its `metadata.rejected`, when their scores differ by at
least `min_margin`. What cannot make a pair is rejected with its reason:

    request_failed        an answer or the rating could not be had
    truncated             fewer than two answers were whole (a reply cut by max_tokens is not)
    identical_responses   the whole answers say the same thing
    unscored              the rating holds no valid score for some answer
    tie                   the best and the worst answer scored the same
    small_margin          they differ by less than min_margin
"""
from __future__ import annotations

import asyncio
from dataclasses import dataclass
from typing import Sequence

from ..core.filters import duplicate_key
from ..core.templates import fill
from ..types import Decoding, Example, Rejection
from .base import Ask, Pipeline, UnitResult
from .evolve import task_text
from .score import parse_scores

RIVAL, RATER = "rival", "rater"  # the names the engine knows the other teachers of a run by
SCORE_TOKENS = 48  # a verdict line per answer: {"index": 1, "score": 7, "reason": "..."}
SCALE = (1.0, 10.0)  # prompts/preference.txt rates 1-10: finer than 1-5, so fewer ties


@dataclass(frozen=True)
class Draw:
    """How one answer is drawn: by which teacher (None: the run's own), at what temperature, with
    which seed (part of the request, so draws at one temperature are distinct requests)."""

    teacher: str | None
    temperature: float
    seed: int


def draws(samples: int, temperatures: Sequence[float], rival: bool) -> tuple[Draw, ...]:
    """The answers asked for each instruction.

    Example: draws(2, [0.7, 1.2], rival=False) -> (Draw(None, 0.7, 0), Draw(None, 1.2, 1))
    """
    return tuple(Draw(RIVAL if rival and i % 2 else None, temperatures[i % len(temperatures)], i)
                 for i in range(samples))


def responses_block(answers: Sequence[str]) -> str:
    return "\n\n".join(f"### Response {i}\n{answer}" for i, answer in enumerate(answers, 1))


@dataclass(frozen=True)
class Task:
    index: int
    example: Example


class PreferencePipeline(Pipeline):
    unit_name = "instruction"

    def __init__(self, examples: Sequence[Example], plan: Sequence[Draw], rubric: str, *, max_tokens: int,
                 min_margin: float, rater: str | None = None):
        self.examples, self.plan, self.rubric = list(examples), tuple(plan), rubric
        self.max_tokens, self.min_margin, self.rater = max_tokens, min_margin, rater

    @property
    def unit_count(self) -> int:
        return len(self.examples)

    def unit(self, index: int, pool=None) -> Task | None:
        return Task(index, self.examples[index]) if index < len(self.examples) else None

    def requests(self, unit: Task) -> int:
        return len(self.plan)  # the answers go at once; the rating follows

    async def run_unit(self, task: Task, ask: Ask) -> UnitResult:
        ex = task.example
        prompt = task_text(ex)
        replies = await asyncio.gather(*(ask(prompt, Decoding(max_tokens=self.max_tokens, temperature=d.temperature,
                                                              seed=d.seed), teacher=d.teacher) for d in self.plan))
        failed = [r.error for r in replies if not r.ok]
        if failed:
            return self._reject("request_failed", ex, detail=failed[0] or "")
        whole = [(d, r.text.strip()) for d, r in zip(self.plan, replies) if r.finish_reason != "length" and r.text.strip()]
        if len(whole) < 2:
            return self._reject("truncated", ex, detail=f"{len(whole)} of {len(self.plan)} answers whole (not cut by "
                                                        f"max_tokens, not empty): raise --max_tokens")
        if len({duplicate_key(text) for _, text in whole}) == 1:
            return self._reject("identical_responses", ex, detail=f"{len(whole)} answers, all the same")
        answers = [text for _, text in whole]
        rating = await ask(fill(self.rubric, instruction=prompt, responses=responses_block(answers)),
                           Decoding(max_tokens=SCORE_TOKENS * len(answers) + 16, temperature=0.0), teacher=self.rater)
        if not rating.ok:
            return self._reject("request_failed", ex, detail=rating.error or "")
        verdicts = parse_scores(rating.text, len(answers), scale=SCALE)
        if any(v is None for v in verdicts):
            return self._reject("unscored", ex, raw=rating.text[:2000],
                                detail=f"no score from 1 to 10 for answer(s) "
                                       f"{[i for i, v in enumerate(verdicts, 1) if v is None]}")
        scores = [v[0] for v in verdicts]
        best, worst = scores.index(max(scores)), scores.index(min(scores))
        margin = scores[best] - scores[worst]
        if margin == 0:
            return self._reject("tie", ex, detail=f"every answer scored {scores[best]}")
        if margin < self.min_margin:
            return self._reject("small_margin", ex, detail=f"{scores[best]} - {scores[worst]} < {self.min_margin}")
        preference = {
            "scores": scores, "reasons": [v[1] for v in verdicts], "chosen": best, "rejected": worst, "margin": margin,
            "draws": [{"teacher": d.teacher or "teacher", "temperature": d.temperature} for d, _ in whole],
        }
        return UnitResult([Example(ex.instruction, ex.input, answers[best],
                                   {**ex.metadata, "rejected": answers[worst], "preference": preference})])

    @staticmethod
    def _reject(reason: str, ex: Example, *, detail: str = "", raw: str = "") -> UnitResult:
        return UnitResult([], [Rejection(reason, ex, raw=raw, detail=detail)])
