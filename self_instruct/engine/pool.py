"""The pool on disk: what a run has kept and rejected, one writer at a time, safe against any kill.

Files in the output directory:
- generated.jsonl  one kept record a line, appended and fsynced unit by unit
- rejected.jsonl   one rejected candidate a line with its reason, same discipline
- commits.jsonl    the pool's commit log: a line per unit, written after both appends of the unit
                   are durable, with the size each file had then
- run.json         the run's configuration (never the API key) and its id
- state.json       counters for people and the report; rebuilt from the other files when lost
- regen.json       Alpaca-compatible JSON list, written to a temp file and renamed at the end
- ledger.jsonl, responses.jsonl   what was spent and what came back (see ledger.py)
- .lock            held (flock) by the run writing here; the kernel drops it when the process dies

A unit counts as done when its commit line is on disk. On open, anything past the last commit's
sizes (a unit the run was killed while writing) is cut off by byte offset and the unit runs
again, from the reply cache; no record is ever parsed to find where a unit starts. Records
carry the engine's provenance under their own key (`provenance`: run, unit, model), written
after everything else, so what an input's metadata holds passes through untouched.
"""
from __future__ import annotations

import errno
import fcntl
import json
import os
from collections import Counter
from pathlib import Path
from typing import Any, Sequence

from ..errors import ConfigError, DataError
from ..io.jsonl import (
    append_bytes,
    append_jsonl,
    dumps,
    iter_jsonl,
    read_json,
    remove_stale_temps,
    repair_torn_tail,
    sha256_of,
    write_json_atomic,
)

