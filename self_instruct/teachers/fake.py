"""A scripted teacher for tests and examples: replies are queued, prompts are recorded."""
from __future__ import annotations

from typing import Callable, Sequence

from ..types import Completion, Decoding
from .base import Teacher


class FakeTeacher(Teacher):
    """Answers from a queue of texts/Completions, or from a function of the prompt when the
    queue is empty. `history` keeps every (prompt, decoding) it was asked."""

    def __init__(self, replies: Sequence[str | Completion] = (), respond: Callable[[str], str | Completion] | None = None, model_id: str = "fake"):
        self.model_id = model_id
        self.queue: list[str | Completion] = list(replies)
        self.respond = respond
        self.history: list[tuple[str, Decoding]] = []

    def enqueue(self, *replies: str | Completion) -> None:
        self.queue.extend(replies)

    async def complete(self, prompts: Sequence[str], decoding: Decoding) -> list[Completion]:
        out = []
        for prompt in prompts:
            self.history.append((prompt, decoding))
            if self.queue:
                reply = self.queue.pop(0)
            elif self.respond:
                reply = self.respond(prompt)
            else:
                reply = Completion("", finish_reason="error", error="fake: no reply queued")
            out.append(reply if isinstance(reply, Completion) else Completion(reply, completion_tokens=len(reply.split())))
        return out
