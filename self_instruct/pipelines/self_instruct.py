"""Self-instruct's pipeline (Wang et al. 2022): instructions first, then a classification check,
then instances written output-first for classification tasks and input-first otherwise.

A unit is one round:
1. `request_batch_size` prompts, each a numbered list of 8 instructions (6 seeds, 2 from the pool
   once it has records of rounds before r - MACHINE_LAG, as AlpacaPipeline samples them) left open
   at item 9; the reply continues the list.
2. Per new instruction, concurrently across instructions and in order within one:
   - "is this a classification task?", few-shot with the seed file's `is_classification` tasks;
   - the instances: for a classification task the teacher names each class label and writes an
     input for it (output-first: every label gets an input, so the labels stay balanced); for any
     other task it writes inputs, then outputs (input-first), up to `num_instances` of them.
3. The instances are checked (reasons in rejected.jsonl): `instance_empty`, `instance_too_long`,
   `output_copies_input`, `instance_conflict` (one input, different outputs: all of them go),
   `instance_duplicate`, `label_surplus` (a label given more inputs than the rarest label),
   `truncated` (the last instance of a reply cut by max_tokens), and `no_instances` (a reply
   with none to read). An instruction with no valid instance makes no record.

An instruction that the default filters drop, or that repeats one the round's prompts show (chat
models restate the list) or one earlier in the round, is rejected before any call is spent on it.

One record per instruction: the engine dedups by instruction, so sibling instances as records of
their own would be dropped as duplicates. The record's input/output is one valid instance (for
classification tasks the label rotates with the record's place, so the records' labels spread
evenly too); `metadata.instances` lists every valid instance and `metadata.is_classification` the
teacher's verdict.

Prompts are built and replies read by pure functions; `run_unit` only wires them through `ask`.
"""
from __future__ import annotations

import asyncio
import dataclasses
import random
import re
from collections import Counter, defaultdict
from dataclasses import dataclass
from itertools import zip_longest
from typing import Sequence

from ..core.filters import duplicate_key, first_rejection
from ..core.parse import is_noinput
from ..core.prompts import clean_instruction, load_list_template
from ..core.templates import fill, load_template
from ..types import Decoding, Example, Rejection, SeedTask
from .alpaca import MACHINE_LAG
from .base import Ask, Pipeline, UnitResult

# Wang et al.: 8 instructions in context, 2 of them machine-made; the list stops at item 16.
PROMPT_INSTRUCTIONS, MACHINE_INSTRUCTIONS, NUM_TASKS = 8, 2, 16
NUM_INSTANCES = 3
# Few-shot examples of each verdict in the classification prompt.
CLASSIFY_SHOTS = 6
MAX_FIELD_CHARS = 4000
_NUMBERED = re.compile(r"\n[ \t]*\d+[ \t]?\.[ \t]")
_EXAMPLE = re.compile(r"^[ \t*#]*Example[ \t]*\d*[ \t]*[:.]?[ \t*]*$", re.MULTILINE | re.IGNORECASE)
_FIELD = re.compile(r"^[ \t*]*(Input|Output|Class label)[ \t*]*:[ \t*]*", re.MULTILINE | re.IGNORECASE)


# --- prompts ---

def encode_instructions(instructions: Sequence[str], template: str, num_tasks: int = NUM_TASKS) -> str:
    """The list prompt, left open at the next number.

    Example: encode_instructions(["Add 2 and 3."], "{tasks}") -> '1. Add 2 and 3.\\n2.'
    """
    lines = "".join(f"{i}. {clean_instruction(text)}\n" for i, text in enumerate(instructions, 1))
    return fill(template, tasks=lines + f"{len(instructions) + 1}.", num_tasks=num_tasks)


