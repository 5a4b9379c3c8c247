"""The options commands share, each written once: its flag name, default, type, help and check.

A command's settings are one dataclass made of these groups and its own fields:

    @dataclass(kw_only=True)
    class ScoreConfig(BudgetOptions, RateOptions, TeacherOptions, RunOptions):
        input: str = option("", "the dataset to rate", positional=True)
        ...

    main = command(ScoreConfig, run_score, "Rate every record of INPUT ...")

`command` builds the function fire calls: its signature (the flags, in the order --help lists
them: the command's own, then the shared groups) and its docstring (a help line per flag) come
from the dataclass, so `--help`, the flag check at the CLI edge and the library call
(`ScoreConfig(input=..., max_requests=40)`) all read the same definition. A field's `check`
runs in `validate`, so a bad value is one line naming the flag before anything is written.
"""
from __future__ import annotations

import dataclasses
import inspect
import math
import typing
from dataclasses import dataclass, field
from typing import Any, Callable

from .errors import ConfigError


def option(default: Any, help: str, *, check: Callable[[str, Any], None] | None = None,
           record: bool = True, positional: bool = False, variadic: bool = False) -> Any:
    """A dataclass field that is also a flag.

    record: whether run.json keeps it (an API key, --quiet or --overwrite say nothing about the data);
    positional: the command's leading word (INPUT); variadic: its words (PATH...).
    """
    return field(default=default, metadata={"help": help, "check": check, "record": record,
                                            "positional": positional, "variadic": variadic})


# --- checks: each takes the flag's name and value and raises ConfigError naming the flag ---

def _number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def positive_int(name: str, value: Any) -> None:
    if not isinstance(value, int) or isinstance(value, bool) or value < 1:
        raise ConfigError(f"--{name} must be a positive whole number (got {value!r})")


def positive_int_up_to(upper: int, why: str) -> Callable[[str, Any], None]:
    """A check: a positive whole number no larger than `upper` (`why`: what a larger one would cost)."""
    def check(name: str, value: Any) -> None:
        positive_int(name, value)
        if value > upper:
            raise ConfigError(f"--{name} must be at most {upper:,} ({why}; got {value:,})")
    return check


def optional_positive_int(name: str, value: Any) -> None:
    if value is not None:
        positive_int(name, value)


def positive_number(name: str, value: Any) -> None:
    if not _number(value) or value <= 0:
        raise ConfigError(f"--{name} must be a positive number (got {value!r})")


def optional_positive_number(name: str, value: Any) -> None:
    if value is not None:
        positive_number(name, value)


def dollars(name: str, value: Any) -> None:
    if value is not None and (not _number(value) or value < 0):
        raise ConfigError(f"--{name} must be a number of dollars, 0 or more (got {value!r})")


def fraction(name: str, value: Any) -> None:
    if not _number(value) or not 0 < value <= 1:
        raise ConfigError(f"--{name} must be in (0, 1] (got {value!r})")


def optional_fraction(name: str, value: Any) -> None:
    if value is not None:
        fraction(name, value)


def one_of(*choices: Any) -> Callable[[str, Any], None]:
    def check(name: str, value: Any) -> None:
        if value not in choices:
            shown = ", ".join(str(c) for c in choices if c is not None)
            raise ConfigError(f"--{name} must be one of {shown} (got {value!r})")
    return check


# --- the shared groups ---

@dataclass(kw_only=True)
class RunOptions:
    """How a run treats its output directory and the terminal."""

    overwrite: bool = option(False, "start the output directory afresh instead of resuming it", record=False)
    quiet: bool = option(False, "no progress bar", record=False)


@dataclass(kw_only=True)
class KeyOptions:
    """The key for OpenAI-compatible servers."""

    api_key: str | None = option(None, "the server's key (default $OPENAI_API_KEY); never written or printed",
                                 record=False)


