"""The one command-line edge: every `python -m self_instruct.X` runs its `main` through `run`.

fire turns `main`'s signature into flags (the product card's choice); around it this module
- refuses an unknown flag or a stray word before anything runs, naming the nearest real flag
  (fire calls main with the flags it knows and complains about the rest only afterwards);
- accepts exactly the flags `--help` lists, fire's one-letter forms included, but -h, which is
  help in every command;
- reads a word after a switch as a word (`documents --no_verify book.pdf`), and refuses a flag
  typed where a value was due (`--host --port 8000`) or a positional argument left out;
- checks each value against `main`'s annotation (`--max_steps abc` is one line, not a traceback);
- turns every expected failure (SelfInstructError, OSError, UnicodeError, RecursionError) into one
  line `self_instruct: error: ...` and exit status 2, and Ctrl-C into exit status 130;
- never prints a secret: API keys seen in flags or the environment and credentials inside URLs
  are masked in every message (:func:`redact`), and in whatever else the command writes to
  stderr while it runs (its progress, a library's warning).
"""
from __future__ import annotations

import asyncio
import difflib
import functools
import inspect
import os
import re
import sys
import types
import typing
from typing import Any, Callable, Sequence

from .errors import ConfigError, SelfInstructError
from .io.secrets import redact, redacted_stderr, register_secret

HELP = ("-h", "--help")
class FlagSpec:
    """What `main` accepts: long names, switches, fire's one-letter forms and each flag's type."""

    def __init__(self, main: Callable):
        self.params = inspect.signature(main).parameters
        # Words without a dash fill main's positional parameters (INPUT..., OUTPUT_DIR), in order.
        self.positional = [n for n, p in self.params.items() if p.kind is p.VAR_POSITIONAL
                           or (p.kind is p.POSITIONAL_OR_KEYWORD and p.default is p.empty)]
        self.variadic = any(p.kind is p.VAR_POSITIONAL for p in self.params.values())
        hints = typing.get_type_hints(main)
        self.types = {name: hints.get(name, type(p.default) if p.default is not None else str) for name, p in self.params.items()}
        self.switches = {name for name in self.params if self.types[name] is bool}
        firsts: dict[str, list[str]] = {}
        for name in self.params:
            firsts.setdefault(name[0], []).append(name)
        # fire offers -x for a parameter whose first letter no other parameter shares; -h is help
        # in every command, so no flag gets it (serve's --host, evaluate's --holdout).
        self.short = {letter: names[0] for letter, names in firsts.items() if len(names) == 1 and letter != "h"}

    def long_name(self, arg: str) -> tuple[str, str | None]:
        """('name', inline value or None) for '--name', '--name=v', '-x' or '-x=v'."""
        body, has_value, value = arg.lstrip("-").partition("=")
        name = body.replace("-", "_")
        if not arg.startswith("--") and len(name) == 1 and name in self.short:
            name = self.short[name]
        return name, (value if has_value else None)

    def check(self, argv: Sequence[str]) -> tuple[dict[str, str], list[str], list[str]]:
        """Refuse unknown flags, stray words and missing ones; return the raw text of each flag's
        value, the words (positional arguments) as typed, and the arguments as fire is to read them
        (each switch as --name=True or --name=False, so no word after it is taken for its value)."""
        raw: dict[str, str] = {}
        args, i, words, for_fire = list(argv), 0, [], []
        while i < len(args):
            arg, i = args[i], i + 1
            if arg == "--":
                raise ConfigError(f"unexpected argument in position {i}: '--' (flags go before it; see --help)")
            if not arg.startswith("-") or arg == "-" or re.fullmatch(r"-\d+(\.\d*)?", arg):
                if self._room_for_a_word(words, raw):
                    words.append(arg)
                    # fire reads words as literals, and "-" as its chaining separator; main gets the
                    # words as typed anyway (run's `checked`), so fire only sees a stand-in
                    for_fire.append("_")
                    continue
                raise ConfigError(f"unexpected argument in position {i}: {arg!r}; every option is a flag, --name value (see --help)")
            name, value = self.long_name(arg)
            negated = name.startswith("no") and name[2:] in self.switches
            if name in self.switches or negated:
                on = not negated
                if value is None and i < len(args) and args[i].lower() in ("true", "false"):
                    value, i = args[i], i + 1
                elif value is None and i < len(args) and not args[i].startswith("-") \
                        and not self._room_for_a_word(words, raw):
                    # fire would take the word for the switch's value (--quiet 500 sets quiet="500")
                    raise ConfigError(f"unexpected argument in position {i + 1}: --{name} is a switch and takes no value")
                if value is not None:
                    if value.lower() not in ("true", "false"):
                        raise ConfigError(f"--{name} is a switch: pass --{name} or --no{name} (got {value!r})")
                    on = (value.lower() == "true") is not negated
                for_fire.append(f"--{name[2:] if negated else name}={on}")
                continue
            if name not in self.params:
                close = [p for p in self.params if p.startswith(name)] or difflib.get_close_matches(name, list(self.params), n=1)
                raise ConfigError(f"unknown flag --{name}; " + (f"did you mean --{close[0]}?" if close else "see --help for the flags"))
            if value is None:
                if i >= len(args) or self._is_flag(args[i]):
                    raise ConfigError(f"--{name} needs a value")
                value, i = args[i], i + 1
            for_fire.append(f"--{name}={value}")  # one word: a value "-" is not fire's separator
            raw[name] = value
        unfilled = [p for p in self.positional if p not in raw][len(words):]
        if unfilled and not self.variadic:
            raise ConfigError(f"{unfilled[0].upper()} is missing: give it as a word or as --{unfilled[0]} (see --help)")
        return raw, words, for_fire

    def _room_for_a_word(self, words: list[str], raw: dict[str, str]) -> bool:
        """Whether a word fills a positional parameter still open (one given as a flag is not)."""
        return self.variadic or len(words) < len([p for p in self.positional if p not in raw])

    def _is_flag(self, arg: str) -> bool:
        """A flag of this command, typed where a value was due (--host --port 8000)."""
        if not arg.startswith("--"):
            return False
        name = self.long_name(arg)[0]
        return name in self.params or (name.startswith("no") and name[2:] in self.switches)


