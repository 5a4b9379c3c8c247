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
from ..types import Example
from .templates import fill, load_template

TASKS = "{tasks}"
CONDITIONS = "{conditions}"
NOINPUT = "<noinput>"


def load_list_template(name: str = "generate.txt", path: str | Path | None = None) -> str:
    """A template that ends in a numbered list left open for the teacher (Alpaca's, or
    self-instruct's list of instructions): the user's --prompt_path, else the bundled `name`.
    On top of the placeholders every template is checked for, {tasks} must appear exactly once."""
    text = load_template(name, path, "--prompt_path", check=_tasks_once)
    if text.rstrip().endswith(TASKS):
        # Editors add a final newline; after the open "{n+1}. Instruction:" it would make the
        # teacher start a new line instead of writing the instruction.
        text = text.rstrip()
    return text


def _tasks_once(text: str) -> str | None:
    count = text.count(TASKS)
    if count != 1:
        return (f"must hold the placeholder {TASKS} exactly once (found {count}); "
                f"put it on the last line, where the numbered example tasks go")
    return None


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


def encode_prompt(examples: Sequence[Example], template: str, num_tasks: int = 20, conditions: str = "") -> str:
    """Render the prompt: the examples numbered from 1, then `###\\n{n+1}. Instruction:` left
    open for the teacher to continue. `conditions` (a persona, a topic: core/conditioning.py) goes
    where the template holds {conditions}, else before everything; without them {conditions} says
    nothing."""
    if num_tasks <= len(examples):
        raise ConfigError(
            f"--num_tasks ({num_tasks}) must be larger than --num_prompt_instructions ({len(examples)})"
        )
    blocks = "".join(render_task(i, ex) for i, ex in enumerate(examples, 1))
    blocks += f"###\n{len(examples) + 1}. Instruction:"
    paragraph = conditions + "\n\n" if conditions else ""  # {conditions} opens a line of its own
    if paragraph and CONDITIONS not in template:
        template = CONDITIONS + template
    return fill(template, tasks=blocks, num_tasks=num_tasks, conditions=paragraph)


def stop_sequences(num_tasks: int) -> tuple[str, ...]:
    """Stop once the teacher starts the task after the last one asked for.

    Alpaca stops on "20." which also fires inside text ("in 2020."); the full field label does not.
    Example: stop_sequences(20) -> ("21. Instruction:",)
    """
    return (f"{num_tasks + 1}. Instruction:",)
