"""The pool on disk: what a run has kept and rejected, one writer at a time, safe against any kill.

Files in the output directory:
- generated.jsonl  one kept record a line, appended, flushed and fsynced every unit (a round)
- rejected.jsonl   one rejected candidate a line with its reason, same discipline
- run.json         the run's configuration (never the API key)
- state.json       counters for people and the report; rebuilt from the other files when lost
- regen.json       Alpaca-compatible JSON list, written to a temp file and renamed at the end
- ledger.jsonl, responses.jsonl   what was spent and what came back (see ledger.py)
- .lock            held (flock) by the run writing here; the kernel drops it when the process dies

The JSONL files are the truth. A kill can only leave a torn last line (a record is one write of
one line); it is cut off and reported when the pool is opened again.
"""
from __future__ import annotations

import errno
import fcntl
import os
import re
from collections import Counter
from pathlib import Path
from typing import Any, Iterable, Sequence

from ..errors import ConfigError, DataError
from ..io.jsonl import (append_jsonl, iter_jsonl, read_json, remove_stale_temps, repair_torn_tail,
                    write_json_atomic)

GENERATED, REJECTED, RUN, STATE, REGEN = "generated.jsonl", "rejected.jsonl", "run.json", "state.json", "regen.json"
LEDGER, RESPONSES, LOCK = "ledger.jsonl", "responses.jsonl", ".lock"
OUTPUTS = (GENERATED, REJECTED, RUN, STATE, REGEN, LEDGER, RESPONSES, "report.html")
# The fields of Alpaca's regen.json, in its order.
REGEN_FIELDS = ("instruction", "input", "output", "most_similar_instructions", "avg_similarity_score")


class DirectoryLock:
    """An exclusive flock on `dir/.lock` for the life of a run; a second run is refused at once."""

    def __init__(self, directory: Path):
        self.path = directory / LOCK
        self.fd: int | None = None

    def acquire(self) -> None:
        """Take the lock, or refuse naming the process that holds it. Writes nothing yet."""
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as exc:
            holder = os.read(fd, 64).decode("ascii", "replace").strip() or "unknown"
            os.close(fd)
            if exc.errno in (errno.EWOULDBLOCK, errno.EACCES):
                raise ConfigError(
                    f"{self.path.parent}: another run (pid {holder}) is writing to this output directory; "
                    f"wait for it to end or stop it, or pass another --output_dir") from None
            raise
        self.fd = fd

    def sign(self) -> None:
        """Say who holds the lock, for a second run to name (once this run may write here)."""
        os.ftruncate(self.fd, 0)
        os.pwrite(self.fd, f"{os.getpid()}\n".encode(), 0)

    def release(self) -> None:
        if self.fd is not None:
            os.close(self.fd)  # closing drops the flock
            self.fd = None


def check_output_dir(directory: Path) -> None:
    """Refuse an --output_dir that can never be a directory, before anything is written."""
    for parent in [directory, *directory.parents]:
        if parent.exists() and not parent.is_dir():
            what = "is a file" if parent == directory else f"lies under {parent}, which is a file"
            raise ConfigError(f"--output_dir {directory} {what}, not a directory; pass another --output_dir")
        if parent.exists():
            break


