"""The one reader and writer of JSON and JSONL files, for every stage.

One policy everywhere:
- lines end at "\\n" and nowhere else (``str.splitlines`` would also split inside a record at
  U+2028, U+0085 or a form feed, all legal inside a JSON string);
- text is UTF-8; a byte order mark or a byte that is not UTF-8 is an error naming file, line and column;
- every error is a :class:`~self_instruct.errors.DataError` whose message starts with ``file:line:``;
- files are read as streams, a line at a time, so a 200 MB rejects file costs one line of memory;
- writes are whole lines in one ``write`` (a kill leaves at most a torn last line, which
  :func:`repair_torn_tail` cuts off for files we own, keeping a whole one that only lacks its
  newline), or a temp file renamed over the old one.

Example::

    append_jsonl(path, [{"instruction": "Add 2 and 3.\\u2028Show the sum."}])
    [obj for _, obj in iter_jsonl(path)]  # -> the same record, U+2028 intact
"""
from __future__ import annotations

import hashlib
import json
import os
import re
from pathlib import Path
from typing import Any, Iterable, Iterator

from ..errors import DataError

BOM = b"\xef\xbb\xbf"


def dumps(obj: Any) -> str:
    """One JSON line as we write it (UTF-8 kept as is, no trailing newline)."""
    return json.dumps(obj, ensure_ascii=False)


def loads_line(path: str | Path, lineno: int, line: bytes) -> Any:
    """Decode one line of a JSONL file, with errors naming ``path:lineno``."""
    where = f"{path}:{lineno}"
    if lineno == 1 and line.startswith(BOM):
        raise DataError(f"{where}: the file starts with a byte order mark; save it as UTF-8 without BOM")
    try:
        text = line.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise DataError(f"{where}: not UTF-8 (byte 0x{line[exc.start]:02x} at column {exc.start + 1}); re-save the file as UTF-8") from None
    try:
        value = json.loads(text)
    except json.JSONDecodeError as exc:
        raise DataError(f"{where}: {not_json(exc)}") from None
    except RecursionError:
        raise DataError(f"{where}: JSON nested too deeply to be a record") from None
    if "\\u" in text and _ESCAPED_SURROGATE.search(text):
        _refuse_lone_surrogates(where, value)
    return value


# A \u escape of half a surrogate pair. JSON lets one stand alone, and Python decodes it to a string
# that no UTF-8 file, prompt or request can hold: found on reading, it is named with its line and field.
_ESCAPED_SURROGATE = re.compile(r"\\u[dD][89abcdefABCDEF]")


def _refuse_lone_surrogates(where: str, value: Any) -> None:
    found = _lone_surrogate(value, "")
    if found is not None:
        what, char = found
        raise DataError(f"{where}: {what} holds a lone surrogate (\\u{ord(char):04x}), half of a character's "
                        "escape and not text; fix or remove it")


def _lone_surrogate(value: Any, name: str) -> tuple[str, str] | None:
    """Where the first lone surrogate in ``value`` is (field "instances[0].output", a key of
    field "x") and the character, or None."""
    if isinstance(value, str):
        try:
            value.encode("utf-8")
        except UnicodeEncodeError as exc:
            return (f'field "{name}"' if name else "the value"), value[exc.start]
        return None
    if isinstance(value, dict):
        for key, item in value.items():
            bad_key = _lone_surrogate(key, "")
            if bad_key is not None:
                return (f'a key of field "{name}"' if name else "a key"), bad_key[1]
            found = _lone_surrogate(item, f"{name}.{key}" if name else key)
            if found is not None:
                return found
    elif isinstance(value, list):
        for i, item in enumerate(value):
            found = _lone_surrogate(item, f"{name}[{i}]")
            if found is not None:
                return found
    return None


def not_json(exc: json.JSONDecodeError) -> str:
    """What a decode error says, as our messages put it.

    >>> not_json(json.JSONDecodeError("Unterminated string starting at", '{"a": "b', 6))
    'not valid JSON (Unterminated string starting at column 7)'
    """
    return f"not valid JSON ({exc.msg.removesuffix(' at')} at column {exc.colno})"


