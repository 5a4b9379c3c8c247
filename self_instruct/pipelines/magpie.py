"""Magpie self-synthesis (Xu et al., 2024, arXiv 2406.08464): an aligned chat model, given its
own chat template only up to where the user's message would start, writes a user's message
itself; asked through the template again, it answers it. No seed task and no prompt of ours is
in either request: the instructions are the model's.

    fmt = ChatFormat.from_template(open("chatml.jinja").read())
    fmt.prefix            # '<|im_start|>system\\n...<|im_end|>\\n<|im_start|>user\\n'
    fmt.response_prompt("Name a colour.")   # ... '<|im_start|>assistant\\n'

The model must be served raw: the embedded llama.cpp model (its template read from the GGUF
file), or a server's completions API given the template (a chat API would write the template
around our text itself). Each unit is a round of `request_batch_size` instructions, asked at
once with seeds drawn from `random.Random(f"{seed}:{round}")`, so every request of a round is
distinct and a resumed run asks exactly what an unbroken one would; then their answers, at once.
What the model writes is checked before it is answered:

    instruction_empty       nothing but whitespace before the end of its turn
    instruction_unfinished  the turn did not end within its tokens (it ran on)
    template_markup         it holds a marker of the template (a role header, an end of turn)
    response_truncated      the answer was cut by max_tokens
    request_failed          a request could not be had

then the judge's filters and ROUGE-L dedup as for every pipeline. Records carry
`metadata.magpie` ({"seed": the request's seed}).
"""
from __future__ import annotations

import asyncio
import random
import re
from dataclasses import dataclass, replace
from typing import Any, Callable

from ..errors import ConfigError
from ..types import Decoding, Example, Rejection
from .base import Ask, Pipeline, UnitResult

# Stand-ins for the message texts while the template is rendered: plain words, which survive a
# template that trims or capitalizes nothing around them.
USER, ASSISTANT = "MagpieUserText7f3a", "MagpieAssistantText7f3a"
INSTRUCTION_TOKENS = 256  # a user's message, the most one may take (the run's max_tokens when lower)
# Special-token texts: "<|im_start|>", "<start_of_turn>", "<｜User｜>", "[INST]".
_MARKER = re.compile(r"<[|｜]?[A-Za-z_][\w.｜|-]{0,40}[|｜]?>|\[/?INST\]")
INSTALL_HINT = "pip install jinja2 (the [local] extra brings it)"


def render_function(template: str, bos_token: str = "", eos_token: str = "") -> Callable[..., str]:
    """The template as Hugging Face renders it (a sandboxed Jinja environment, blocks trimmed),
    as a function of the messages and add_generation_prompt."""
    try:
        from jinja2 import TemplateError
        from jinja2.sandbox import ImmutableSandboxedEnvironment
    except ImportError:
        raise ConfigError(f"reading a chat template needs jinja2: {INSTALL_HINT}") from None

    def raise_exception(message: str) -> None:
        raise ConfigError(f"the chat template refuses: {message}")

    env = ImmutableSandboxedEnvironment(trim_blocks=True, lstrip_blocks=True)
    env.globals.update(raise_exception=raise_exception, strftime_now=lambda fmt: "")
    try:
        compiled = env.from_string(template)
    except TemplateError as exc:
        raise ConfigError(f"the chat template is not valid Jinja ({exc})") from None

    def render(messages: list[dict], add_generation_prompt: bool) -> str:
        try:
            return compiled.render(messages=messages, add_generation_prompt=add_generation_prompt,
                                   bos_token=bos_token, eos_token=eos_token)
        except TemplateError as exc:
            raise ConfigError(f"the chat template fails to render ({exc})") from None
    return render


@dataclass(frozen=True)
class ChatFormat:
    """What Magpie needs of a chat template: the text before a user's message (the pre-query
    template), the markers that end a user's and an assistant's turn, and the prompt that asks
    for the answer to a message."""

    prefix: str
    user_end: str
    assistant_end: str
    markers: tuple[str, ...]
    render: Callable[..., str]

    @classmethod
    def from_template(cls, template: str, bos_token: str = "", eos_token: str = "") -> "ChatFormat":
        """Read a Jinja chat template by rendering it around stand-in messages.

        Example (ChatML): prefix '<|im_start|>user\\n', user_end and assistant_end '<|im_end|>'
        """
        render = render_function(template, bos_token, eos_token)
        one = render([{"role": "user", "content": USER}], False)
        two = render([{"role": "user", "content": USER}, {"role": "assistant", "content": ASSISTANT}], False)
        if USER not in one or ASSISTANT not in two:
            raise ConfigError("the chat template does not write the messages it is given (is it a chat template?)")
        prefix, user_end = one.split(USER, 1)
        if not prefix.strip():
            raise ConfigError("the chat template writes nothing before the user's message: a model cannot tell "
                              "from it that a user's turn has begun")
        assistant_end = two.split(ASSISTANT, 1)[1].strip() or eos_token
        asking = render([{"role": "user", "content": USER}], True)
        markers = {m for text in (one, two, asking) for m in _MARKER.findall(text)}
        markers |= {m for m in (user_end.strip(), assistant_end, eos_token) if m}
        return cls(prefix, user_end.strip() or eos_token, assistant_end, tuple(sorted(markers)), render)

    def response_prompt(self, instruction: str) -> str:
        return self.render([{"role": "user", "content": instruction}], True)

    def markup_in(self, text: str) -> str | None:
        """The first template marker `text` holds, or None."""
        return next((m for m in self.markers if m in text), None)


