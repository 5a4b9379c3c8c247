"""Scripted teachers for the conversation and Magpie tests (the fake server's `reply_fn`), and
the check every kept conversation must pass: written for these tests, shared by the command
tests and the kill tests."""
import hashlib
import random
import re

from fake_openai import self_instruct_reply

from self_instruct.pipelines.conversations import content_words

# A ChatML template, as Qwen and SmolLM2 ship it, with a default system turn.
CHATML = ("{% for m in messages %}{% if loop.first and m['role'] != 'system' %}<|im_start|>system\nBe helpful.<|im_end|>\n"
          "{% endif %}<|im_start|>{{ m['role'] }}\n{{ m['content'] }}<|im_end|>\n{% endfor %}"
          "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}")
PREFIX = "<|im_start|>system\nBe helpful.<|im_end|>\n<|im_start|>user\n"


def made_up(rng, n):
    """Made-up words: no two turns or requests share one by chance, so every overlap is meant."""
    return " ".join("".join(rng.choice("bcdfghjklmnprstvz") + rng.choice("aeiou") for _ in range(3)) for _ in range(n))


def last(prompt, label):
    """The last turn of `label` in a turn prompt's transcript."""
    return prompt.rsplit(f"{label}: ", 1)[1].rsplit("\n\n", 1)[0]


def coherent(prompt, body):
    """A teacher that stays on topic, the same reply for the same prompt: a follow-up asks about a
    word of the answer before it, an answer takes up a word of the question; lists get
    Alpaca-format tasks."""
    rng = random.Random(hashlib.sha256(prompt.encode()).hexdigest())
    if prompt.endswith("User:"):
        word = re.findall(r"[A-Za-z]{5,}", last(prompt, "Assistant"))[0].lower()
        return f" How does the {word} relate to {made_up(rng, 4)}?"
    if prompt.endswith("Assistant:"):
        word = re.findall(r"[A-Za-z]{5,}", last(prompt, "User"))[-1].lower()
        return f" The {made_up(rng, 2)} explains the {word}: {made_up(rng, 3)}."
    return self_instruct_reply(prompt, 20, rng)


def aligned_model(prompt, body):
    """What an aligned chat model served raw does with its ChatML template: after the open user
    turn it writes a user's request (its own for each seed), after the assistant header it answers."""
    if prompt.endswith("<|im_start|>assistant\n"):
        question = prompt.rsplit("<|im_start|>user\n", 1)[1].split("<|im_end|>")[0]
        return f"Here is a careful answer to: {question}<|im_end|>"
    assert prompt == PREFIX, prompt
    return f"Could you explain {made_up(random.Random(body['seed']), 5)}?<|im_end|>"


def assert_conversation(record, turns):
    """A kept conversation: `turns` exchanges, alternating from the user, the first being the
    record's own, every follow-up taking up the answer it follows. Returns its messages."""
    messages = record["metadata"]["messages"]
    assert [m["role"] for m in messages] == ["user", "assistant"] * turns
    first = record["instruction"] + (f"\n\n{record['input']}" if record["input"] else "")
    assert messages[0]["content"] == first and messages[1]["content"] == record["output"]
    for i in range(2, len(messages), 2):
        assert content_words(messages[i]["content"]) & content_words(messages[i - 1]["content"])
    return messages
