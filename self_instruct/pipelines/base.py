"""The protocol between a pipeline and the engine.

A pipeline says what to ask and how to read the answer; it knows nothing of concurrency, budgets
or files. It hands out numbered *units* (a round of prompts, a document chunk, a batch of
records) and runs one when the engine asks:

    class Shout(Pipeline):
        unit_name = "line"
        def unit(self, index, pool):                 # the unit's work, or None when there is no more
            return LINES[index] if index < len(LINES) else None
        async def run_unit(self, line, ask):         # ask: the engine's teacher call
            reply = await ask(f"Say it louder: {line}")
            return UnitResult([Example(line, "", reply.text)])

`ask(prompt, decoding=None)` is budgeted, cached and limited in concurrency by the engine; a
unit may call it any number of times, one after another or at once. What the unit returns is
judged and recorded by the engine, strictly in unit order.
"""
from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass, field
from typing import Any, Awaitable, Callable

from ..types import Completion, Example, Rejection

Ask = Callable[..., Awaitable[Completion]]


@dataclass
class UnitResult:
    """A unit's candidates (for the judge) and what it rejected itself (with reasons)."""

    examples: list[Example] = field(default_factory=list)
    rejections: list[Rejection] = field(default_factory=list)


class Pipeline(ABC):
    #: What a unit is called in messages ("rounds in a row kept nothing").
    unit_name: str = "unit"
    #: Unit r reads pool records of units < r - lag only (None: units read no pool record), so a
    #: resumed run draws the same prompts; the engine launches unit r once those are recorded.
    lag: int | None = None
    #: The most candidates one reply can hold: the engine's first guess, before replies come
    #: back, of how many requests a target needs (None: it sends one wave and waits).
    candidates_per_request: int | None = None

    @abstractmethod
    def unit(self, index: int, pool: Any) -> Any | None:
        """Unit `index`'s work, or None when there is no more. `pool` is the open pool."""

    @abstractmethod
    async def run_unit(self, unit: Any, ask: Ask) -> UnitResult:
        """Ask what the unit needs and read the replies into candidates and rejections."""

    def requests(self, unit: Any) -> int:
        """How many requests the unit sends at once (the engine fills max_concurrency from it)."""
        return 1