def iter_jsonl(path: str | Path, *, objects: bool = True) -> Iterator[tuple[int, Any]]:
    """Yield ``(line number, value)`` for each non-blank line; with ``objects`` each must be a JSON object."""
    with _open(path) as f:
        for lineno, line in enumerate(f, 1):
            line = line.rstrip(b"\n").rstrip(b"\r")
            if not line.strip():
                continue
            value = loads_line(path, lineno, line)
            if objects and not isinstance(value, dict):
                raise DataError(f"{path}:{lineno}: expected a JSON object, got {type_name(value)}")
            yield lineno, value


def read_jsonl(path: str | Path) -> list[dict]:
    return [obj for _, obj in iter_jsonl(path)]


def iter_records(path: str | Path) -> Iterator[tuple[int, dict]]:
    """Records of a dataset file that is a JSON list or JSONL (told apart by its first character),
    as ``(line number, object)``."""
    with _open(path) as f:
        head = f.read(4096)
    start = head.lstrip(BOM).lstrip()
    if head.startswith(BOM):
        raise DataError(f"{path}:1: the file starts with a byte order mark; save it as UTF-8 without BOM")
    if start.startswith(b"["):
        yield from _iter_json_list(path)
    else:
        yield from iter_jsonl(path)


def _iter_json_list(path: str | Path) -> Iterator[tuple[int, dict]]:
    with _open(path) as f:
        raw = f.read()
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        line = raw.count(b"\n", 0, exc.start) + 1
        column = exc.start - raw.rfind(b"\n", 0, exc.start)
        raise DataError(f"{path}:{line}: not UTF-8 (byte 0x{raw[exc.start]:02x} at column {column}); re-save the file as UTF-8") from None
    decoder = json.JSONDecoder()
    position, line, counted = _skip_space(text, text.index("[") + 1), 1, 0

    def line_at(pos: int) -> int:
        nonlocal line, counted
        line += text.count("\n", counted, pos)
        counted = pos
        return line

    first = True
    while text[position:position + 1] != "]":
        if not first:
            if text[position:position + 1] != ",":
                raise DataError(f"{path}:{line_at(position)}: not valid JSON (expected ',' or ']' between records)")
            position = _skip_space(text, position + 1)
        first = False
        try:
            obj, end = decoder.raw_decode(text, position)
        except json.JSONDecodeError as exc:
            raise DataError(f"{path}:{exc.lineno}: {not_json(exc)}") from None
        except RecursionError:
            raise DataError(f"{path}:{line_at(position)}: JSON nested too deeply to be a record") from None
        if "\\u" in text[position:end] and _ESCAPED_SURROGATE.search(text, position, end):
            _refuse_lone_surrogates(f"{path}:{line_at(position)}", obj)
        if not isinstance(obj, dict):
            raise DataError(f"{path}:{line_at(position)}: expected a JSON object, got {type_name(obj)}")
        yield line_at(position), obj
        position = _skip_space(text, end)
    if text[position + 1:].strip():
        raise DataError(f"{path}:{line_at(position + 1)}: text after the end of the JSON list")


def _skip_space(text: str, position: int) -> int:
    while position < len(text) and text[position] in " \t\r\n":
        position += 1
    return position


def read_json(path: str | Path) -> Any:
    """A whole JSON file, or None when it does not exist."""
    path = Path(path)
    if not path.exists():
        return None
    with _open(path) as f:
        raw = f.read()
    try:
        return json.loads(raw.decode("utf-8"))
    except UnicodeDecodeError as exc:
        raise DataError(f"{path}: not UTF-8 (byte {exc.start})") from None
    except json.JSONDecodeError as exc:
        raise DataError(f"{path}:{exc.lineno}: {not_json(exc)}") from None
    except RecursionError:
        raise DataError(f"{path}: JSON nested too deeply") from None


def type_name(value: Any) -> str:
    return {str: "string", bool: "bool", int: "number", float: "number", list: "list", dict: "object",
            type(None): "null"}.get(type(value), type(value).__name__)


def _open(path: str | Path):
    try:
        return open(path, "rb")
    except FileNotFoundError:
        raise DataError(f"{path}: no such file") from None
    except IsADirectoryError:
        raise DataError(f"{path}: is a directory, not a file") from None
    except OSError as exc:
        raise DataError(f"{path}: cannot read: {exc.strerror}") from None


# --- writing -------------------------------------------------------------------------------

