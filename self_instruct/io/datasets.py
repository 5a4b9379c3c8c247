"""Users' datasets in and out: any Alpaca-style JSON list or JSONL of records read as Examples,
a dataset written back as the file name says (JSONL by its suffix, else a JSON list), and the
check every command makes of the places it will write before it does any work."""
from __future__ import annotations

import os
from pathlib import Path
from typing import Iterable, Sequence

from ..errors import ConfigError, DataError
from ..types import Example
from .jsonl import iter_records, write_json_atomic, write_jsonl_atomic


def to_example(record: dict) -> Example:
    """A record as an Example: its text fields, and its metadata passed through as it is."""
    meta = record.get("metadata")
    return Example(str(record.get("instruction", "")), str(record.get("input", "") or ""),
                   str(record.get("output", "")), dict(meta) if isinstance(meta, dict) else {})


def read_examples(path: str | Path) -> list[Example]:
    """Every record of a JSON list or JSONL file; one line naming file:line when one has no instruction."""
    examples = []
    for lineno, record in iter_records(path):
        if not isinstance(record, dict) or not isinstance(record.get("instruction"), str):
            raise DataError(f"{path}:{lineno}: instruction: every record needs an instruction string")
        examples.append(to_example(record))
    return examples


def write_dataset(path: str | Path, records: list[dict]) -> None:
    """A JSONL file when the name ends in .jsonl, else a JSON list; atomically."""
    if str(path).endswith(".jsonl"):
        write_jsonl_atomic(path, records)
    else:
        write_json_atomic(path, records)


Named = Sequence[tuple[str, "str | Path | None"]]  # (the flag the user gave it with, the path)


def check_outputs(files: Named = (), *, directories: Named = (), inputs: Named = (),
                  reserved: Iterable[str] = ()) -> None:
    """Refuse, before any work or request, outputs that cannot be written as given: a directory
    where a file goes (or a file where a directory goes), a place that cannot be written, two
    outputs that are one file (relative paths, symlinks and hard links seen through), an output
    that is one of the inputs, or a file inside an output directory under a name the run keeps
    there (`reserved`: names directly inside each directory).

    Example: check_outputs([("--output", "k.jsonl"), ("--report", "./k.jsonl")]) raises
    ConfigError("--report ./k.jsonl is the same file as --output k.jsonl; give each its own path").
    """
    seen: list[tuple[str, str, Path]] = []  # (flag, path as given, resolved)
    for kind, named in (("file", files), ("directory", directories)):
        for flag, given in named:
            if not given:
                continue
            real = _resolved(flag, str(given))
            _check_place(flag, str(given), directory=kind == "directory")
            for other_flag, other, other_real in seen:
                if _same(real, other_real):
                    raise ConfigError(f"{flag} {given} is the same {kind} as {other_flag} {other}; "
                                      f"give each its own path")
                inside = _inside(other_real, real) if kind == "directory" else None
                if inside is not None and inside.parts and inside.parts[0] in set(reserved):
                    clash = "would overwrite" if len(inside.parts) == 1 else "lies inside"
                    raise ConfigError(f"{other_flag} {other} {clash} {inside.parts[0]}, which the run keeps "
                                      f"in {flag} {given}; pass another {other_flag}")
            seen.append((flag, str(given), real))
    for flag, given in inputs:
        if not given:
            continue
        real = _resolved(flag, str(given))
        for other_flag, other, other_real in seen:
            if _same(real, other_real):
                raise ConfigError(f"{other_flag} {other} would overwrite the input {given} ({flag}); "
                                  f"pass another {other_flag}")


def _resolved(flag: str, given: str) -> Path:
    try:
        return Path(given).resolve()
    except (RuntimeError, OSError):  # Python < 3.13 raises RuntimeError on a symlink loop
        raise ConfigError(f"{flag} {given}: too many levels of symbolic links (a symlink loop)") from None


def _same(a: Path, b: Path) -> bool:
    if a == b:
        return True
    try:
        return os.path.samefile(a, b)  # hard links
    except OSError:
        return False


def _inside(path: Path, directory: Path) -> Path | None:
    try:
        return path.relative_to(directory)
    except ValueError:
        return None


def _check_place(flag: str, given: str, *, directory: bool) -> None:
    """A file or directory can be made at `given`: it is of the right kind if it exists, no part
    of the path above it is a file, and the nearest folder that exists can be written."""
    path = Path(given)
    if path.exists():
        if directory and not path.is_dir():
            raise ConfigError(f"{flag} {given} is a file, not a directory; pass another {flag}")
        if not directory and path.is_dir():
            raise ConfigError(f"{flag} {given} is a directory; name a file to write")
    for folder in [path] * directory + [*path.parents]:
        if folder.exists():
            if not folder.is_dir():
                raise ConfigError(f"{flag} {given} lies under {folder}, which is a file, not a folder; pass another {flag}")
            if not os.access(folder, os.W_OK | os.X_OK):
                raise ConfigError(f"{flag} {given}: cannot write in {folder} (permission denied); pass another {flag}")
            return