def classify_examples(seeds: Sequence[SeedTask], shots: int = CLASSIFY_SHOTS) -> str:
    """Few-shot block: up to `shots` classification and `shots` other seed tasks, alternating
    Yes and No so that neither answer is merely the latest one seen."""
    yes = [(s, "Yes") for s in seeds if s.is_classification][:shots]
    no = [(s, "No") for s in seeds if not s.is_classification][:shots]
    pairs = [pair for both in zip_longest(yes, no) for pair in both if pair]
    return "".join(f"Task: {clean_instruction(s.instruction)}\nClassification task? {answer}\n\n" for s, answer in pairs)


# --- replies ---

def parse_instructions(text: str, finish_reason: str | None) -> tuple[list[str], list[Rejection]]:
    """The new instructions of a reply that continues the open item (or restates the list).

    Example: parse_instructions(" Add 2 and 3.\\n10. Name a color.", "stop") -> (["Add 2 and 3.", "Name a color."], [])
    """
    pieces = _NUMBERED.split("\n" + text)
    head = pieces[0].strip()
    if not head or head.endswith(":"):
        pieces = pieces[1:]  # a restated list: nothing, or a chat model's preamble, before item 1
    rejections = []
    if finish_reason == "length" and pieces:
        rejections.append(Rejection("truncated", raw=pieces.pop().strip()[:500]))
    # An item ends at a blank line: what follows is not part of the list.
    found = [re.sub(r"\s+", " ", p.strip().split("\n\n")[0]).strip() for p in pieces]
    return [f for f in found if f], rejections


def parse_yes_no(text: str) -> bool:
    """The classification check's answer. Example: parse_yes_no(" Yes.") -> True; anything but a
    leading yes is No, as in Wang et al."""
    words = re.findall(r"[a-z]+", text.casefold())
    return bool(words) and words[0] == "yes"


def parse_instances(text: str, finish_reason: str | None, output_first: bool) -> tuple[list[tuple[str, str]], list[Rejection]]:
    """(input, output) pairs of an instance reply; for output-first replies the output is the label.

    Example: parse_instances("Class label: spam\\nInput: Win cash now", "stop", True) -> ([("Win cash now", "spam")], [])
    """
    blocks = re.split(r"(?=^[ \t*]*Class label[ \t*]*:)", text, flags=re.MULTILINE | re.IGNORECASE) if output_first \
        else _EXAMPLE.split(text)
    blocks = [b for b in blocks if _FIELD.search(b)]
    rejections = []
    if finish_reason == "length" and blocks:
        rejections.append(Rejection("truncated", raw=blocks.pop().strip()[:500]))
    pairs = []
    for block in blocks:
        fields = _fields(block)
        if output_first:
            pairs.append((fields.get("input", ""), fields.get("class label", "")))
        else:
            pairs.append((fields.get("input", ""), fields.get("output", "")))
    return pairs, rejections


def _fields(block: str) -> dict[str, str]:
    """Example: _fields("Input: a\\nOutput: b") -> {"input": "a", "output": "b"}"""
    parts = _FIELD.split(block)
    fields = {}
    for label, value in zip(parts[1::2], parts[2::2]):
        value = value.strip()
        # "<noinput>", and a layout's placeholder copied as is ("...", "-"), are no text at all
        fields.setdefault(label.casefold(), "" if is_noinput(value) or not re.search(r"\w", value) else value)
    return fields


