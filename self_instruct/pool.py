"""The instruction pool on disk: what a run has kept and rejected, safe against any kill.

Files in the output directory:
- generated.jsonl  one kept record a line, appended, flushed and fsynced every round
- rejected.jsonl   one rejected candidate a line with its reason, same discipline
- run.json         the run's configuration (never the API key)
- state.json       counters (rounds, requests, tokens, faults) for budgets and the summary
- regen.json       Alpaca-compatible JSON list, written to a temp file and renamed at the end

A kill can only leave a torn last line (a record is one write of one line); it is cut off and
reported when the pool is opened again. Any other broken line is someone's edit: we stop and
say which line rather than guess.
"""
from __future__ import annotations

import json
import os
import sys
import time
from collections import Counter
from pathlib import Path
from typing import Any, Iterable

from .errors import ConfigError

GENERATED, REJECTED, RUN, STATE, REGEN = "generated.jsonl", "rejected.jsonl", "run.json", "state.json", "regen.json"
# The fields of Alpaca's regen.json, in its order.
REGEN_FIELDS = ("instruction", "input", "output", "most_similar_instructions", "avg_similarity_score")


def write_json_atomic(path: Path, obj: Any, indent: int | None = 2) -> None:
    """Write JSON so that a reader sees the old file or the new one, never half of one."""
    # A fixed temp name in the same directory (rename is atomic only within one file system);
    # plain open() so the file gets the user's umask, not mkstemp's 0600.
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    payload = (json.dumps(obj, ensure_ascii=False, indent=indent) + "\n").encode("utf-8")
    try:
        with open(tmp, "wb") as f:
            f.write(_pause_halfway_for_tests(f, payload, path.name))
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    _fsync_dir(path.parent)


def _fsync_dir(directory: Path) -> None:
    fd = os.open(directory, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def read_jsonl_repairing(path: Path) -> tuple[list[dict], str | None]:
    """Read a JSONL file we wrote; cut off a torn last line and say so.

    Returns (records, repair note or None). A broken line that is not the last one raises.
    """
    if not path.exists():
        return [], None
    data = path.read_bytes()
    note = None
    end = data.rfind(b"\n") + 1
    if end < len(data):
        note = f"{path.name}: cut off a torn last line of {len(data) - end} bytes (the run was killed while writing it)"
        with open(path, "r+b") as f:
            f.truncate(end)
            f.flush()
            os.fsync(f.fileno())
        data = data[:end]
    records = []
    for lineno, line in enumerate(data.splitlines(), 1):
        try:
            record = json.loads(line)
        except (json.JSONDecodeError, UnicodeDecodeError):
            raise ConfigError(f"{path}:{lineno}: not valid JSON; the file was edited or corrupted: fix or delete that line, or pass --overwrite to start again") from None
        if not isinstance(record, dict):
            raise ConfigError(f"{path}:{lineno}: expected a JSON object; fix or delete that line, or pass --overwrite")
        records.append(record)
    return records, note


class InstructionPool:
    """Kept and rejected records of one output directory."""

    def __init__(self, output_dir: str | Path):
        self.dir = Path(output_dir)
        self.records: list[dict] = []
        self.rejected: list[dict] = []
        self.state: dict[str, Any] = {}
        self.repairs: list[str] = []

    @classmethod
    def open(cls, output_dir: str | Path) -> "InstructionPool":
        """Create the directory if needed and read back what an earlier run left."""
        pool = cls(output_dir)
        pool.dir.mkdir(parents=True, exist_ok=True)
        for name in (RUN, STATE, REGEN):
            for stale in pool.dir.glob(f".{name}.*.tmp"):
                stale.unlink()  # a temp file of a write the last run was killed in
        pool.records, note = read_jsonl_repairing(pool.dir / GENERATED)
        pool.repairs += [note] if note else []
        pool.rejected, note = read_jsonl_repairing(pool.dir / REJECTED)
        pool.repairs += [note] if note else []
        pool.state = read_json(pool.dir / STATE) or {}
        return pool

    def __len__(self) -> int:
        return len(self.records)

    @property
    def next_round(self) -> int:
        """The first round number not yet used, so a resumed run samples fresh prompts."""
        seen = [r.get("metadata", {}).get("round", -1) for r in self.records + self.rejected]
        return max([self.state.get("rounds", 0)] + [r + 1 for r in seen if isinstance(r, int)])

    def append(self, kept: Iterable[dict], rejected: Iterable[dict]) -> None:
        """Append one round's records and make them durable before the round counts as done."""
        kept, rejected = list(kept), list(rejected)
        _append_lines(self.dir / GENERATED, kept)
        _append_lines(self.dir / REJECTED, rejected)
        self.records += kept
        self.rejected += rejected

    def save_state(self, state: dict[str, Any]) -> None:
        self.state = state
        write_json_atomic(self.dir / STATE, state)

    def write_run(self, config: dict[str, Any]) -> None:
        write_json_atomic(self.dir / RUN, config)

    def write_regen(self) -> Path:
        """regen.json as Alpaca writes it (a JSON list, indent 4), from generated.jsonl."""
        rows = [{k: r.get(k) for k in REGEN_FIELDS} for r in self.records]
        write_json_atomic(self.dir / REGEN, rows, indent=4)
        return self.dir / REGEN


def _append_lines(path: Path, records: list[dict]) -> None:
    if not records:
        return
    # One write of whole lines: a kill leaves at most one torn line, at the end.
    payload = "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in records).encode("utf-8")
    with open(path, "ab") as f:
        f.write(_pause_halfway_for_tests(f, payload, path.name))
        f.flush()
        os.fsync(f.fileno())


def read_json(path: Path) -> Any:
    if not path.exists():
        return None
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError):
        raise ConfigError(f"{path}: not valid JSON; fix or delete it, or pass --overwrite to start again") from None


_test_writes: Counter = Counter()


def _pause_halfway_for_tests(f, payload: bytes, name: str) -> bytes:
    """Test hook, inert unless SELF_INSTRUCT_TEST_PAUSE="<file name>@<n>" is set: the n-th write
    of that file stops halfway through its last line, says so on stderr, and waits to be
    SIGKILLed, so that a test's kill lands mid-write for certain. Returns the bytes still to write."""
    spec = os.environ.get("SELF_INSTRUCT_TEST_PAUSE")
    if not spec:
        return payload
    target, _, nth = spec.partition("@")
    _test_writes[name] += 1
    if name != target or _test_writes[name] != int(nth or 1):
        return payload
    last_line = payload.rfind(b"\n", 0, len(payload) - 1) + 1
    cut = last_line + (len(payload) - last_line) // 2
    f.write(payload[:cut])
    f.flush()
    os.fsync(f.fileno())
    print(f"self_instruct: test pause in {name}", file=sys.stderr, flush=True)
    time.sleep(600)
    return payload[cut:]
