"""Stanford Alpaca's self-instruct pipeline: seed tasks sampled into a numbered prompt, the
teacher continues the list, the reply is parsed into tasks.

Round r draws its prompts from `random.Random(f"{seed}:{r}")`, and, with
`num_machine_instructions`, from the records of rounds before r - MACHINE_LAG only: the engine
launches round r once those are in the pool, so the prompts of every round are the same whether
the run went straight through or was killed and resumed any number of times.
"""
from __future__ import annotations

import asyncio
import random
from dataclasses import dataclass
from typing import Sequence

from ..core.conditioning import Conditions
from ..core.parse import parse_completion
from ..core.prompts import encode_prompt
from ..core.seeds import seed_examples
from ..types import Example, Rejection, SeedTask
from .base import Pipeline, UnitResult

# Rounds that may be out at once while later rounds sample grown tasks from earlier ones.
MACHINE_LAG = 4


@dataclass(frozen=True)
class AlpacaRound:
    index: int
    prompts: tuple[str, ...]
    sizes: tuple[int, ...]  # example tasks each prompt shows (the reply continues after them)
    tags: tuple[dict, ...] = ()  # each prompt's persona and topic, given to the records it yields


class AlpacaPipeline(Pipeline):
    unit_name = "round"

    def __init__(self, seeds: Sequence[SeedTask], template: str, *, num_prompt_instructions: int = 3,
                 num_machine_instructions: int = 0, num_tasks: int = 20, request_batch_size: int = 5,
                 seed: int = 42, renumber: bool = False, conditions: Conditions = Conditions()):
        self.seeds, self.template, self.conditions = list(seeds), template, conditions
        self.n, self.m, self.num_tasks = num_prompt_instructions, num_machine_instructions, num_tasks
        self.batch, self.seed, self.renumber = request_batch_size, seed, renumber
        self.lag = MACHINE_LAG if num_machine_instructions else None
        # The most tasks a reply can hold (the list runs to num_tasks): the engine's guess of a
        # reply's worth until replies come back.
        self.candidates_per_request = max(1, num_tasks - num_prompt_instructions)

    def unit(self, index: int, pool) -> AlpacaRound:
        rng = random.Random(f"{self.seed}:{index}")
        records = pool.records_before(index - MACHINE_LAG) if self.m else []
        drawn = [self.draw_prompt(rng, records) for _ in range(self.batch)]
        return AlpacaRound(index, tuple(p for p, _, _ in drawn), tuple(s for _, s, _ in drawn),
                           tuple(t for _, _, t in drawn))

    def requests(self, unit: AlpacaRound) -> int:
        return len(unit.prompts)

    def draw_prompt(self, rng: random.Random, records: Sequence[dict]) -> tuple[str, int, dict]:
        """One prompt: seed tasks plus up to `num_machine_instructions` pool records, shuffled,
        and a persona and topic when the run has them. Returns the prompt, how many example tasks
        it shows, and its tags."""
        m = min(self.m, len(records))
        examples = seed_examples(rng.sample(self.seeds, self.n - m), rng)
        examples += [Example(r["instruction"], r["input"], r["output"]) for r in rng.sample(records, m)]
        rng.shuffle(examples)
        tags = self.conditions.draw(rng) if self.conditions else {}
        prompt = encode_prompt(examples, self.template, self.num_tasks, conditions=Conditions.paragraph(tags))
        return prompt, len(examples), tags

    async def run_unit(self, unit: AlpacaRound, ask) -> "UnitResult":
        replies = await asyncio.gather(*(ask(p) for p in unit.prompts), return_exceptions=True)
        for reply in replies:  # the round is recorded whole or not at all
            if isinstance(reply, BaseException):
                raise reply
        result = UnitResult()
        for completion, size, tags in zip(replies, unit.sizes, unit.tags or [{}] * len(replies)):
            if not completion.ok:
                result.rejections.append(Rejection("request_failed", detail=completion.error or ""))
                continue
            examples, rejections = parse_completion(completion.text, completion.finish_reason, size, renumber=self.renumber)
            if not examples and not rejections:
                rejections = [Rejection("empty_reply", raw=completion.text[:500])]
            for example in examples:
                example.metadata.update(tags)
            result.examples += examples
            result.rejections += rejections
        return result
