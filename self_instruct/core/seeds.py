"""Seed tasks: load and validate a seed task JSONL file, and turn seeds into prompt examples.

The schema is Alpaca's and self-instruct's (their seed_tasks.jsonl loads unchanged): one JSON
object a line with exactly the keys id, name, instruction, instances [{input, output}],
is_classification. Every problem is reported as one line `file:line: field "x" ...`.
"""
from __future__ import annotations

import random
from pathlib import Path
from typing import Any, Sequence

from ..errors import DataError, SeedFormatError
from ..io.jsonl import loads_line
from ..io.jsonl import type_name as _json_type
from ..io.resources import default_seed_tasks_path
from ..types import Example, Instance, SeedTask

FIELDS = {"id": str, "name": str, "instruction": str, "instances": list, "is_classification": bool}
# One seed task is a few hundred bytes; a line this long is a broken file, not a task.
MAX_LINE_BYTES = 1_000_000
_TYPE_NAMES = {str: "a string", list: "a list", bool: "true or false", dict: "an object"}


def load_seed_tasks(path: str | Path | None = None) -> list[SeedTask]:
    """Read and validate a seed task file (default: the bundled seed_tasks/seed_tasks.jsonl)."""
    path = Path(path) if path else default_seed_tasks_path()
    try:
        raw = path.read_bytes()
    except FileNotFoundError:
        raise SeedFormatError(f"{path}: seed task file does not exist (--seed_tasks_path)") from None
    except OSError as exc:
        raise SeedFormatError(f"{path}: cannot read the seed task file: {exc.strerror}") from None
    lines = raw.split(b"\n")
    if lines and lines[-1] == b"":
        lines.pop()  # the newline that ends the last line
    tasks: list[SeedTask] = []
    first_line_of_id: dict[str, int] = {}
    for lineno, line in enumerate(lines, 1):
        task = _parse_line(path, lineno, line)
        if task.id in first_line_of_id:
            raise SeedFormatError(
                f'{path}:{lineno}: field "id": "{task.id}" is already used on line {first_line_of_id[task.id]}; ids must be unique'
            )
        first_line_of_id[task.id] = lineno
        tasks.append(task)
    if not tasks:
        raise SeedFormatError(f"{path}: no seed tasks; add one JSON object a line")
    return tasks


def _parse_line(path: Path, lineno: int, line: bytes) -> SeedTask:
    where = f"{path}:{lineno}"
    if len(line) > MAX_LINE_BYTES:
        raise SeedFormatError(f"{where}: line is {len(line):,} bytes, over the {MAX_LINE_BYTES:,}-byte limit for one task; is this a seed task file?")
    if not line.strip():
        raise SeedFormatError(f"{where}: blank line; remove it (one JSON object a line)")
    try:
        obj = loads_line(path, lineno, line)  # the project's one policy: UTF-8, no BOM, file:line
    except DataError as exc:
        raise SeedFormatError(f"{exc}; write one task as one JSON object a line") from None
    if not isinstance(obj, dict):
        raise SeedFormatError(f"{where}: expected a JSON object, got {_json_type(obj)}; write one task as one JSON object a line")
    _check_fields(where, obj, FIELDS)
    if not obj["instruction"].strip():
        raise SeedFormatError(f'{where}: field "instruction" is empty; write the task the model should do')
    if not obj["id"].strip():
        raise SeedFormatError(f'{where}: field "id" is empty; give each task a unique id such as "seed_task_0"')
    if not obj["instances"]:
        raise SeedFormatError(f'{where}: field "instances" is empty; give at least one {{"input": ..., "output": ...}}')
    instances = tuple(_parse_instance(where, i, inst) for i, inst in enumerate(obj["instances"]))
    return SeedTask(obj["id"], obj["name"], obj["instruction"], instances, obj["is_classification"])


def _parse_instance(where: str, i: int, inst: Any) -> Instance:
    field = f"instances[{i}]"
    if not isinstance(inst, dict):
        raise SeedFormatError(f'{where}: field "{field}" must be an object with "input" and "output" (got {_json_type(inst)})')
    _check_fields(where, inst, {"input": str, "output": str}, prefix=f"{field}.")
    if not inst["output"].strip():
        raise SeedFormatError(f'{where}: field "{field}.output" is empty; write the answer the task expects')
    return Instance(inst["input"], inst["output"])


def _check_fields(where: str, obj: dict, spec: dict[str, type], prefix: str = "") -> None:
    for name, kind in spec.items():
        if name not in obj:
            raise SeedFormatError(f'{where}: field "{prefix}{name}" is missing; each {"instance" if prefix else "task"} needs {", ".join(spec)}')
        if not isinstance(obj[name], kind):
            raise SeedFormatError(f'{where}: field "{prefix}{name}" must be {_TYPE_NAMES[kind]} (got {_json_type(obj[name])})')
    extra = sorted(set(obj) - set(spec))
    if extra:
        raise SeedFormatError(f'{where}: unknown field "{prefix}{extra[0]}"; expected only {", ".join(spec)}')


def seed_examples(tasks: Sequence[SeedTask], rng: random.Random | None = None) -> list[Example]:
    """One prompt example per seed task. Alpaca always takes the first instance; with an rng we
    draw one of the instances, so seeds written with several instances show all of them."""
    examples = []
    for task in tasks:
        inst = rng.choice(task.instances) if rng else task.instances[0]
        examples.append(Example(task.instruction, inst.input, inst.output, {"seed_id": task.id}))
    return examples