def repair_torn_tail(path: str | Path) -> str | None:
    """Make a file we own end at a whole line before appending to it.

    A last line without its newline is kept, and given the newline, when it is a whole JSON
    object (a write stopped just before the newline, or an editor saved the file without one);
    it is cut off only when it does not parse, since no line we write is ever read in part.
    Returns a note saying what was cut, or None when nothing was lost.
    """
    path = Path(path)
    if not path.exists():
        return None
    size = path.stat().st_size
    if size == 0:
        return None
    with open(path, "r+b") as f:
        f.seek(size - 1)
        if f.read(1) == b"\n":
            return None
        # Scan back from the end for the last newline, a block at a time.
        end, block, keep = size, 65536, 0
        while end > 0:
            start = max(0, end - block)
            f.seek(start)
            cut = f.read(end - start).rfind(b"\n")
            if cut >= 0:
                keep = start + cut + 1
                break
            end = start
        f.seek(keep)
        whole = _is_object(f.read(size - keep))
        if whole:
            f.seek(size)
            f.write(b"\n")
        else:
            f.truncate(keep)
        f.flush()
        os.fsync(f.fileno())
    if whole:
        return None
    return f"{path.name}: cut off its last line ({size - keep} bytes), which had no newline and does not parse"


def _is_object(line: bytes) -> bool:
    """Whether a line is one whole JSON object (a strict prefix of one never is)."""
    try:
        return isinstance(json.loads(line.decode("utf-8")), dict)
    except (UnicodeDecodeError, json.JSONDecodeError, RecursionError):
        return False


def append_jsonl(path: str | Path, records: Iterable[Any], *, fsync: bool = True) -> int:
    """Append records as whole lines in one write; returns the file's size after it. If the write
    fails (a full disk), the file is cut back to its old length, so no half line is left behind."""
    return append_bytes(path, "".join(dumps(r) + "\n" for r in records).encode("utf-8"), fsync=fsync)


def append_bytes(path: str | Path, payload: bytes, *, fsync: bool = True) -> int:
    """Append whole lines already encoded, as :func:`append_jsonl` does; returns the file's size after."""
    if not payload:
        return os.stat(path).st_size if os.path.exists(path) else 0
    # Unbuffered: a buffered file would try again to write what is left when it is closed, after
    # the file was cut back.
    fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
    try:
        before = os.fstat(fd).st_size
        try:
            _write_all(fd, payload, Path(path))
            if fsync:
                os.fsync(fd)
        except BaseException:
            os.ftruncate(fd, before)
            raise
        return before + len(payload)
    finally:
        os.close(fd)


def _write_all(fd: int, payload: bytes, path: Path) -> None:
    """Write all of `payload` to `fd`, opened for `path` (for an atomic write, the file it will
    replace). Every write of this module goes through here, so the kill tests can stop one
    halfway by patching this function alone (tests/e2e/pausing.py); `path` is for them."""
    view = memoryview(payload)
    while view:
        view = view[os.write(fd, view):]


def write_text_atomic(path: str | Path, text: str | bytes) -> None:
    """Write a file so that a reader sees the old one or the new one, never half of one."""
    path = Path(path)
    # A fixed temp name in the same directory (rename is atomic only within one file system);
    # plain open() so the file gets the user's umask, not mkstemp's 0600.
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    payload = text.encode("utf-8") if isinstance(text, str) else text
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        with open(tmp, "wb") as f:
            _write_all(f.fileno(), payload, path)
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except OSError as exc:
        tmp.unlink(missing_ok=True)
        if exc.filename != str(tmp):
            raise
        # The temp file is ours, not the user's: the error names the file they asked for.
        raise type(exc)(exc.errno, exc.strerror, str(path)) from None
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    fsync_dir(path.parent)


def write_json_atomic(path: str | Path, obj: Any, indent: int | None = 2) -> None:
    write_text_atomic(path, json.dumps(obj, ensure_ascii=False, indent=indent) + "\n")


def write_jsonl_atomic(path: str | Path, records: Iterable[Any]) -> None:
    write_text_atomic(path, "".join(dumps(r) + "\n" for r in records))


def remove_stale_temps(directory: str | Path) -> None:
    """Delete temp files of atomic writes that a killed process left behind."""
    for stale in Path(directory).glob(".*.tmp"):
        stale.unlink(missing_ok=True)


def fsync_dir(directory: str | Path) -> None:
    fd = os.open(directory, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def sha256_of(data: str | bytes) -> str:
    """The hex SHA-256 of text (as UTF-8) or bytes: run.json's fingerprint of an input or a template."""
    return hashlib.sha256(data.encode("utf-8") if isinstance(data, str) else data).hexdigest()
