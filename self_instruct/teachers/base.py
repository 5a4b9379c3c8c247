"""The teacher protocol: prompts and decoding options in, one Completion per prompt out.

Every backend (OpenAI-compatible HTTP, the embedded llama.cpp model, the scripted fake) is a
subclass, so parse, filters, similarity, pool and resume are shared by all of them.
"""
from __future__ import annotations

from abc import ABC, abstractmethod
from typing import Sequence

from ..types import Completion, Decoding


class Teacher(ABC):
    #: Identifier written into each record's metadata and into run.json.
    model_id: str = "unknown"
    #: Name of the bundled prompt template (in prompts/) this backend works best with;
    #: --prompt_path overrides it.
    default_template: str = "generate.txt"
    #: Loop settings this backend works best with (e.g. {"num_tasks": 6, "max_tokens": 500} for a
    #: small model); a flag given explicitly always wins. Unset ones use Alpaca's values.
    default_options: dict = {}

    @abstractmethod
    async def complete(self, prompts: Sequence[str], decoding: Decoding) -> list[Completion]:
        """Return one Completion per prompt, in order. A prompt that fails for good is returned
        with `error` set; only a fault that makes the teacher unusable raises TeacherError."""

    async def aclose(self) -> None:
        """Release connections or models. Called once when the run ends."""

    def describe(self) -> dict:
        """What run.json records about this teacher (never a secret)."""
        return {"model": self.model_id, "backend": type(self).__name__}
