"""The question set an evaluation asks: a JSONL file of questions with reference answers, or
the records a generate or documents run held out for it (metadata.holdout), which export never
writes."""
from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

from ..errors import ConfigError, DataError
from ..io.jsonl import iter_jsonl


@dataclass(frozen=True, slots=True)
class Question:
    id: int
    question: str
    answer: str
    source: str | None = None


def load_questions(path: str | Path) -> list[Question]:
    """Questions from JSONL: `question` and `answer` (the reference) strings, optional `source`.

    A bad line stops everything with `file:line: field "answer" is missing` and the like.
    """
    questions = []
    for lineno, obj in iter_jsonl(path):
        fields = {}
        for name in ("question", "answer", "source"):
            value = obj.get(name)
            if value is None and name == "source":
                continue
            if value is None:
                raise DataError(f'{path}:{lineno}: field "{name}" is missing (a question needs "question" and "answer")')
            if not isinstance(value, str) or not value.strip():
                raise DataError(f'{path}:{lineno}: field "{name}" must be a non-empty string (got {json.dumps(value)})')
            fields[name] = value
        questions.append(Question(len(questions), **fields))
    if not questions:
        raise DataError(f"{path}: no questions")
    return questions


def holdout_questions(run: str | Path) -> list[Question]:
    """The records a generate or documents run held out for evaluation (metadata.holdout true,
    the records export never writes), as questions: the instruction and input as the question,
    the output as the reference, metadata.source as the source. `run` is the run's directory or
    its generated.jsonl."""
    path = Path(run) / "generated.jsonl" if Path(run).is_dir() else Path(run)
    questions = []
    for lineno, record in iter_jsonl(path):
        meta = record.get("metadata") if isinstance(record.get("metadata"), dict) else {}
        if not meta.get("holdout"):
            continue
        for name in ("instruction", "output"):
            if not isinstance(record.get(name), str) or not record[name].strip():
                raise DataError(f'{path}:{lineno}: field "{name}" must be a non-empty string')
        text = "\n\n".join(part for part in (record["instruction"], record.get("input") or "") if part)
        source = meta.get("source")
        questions.append(Question(len(questions), text, record["output"], source if isinstance(source, str) else None))
    if not questions:
        raise ConfigError(f"{path}: no record is held out (metadata.holdout); the run needs a holdout share")
    return questions