def check_instances(instruction: str, pairs: Sequence[tuple[str, str]], output_first: bool) -> tuple[list[tuple[str, str]], list[Rejection]]:
    """The valid instances in order, and a Rejection for each one that is not."""
    def reject(reason: str, pair: tuple[str, str], detail: str = "") -> Rejection:
        return Rejection(reason, Example(instruction, pair[0], pair[1]), detail=detail)

    valid, rejections = [], []
    for pair in pairs:
        inp, out = pair
        if not out.strip() or (output_first and not inp.strip()):
            rejections.append(reject("instance_empty", pair, "no input" if out.strip() else "no output"))
        elif max(len(inp), len(out)) > MAX_FIELD_CHARS:
            rejections.append(reject("instance_too_long", pair, f"over {MAX_FIELD_CHARS} characters"))
        elif inp.strip() and duplicate_key(out) == duplicate_key(inp):
            rejections.append(reject("output_copies_input", pair))
        else:
            valid.append(pair)
    outputs = defaultdict(set)
    for inp, out in valid:
        if inp.strip():
            outputs[duplicate_key(inp)].add(duplicate_key(out))
    seen, kept = set(), []
    for pair in valid:
        key = (duplicate_key(pair[0]), duplicate_key(pair[1]))
        if len(outputs.get(key[0], ())) > 1:
            rejections.append(reject("instance_conflict", pair, "the same input has other outputs"))
        elif key in seen:
            rejections.append(reject("instance_duplicate", pair))
        else:
            seen.add(key)
            kept.append(pair)
    return (balance_labels(instruction, kept, rejections) if output_first else kept), rejections


def balance_labels(instruction: str, pairs: list[tuple[str, str]], rejections: list[Rejection]) -> list[tuple[str, str]]:
    """Keep as many inputs per label as the rarest label has; the surplus is rejected."""
    counts = Counter(duplicate_key(out) for _, out in pairs)
    if not counts:
        return pairs
    cap, used, kept = min(counts.values()), Counter(), []
    for inp, out in pairs:
        used[duplicate_key(out)] += 1
        if used[duplicate_key(out)] > cap:
            rejections.append(Rejection("label_surplus", Example(instruction, inp, out), detail=f"more than {cap} input(s) for this label"))
        else:
            kept.append((inp, out))
    return kept


# --- the pipeline ---

@dataclass(frozen=True)
class SelfInstructRound:
    index: int
    prompts: tuple[str, ...]
    requests: int  # what the round makes if every list is full, for the engine's concurrency estimate
    shown: frozenset[str] = frozenset()  # normalized instructions its prompts show (a chat model may restate them)


@dataclass(frozen=True)
class Templates:
    instructions: str
    classify: str
    input_first: str
    output_first: str

    @classmethod
    def load(cls, instructions: str | None = None) -> "Templates":
        """The bundled templates; `instructions`, when given, is the text of the list template."""
        # each prompt ends where the teacher goes on: a final newline would start its reply on a new line
        return cls(instructions or load_list_template("self_instruct_instructions.txt"),
                   *(load_template(f"self_instruct_{name}.txt").rstrip() for name in ("classify", "input_first", "output_first")))


