"""Users' datasets in and out: any Alpaca-style JSON list or JSONL of records read as Examples,
and a dataset written back as the file name says (JSONL by its suffix, else a JSON list)."""
from __future__ import annotations

from pathlib import Path

from ..errors import DataError
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