class InstructionPool:
    """Kept records and rejection counts of one output directory, held under its lock.

    Kept records stay in memory (the similarity index and prompt sampling need them); rejected
    ones are only counted, streaming, so a resume reads a 200 MB rejects file in constant memory.
    """

    def __init__(self, directory: Path, unit_key: str):
        self.dir = directory
        self.unit_key = unit_key
        self.records: list[dict] = []
        self.reject_counts: Counter = Counter()
        self.judged_rejects = 0  # rejected candidates that had an instruction (parsed, then judged)
        self.state: dict[str, Any] = {}
        self.notes: list[str] = []
        self.next_unit = 0
        self._lock = DirectoryLock(directory)

    @classmethod
    def open(cls, directory: str | Path, *, config: dict | None = None, shaping: Sequence[str] = (),
             overwrite: bool = False, unit_key: str = "unit") -> "InstructionPool":
        """Lock the directory (creating it), check that `config` may resume what is there, and
        read it back. Nothing is written before the lock is held and the check has passed."""
        directory = Path(directory)
        check_output_dir(directory)
        directory.mkdir(parents=True, exist_ok=True)
        pool = cls(directory, unit_key)
        pool._lock.acquire()
        try:
            if config is not None:
                check_resume(directory, config, shaping, overwrite)
            pool._lock.sign()
            if overwrite:
                for name in OUTPUTS:
                    (directory / name).unlink(missing_ok=True)
            pool._read()
            if config is not None:
                write_json_atomic(directory / RUN, config)
        except BaseException:
            pool.close()
            raise
        return pool

    def _read(self) -> None:
        remove_stale_temps(self.dir)
        for name in (GENERATED, REJECTED):
            note = repair_torn_tail(self.dir / name)
            if note:
                self.notes.append(note)
        try:
            self.state = read_json(self.dir / STATE) or {}
            if not isinstance(self.state, dict):
                raise DataError(f"{self.dir / STATE}: not a JSON object")
        except DataError:
            self.notes.append(f"{STATE} was unreadable; its counters are rebuilt from the JSONL files")
            self.state = {}
        units_done = self.state.get("units_done")
        if isinstance(units_done, int) and not isinstance(units_done, bool) and units_done >= 0:
            # state.json is written after both appends of a unit: a unit found past it was cut
            # short by a kill (its kept records on disk, its rejects not). It is cut off here
            # and runs again, from the reply cache.
            for name in (GENERATED, REJECTED):
                if cut_units_from(self.dir / name, units_done, self.unit_key):
                    self.notes.append(f"{name}: cut off the records of a unit the run was killed while writing")
        else:
            units_done = 0
        last = -1
        generated, rejected = self.dir / GENERATED, self.dir / REJECTED
        try:
            if generated.exists():
                for _, record in iter_jsonl(generated):
                    self.records.append(record)
                    last = max(last, _unit_of(record, self.unit_key))
            if rejected.exists():
                last = max(last, self._count_rejects(rejected))
        except DataError as exc:
            # Not a torn last line (that was cut above): someone's edit. Say which line, never guess.
            raise DataError(f"{exc}; the file was edited or corrupted: fix or delete that line, "
                            f"or pass --overwrite to start again") from None
        self.next_unit = max(last + 1, units_done)

    def _count_rejects(self, path: Path) -> int:
        """Count rejects by reason, one line in memory at a time; returns the last unit seen."""
        last = -1
        for _, record in iter_jsonl(path):
            self.reject_counts[str(record.get("reason", "unknown"))] += 1
            self.judged_rejects += "instruction" in record
            last = max(last, _unit_of(record, self.unit_key))
        return last

    def __len__(self) -> int:
        return len(self.records)

    def append(self, unit: int, kept: Iterable[dict], rejected: Iterable[dict]) -> None:
        """Append one unit's records and make them durable before the unit counts as done."""
        kept, rejected = list(kept), list(rejected)
        append_jsonl(self.dir / GENERATED, kept)
        append_jsonl(self.dir / REJECTED, rejected)
        self.records += kept
        for record in rejected:
            self.reject_counts[record["reason"]] += 1
            self.judged_rejects += "instruction" in record
        self.next_unit = max(self.next_unit, unit + 1)

    def save_state(self, state: dict[str, Any]) -> None:
        self.state = dict(state, units_done=self.next_unit)
        write_json_atomic(self.dir / STATE, self.state)

    def write_regen(self) -> Path:
        """regen.json as Alpaca writes it (a JSON list, indent 4), from generated.jsonl."""
        rows = [{k: r.get(k) for k in REGEN_FIELDS} for r in self.records]
        write_json_atomic(self.dir / REGEN, rows, indent=4)
        return self.dir / REGEN

    def close(self) -> None:
        self._lock.release()

    def __enter__(self) -> "InstructionPool":
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def cut_units_from(path: Path, unit: int, key: str) -> bool:
    """Cut the records of units >= `unit` off the end of a pool file (units are appended in
    order, so they are its tail). The unit is read from each line's metadata key without parsing
    the line: inside a JSON string a quote is escaped, so `"round": 7` can only be the key."""
    if not path.exists():
        return False
    pattern = re.compile(rb'"' + re.escape(key.encode()) + rb'": (-?\d+)')
    with open(path, "r+b") as f:
        offset = 0
        for line in f:
            found = pattern.findall(line)
            if found and int(found[-1]) >= unit:
                f.truncate(offset)
                f.flush()
                os.fsync(f.fileno())
                return True
            offset += len(line)
    return False


def _unit_of(record: dict, key: str) -> int:
    meta = record.get("metadata")
    value = meta.get(key, -1) if isinstance(meta, dict) else -1
    return value if isinstance(value, int) and not isinstance(value, bool) else -1


def check_resume(directory: Path, config: dict, shaping: Sequence[str], overwrite: bool) -> None:
    """Refuse to grow a pool made with other data-shaping settings, unless asked to start over."""
    path = directory / RUN
    if overwrite or not path.exists():
        return
    try:
        previous = read_json(path)
    except DataError as exc:
        raise ConfigError(f"{exc}; run.json records the settings of the run in {directory}: restore it, "
                          f"or pass --overwrite to start again") from None
    if not isinstance(previous, dict):
        raise ConfigError(f"{path}: not a JSON object; restore it, or pass --overwrite to start again")
    changed = [k for k in shaping if k in previous and previous.get(k) != config.get(k)]
    if changed:
        detail = "; ".join(f"{k}: {previous.get(k)!r} -> {config.get(k)!r}" for k in changed[:3])
        raise ConfigError(
            f"{path}: this output directory holds a run with other settings ({detail}); "
            f"use another --output_dir, the same flags, or --overwrite to start again")