class SelfInstructPipeline(Pipeline):
    unit_name = "round"
    lag = MACHINE_LAG

    def __init__(self, seeds: Sequence[SeedTask], templates: Templates, decoding: Decoding, *,
                 request_batch_size: int = 5, seed: int = 42, num_prompt_instructions: int = PROMPT_INSTRUCTIONS,
                 num_machine_instructions: int = MACHINE_INSTRUCTIONS, num_tasks: int = NUM_TASKS,
                 num_instances: int = NUM_INSTANCES):
        self.seeds, self.templates, self.batch, self.seed = list(seeds), templates, request_batch_size, seed
        self.n, self.m, self.num_tasks, self.num_instances = num_prompt_instructions, num_machine_instructions, num_tasks, num_instances
        self.examples = classify_examples(self.seeds)
        # Wang et al. list with their sampling settings but read verdicts and instances greedily.
        self.list_decoding = dataclasses.replace(decoding, stop=(f"\n{num_tasks}.",))
        self.verdict_decoding = dataclasses.replace(decoding, max_tokens=3, temperature=0.0, stop=("\n",))
        self.instance_decoding = dataclasses.replace(decoding, max_tokens=min(decoding.max_tokens, 1024), temperature=0.0,
                                                     stop=(f"Example {num_instances + 1}", "Task:"))

    def unit(self, index: int, pool) -> SelfInstructRound:
        rng = random.Random(f"{self.seed}:{index}")
        records = pool.records_before(index - MACHINE_LAG)
        drawn = [self.draw_instructions(rng, records) for _ in range(self.batch)]
        prompts = tuple(encode_instructions(shown, self.templates.instructions, self.num_tasks) for shown in drawn)
        return SelfInstructRound(index, prompts, self.batch * (1 + 2 * (self.num_tasks - 1 - self.n)),
                     frozenset(duplicate_key(text) for shown in drawn for text in shown))

    def draw_instructions(self, rng: random.Random, records: Sequence[dict]) -> list[str]:
        """The instructions one prompt shows: seeds and up to `m` pool records, shuffled."""
        m = min(self.m, len(records))
        shown = [s.instruction for s in rng.sample(self.seeds, min(self.n - m, len(self.seeds)))]
        shown += [r["instruction"] for r in rng.sample(records, m)]
        rng.shuffle(shown)
        return shown

    def requests(self, unit: SelfInstructRound) -> int:
        return unit.requests

    async def run_unit(self, unit: SelfInstructRound, ask: Ask) -> UnitResult:
        replies = await _all(ask(p, self.list_decoding) for p in unit.prompts)
        result, instructions, seen = UnitResult(), [], set(unit.shown)
        for completion in replies:
            if not completion.ok:
                result.rejections.append(Rejection("request_failed", detail=completion.error or ""))
                continue
            found, rejections = parse_instructions(completion.text, completion.finish_reason)
            result.rejections += rejections
            if not found and not rejections:
                result.rejections.append(Rejection("empty_reply", raw=completion.text[:500]))
            for text in found:
                # spend no call on what the judge would drop anyway
                reason = first_rejection(Example(text, "", "-")) or ("duplicate" if duplicate_key(text) in seen else None)
                if reason:
                    result.rejections.append(Rejection(reason, Example(text)))
                else:
                    seen.add(duplicate_key(text))
                    instructions.append(text)
        outcomes = await _all(self.instruct(unit.index + place, text, ask) for place, text in enumerate(instructions))
        for example, rejections in outcomes:
            result.rejections += rejections
            if example is not None:
                result.examples.append(example)
        return result

    async def instruct(self, place: int, instruction: str, ask) -> tuple[Example | None, list[Rejection]]:
        """One instruction's classification check and instances: its record, or None, and the rejects."""
        verdict = await ask(fill(self.templates.classify, examples=self.examples, instruction=instruction), self.verdict_decoding)
        if not verdict.ok:
            return None, [Rejection("request_failed", Example(instruction), detail=verdict.error or "")]
        is_classification = parse_yes_no(verdict.text)
        template = self.templates.output_first if is_classification else self.templates.input_first
        reply = await ask(fill(template, instruction=instruction, num_instances=self.num_instances), self.instance_decoding)
        if not reply.ok:
            return None, [Rejection("request_failed", Example(instruction), detail=reply.error or "")]
        pairs, rejections = parse_instances(reply.text, reply.finish_reason, is_classification)
        valid, more = check_instances(instruction, pairs, is_classification)
        rejections += more
        meta = {"is_classification": is_classification}
        for r in rejections:
            if r.example is not None:
                r.example.metadata.update(meta)
        if not valid:
            if not pairs:
                rejections.append(Rejection("no_instances", Example(instruction, metadata=meta), raw=reply.text[:500]))
            return None, rejections
        inp, out = valid[place % len(valid)] if is_classification else valid[0]
        meta["instances"] = [{"input": i, "output": o} for i, o in valid]
        return Example(instruction, inp, out, meta), rejections


async def _all(calls) -> list:
    """Await every call; any failure (a spent budget) is raised once all have finished, so the
    unit is recorded whole or not at all."""
    results = await asyncio.gather(*calls, return_exceptions=True)
    for result in results:
        if isinstance(result, BaseException):
            raise result
    return results
