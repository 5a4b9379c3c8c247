"""Multi-turn conversations: every new task of another pipeline grown into K turns, the teacher
playing the user and the assistant in turn.

`ConversationPipeline` wraps a pipeline that writes single-turn tasks (Alpaca's loop,
self-instruct's, documents' qa) and keeps its units: a unit runs the inner unit, then grows each
of its candidates. A candidate's instruction (and input) is the conversation's first user message
and its output the first answer; then, `turns - 1` times, the teacher writes the user's next
message from the transcript so far (prompts/conversation_user.txt), then the assistant's answer
(prompts/conversation_assistant.txt). A template shows the transcript and leaves the speaker's
label open, so a completion model continues it and a chat model answers it alike. The record keeps
every turn in `metadata.messages` ([{"role": "user"|"assistant", "content"}, ...], alternating,
from the user) and its first exchange as instruction, input and output, so the ROUGE-L judge
works on the first user turn as on any record.

A conversation whose turns do not hold together is rejected, with its transcript so far:

    turns_unrelated  a follow-up shares no content word with the answer it follows (with the
                     question before it too, when that answer has fewer than 3 content words)
    turns_repeat     a follow-up's ROUGE-L F-measure against an earlier user turn is above
                     `repeat_threshold`
    turn_empty       the teacher wrote nothing for a turn but a role label
    turn_truncated   a turn was cut by max_tokens
    request_failed   a turn could not be had

No turn is paid for a task the judge would reject anyway: one its filters reject goes on
ungrown (the judge rejects it for its reason); one that repeats a task of its unit, a seed or a
pool record, or scores above the ROUGE-L threshold against one, is rejected here as `duplicate`
or `similar`. Nor for tasks the run does not need: unit r grows at most the target less the
records of units before r - LAG (the engine starts unit r once those are in the pool), so the
last rounds of a run do not grow every task of every reply, and every run of the same command
grows the same tasks. Every prompt is a function of the transcript, so a resumed unit asks what
it asked before and is answered from the reply cache.
"""
from __future__ import annotations

import asyncio
import re
from dataclasses import dataclass, replace
from typing import Any, Callable, Iterable, Sequence

from ..core.filters import DEFAULT_FILTERS, Filter, duplicate_key, first_rejection
from ..core.rouge import rouge_l, tokenize
from ..core.similarity import RougeIndex
from ..core.templates import fill, load_template
from ..io.jsonl import sha256_of
from ..types import Decoding, Example, Rejection
from .base import Ask, Pipeline, UnitResult

LABELS = {"user": "User", "assistant": "Assistant"}
# A completion model goes on to write the next speaker's turn; these end the reply there.
STOP = ("\nUser:", "\nAssistant:")
REPEAT_THRESHOLD = 0.7  # ROUGE-L between two user turns: the novelty judge's threshold
MIN_ANSWER_WORDS = 3  # content words an answer needs for a follow-up to be checked against it alone
TURN_TOKENS = 1024  # the most a turn may take (the run's max_tokens when lower)
# Unit r grows at most the target less the records of units before r - LAG: a number every run
# of the same command computes alike, however it was killed and resumed.
LAG = 4
# Words that say nothing of what a turn is about (and the politeness a follow-up opens with).
STOPWORDS = frozenset("""
a about above after again against all also am an and any are as at be because been before being below
between both but by can could did do does doing done down during each either else etc even ever every few
for from further get gets getting give given go goes going got had has have having he her here hers him
his how however i if in into is it its itself just know let like ll make many may me might more most much
must my need no nor not now of off often on once one only or other our ours out over own please rather re
really said same say says see she should show since so some such tell than thank thanks that the their them
then there these they thing things this those though through to too under until up upon us use used using
ve very want was way we well were what when where whether which while who whom whose why will with would
yes yet you your yours explain example examples detail details
""".split())
_LABEL = re.compile(r"^\s*(?:\*\*)?(?:user|assistant)(?:\*\*)?\s*:\s*(?:\*\*)?", re.IGNORECASE)
_NEXT_SPEAKER = re.compile(r"\n\s*(?:\*\*)?(?:user|assistant)(?:\*\*)?\s*:", re.IGNORECASE)


def content_words(text: str) -> set[str]:
    """The words a turn is about: rouge's tokens less stopwords, numbers and tokens under 3
    characters, plurals made singular.

    Example: content_words("Why do tomatoes and berries need the sun?") -> {'tomato', 'berry', 'sun'}
    """
    return {singular(t) for t in tokenize(text) if len(t) >= 3 and t not in STOPWORDS and not t.isdigit()}


def singular(word: str) -> str:
    """Example: [singular(w) for w in ("tomatoes", "berries", "boxes", "cats", "class", "analysis")]
    -> ['tomato', 'berry', 'box', 'cat', 'class', 'analysis']"""
    if len(word) > 4 and word.endswith(("ches", "shes", "sses", "xes", "oes")):
        return word[:-2]
    if len(word) > 4 and word.endswith("ies"):
        return word[:-3] + "y"
    if len(word) > 3 and word.endswith("s") and not word.endswith(("ss", "us", "is")):
        return word[:-1]
    return word


