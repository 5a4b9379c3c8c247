"""self_instruct.core.rouge against rouge-score 0.1.2 itself, on seeded random and hand-picked inputs."""
import doctest
import random

import pytest
from rouge_score import rouge_scorer

from self_instruct.core import rouge
from self_instruct.core.rouge import fmeasure, lcs_length, rouge_l, tokenize

SCORER = rouge_scorer.RougeScorer(["rougeL"], use_stemmer=False)
# Letters that lower() or the [a-z0-9] filter treat specially: İ lowers to "i" plus a combining dot,
# the Kelvin sign to "k"; the rest are separators.
ODD = "İKéß日本１２_-'’.,!? \n\t"


def reference(a, b):
    return SCORER.score(a, b)["rougeL"].fmeasure


def random_text(rng, words, length):
    return " ".join(rng.choice(words) for _ in range(rng.randint(0, length)))


def test_docstring_examples():
    assert doctest.testmod(rouge).failed == 0


@pytest.mark.parametrize("text", ["Hello, World!", "don't stop", "C++ and C#", "a_b-c.d", "naïve café", "ß straße",
                                  "日本語 text", "１２３ fullwidth", "İstanbul", "KELVIN", "", "   ", "!!!"])
def test_tokenize_matches_rouge_score(text):
    assert tokenize(text) == SCORER._tokenizer.tokenize(text)


def test_tokenize_matches_rouge_score_on_random_unicode():
    rng = random.Random(3)
    alphabet = "abcXYZ019 " + ODD + "".join(chr(rng.randrange(0x80, 0x3000)) for _ in range(200))
    for _ in range(2000):
        text = "".join(rng.choice(alphabet) for _ in range(rng.randint(0, 30)))
        assert tokenize(text) == SCORER._tokenizer.tokenize(text), repr(text)


def test_lcs_length_matches_rouge_score_table():
    rng = random.Random(5)
    for _ in range(500):
        # A tiny vocabulary makes long runs of repeated tokens, where LCS shortcuts go wrong.
        vocabulary = "abcdefgh"[: rng.randint(1, 8)]
        a = [rng.choice(vocabulary) for _ in range(rng.randint(1, 40))]
        b = [rng.choice(vocabulary) for _ in range(rng.randint(1, 40))]
        assert lcs_length(a, b) == rouge_scorer._lcs_table(a, b)[-1][-1]


def test_rouge_l_equals_rouge_score_bit_for_bit_on_random_pairs():
    rng = random.Random(7)
    words = ["the", "a", "cat", "Dog", "sat", "on", "mat", "İt", "café", "42", "x-y", "日本"]
    for _ in range(3000):
        a, b = random_text(rng, words, 25), random_text(rng, words, 25)
        got, want = rouge_l(a, b), reference(a, b)
        assert got == want and type(got) is type(want), (a, b)


def test_fmeasure_keeps_rouge_score_rounding_at_the_threshold():
    # Every (lcs, m, n) where F lands within a hair of 0.7: the shortcut 2*lcs/(m+n) differs in the
    # last bit for some of these, so this compares real rouge-score scores and decisions.
    near = [(lcs, m, n) for m in range(1, 41) for n in range(m, 41) for lcs in range(1, m + 1)
            if abs(2 * lcs / (m + n) - 0.7) < 1e-9]
    assert (7, 7, 13) in near and (7, 10, 10) in near
    for lcs, m, n in near:
        a = " ".join(f"w{i}" for i in range(m))
        # b shares the first lcs words of a, in order, then fills up with words a does not have.
        b = " ".join([f"w{i}" for i in range(lcs)] + [f"z{i}" for i in range(n - lcs)])
        want = reference(a, b)
        assert fmeasure(lcs, m, n) == rouge_l(a, b) == want
        assert (rouge_l(a, b) > 0.7) == (want > 0.7)
    assert rouge_l("a b c d e f g", "a b c d e f g h i j k l m") == 0.7000000000000001


def test_empty_sides_score_int_zero_like_rouge_score():
    for a, b in [("", ""), ("", "cat"), ("日本語", "日本語"), ("!!!", "cat")]:
        assert rouge_l(a, b) == 0 and type(rouge_l(a, b)) is int
        assert type(reference(a, b)) is int
    # Both sides have tokens but share none: a float zero, as in rouge-score.
    assert type(rouge_l("cat", "dog")) is float
