"""Prompt templates and their rendering in Alpaca's numbered `###` format.

A template is plain text holding `{tasks}` once (where the numbered examples go) and, if it
likes, `{num_tasks}` (how long the list the teacher should complete is). With the bundled
template the rendered prompt has the layout of Alpaca's generate_instruction.py
`encode_prompt`: header, then one block per example, then the next number left open.
To use Alpaca's own prompt.txt, add a last line holding `{tasks}`.
"""
from __future__ import annotations

import re
from pathlib import Path
from typing import Sequence

from ..errors import ConfigError
from ..io.resources import bundled_path
from ..types import Example

TASKS = "{tasks}"
NUM_TASKS = "{num_tasks}"
NOINPUT = "<noinput>"


def load_template(path: str | Path | None = None, default_name: str = "generate.txt") -> str:
    """Read a template (a user's file, or a bundled one by name) and check its placeholders."""
    source = Path(path) if path else bundled_path("prompts", default_name)
    flag = "--prompt_path" if path else "bundled template"
    try:
        text = source.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise ConfigError(f"{flag}: {source} does not exist") from None
    except UnicodeDecodeError as exc:
        raise ConfigError(f"{flag}: {source} is not UTF-8 text ({exc.reason} at byte {exc.start})") from None
    except OSError as exc:
        raise ConfigError(f"{flag}: cannot read {source}: {exc.strerror}") from None
    check_template(text, f"{flag} {source}")
    if text.rstrip().endswith(TASKS):
        # Editors add a final newline; after the open "{n+1}. Instruction:" it would make the
        # teacher start a new line instead of writing the instruction.
        text = text.rstrip()
    return text


def read_placeholder_template(source: Path, where: str, what: str, placeholders: Sequence[str]) -> str:
    """A template file's text, with one line naming ``where`` when it cannot be read or lacks one
    of ``placeholders`` (``what`` names the template in the message)."""
    try:
        text = source.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError(f"{where}: cannot read the {what} template ({exc})") from None
    missing = [p for p in placeholders if p not in text]
    if missing:
        raise ConfigError(f"{where}: the {what} template must hold {', '.join(missing)}")
    return text


def check_template(text: str, source: str | Path = "template") -> None:
    count = text.count(TASKS)
    if count != 1:
        raise ConfigError(
            f"{source}: a template must hold the placeholder {TASKS} exactly once (found {count}); "
            f"put it on the last line, where the numbered example tasks go"
        )


def clean_instruction(text: str) -> str:
    """Collapse whitespace and drop a trailing colon, as Alpaca does before prompting.

    Example: "  Sort these\\n numbers:  " -> "Sort these numbers"
    """
    return re.sub(r"\s+", " ", text).strip().rstrip(":")


def render_task(i: int, example: Example) -> str:
    """One numbered block. Example: render_task(2, Example("Add 2 and 3", "", "5")) ->
    '###\\n2. Instruction: Add 2 and 3\\n2. Input:\\n<noinput>\\n2. Output:\\n5\\n'"""
    return (
        f"###\n{i}. Instruction: {clean_instruction(example.instruction)}\n"
        f"{i}. Input:\n{example.input or NOINPUT}\n"
        f"{i}. Output:\n{example.output}\n"
    )


def encode_prompt(examples: Sequence[Example], template: str, num_tasks: int = 20) -> str:
    """Render the prompt: the examples numbered from 1, then `###\\n{n+1}. Instruction:` left
    open for the teacher to continue."""
    if num_tasks <= len(examples):
        raise ConfigError(
            f"--num_tasks ({num_tasks}) must be larger than --num_prompt_instructions ({len(examples)})"
        )
    blocks = "".join(render_task(i, ex) for i, ex in enumerate(examples, 1))
    blocks += f"###\n{len(examples) + 1}. Instruction:"
    # Replace the placeholders literally: templates may hold other braces (JSON, code).
    return template.replace(NUM_TASKS, str(num_tasks)).replace(TASKS, blocks)


def stop_sequences(num_tasks: int) -> tuple[str, ...]:
    """Stop once the teacher starts the task after the last one asked for.

    Alpaca stops on "20." which also fires inside text ("in 2020."); the full field label does not.
    Example: stop_sequences(20) -> ("21. Instruction:",)
    """
    return (f"{num_tasks + 1}. Instruction:",)
