"""The records that flow through the pipeline: seeds in, decoding options and completions
across the teacher boundary, and one `Example` type from parse to pool to export.

Field names follow Alpaca's data (instruction, input, output) so what we write drops into
existing trainers unchanged.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

from .errors import ConfigError


@dataclass(frozen=True, slots=True)
class Instance:
    input: str
    output: str


@dataclass(frozen=True, slots=True)
class SeedTask:
    id: str
    name: str
    instruction: str
    instances: tuple[Instance, ...]
    is_classification: bool = False


@dataclass(slots=True)
class Example:
    """One instruction-following record. `metadata` is the record's own (its source, score, tags):
    it passes through every stage untouched; the engine writes where a record came from beside
    it, under the record's `provenance` key."""

    instruction: str
    input: str = ""
    output: str = ""
    metadata: dict[str, Any] = field(default_factory=dict)

    def to_alpaca(self) -> dict[str, str]:
        return {"instruction": self.instruction, "input": self.input, "output": self.output}


@dataclass(frozen=True, slots=True)
class Decoding:
    """Sampling options sent with every prompt; validated so a typo fails before any request.

    Defaults are Alpaca's (temperature 1.0, top_p 1.0, max_tokens 3072).
    """

    max_tokens: int = 3072
    temperature: float = 1.0
    top_p: float = 1.0
    stop: tuple[str, ...] = ()
    presence_penalty: float = 0.0
    frequency_penalty: float = 0.0
    seed: int | None = None
    # Ask for a JSON reply (response_format json_object on the chat API, where the server has it).
    json: bool = False

    def __post_init__(self) -> None:
        if not isinstance(self.max_tokens, int) or self.max_tokens < 1:
            raise ConfigError(f"max_tokens must be a positive integer (got {self.max_tokens!r})")
        if not (isinstance(self.temperature, (int, float)) and 0 <= self.temperature <= 2):
            raise ConfigError(f"temperature must be between 0 and 2 (got {self.temperature!r})")
        if not (isinstance(self.top_p, (int, float)) and 0 < self.top_p <= 1):
            raise ConfigError(f"top_p must be in (0, 1] (got {self.top_p!r})")
        if len(self.stop) > 4:
            raise ConfigError(f"at most 4 stop sequences are accepted by OpenAI-compatible servers (got {len(self.stop)})")
        for name in ("presence_penalty", "frequency_penalty"):
            value = getattr(self, name)
            if not (isinstance(value, (int, float)) and math.isfinite(value) and -2 <= value <= 2):
                raise ConfigError(f"{name} must be between -2 and 2 (got {value!r})")


@dataclass(frozen=True, slots=True)
class Completion:
    """What a teacher returned for one prompt.

    A prompt that failed for good (retries spent) is still a Completion, with `error` set and
    empty text, so one bad request never sinks a round.
    """

    text: str
    finish_reason: str | None = "stop"
    prompt_tokens: int = 0
    completion_tokens: int = 0
    error: str | None = None
    # Names of the faults met on the way (e.g. "429", "timeout"), for the run summary.
    faults: tuple[str, ...] = ()

    @property
    def ok(self) -> bool:
        return self.error is None


@dataclass(frozen=True, slots=True)
class Rejection:
    """A candidate (or an unparseable block of a reply) that did not make it, and why: `reason`
    is the short name counted in the summary, `detail` what a person needs to see why."""

    reason: str
    example: Example | None = None
    raw: str = ""
    detail: str = ""
    metadata: dict = field(default_factory=dict)  # where a rejection without an example came from
