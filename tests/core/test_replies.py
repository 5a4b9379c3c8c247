"""Tests for self_instruct.core.replies: JSON read out of prose, fences, cut-off arrays and raw line breaks."""
from self_instruct.core.replies import json_values, reply_list

IS_QA = (dict,), lambda d: "q" in d


def test_values_are_found_anywhere_and_a_broken_one_yields_what_is_inside():
    assert list(json_values('[] {"a": [1} [1, 2] x')) == [[], [1, 2]]
    assert list(json_values('See [1]. ```json\n[{"q": "Q?"}, {"q": "R')) == [[1], {"q": "Q?"}]


def test_a_raw_line_break_inside_a_string_is_read_as_one():
    assert list(json_values('{"reason": "Line one.\nLine two."}')) == [{"reason": "Line one.\nLine two."}]


def test_the_list_is_bare_wrapped_or_objects_in_a_row():
    assert reply_list('Sure: [{"q": "A?"}, {"q": "B?"}]', *IS_QA) == [{"q": "A?"}, {"q": "B?"}]
    assert reply_list('{"pairs": [{"q": "A?"}]}', *IS_QA) == [{"q": "A?"}]
    assert reply_list('{"q": "A?"}\n{"q": "B?"}\n{"q": "C', *IS_QA) == [{"q": "A?"}, {"q": "B?"}]
    assert reply_list("[1, 2] and no objects", *IS_QA) == []
