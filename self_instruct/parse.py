"""Parse a teacher's reply into Examples, after Alpaca's post_process_gpt3_response.

The reply continues a prompt that ended with `{n+1}. Instruction:`. It is split on `###`; the
block at index i must hold `k. Instruction:`, `k. Input:` and `k. Output:` once each, with
k = n + 1 + i; the last block is dropped when the reply was cut by max_tokens. Unlike Alpaca, a
block that fails is not dropped silently: it comes back as a Rejection with its reason.
"""
from __future__ import annotations

import re
from dataclasses import dataclass

from .types import Example

# "<noinput>", "<No input>.", '"<noinput>"', "N/A <noinput>" are all seen in real data; Alpaca's
# exact-match check let the quoted and dotted ones through into alpaca_data.json.
_NOINPUT = re.compile(r"^\W*<\s*no[\s_-]*input\s*>\W*$", re.IGNORECASE)
_ANY_FIELD = re.compile(r"(\d+)\s*\.\s+(Instruction|Input|Output)\s*:")


@dataclass(frozen=True, slots=True)
class Rejection:
    """A candidate (or unparseable block) that did not make it, and why."""

    reason: str
    example: Example | None = None
    raw: str = ""
    detail: str = ""


def is_noinput(text: str) -> bool:
    """Example: is_noinput('"<Noinput>".') -> True; is_noinput("<b>") -> False"""
    return bool(_NOINPUT.match(text.strip()))


def parse_completion(
    text: str, finish_reason: str | None, num_prompt_tasks: int
) -> tuple[list[Example], list[Rejection]]:
    """Split one reply into examples and rejections.

    Example: parse_completion(" Add 2 and 3.\\n4. Input:\\n<noinput>\\n4. Output:\\n5", "stop", 3)
    -> ([Example("Add 2 and 3.", "", "5")], [])
    """
    if not text.strip():
        return [], []
    first = f"{num_prompt_tasks + 1}. Instruction:"
    body = text.lstrip()
    # Completion models continue after the open "4. Instruction:"; chat models usually repeat it.
    if body.startswith("###"):
        body = body[3:].lstrip()
    raw = body if body.startswith(first) else first + text
    blocks = raw.split("###")
    examples: list[Example] = []
    rejections: list[Rejection] = []
    for idx, block in enumerate(blocks):
        if not block.strip():
            continue
        if idx == len(blocks) - 1 and finish_reason == "length":
            rejections.append(Rejection("truncated", raw=block.strip()))
            continue
        result = _parse_block(block, num_prompt_tasks + 1 + idx)
        (examples if isinstance(result, Example) else rejections).append(result)
    return examples, rejections


def _parse_block(block: str, k: int) -> Example | Rejection:
    parts = re.split(rf"{k}\.\s+(Instruction|Input|Output):", block)
    if len(parts) == 7 and parts[1:6:2] == ["Instruction", "Input", "Output"]:
        instruction, inp, output = parts[2].strip(), parts[4].strip(), parts[6].strip()
        return Example(instruction, "" if is_noinput(inp) else inp, output)
    numbers = {int(m.group(1)) for m in _ANY_FIELD.finditer(block)}
    if numbers and numbers != {k}:
        found = ", ".join(map(str, sorted(numbers)))
        return Rejection("wrong_number", raw=block.strip(), detail=f"expected {k}, found {found}")
    return Rejection("missing_field", raw=block.strip(), detail=f"needs {k}. Instruction/Input/Output once each")