def coerce(name: str, kind: Any, value: Any, raw: str | None) -> Any:
    """A flag's value as `main` expects it, or a ConfigError naming the flag.

    fire parses values as Python literals: "--model_name 7" arrives as the int 7 and
    "--base_url a,b" as a tuple, so text flags take the raw text from the command line.
    """
    optional = _is_optional(kind)
    base = _strip_optional(kind)
    if value is None and optional:
        return None
    shown = "[hidden]" if "key" in name or "password" in name else repr(raw if raw is not None else value)
    if base is str:
        return raw if raw is not None else str(value)
    if base is bool:
        if isinstance(value, bool):
            return value
        raise ConfigError(f"--{name} is a switch: pass --{name} or --no{name} (got {shown})")
    if base is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
        if isinstance(value, float) and value.is_integer():
            return int(value)
        raise ConfigError(f"--{name} must be a whole number (got {shown})")
    if base is float:
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return value
        raise ConfigError(f"--{name} must be a number (got {shown})")
    return value


def _is_optional(kind: Any) -> bool:
    return isinstance(kind, types.UnionType) and type(None) in typing.get_args(kind) or (
        typing.get_origin(kind) is typing.Union and type(None) in typing.get_args(kind))


def _strip_optional(kind: Any) -> Any:
    if _is_optional(kind):
        args = [a for a in typing.get_args(kind) if a is not type(None)]
        return args[0] if len(args) == 1 else Any
    return kind