def transcript(messages: Sequence[dict]) -> str:
    """The conversation as the templates show it.

    Example: transcript([{"role": "user", "content": "Hi."}, {"role": "assistant", "content": "Hello."}])
    -> 'User: Hi.\\n\\nAssistant: Hello.'
    """
    return "\n\n".join(f"{LABELS[m['role']]}: {m['content']}" for m in messages)


def read_turn(text: str) -> str:
    """A reply as one turn: a role label it restates dropped, and whatever it wrote for the next
    speaker cut off (a server that ignores stop sequences, a chat model writing both sides).

    Example: read_turn("User: Why?\\nAssistant: Because.") -> 'Why?'
    """
    text = _LABEL.sub("", text, count=1)
    match = _NEXT_SPEAKER.search(text)
    return (text[:match.start()] if match else text).strip()


def first_message(example: Example) -> str:
    """The first user message: the instruction, then the input after a blank line (as export's
    messages format writes a single-turn record)."""
    return f"{example.instruction}\n\n{example.input}" if example.input else example.instruction


def unrelated(follow_up: str, messages: Sequence[dict]) -> str | None:
    """Why `follow_up` does not follow from the conversation's last answer, or None. A follow-up
    of stopwords alone ("Can you tell me more?") shares nothing either: it is rejected too.

    Example: unrelated("What is the capital of Peru?", [{"role": "user", "content": "Name a fruit."},
                       {"role": "assistant", "content": "An apple is a crisp, sweet fruit."}])
    -> 'no content word of the answer it follows (apple, crisp, fruit, sweet)'
    """
    answer = content_words(messages[-1]["content"])
    what = "the answer it follows"
    if len(answer) < MIN_ANSWER_WORDS and len(messages) > 1:
        answer |= content_words(messages[-2]["content"])
        what = "the exchange it follows"
    if not answer or content_words(follow_up) & answer:
        return None  # it shares a word, or there is nothing to hold it to
    return f"no content word of {what} ({', '.join(sorted(answer)[:8])})"


def repeated(follow_up: str, messages: Sequence[dict], threshold: float) -> str | None:
    """Which earlier user turn `follow_up` repeats (ROUGE-L above `threshold`), or None."""
    for m in messages:
        if m["role"] == "user":
            score = rouge_l(follow_up, m["content"])
            if score > threshold:
                return f"{score:.4f} vs {m['content'][:200]!r}"
    return None


@dataclass(frozen=True)
class TurnTemplates:
    user: str
    assistant: str  # holds {transcript}, and {chunk} when the answers are grounded in a document

    @classmethod
    def load(cls, grounded: bool = False) -> "TurnTemplates":
        """The bundled templates; `grounded`: the assistant answers from a document chunk as well."""
        assistant = "conversation_assistant_document.txt" if grounded else "conversation_assistant.txt"
        # no final newline: after the open "User:" a completion model writes the turn on that line
        return cls(load_template("conversation_user.txt").rstrip(), load_template(assistant).rstrip())

    def sha256(self) -> str:
        """What run.json records of them: they shape the data."""
        return sha256_of(f"{self.user}\n{self.assistant}")


@dataclass(frozen=True)
class ConversationUnit:
    inner: Any
    room: int | None  # tasks the unit may grow: the target less the records of units before index - LAG


