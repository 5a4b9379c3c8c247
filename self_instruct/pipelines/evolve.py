"""Evol-Instruct-style evolution of existing records, as an engine pipeline.

Each unit is one parent record: the teacher rewrites its task (an in-depth operation that makes it
harder, or an in-breadth one that invents a rarer task of the same field), then answers the new task
in a second call. The operation comes from `random.Random(f"{seed}:{generation}:{index}")`, so a
resumed run asks exactly what an unbroken one would. Failed evolutions are rejected with a reason:

    evolve_no_change  the new task is the parent again (ROUGE-L above `no_change_threshold`)
    evolve_refusal    the teacher refused ("I'm sorry", "As an AI ...")
    evolve_copied     the reply carries the prompt's own wording
    evolve_too_long   the new task passes `max_words` words, or the reply was cut by max_tokens
    unparseable       no JSON task in the reply
"""
from __future__ import annotations

import hashlib
import random
import re
from dataclasses import dataclass
from typing import Any, Sequence

from ..core.replies import json_values
from ..core.similarity import RougeIndex
from ..core.templates import fill, load_template
from ..types import Decoding, Example, Rejection
from .base import Ask, Pipeline, UnitResult

# In-depth operations: what the depth template's {operation} says.
DEPTH = {
    "constraint": "add one more requirement or limit the answer must satisfy.",
    "deepen": "ask about the subject in more depth or breadth than the task now does.",
    "concretize": "replace a general idea in the task with a specific, concrete case of it.",
    "reasoning": "rephrase it so that it plainly takes several steps of reasoning to answer.",
    "complicate_input": "make the task's input richer (data, code, a table or a longer text) and the task use it.",
}
OPERATIONS = tuple(DEPTH) + ("breadth",)
REFUSAL = re.compile(r"\b(I'?m sorry|I am sorry|as an AI\b|I cannot (help|assist|comply)|I can'?t (help|assist|comply))", re.I)
# WizardLM's markers and our templates' own phrases: an evolved task holding one was copied, not written.
COPIED = ("#rewritten prompt#", "#given prompt#", "#created prompt#", "task to change", "task to start from",
          "how to make it harder", "do not quote these directions", "reply with one json object")


def record_id(instruction: str, input: str) -> str:
    """A stable id for a record: sha256 of its task. Example: record_id("Say hi.", "")[:8] -> '2b9f6b8d'"""
    return hashlib.sha256(f"{instruction}\n{input}".encode("utf-8")).hexdigest()


def task_text(example: Example) -> str:
    return example.instruction + (f"\n\nInput:\n{example.input}" if example.input else "")


@dataclass(frozen=True)
class Parent:
    index: int
    example: Example
    operation: str
    requests: int = 1  # the two calls go one after the other


class EvolvePipeline(Pipeline):
    """One generation: evolves each parent once. Units are parents in order."""

    name = "evolve"
    unit_name = "parent"

    def __init__(self, parents: Sequence[Example], generation: int, *, seed: int = 0, decoding: Decoding,
                 no_change_threshold: float = 0.9, max_words: int = 400):
        self.parents, self.generation, self.seed = list(parents), generation, seed
        self.decoding, self.no_change_threshold, self.max_words = decoding, no_change_threshold, max_words
        self.templates = {name: load_template(f"evolve_{name}.txt") for name in ("depth", "breadth", "answer")}

    def operation(self, index: int) -> str:
        return random.Random(f"{self.seed}:{self.generation}:{index}").choice(OPERATIONS)

    def unit(self, index: int, pool: Any = None) -> Parent | None:
        if index >= len(self.parents):
            return None
        return Parent(index, self.parents[index], self.operation(index))

    def evolve_prompt(self, parent: Parent) -> str:
        if parent.operation == "breadth":
            return fill(self.templates["breadth"], task=task_text(parent.example))
        return fill(self.templates["depth"], operation=DEPTH[parent.operation], task=task_text(parent.example))

    async def run_unit(self, parent: Parent, ask: Ask) -> UnitResult:
        reply = await ask(self.evolve_prompt(parent), self.decoding)
        if not reply.ok:
            return UnitResult([], [Rejection("request_failed", detail=reply.error or "")])
        child, why = self.read_child(parent, reply.text, reply.finish_reason)
        if why:
            return UnitResult([], [Rejection(why, child, raw=reply.text[:2000])])
        answer = await ask(fill(self.templates["answer"], instruction=task_text(child)), self.decoding)
        if not answer.ok:
            return UnitResult([], [Rejection("request_failed", child, detail=answer.error or "")])
        child.output = answer.text.strip()
        if REFUSAL.search(child.output[:200]):
            return UnitResult([], [Rejection("evolve_refusal", child, detail="the answer refuses the evolved task")])
        if answer.finish_reason == "length":
            return UnitResult([], [Rejection("evolve_too_long", child, detail="the answer was cut by max_tokens")])
        return UnitResult([child])

    def read_child(self, parent: Parent, text: str, finish_reason: str | None) -> tuple[Example | None, str]:
        """The evolved task, and "" or the reason it fails."""
        if REFUSAL.search(text[:300]):
            return None, "evolve_refusal"
        task = next((v for v in json_values(text) if isinstance(v, dict) and isinstance(v.get("instruction"), str)), None)
        if task is None:
            return None, "evolve_too_long" if finish_reason == "length" else "unparseable"
        ex = parent.example
        # the parent's metadata (its source, its tags) passes on; the lineage fields are the child's own
        child = Example(task["instruction"].strip(), str(task.get("input") or "").strip(), "", {
            **ex.metadata,
            "id": record_id(task["instruction"].strip(), str(task.get("input") or "").strip()),
            "parent": ex.metadata.get("id") or record_id(ex.instruction, ex.input),
            "operation": parent.operation, "generation": self.generation,
        })
        lowered = task_text(child).lower()
        if any(marker in lowered for marker in COPIED):
            return child, "evolve_copied"
        if REFUSAL.search(child.instruction):
            return child, "evolve_refusal"
        if len(task_text(child).split()) > self.max_words:
            return child, "evolve_too_long"
        same = RougeIndex([task_text(ex)], threshold=self.no_change_threshold).max_score(task_text(child))
        if same > self.no_change_threshold or " ".join(task_text(child).split()) == " ".join(task_text(ex).split()):
            return child, "evolve_no_change"
        return child, ""
