import pytest

from self_instruct import Example
from self_instruct.core.filters import BLACKLIST, blacklist_word, first_rejection


def reason(instruction, output="An answer."):
    return first_rejection(Example(instruction, "", output))


@pytest.mark.parametrize("instruction,expected", [
    ("Summarize this text", "too_short"),                       # 3 words: Alpaca drops <= 3
    ("Summarize this text now", None),
    (" ".join(["word"] * 151), "too_long"),
    (" ".join(["word"] * 150), None),
    ("Describe the image of a cat", "blacklist"),
    ("Describe the IMAGES of a cat", "blacklist"),
    ("Describe the imagery of a cat", None),                    # whole words only
    ("Please go to the store and buy milk", "blacklist"),
    ("Write a program that sorts numbers", "write_a_program"),
    ("write a program that sorts numbers", None),               # case-sensitive, as Alpaca
    ("\"Quoted\" instruction starts with punctuation", "punctuation_start"),
    ("¿Cómo se dice hello en inglés?", "non_ascii_start"),
    ("Éxplain why the sky looks blue", "non_ascii_start"),
    ("3 ways to save money on food", None),
])
def test_filters(instruction, expected):
    assert reason(instruction) == expected


def test_empty_output():
    assert reason("Name three kinds of birds", output="  ") == "empty_output"


def test_every_blacklist_word_is_caught():
    for word in BLACKLIST:
        assert reason(f"Please consider the {word} in detail") == "blacklist", word
        assert blacklist_word(f"Please consider the {word.upper()} here") == word


@pytest.mark.parametrize("plural", ["videos", "plots", "diagrams", "flowcharts", "draws", "audios", "musics"])
def test_plurals_alpaca_missed_are_blacklisted(plural):
    assert reason(f"Summarize the {plural} from the last meeting") == "blacklist"
    assert blacklist_word(f"Summarize the {plural.capitalize()} here") == plural


@pytest.mark.parametrize("word", ["mapping", "imagery", "filesystem", "plotting", "videography", "diagrammatic", "drawer"])
def test_longer_words_holding_a_blacklisted_one_pass(word):
    assert reason(f"Explain the {word} in a short paragraph") is None


def test_order_is_alpacas():
    # A short blacklisted instruction reports the first filter in Alpaca's order.
    assert reason("Draw a map") == "too_short"