class ConversationPipeline(Pipeline):
    """`inner`'s units, each new task grown to `turns` turns. `known`: the instructions the judge
    starts from (the seeds); `teacher`: the name of the run's teacher that writes the turns
    (None: the main one), for a main teacher that continues lists rather than follows
    instructions (the embedded model asked raw); `context`: the text of an inner unit that the
    assistant answers from (a document chunk), for grounded templates."""

    def __init__(self, inner: Pipeline, turns: int, templates: TurnTemplates, decoding: Decoding, *,
                 filters: Iterable[Filter] = DEFAULT_FILTERS, known: Iterable[str] = (), threshold: float | None = 0.7,
                 target: int | None = None, repeat_threshold: float = REPEAT_THRESHOLD, teacher: str | None = None,
                 context: Callable[[Any], str] | None = None):
        self.inner, self.turns, self.templates = inner, turns, templates
        self.filters, self.target, self.repeat_threshold, self.teacher = tuple(filters), target, repeat_threshold, teacher
        self.context = context
        self.decoding = replace(decoding, max_tokens=min(decoding.max_tokens, TURN_TOKENS), stop=STOP, json=False)
        self.unit_name = inner.unit_name
        # the room needs units before index - LAG in the pool; without a target there is none to keep
        self.lag = inner.lag if target is None else LAG if inner.lag is None else min(inner.lag, LAG)
        self.candidates_per_request = inner.candidates_per_request
        known = list(known)
        # None: no near-duplicate check (documents' default); exact duplicates are still dropped
        self.index = RougeIndex(known, threshold=threshold) if threshold is not None else None
        self.keys = {duplicate_key(text) for text in known}
        self.pool: Any = None
        self.indexed = 0  # records of the pool in self.index

    def unit(self, index: int, pool: Any) -> ConversationUnit | None:
        inner = self.inner.unit(index, pool)
        if inner is None:
            return None
        self.pool = pool
        room = None if self.target is None else max(0, self.target - len(pool.records_before(index - LAG)))
        return ConversationUnit(inner, room)

    def requests(self, unit: ConversationUnit) -> int:
        return self.inner.requests(unit.inner)

    def prompts(self, unit: ConversationUnit) -> list[str]:
        """The first prompts of a unit (what --dry_run shows): the inner unit's."""
        inner = unit.inner
        return list(inner.prompts) if hasattr(inner, "prompts") else self.inner.prompts(inner)

    def __getattr__(self, name: str) -> Any:
        # what a command reads of its pipeline (unit_count, template) is the inner one's
        if "inner" not in self.__dict__:
            raise AttributeError(name)
        return getattr(self.__dict__["inner"], name)

    async def run_unit(self, unit: ConversationUnit, ask: Ask) -> UnitResult:
        first = await self.inner.run_unit(unit.inner, ask)
        growing, result = self.screen(first.examples, unit.room)
        chunk = self.context(unit.inner) if self.context else ""
        grown = await asyncio.gather(*(self.grow(example, ask, chunk) for example in growing), return_exceptions=True)
        errors = [g for g in grown if isinstance(g, BaseException)]
        if errors:  # every conversation was waited for: none is left asking behind the unit
            raise errors[0]
        result.rejections[:0] = first.rejections
        for outcome in grown:
            (result.rejections if isinstance(outcome, Rejection) else result.examples).append(outcome)
        return result

    def screen(self, examples: Sequence[Example], room: int | None) -> tuple[list[Example], UnitResult]:
        """Which tasks to grow, and what is settled without a turn: a task the judge's filters
        reject goes on to the judge as it is (rejected there, for its reason); one that repeats a
        task of the unit, a known instruction or a record already in the pool, or is too similar
        to one (ROUGE-L), is rejected here as the judge would. Of the tasks that pass the filters,
        at most `room` are taken, in order: a unit grows no more than the run still needs."""
        self._learn_pool()
        growing, settled, seen, taken = [], UnitResult(), set(), 0
        for example in examples:
            if first_rejection(example, self.filters):
                settled.examples.append(example)
                continue
            if room is not None and taken >= room:
                continue  # past what the run needs: neither grown nor judged
            taken += 1
            key = duplicate_key(example.instruction)
            if key in seen or key in self.keys:
                detail = "repeats a task of its unit" if key in seen else ""
                settled.rejections.append(Rejection("duplicate", example, detail=detail))
            elif self.index is not None and (match := self.index.similar_to(example.instruction)):
                settled.rejections.append(Rejection("similar", example, detail=f"{match[1]:.4f} vs {match[0]!r}"))
            else:
                growing.append(example)
            seen.add(key)
        return growing, settled

    def _learn_pool(self) -> None:
        """Index the pool's records not indexed yet: every one is of a unit before any running now."""
        records = getattr(self.pool, "records", [])
        for record in records[self.indexed:]:
            if self.index is not None:
                self.index.add(record["instruction"])
            self.keys.add(duplicate_key(record["instruction"]))
        self.indexed = len(records)

    async def grow(self, example: Example, ask: Ask, chunk: str = "") -> Example | Rejection:
        """The conversation that starts with `example`, or why it failed. `chunk`: the text the
        assistant answers from, for a grounded template."""
        messages = [{"role": "user", "content": first_message(example)}, {"role": "assistant", "content": example.output}]

        def rejected(reason: str, detail: str, raw: str = "") -> Rejection:
            return Rejection(reason, replace(example, metadata={**example.metadata, "messages": messages}), raw, detail)

        for turn in range(2, self.turns + 1):
            for role in ("user", "assistant"):
                template = self.templates.user if role == "user" else self.templates.assistant
                prompt = fill(template, transcript=transcript(messages), chunk=chunk)
                reply = await ask(prompt, self.decoding, teacher=self.teacher)
                if not reply.ok:
                    return rejected("request_failed", f"turn {turn}, {role}: {reply.error or ''}")
                if reply.finish_reason == "length":
                    return rejected("turn_truncated", f"turn {turn}, {role}: cut by max_tokens", reply.text[:2000])
                text = read_turn(reply.text)
                if not text:
                    return rejected("turn_empty", f"turn {turn}, {role}: nothing but a label", reply.text[:2000])
                if role == "user":
                    why = repeated(text, messages, self.repeat_threshold)
                    if why:
                        messages.append({"role": role, "content": text})
                        return rejected("turns_repeat", f"turn {turn} repeats an earlier question: {why}")
                    why = unrelated(text, messages)
                    if why:
                        messages.append({"role": role, "content": text})
                        return rejected("turns_unrelated", f"turn {turn}: {why}")
                messages.append({"role": role, "content": text})
        return replace(example, metadata={**example.metadata, "messages": messages})
