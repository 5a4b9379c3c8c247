"""The teacher protocol: prompts and decoding options in, one Completion per prompt out.

Every backend (OpenAI-compatible HTTP, the embedded llama.cpp model, the scripted fake) is a
subclass, so parse, filters, similarity, pool and resume are shared by all of them.
"""
from __future__ import annotations

from abc import ABC, abstractmethod
from typing import Awaitable, Callable, Sequence

from ..types import Completion, Decoding


class Teacher(ABC):
    #: Identifier written into each record's provenance and into run.json.
    model_id: str = "unknown"
    #: Name of the bundled prompt template (in prompts/) this backend works best with;
    #: --prompt_path overrides it.
    default_template: str = "generate.txt"
    #: Loop settings this backend works best with (e.g. {"num_tasks": 6, "max_tokens": 500} for a
    #: small model); a flag given explicitly always wins. Unset ones use Alpaca's values.
    #: whether this teacher's replies restart or skip the list's numbering, so blocks are read by
    #: their own number (chat models, small local models) rather than the one that comes next
    renumbers: bool = False
    default_options: dict = {}
    #: Set by the engine and awaited before each retry of a request; False means the run's budget
    #: has no request left for another attempt. Backends that retry call it; others never need to.
    before_retry: Callable[[], Awaitable[bool]] | None = None

    @abstractmethod
    async def complete(self, prompts: Sequence[str], decoding: Decoding) -> list[Completion]:
        """Return one Completion per prompt, in order. A prompt that fails for good is returned
        with `error` set; only a fault that makes the teacher unusable raises TeacherError."""

    async def check(self) -> None:
        """Fail fast with TeacherError, before anything is written, when the teacher cannot be
        used at all (a refused key, no server answering). Backends with nothing to check pass."""

    @property
    def concurrency(self) -> int | None:
        """Requests the teacher lets out at once now (an adaptive fleet's limit), or None when it
        sets no limit of its own."""
        return None

    def endpoint_stats(self) -> dict[str, dict]:
        """Per-server counts for the run's summary (requests, failures, benched); empty unless
        the teacher spreads requests over several servers."""
        return {}

    async def aclose(self) -> None:
        """Release connections or models. Called once when the run ends."""

    def describe(self) -> dict:
        """What run.json records about this teacher (never a secret)."""
        return {"model": self.model_id, "backend": type(self).__name__}