@dataclass(frozen=True)
class MagpieRound:
    index: int
    seeds: tuple[int, ...]


class MagpiePipeline(Pipeline):
    unit_name = "round"
    candidates_per_request = 1  # a request's reply is one instruction, or one answer

    def __init__(self, chat: ChatFormat, decoding: Decoding, *, request_batch_size: int = 5, seed: int = 42):
        self.chat, self.batch, self.seed = chat, request_batch_size, seed
        self.decoding = replace(decoding, stop=(), json=False)
        self.asking = replace(self.decoding, max_tokens=min(decoding.max_tokens, INSTRUCTION_TOKENS))

    def unit(self, index: int, pool: Any = None) -> MagpieRound:
        rng = random.Random(f"{self.seed}:{index}")
        return MagpieRound(index, tuple(rng.randrange(2**31) for _ in range(self.batch)))

    def requests(self, unit: MagpieRound) -> int:
        return len(unit.seeds)

    def prompts(self, unit: MagpieRound) -> list[str]:
        """What the round sends first: the pre-query template, once a seed (what --dry_run shows)."""
        return [self.chat.prefix] * len(unit.seeds)

    async def run_unit(self, unit: MagpieRound, ask: Ask) -> UnitResult:
        stop = (self.chat.user_end,) if self.chat.user_end else ()
        written = await gather(*(ask(self.chat.prefix, replace(self.asking, seed=s, stop=stop)) for s in unit.seeds))
        result, asked = UnitResult(), []
        for seed, reply in zip(unit.seeds, written):
            instruction, why = self.read_instruction(reply)
            example = Example(instruction, "", "", {"magpie": {"seed": seed}})
            if why:
                result.rejections.append(Rejection(why[0], example if instruction else None, reply.text[:2000], why[1]))
            else:
                asked.append((seed, example))
        stop = (self.chat.assistant_end,) if self.chat.assistant_end else ()
        answers = await gather(*(ask(self.chat.response_prompt(ex.instruction), replace(self.decoding, seed=s, stop=stop))
                                 for s, ex in asked))
        for (_, example), answer in zip(asked, answers):
            if not answer.ok:
                result.rejections.append(Rejection("request_failed", example, detail=answer.error or ""))
            elif answer.finish_reason == "length":
                example.output = self.cut(answer.text, self.chat.assistant_end)
                result.rejections.append(Rejection("response_truncated", example, detail="the answer was cut by max_tokens"))
            else:
                example.output = self.cut(answer.text, self.chat.assistant_end)
                result.examples.append(example)
        return result

    @staticmethod
    def cut(text: str, end: str) -> str:
        """The turn a reply holds: up to its end-of-turn marker, for a server that returns the
        marker as text and goes on (one that ignores stop sequences)."""
        return (text.split(end, 1)[0] if end else text).strip()

    def read_instruction(self, reply) -> tuple[str, tuple[str, str] | None]:
        """The instruction a reply holds, and (reason, detail) when it is not one to answer."""
        if not reply.ok:
            return "", ("request_failed", reply.error or "")
        text = self.cut(reply.text, self.chat.user_end)
        if reply.finish_reason == "length":
            return text, ("instruction_unfinished", "the user's turn did not end within its tokens")
        if not text:
            return "", ("instruction_empty", "the model ended the user's turn at once")
        marker = self.chat.markup_in(text)
        if marker:
            return text, ("template_markup", f"holds {marker!r}")
        return text, None


async def gather(*asks) -> list:
    """Every ask's reply, in order; every one is waited for before an error (the budget's
    refusal) is passed on, so none is left running behind the unit."""
    replies = await asyncio.gather(*asks, return_exceptions=True)
    for reply in replies:
        if isinstance(reply, BaseException):
            raise reply
    return replies