@dataclass(kw_only=True)
class TeacherOptions(KeyOptions):
    """Which teacher answers, and how requests to it are sent and retried."""

    model_name: str | None = option(
        None, "the teacher model (default gpt-3.5-turbo-instruct on a server; the embedded model needs none)")
    base_url: str | None = option(
        None, "OpenAI-compatible server: a URL, several comma-separated, or a file of URLs, one a line "
              "(default $OPENAI_BASE_URL); requests go to the least-loaded healthy one")
    api: str = option("completions", "completions or chat: the API the server is asked through",
                      check=one_of("completions", "chat"))
    teacher: str | None = option(
        None, "openai or local (default: openai when a server or key is given, else the embedded model)",
        check=one_of(None, "openai", "local"))
    local_model_path: str | None = option(None, "a .gguf file for the embedded teacher (default the bundled one)")
    max_concurrency: int = option(8, "requests in flight at most (adapts down on 429s, timeouts and queueing)",
                                  check=positive_int)
    request_timeout: float = option(
        120.0, "seconds without a token after which a request is given up and retried "
               "(with --no_stream: the most a whole request may take)", check=positive_number)
    max_attempts: int = option(6, "tries of a failing request before it counts as failed", check=positive_int)
    retry_backoff: float = option(
        1.0, "seconds before the first retry, doubling up to 30 s (a server's Retry-After wins)",
        check=positive_number)
    no_stream: bool = option(False, "plain requests instead of streamed replies")


@dataclass(kw_only=True)
class RateOptions:
    """Client-side rate limits over a rolling minute."""

    requests_per_minute: float | None = option(None, "requests sent per rolling minute at most",
                                               check=optional_positive_number)
    tokens_per_minute: float | None = option(None, "prompt and completion tokens per rolling minute at most",
                                             check=optional_positive_number)


@dataclass(kw_only=True)
class BudgetOptions:
    """Hard caps on what a run may send, kept across kills and resumes."""

    max_requests: int | None = option(
        None, "the most requests the run sends, retries included, across stops and resumes",
        check=optional_positive_int)
    max_total_tokens: int | None = option(
        None, "the most prompt + completion tokens (each request reserves its upper bound before it goes)",
        check=optional_positive_int)


@dataclass(kw_only=True)
class CostOptions:
    """A cap in dollars, and the prices it is counted in."""

    max_cost: float | None = option(
        None, "the most dollars the run spends (prices known for OpenAI's models, else --price_prompt and "
              "--price_completion)", check=dollars)
    price_prompt: float | None = option(None, "dollars per million prompt tokens, for a model not in the price table",
                                        check=dollars)
    price_completion: float | None = option(None, "dollars per million completion tokens", check=dollars)


@dataclass(kw_only=True)
class BatchOptions:
    """Requests sent through the provider's Batch API: about half the price, answers within a day."""

    batch: bool = option(False, "send the requests through the server's Batch API (/v1/files, /v1/batches): "
                                "about half the price, answers within 24 hours; a killed run polls the same batch")
    batch_size: int = option(50000, "requests in one batch at most (OpenAI takes 50,000)", check=positive_int)
    batch_poll: float = option(30.0, "seconds between the first polls of a batch, doubling up to --batch_poll_max",
                               check=positive_number, record=False)
    batch_poll_max: float = option(600.0, "the longest wait between polls of a batch, in seconds",
                                   check=positive_number, record=False)
    batch_retry: str = option("requests", "what becomes of a request that failed or expired in a batch: sent again "
                                          "as an ordinary request (requests) or in the next batch (batch)",
                              check=one_of("requests", "batch"))
    batch_discount: float | None = option(
        None, "the fraction of the price a batch request costs (default: the price table's batch rate, 0.5 of "
              "OpenAI's list prices; a model priced by flags pays its full price unless this is given)",
        check=optional_fraction)


@dataclass(kw_only=True)
class ConditionOptions:
    """Who asks and about what: each prompt conditioned on a persona and a topic, drawn in turn."""

    personas: str | None = option(None, "a file of personas (one a line, or JSONL with a persona field): each prompt "
                                        "is written as one of them would ask; records keep metadata.persona")
    topics: str | None = option(None, "a topic tree (indented text, or JSON): each prompt is about one of its leaves; "
                                      "records keep metadata.topic")


@dataclass(kw_only=True)
class RaterOptions:
    """Which model rates records, when it is not the teacher."""

    judge_model: str | None = option(None, "the model that rates (default the teacher's model)")
    judge_base_url: str | None = option(None, "the server that rates (default --base_url)")


