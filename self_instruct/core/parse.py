"""Parse a teacher's reply into Examples, after Alpaca's post_process_gpt3_response.

The prompt ends with `###\\n{n+1}. Instruction:` left open. What teachers send back:

- Completion models continue the open instruction: ` Add 2 and 3.\\n4. Input:\\n...`.
- Chat models restate the list, often after a preamble ("Sure! Here are more tasks:"), sometimes
  in markdown (`**4. Instruction:** ...`), and often close with a remark ("Let me know ...").

So the list starts at the first field label when that label is an Instruction (a restated list;
the text before it is a preamble and is ignored), else the reply continues the open instruction.
Blocks are split only where a `###` line is followed by a numbered Instruction label, so a
`### Steps` heading or a code fence inside an output stays whole (Alpaca splits on every `###`).
Block i must hold `k. Instruction:`, `k. Input:` and `k. Output:` once each with k = n + 1 + i;
with `renumber=True` any k is accepted as long as the block's three labels agree. The last block
is dropped as `truncated` when the reply was cut by max_tokens. A closing remark after the last
output is cut off (see `_end_output`). Unlike Alpaca, a block that fails is not dropped
silently: it comes back as a Rejection with its reason.
"""
from __future__ import annotations

import re

from ..types import Example, Rejection

# "<noinput>", "<No input>.", '"<noinput>"', "N/A <noinput>" are all seen in real data; Alpaca's
# exact-match check let the quoted and dotted ones through into alpaca_data.json.
_NOINPUT = re.compile(r"^\W*<\s*no[\s_-]*input\s*>\W*$", re.IGNORECASE)

# A field label at the start of a line: `4. Input:`, and the markdown chat models wrap it in:
# `**4. Instruction:**`, `**4. Instruction**:`, `4. **Output:**`, `### 4. Instruction:`.
_LABEL_FORM = (
    r"[ \t]*{heading}[*_]{{0,2}}[ \t]*{number}[ \t]*\.[ \t]*[*_]{{0,2}}[ \t]*"
    r"{field}[ \t]*[*_]{{0,2}}[ \t]*:[*_]{{0,2}}"
)
_ANY_HEADING = r"(?:#{1,6}[ \t]+)?"
# Patterns open with the newline before a label (text is scanned with one put in front): re scans
# a pattern led by a literal many times faster than one led by `^`. Split parts: the text before
# the first label, then (label, number, field, text after it) for each label.
_LABEL = re.compile(r"(\n" + _LABEL_FORM.format(heading=_ANY_HEADING, number=r"(\d+)", field="(Instruction|Input|Output)") + ")")
_FIELDS = ["Instruction", "Input", "Output"]
# A block boundary: a line holding only `###` (blank lines may follow) or a `### ` heading, right
# before an Instruction label; the label itself is not consumed.
_SPLIT = re.compile(
    r"\n###[ \t]*(?:\n[ \t]*)*\n(?=" + _LABEL_FORM.format(heading=_ANY_HEADING, number=r"\d+", field="Instruction") + ")"
    r"|\n(?=" + _LABEL_FORM.format(heading=r"###[ \t]+", number=r"\d+", field="Instruction") + ")"
)
_SEPARATOR_LINE = re.compile(r"^[ \t]*###[ \t]*$", re.MULTILINE)
# What _end_output stops at: code fences (toggle), bare `###` lines, paragraph starts (a line
# after a blank line or a markdown rule `---`).
_LANDMARK = re.compile(r"^[ \t]*(?:(```|~~~)|(###)[ \t]*$|(?:[-*_][ \t]*){3,}$|$\n(?=[ \t]*\S))", re.MULTILINE)
# Openings of the remarks chat models close a list with. They speak to the requester about the
# list, not about the task, so an email that ends "Best regards" or "I hope to see you" is kept.
_CLOSER = re.compile(
    r"\s*[*_]{0,2}(?:let me know if (?:you|these|this|there)\b|"
    r"(?:i )?hope (?:these|this|that|the above) (?:tasks? |list |set )?"
    r"(?:helps?|are (?:helpful|useful)|is (?:helpful|useful|what)|will help|meets?|works?)\b|"
    r"i hope (?:you find|these|this list|this set)\b|"
    r"feel free to (?:ask|let me know|reach out|request|use these|modify these|adapt these|adjust these)\b|"
    r"(?:these|those|the above) (?:\d+ )?(?:new |additional |diverse |varied )*(?:tasks|instructions|examples) "
    r"(?:cover|span|range|vary|offer|are designed|were designed|aim|should help|should give)\b|"
    r"if you (?:need|want|would like|'d like) (?:more|any|additional|further|me|another|other)\b|"
    r"would you like (?:me|more|additional|any)\b|is there anything else\b|happy to help\b)",
    re.IGNORECASE,
)


