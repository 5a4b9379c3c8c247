"""Personas and topics: what each prompt is conditioned on, for data that does not all sound alike.

A persona file is one persona a line, or JSONL with a `persona` field (other fields are kept as
tags beside it); a topic file is a tree, indented by spaces or tabs, or JSON (nested objects
and lists), whose leaves are drawn as paths ("Science > Physics > Optics"). Each prompt draws a
persona and a topic path from the round's seeded RNG; the records it yields carry them as
`metadata.persona` and `metadata.topic`.

    conditions = Conditions.load("personas.txt", "topics.txt")
    tags = conditions.draw(random.Random(0))   # {'persona': 'a night-shift nurse', 'topic': 'Health > Sleep'}
    conditions.paragraph(tags)                 # the lines the prompt gets
"""
from __future__ import annotations

import json
import random
from dataclasses import dataclass
from pathlib import Path

from ..errors import DataError
from ..io.jsonl import iter_jsonl


@dataclass(frozen=True)
class Conditions:
    personas: tuple[dict, ...] = ()  # each {"persona": text, ...other tags}
    topics: tuple[str, ...] = ()     # leaf paths

    @classmethod
    def load(cls, personas: str | Path | None = None, topics: str | Path | None = None) -> "Conditions":
        return cls(load_personas(personas) if personas else (), load_topics(topics) if topics else ())

    def __bool__(self) -> bool:
        return bool(self.personas or self.topics)

    def draw(self, rng: random.Random) -> dict:
        """The tags of one prompt: a persona (with its file's other fields) and a topic path."""
        tags: dict = {}
        if self.personas:
            tags.update(rng.choice(self.personas))
        if self.topics:
            tags["topic"] = rng.choice(self.topics)
        return tags

    @staticmethod
    def paragraph(tags: dict) -> str:
        """What a prompt says of its tags. Example: {'persona': 'a baker'} ->
        'The person asking: a baker. Write every new task as this person would ask it, for their own needs.'"""
        lines = []
        if "persona" in tags:
            lines.append(f"The person asking: {tags['persona']}. Write every new task as this person would ask it, "
                         f"for their own needs.")
        if "topic" in tags:
            lines.append(f"The topic: {tags['topic']}. Every new task is about this topic.")
        return "\n".join(lines)


def load_personas(path: str | Path) -> tuple[dict, ...]:
    """Personas from a text file (one a line; blank lines and lines starting with # skipped) or a
    .jsonl file of objects with a non-empty "persona" string."""
    path = Path(path)
    if path.suffix == ".jsonl":
        personas = []
        for lineno, obj in iter_jsonl(path):
            if not isinstance(obj.get("persona"), str) or not obj["persona"].strip():
                raise DataError(f'{path}:{lineno}: field "persona" must be a non-empty string')
            personas.append({**obj, "persona": obj["persona"].strip()})
    else:
        personas = [{"persona": line.strip()} for line in _lines(path) if line.strip() and not line.startswith("#")]
    if not personas:
        raise DataError(f"{path}: no personas (one a line, or JSONL with a \"persona\" field)")
    return tuple(personas)


def load_topics(path: str | Path) -> tuple[str, ...]:
    """The leaf paths of a topic tree: JSON (an object's keys are branches; a list's strings are
    leaves) or text indented by spaces or tabs (a deeper line is a child of the one above).

    Example (text): "Science\\n  Physics\\n    Optics\\n  Biology\\nCooking"
    -> ('Science > Physics > Optics', 'Science > Biology', 'Cooking')
    """
    path = Path(path)
    if path.suffix == ".json":
        try:
            tree = json.loads(path.read_text(encoding="utf-8"))
        except json.JSONDecodeError as exc:
            raise DataError(f"{path}:{exc.lineno}: not valid JSON ({exc.msg})") from None
        topics = tuple(_json_leaves(tree, ()))
    else:
        topics = tuple(_indented_leaves(path))
    if not topics:
        raise DataError(f"{path}: no topics (a tree indented by spaces, or JSON)")
    return topics


def _json_leaves(node, path: tuple[str, ...]):
    if isinstance(node, dict):
        for key, child in node.items():
            if child in (None, "", [], {}):
                yield " > ".join(path + (str(key),))
            else:
                yield from _json_leaves(child, path + (str(key),))
    elif isinstance(node, list):
        for child in node:
            yield from _json_leaves(child, path)
    elif isinstance(node, str) and node.strip():
        yield " > ".join(path + (node.strip(),))


def _indented_leaves(path: Path):
    entries = [(len(line.expandtabs(4)) - len(line.expandtabs(4).lstrip()), line.strip()) for line in _lines(path)
               if line.strip() and not line.lstrip().startswith("#")]
    ancestors: list[tuple[int, str]] = []
    for i, (indent, name) in enumerate(entries):
        while ancestors and ancestors[-1][0] >= indent:
            ancestors.pop()
        if i + 1 < len(entries) and entries[i + 1][0] > indent:
            ancestors.append((indent, name))  # a branch: its children follow
        else:
            yield " > ".join([n for _, n in ancestors] + [name])


def _lines(path: Path) -> list[str]:
    try:
        return path.read_text(encoding="utf-8-sig").splitlines()
    except FileNotFoundError:
        raise DataError(f"{path}: no such file") from None
    except UnicodeDecodeError as exc:
        raise DataError(f"{path}: not UTF-8 text ({exc.reason} at byte {exc.start})") from None