@dataclass(kw_only=True)
class JudgeOptions(RaterOptions):
    """What joins the pool besides the filters: near-duplicates, benchmarks, and an optional rating."""

    similarity_threshold: float = option(
        0.7, "reject an instruction whose ROUGE-L F-measure against any known one is above this",
        check=fraction)
    decontaminate: str | None = option(
        None, "benchmark files, comma-separated: drop a record sharing 13 words in a row with one of them")
    filter: str | None = option(
        None, "your own filters, comma-separated module:function or file.py:function: each takes an Example "
              "and returns a reason to drop it, or None")
    judge: bool = option(False, "rate every kept record 1-5 at the end into OUTPUT_DIR/scored.json")
    min_score: float | None = option(None, "with --judge: scored.json keeps records rated at least this")


GROUPS = (RunOptions, KeyOptions, TeacherOptions, RateOptions, BudgetOptions, CostOptions, BatchOptions, ConditionOptions,
          RaterOptions, JudgeOptions)


# --- reading a config ---

def validate(cfg: Any) -> None:
    """Run every field's check on its value (the command's cross-field checks come after)."""
    for f in dataclasses.fields(cfg):
        check = f.metadata.get("check")
        if check is not None:
            check(f.name, getattr(cfg, f.name))


def recorded(cfg: Any) -> dict[str, Any]:
    """The settings run.json keeps: every field but the secret and the merely practical ones."""
    return {f.name: _plain(getattr(cfg, f.name)) for f in dataclasses.fields(cfg) if f.metadata.get("record", True)}


def _plain(value: Any) -> Any:
    return list(value) if isinstance(value, tuple) else value


def flag_fields(cls: type) -> list[dataclasses.Field]:
    """The fields of a command's config in --help order: its own first, then the shared groups'."""
    shared = {f.name for group in GROUPS if issubclass(cls, group) for f in dataclasses.fields(group)}
    every = dataclasses.fields(cls)
    return [f for f in every if f.name not in shared] + [f for f in every if f.name in shared]


def command(cls: type, run: Callable[[Any], Any], doc: str, *, extra: dict[str, tuple[Any, type, str]] | None = None):
    """The function fire calls for a command: flags from `cls`'s fields (and `extra`: name ->
    (default, type, help) for flags that are not settings, such as --dry_run), building the config
    and calling `run(cfg, **extras)`.
    """
    hints = typing.get_type_hints(cls)
    params, helps = [], []
    variadic = False
    for f in flag_fields(cls):
        meta = f.metadata
        if meta.get("variadic"):
            kind, variadic = inspect.Parameter.VAR_POSITIONAL, True
            annotation = typing.get_args(hints[f.name])[0] if typing.get_args(hints[f.name]) else str
            params.append(inspect.Parameter(f.name, kind, annotation=annotation))
        elif meta.get("positional"):
            params.append(inspect.Parameter(f.name, inspect.Parameter.POSITIONAL_OR_KEYWORD, annotation=hints[f.name]))
        else:
            kind = inspect.Parameter.KEYWORD_ONLY if variadic else inspect.Parameter.POSITIONAL_OR_KEYWORD
            params.append(inspect.Parameter(f.name, kind, default=f.default, annotation=hints[f.name]))
        helps.append((f.name, meta.get("help", "")))
    for name, (default, kind, text) in (extra or {}).items():
        k = inspect.Parameter.KEYWORD_ONLY if variadic else inspect.Parameter.POSITIONAL_OR_KEYWORD
        params.append(inspect.Parameter(name, k, default=default, annotation=kind))
        helps.append((name, text))
    # fire wants positional parameters first
    params.sort(key=lambda p: p.kind)
    signature = inspect.Signature(params)
    names = {f.name for f in dataclasses.fields(cls)}

    def main(*args: Any, **kwargs: Any) -> Any:
        bound = signature.bind(*args, **kwargs)
        bound.apply_defaults()
        settings = {k: v for k, v in bound.arguments.items() if k in names}
        extras = {k: v for k, v in bound.arguments.items() if k not in names}
        return run(cls(**settings), **extras)

    main.__signature__ = signature
    main.__annotations__ = {p.name: p.annotation for p in params}
    main.__doc__ = doc.rstrip() + "\n\nArgs:\n" + "\n".join(f"    {name}: {text}" for name, text in helps) + "\n"
    main.__name__ = "main"
    main.__qualname__ = f"{cls.__name__}.main"
    main.__module__ = getattr(run, "__module__", __name__)
    return main
