"""Reading JSON out of a teacher's reply, tolerantly.

Teachers wrap JSON in prose and ``` fences, run out of max_tokens inside an array, and type line
breaks inside strings (as llama.cpp's schema grammars write them). Every pipeline that asks for
JSON (documents, score, evolve) reads the reply through `json_values`, so a reply that one of
them reads, all of them read.
"""
from __future__ import annotations

import json
import re
from typing import Any, Callable, Iterator

_OPENER = re.compile(r"[\[{]")


def json_values(text: str) -> Iterator[Any]:
    """Every JSON array or object in a reply, in order, wherever it starts: after a preamble,
    inside a ``` fence, before a closing remark. A value that does not parse (an array cut off
    by max_tokens) yields the whole values inside it.

    Example: list(json_values('See [1]. ```json\\n[{"q": "Q?"}, {"q": "R')) -> [[1], {'q': 'Q?'}]
    """
    # strict=False: a line break typed inside a string is read as one, not a reason to lose the reply
    decoder, pos = json.JSONDecoder(strict=False), 0
    while match := _OPENER.search(text, pos):
        try:
            value, pos = decoder.raw_decode(text, match.start())
        except json.JSONDecodeError:
            pos = match.start() + 1
            continue
        yield value


def reply_list(text: str, kinds: tuple[type, ...], is_item: Callable[[dict], bool]) -> list:
    """The list a reply holds: its first array holding values of `kinds`; or the array inside a
    wrapping object, as JSON modes force ({"pairs": [...]}); or the objects that follow one
    another (an array cut off by max_tokens, one object a line). `is_item` tells an object that
    is itself an item from one that wraps the list.

    Example: reply_list('{"pairs": [{"q": "Q?"}]}', (dict,), lambda d: "q" in d) -> [{'q': 'Q?'}]
    """
    values = list(json_values(text))
    for i, value in enumerate(values):
        if isinstance(value, list) and any(isinstance(v, kinds) for v in value):
            return value
        if isinstance(value, dict):
            inner = [v for v in value.values() if isinstance(v, list) and any(isinstance(x, kinds) for x in v)]
            if inner and not is_item(value):
                return inner[0]
            return [v for v in values[i:] if isinstance(v, dict)]
    return []