GENERATED, REJECTED, RUN, STATE, REGEN = "generated.jsonl", "rejected.jsonl", "run.json", "state.json", "regen.json"
COMMITS, LEDGER, RESPONSES, LOCK = "commits.jsonl", "ledger.jsonl", "responses.jsonl", ".lock"
# batches.jsonl: the provider batches of a --batch run (engine/batches.py)
OUTPUTS = (GENERATED, REJECTED, COMMITS, RUN, STATE, REGEN, LEDGER, RESPONSES, "batches.jsonl", "report.html")
# The key of a record under which the engine writes where it came from (run, unit, model).
PROVENANCE = "provenance"
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

    def __init__(self, directory: Path):
        self.dir = directory
        self.records: list[dict] = []
        self.reject_counts: Counter = Counter()
        self.judged_rejects = 0  # rejected candidates that had an instruction (parsed, then judged)
        self.state: dict[str, Any] = {}
        self.notes: list[str] = []
        self.run_id = ""
        self.kept_after: list[int] = []  # kept records after each committed unit, in unit order
        self._sizes = {GENERATED: 0, REJECTED: 0}
        self._lock = DirectoryLock(directory)

    @property
    def next_unit(self) -> int:
        return len(self.kept_after)

    @classmethod
    def open(cls, directory: str | Path, *, config: dict | None = None, shaping: Sequence[str] = (),
             overwrite: bool = False) -> "InstructionPool":
        """Lock the directory (creating it), check that `config` may resume what is there, and
        read it back. Nothing is written before the lock is held and the check has passed."""
        directory = Path(directory)
        check_output_dir(directory)
        directory.mkdir(parents=True, exist_ok=True)
        pool = cls(directory)
        pool._lock.acquire()
        try:
            previous = check_resume(directory, config, shaping, overwrite) if config is not None else {}
            pool._lock.sign()
            if overwrite:
                for name in OUTPUTS:
                    (directory / name).unlink(missing_ok=True)
            pool._read()
            pool.run_id = str(previous.get("run_id") or run_id(config or {}, shaping))
            if config is not None:
                write_json_atomic(directory / RUN, {**config, "run_id": pool.run_id})
        except BaseException:
            pool.close()
            raise
        return pool

    def _read(self) -> None:
        remove_stale_temps(self.dir)
        try:
            self.state = read_json(self.dir / STATE) or {}
            if not isinstance(self.state, dict):
                raise DataError(f"{self.dir / STATE}: not a JSON object")
        except DataError:
            self.notes.append(f"{STATE} was unreadable; its counters are rebuilt from the JSONL files")
            self.state = {}
        commits = self._read_commits()
        for name in (GENERATED, REJECTED):
            self._cut_to_commit(name, commits[-1][name] if commits else 0, len(commits))
        self.kept_after = [c["kept_total"] for c in commits]
        try:
            if (self.dir / GENERATED).exists():
                self.records = [record for _, record in iter_jsonl(self.dir / GENERATED)]
            if (self.dir / REJECTED).exists():
                self._count_rejects(self.dir / REJECTED)
        except DataError as exc:
            # Not a torn last line (that was cut above): someone's edit. Say which line, never guess.
            raise DataError(f"{exc}; the file was edited or corrupted: fix or delete that line, "
                            f"or pass --overwrite to start again") from None
        if commits and len(self.records) != self.kept_after[-1]:
            raise DataError(f"{self.dir / GENERATED}: holds {len(self.records)} records where {COMMITS} counts "
                            f"{self.kept_after[-1]}; the file was edited: restore it, or pass --overwrite to start again")

    def _read_commits(self) -> list[dict]:
        path = self.dir / COMMITS
        note = repair_torn_tail(path)
        if note:
            self.notes.append(note)
        if not path.exists():
            if isinstance(self.state.get("units_done"), int) and self.state["units_done"] > 0:
                # a pool of an earlier version, which kept unit numbers inside the records
                raise ConfigError(f"{self.dir}: written by an earlier version of self_instruct (no {COMMITS}); "
                                  f"export what it holds, then pass --overwrite or another --output_dir")
            return []
        commits = [c for _, c in iter_jsonl(path)]
        for i, c in enumerate(commits):
            if c.get("unit") != i:
                raise DataError(f"{path}:{i + 1}: unit {c.get('unit')!r} where {i} was expected; the commit log was "
                                f"edited: restore it, or pass --overwrite to start again")
        return commits

    def _cut_to_commit(self, name: str, size: int, unit: int) -> None:
        """Cut `name` back to the size it had at the last commit: what unit `unit` had written
        when the run stopped is cut off, and the unit runs again. Only records a run wrote (with
        the engine's provenance) are ever cut; a line someone added is refused, not lost, and a
        file shorter than that was edited."""
        path = self.dir / name
        actual = path.stat().st_size if path.exists() else 0
        if actual < size:
            raise DataError(f"{path}: {actual} bytes where {COMMITS} says {size} were committed; the file was "
                            f"edited or truncated: restore it, or pass --overwrite to start again")
        if actual > size:
            added = _lines_no_run_wrote(path, size)
            if added:
                raise DataError(f"{path}: {added} line(s) after byte {size}, where the last committed unit ends, "
                                f"that no run wrote here; the pool holds only what a run judged: move them to "
                                f"another file, or pass --overwrite to start again")
            with open(path, "r+b") as f:
                f.truncate(size)
                f.flush()
                os.fsync(f.fileno())
            self.notes.append(f"{name}: cut off {actual - size} bytes of unit {unit}, written but not committed when "
                              f"the run stopped (it runs again, from the reply cache)")
        self._sizes[name] = size

    def _count_rejects(self, path: Path) -> None:
        """Count rejects by reason, one line in memory at a time."""
        for _, record in iter_jsonl(path):
            self.reject_counts[str(record.get("reason", "unknown"))] += 1
            self.judged_rejects += "instruction" in record

    def __len__(self) -> int:
        return len(self.records)

    def records_before(self, unit: int) -> list[dict]:
        """The kept records of the units before `unit` (units commit in order: a prefix)."""
        if unit <= 0:
            return []
        return self.records[:self.kept_after[min(unit, self.next_unit) - 1]] if self.kept_after else []

    def append(self, unit: int, kept: Sequence[dict], rejected: Sequence[dict]) -> None:
        """Write and commit one unit's records, then count them in memory."""
        self.write(unit, kept, rejected)
        self.apply(unit, kept, rejected)

    def write(self, unit: int, kept: Sequence[dict], rejected: Sequence[dict]) -> None:
        """Append one unit's records and commit them: the unit is done once its commit line is
        durable. Only the files change; `apply` counts the unit in memory."""
        self.write_units([(unit, kept, rejected)])

    def write_units(self, units: Sequence[tuple[int, Sequence[dict], Sequence[dict]]]) -> None:
        """`write` for several consecutive units at once: one write and one fsync a file for all
        of them, the commit lines last, one a unit, each naming where its unit's records end. A
        stop anywhere in between leaves whole units committed (a commit line is only written once
        the records it counts are on disk) and the rest cut off on the next open."""
        for offset, (unit, _, _) in enumerate(units):
            if unit != self.next_unit + offset:
                raise ValueError(f"unit {unit} committed out of order (next is {self.next_unit + offset})")
        payloads: dict[str, list[bytes]] = {GENERATED: [], REJECTED: []}
        written = dict.fromkeys(payloads, 0)
        ends: list[dict[str, int]] = []  # each unit's end in each file, counted from where the appends begin
        for _, kept, rejected in units:
            for name, rows in ((GENERATED, kept), (REJECTED, rejected)):
                payloads[name].append("".join(dumps(r) + "\n" for r in rows).encode("utf-8"))
                written[name] += len(payloads[name][-1])
            ends.append(dict(written))
        starts = {}
        for name, parts in payloads.items():
            payload = b"".join(parts)
            self._sizes[name] = append_bytes(self.dir / name, payload)
            starts[name] = self._sizes[name] - len(payload)
        total = len(self.records)
        commits = []
        for (unit, kept, _), end in zip(units, ends):
            total += len(kept)
            commits.append({"unit": unit, **{name: starts[name] + end[name] for name in payloads}, "kept_total": total})
        append_jsonl(self.dir / COMMITS, commits)

    def apply(self, unit: int, kept: Sequence[dict], rejected: Sequence[dict]) -> None:
        """Count a unit `write` committed: its kept records join the pool in memory."""
        self.records += kept
        self.kept_after.append(len(self.records))
        for record in rejected:
            self.reject_counts[record["reason"]] += 1
            self.judged_rejects += "instruction" in record

    def save_state(self, state: dict[str, Any]) -> None:
        self.state = dict(state)
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