def run(main: Callable, argv: Sequence[str] | None = None, *, name: str,
        interrupted: str = "interrupted; nothing half-written is left behind") -> None:
    """Run `main` as the command `python -m {name}`; see the module docstring for what it adds."""
    import fire

    args = list(sys.argv[1:] if argv is None else argv)
    register_secret(os.environ.get("OPENAI_API_KEY"))
    try:
        spec = FlagSpec(main)
        if any(a in HELP for a in args):
            show_help(main, name)
            return
        raw, words, args = spec.check(args)
        for flag, value in raw.items():
            if "key" in flag or "password" in flag:
                register_secret(value)

        @functools.wraps(main)
        def checked(*a, **kwargs):
            # fire passes flags positionally or by name; bind them to see each by its name.
            bound = inspect.signature(main).bind(*a, **kwargs)
            typed = iter(words)  # a word is a name or a path whatever it looks like ("7", "1.50", "1e3")
            for k, v in bound.arguments.items():
                if k in spec.positional and k not in raw:
                    bound.arguments[k] = tuple(typed) if spec.params[k].kind is inspect.Parameter.VAR_POSITIONAL \
                        else next(typed, v)
                else:
                    bound.arguments[k] = coerce(k, spec.types[k], v, raw.get(k))
            with redacted_stderr():  # every message, progress bar and library warning of the command
                return main(*bound.args, **bound.kwargs)

        fire.Fire(checked, command=args, name=name)
    except SelfInstructError as exc:
        fail(str(exc), getattr(exc, "exit_code", 2), prefix="error: " if getattr(exc, "exit_code", 2) == 2 else "")
    except (OSError, UnicodeError, RecursionError) as exc:
        fail(describe_os_error(exc))
    except (KeyboardInterrupt, asyncio.CancelledError):
        fail(interrupted, 130, prefix="")


def show_help(main: Callable, name: str) -> None:
    """fire's --help for `main`, where -h is help too: fire would list `-h, --host` for a lone
    flag starting with h, and no flag may have -h (FlagSpec.short never gives it)."""
    import fire
    from fire import helptext

    short_flags = helptext._GetShortFlags
    helptext._GetShortFlags = lambda flags: [letter for letter in short_flags(flags) if letter != "h"]
    try:
        # Only --help reaches fire: with the other words fire would echo them, keys included.
        fire.Fire(main, command=["--help"], name=name)
    finally:
        helptext._GetShortFlags = short_flags


def fail(message: str, status: int = 2, prefix: str = "error: ") -> typing.NoReturn:
    print(f"self_instruct: {prefix}{redact(message)}", file=sys.stderr)
    sys.exit(status)


def describe_os_error(exc: BaseException) -> str:
    """One line for a failure of the machine rather than of the input: a full disk, a read-only
    file system, a symlink loop, a directory where a file should be."""
    if isinstance(exc, RecursionError):
        return "input nested too deeply to process"
    if isinstance(exc, UnicodeError):
        return f"text that is not valid UTF-8: {exc}"
    where = exc.filename if isinstance(exc, OSError) and exc.filename else ""
    hint = {28: "the disk is full: free space, then rerun the same command to resume",
            27: "a file grew past the size limit (ulimit -f) or the disk is full: make room, then rerun to resume",
            30: "the file system is read-only: write somewhere else",
            40: "too many levels of symbolic links (a symlink loop)",
            13: "permission denied", 21: "is a directory, not a file", 20: "a path component is a file, not a directory"}
    reason = hint.get(getattr(exc, "errno", None) or 0) or getattr(exc, "strerror", None) or str(exc)
    return f"{where}: {reason}" if where else reason


def words_as_flag(flag: str, argv: Sequence[str], switches: Sequence[str] = ()) -> list[str]:
    """The words that are not flags or their values, as one --flag of comma-separated values
    (cli.run reads flags only), and --from, a Python keyword, as main's from_. A flag takes the
    word after it as its value, except the `switches` (and --help).

    >>> words_as_flag("input", ["a.jsonl", "--format", "csv", "--chat", "b.json", "--from=csv"], switches=["chat"])
    ['--input', 'a.jsonl,b.json', '--format', 'csv', '--chat', '--from_=csv']
    """
    flags, words, args = [], [], iter(argv)
    bare = {f"--{name}" for name in switches} | {f"--no{name}" for name in switches} | set(HELP)
    for arg in args:
        if not arg.startswith("-") or arg == "-":
            words.append(arg)
            continue
        flags.append(re.sub(r"^--from(?==|$)", "--from_", arg))
        if "=" not in arg and arg not in bare:
            flags += [value for value in [next(args, None)] if value is not None]
    return ([f"--{flag}", ",".join(words)] if words else []) + flags