def is_noinput(text: str) -> bool:
    """Example: is_noinput('"<Noinput>".') -> True; is_noinput("<b>") -> False"""
    return bool(_NOINPUT.match(text.strip()))


def parse_completion(
    text: str, finish_reason: str | None, num_prompt_tasks: int, *, renumber: bool = False
) -> tuple[list[Example], list[Rejection]]:
    """Split one reply into examples and rejections.

    Example: parse_completion(" Add 2 and 3.\\n4. Input:\\n<noinput>\\n4. Output:\\n5", "stop", 3)
    -> ([Example("Add 2 and 3.", "", "5")], [])
    Example: parse_completion("Sure!\\n**4. Instruction:** Add 2 and 3.\\n**4. Input:** <noinput>\\n"
    "**4. Output:** 5\\n\\nLet me know if you need more!", "stop", 3) -> the same example.
    `renumber=True` keeps blocks numbered other than expected (chat models skip or restart).
    """
    if not text.replace("###", "").strip():
        return [], []
    blocks = _SPLIT.split(_list_of("\n" + text, num_prompt_tasks + 1))
    examples: list[Example] = []
    rejections: list[Rejection] = []
    for idx, block in enumerate(blocks):
        last = idx == len(blocks) - 1
        if last and finish_reason == "length":
            rejections.append(Rejection("truncated", raw=block.strip()))
            continue
        result = _parse_block(block, num_prompt_tasks + 1 + idx, renumber)
        if isinstance(result, Example):
            result.output = _end_output(result.output, last)
            examples.append(result)
        else:
            rejections.append(result)
    return examples, rejections


def _list_of(text: str, k: int) -> str:
    """The reply from its first Instruction label on, with the open `k. Instruction:` restored.

    A reply whose first label is an Instruction restates the list, and what comes before is a
    chat preamble, unless that text holds a `###` line and the label is not the open number:
    then it is a completion whose open task lost its fields, and it stays, to be rejected.
    """
    first = _LABEL.search(text)
    if first and first.group(3) == "Instruction":
        before = text[: first.start()].strip()
        if int(first.group(2)) == k or not _SEPARATOR_LINE.search(before.removeprefix("###")):
            return text[first.start() + 1:]
    return f"{k}. Instruction:" + text[1:]


def _parse_block(block: str, k: int, renumber: bool) -> Example | Rejection:
    parts = _LABEL.split("\n" + block)
    if renumber and len(parts) > 1 and parts[3] == "Instruction":
        k = int(parts[2])
    # Only labels of the block's own number split it: an output may hold "1. Input: ..." lines.
    own = [i for i in range(1, len(parts), 4) if int(parts[i + 1]) == k]
    if [parts[i + 2] for i in own] == _FIELDS:
        i, n, o = own
        instruction, inp, output = _text(parts, i + 3, n), _text(parts, n + 3, o), _text(parts, o + 3, len(parts))
        return Example(instruction, "" if is_noinput(inp) else inp, output)
    numbers = sorted({int(n) for n in parts[2::4]})
    if numbers and numbers != [k]:
        found = ", ".join(map(str, numbers))
        return Rejection("wrong_number", raw=block.strip(), detail=f"expected {k}, found {found}")
    return Rejection("missing_field", raw=block.strip(), detail=f"needs {k}. Instruction/Input/Output once each")


def _text(parts: list[str], start: int, stop: int) -> str:
    """The text of parts[start:stop], other-numbered labels included (parts 4j+2, 4j+3 are their groups)."""
    if stop == start + 1:
        return parts[start].strip()
    return "".join(parts[x] for x in range(start, stop) if x % 4 < 2).strip()


def _end_output(output: str, last: bool) -> str:
    """An output up to its first bare `###` line and, in the last block, up to a closing remark.

    In the prompt's format a bare `###` line ends a task; here no numbered instruction follows
    it, so what does is stray text (a chat model's remark, a doubled separator). A closing remark
    is the first paragraph after the output's opening one that starts like words to the requester
    ("Let me know if you need more", "I hope these help", "Feel free to ask", "These tasks cover
    ..."), and runs to the end. Inside code fences neither counts: a `###` or a paragraph there
    belongs to the output.

    Example: _end_output("Paris.\\n\\nI hope these help!", last=True) -> "Paris."
    """
    if not last and "###" not in output:
        return output
    in_fence = False
    for m in _LANDMARK.finditer(output):
        if m.group(1):
            in_fence = not in_fence
        elif not in_fence and (m.group(2) or last and _CLOSER.match(output, m.end())):
            return output[: m.start()].rstrip()
    return output