def _lines_no_run_wrote(path: Path, offset: int) -> int:
    """How many whole lines of `path` past `offset` lack the provenance every record a run writes
    carries. A last line without a newline that does not parse is a write the stop tore."""
    added = 0
    with open(path, "rb") as f:
        f.seek(offset)
        for line in f:
            try:
                record = json.loads(line)
            except (UnicodeDecodeError, json.JSONDecodeError, RecursionError):
                record = None
                if not line.endswith(b"\n"):
                    continue  # torn by the stop
            provenance = record.get(PROVENANCE) if isinstance(record, dict) else None
            added += not (isinstance(provenance, dict) and type(provenance.get("unit")) is int)
    return added


def run_id(config: dict, shaping: Sequence[str]) -> str:
    """The id records carry as provenance.run: a digest of the settings that shape the data, so
    the same seeded command makes the same records, byte for byte, wherever it runs."""
    return sha256_of(dumps({k: config.get(k) for k in shaping}))[:12]


def check_resume(directory: Path, config: dict, shaping: Sequence[str], overwrite: bool) -> dict:
    """Refuse to grow a pool made with other data-shaping settings, unless asked to start over.
    Returns the run.json found (empty when there is none, or when starting over)."""
    path = directory / RUN
    if overwrite or not path.exists():
        return {}
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
    return previous
