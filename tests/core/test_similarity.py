"""RougeIndex against a brute-force scan with rouge-score 0.1.2, the way Alpaca's generator uses it."""
import doctest
import json
import random

import numpy as np
import pytest
from rouge_score import rouge_scorer

from self_instruct import ConfigError
from self_instruct.core import similarity
from self_instruct.core.similarity import Match, RougeIndex, prefix_length

SCORER = rouge_scorer.RougeScorer(["rougeL"], use_stemmer=False)


class Reference:
    """Alpaca's computation: every score by rouge-score, reject on max > threshold."""

    def __init__(self, texts, threshold):
        self.texts, self.threshold = list(texts), threshold
        self.tokens = [SCORER._tokenizer.tokenize(t) for t in self.texts]

    def add(self, text):
        self.texts.append(text)
        self.tokens.append(SCORER._tokenizer.tokenize(text))

    def scores(self, text):
        new = SCORER._tokenizer.tokenize(text)
        return [rouge_scorer._score_lcs(new, t).fmeasure for t in self.tokens]

    def expected(self, text, k=10):
        scores = self.scores(text)
        best = max(range(len(scores)), key=lambda i: (scores[i], -i))
        order = sorted(range(len(scores)), key=lambda i: (-scores[i], i))[:k]
        return scores, best, [(self.texts[i], scores[i]) for i in order]


def assert_same(match, ref, text):
    scores, best, top = ref.expected(text)
    similar = scores[best] > ref.threshold
    assert match.similar == similar, text
    assert match.max_score == scores[best] and type(match.max_score) is type(scores[best])
    assert match.nearest == ref.texts[best]
    if not similar:
        # Exact values, and the int 0 of rouge-score's empty case, in the same order.
        assert [(t, s, type(s)) for t, s in match.most_similar] == [(t, s, type(s)) for t, s in top]
        assert match.mean == float(np.mean(scores))


def random_text(rng, words):
    return " ".join(rng.choice(words) for _ in range(rng.randint(0, 14)))


def test_docstring_examples():
    assert doctest.testmod(similarity).failed == 0


@pytest.mark.parametrize("sort_below", [similarity.SORT_BELOW, 0], ids=["top_k_by_sort", "top_k_by_selection"])
@pytest.mark.parametrize("threshold", [0.7, 0.5, 0.0, 1.0])
def test_check_equals_brute_force_rouge_score_while_the_index_grows(threshold, sort_below, monkeypatch):
    # A small vocabulary gives repeated tokens, duplicates, empty texts and many near-threshold pairs
    # (and many tied scores, where the k-th highest is found by a sort or by numpy's selection).
    monkeypatch.setattr(similarity, "SORT_BELOW", sort_below)
    rng = random.Random(int(threshold * 10))
    words = ["a", "b", "c", "d", "e", "f", "g", "h", "İ", "é", "!"]
    seeds = [random_text(rng, words) for _ in range(20)] + ["", "a b", "a b"]
    index, ref = RougeIndex(seeds, threshold), Reference(seeds, threshold)
    for _ in range(300):
        text = random_text(rng, words)
        match = index.check(text)
        assert_same(match, ref, text)
        hit = index.similar_to(text)
        assert (hit is not None) == match.similar
        if hit:
            assert hit == (match.nearest, match.max_score)
        if not match.similar:
            index.add(text)
            ref.add(text)
    assert len(index) == len(ref.texts)


def test_decisions_are_strict_at_exactly_seven_tenths():
    seven = "w0 w1 w2 w3 w4 w5 w6"
    index = RougeIndex(["w0 w1 w2 w3 w4 w5 w6 w7 w8 w9"])
    # 7 of 10 against 10 tokens: F is exactly 0.7, not above it, so the text is kept.
    assert index.check(seven + " z7 z8 z9").max_score == 0.7
    assert not index.check(seven + " z7 z8 z9").similar
    # 7 of 7 against 13 tokens: rouge-score's rounding gives 0.7000000000000001, a near duplicate.
    index = RougeIndex([seven + " x7 x8 x9 x10 x11 x12"])
    assert index.check(seven) == Match(True, 0.7000000000000001, seven + " x7 x8 x9 x10 x11 x12")


def test_vocabulary_order_changes_no_decision():
    rng = random.Random(11)
    words = [f"w{i}" for i in range(30)]
    texts = [random_text(rng, words[: rng.randint(3, 30)]) for _ in range(400)]
    shuffled = words[:]
    rng.shuffle(shuffled)
    results = []
    for vocabulary in ((), words, shuffled):
        index = RougeIndex(threshold=0.5, vocabulary=vocabulary)
        results.append([index.similar_to(t) for t in texts if index.similar_to(t) or index.add(t)])
    assert results[0] == results[1] == results[2] and results[0]


def test_prefix_filter_never_loses_a_match():
    # Every pair of lengths: a text and the longest partner still above 0.7 share exactly the
    # fewest tokens needed, placed so the shared ones are the commonest (last in the prefix order).
    for m in range(1, 30):
        for n in range(1, 30):
            lcs = next((l for l in range(1, min(m, n) + 1) if 2 * (l / n) * (l / m) / (l / n + l / m) > 0.7), None)
            if lcs is None:
                continue
            shared = [f"s{i}" for i in range(lcs)]
            a = " ".join(shared + [f"a{i}" for i in range(m - lcs)])
            b = " ".join(shared + [f"b{i}" for i in range(n - lcs)])
            # Shared words are interned first, so they rank as the most frequent.
            index = RougeIndex([b], vocabulary=shared)
            assert index.similar_to(a) is not None, (m, n, lcs)
    assert prefix_length(0.7, 10) == 5


def test_empty_index_and_empty_text():
    match = RougeIndex().check("Write a poem.")
    assert match == Match(False, 0, None, [], 0.0)
    assert RougeIndex().top_k("anything") == [] and RougeIndex().max_score("x") == 0
    index = RougeIndex(["日本語", "Write a poem."])
    match = index.check("日本語")
    assert not match.similar and match.max_score == 0 and type(match.max_score) is int
    assert match.most_similar == [("日本語", 0), ("Write a poem.", 0)]


def test_top_k_and_max_score_agree_with_check():
    index = RougeIndex(["a b c", "a b", "a", "x y", "a b c"])
    assert index.top_k("a b c d", k=3) == [("a b c", 0.8571428571428571), ("a b c", 0.8571428571428571),
                                           ("a b", 0.6666666666666666)]
    assert index.max_score("a b c d") == 0.8571428571428571
    assert index.check("x", k=2, with_mean=False) == Match(False, 0.6666666666666666, "x y",
                                                           [("x y", 0.6666666666666666), ("a b c", 0.0)], None)


def test_threshold_must_be_a_fraction():
    with pytest.raises(ConfigError, match="threshold"):
        RougeIndex(threshold=1.5)


def test_alpaca_instructions_and_perturbed_copies_decide_like_rouge_score(anchors):
    records = json.loads((anchors / "alpaca_data_5000_sample.json").read_text())
    rng = random.Random(2)
    originals = [r["instruction"] for r in records[:60]]
    stream = []
    for text in originals:
        words = text.split()
        del words[rng.randrange(len(words))]
        stream += [text, " ".join(words).upper(), " ".join(reversed(words))]
    seeds = [json.loads(line)["instruction"] for line in open(anchors / "alpaca_seed_tasks.jsonl")]
    index, ref = RougeIndex(seeds), Reference(seeds, 0.7)
    for text in stream:
        match = index.check(text)
        assert_same(match, ref, text)
        if not match.similar:
            index.add(text)
            ref.add(text)
    assert 175 + 60 <= len(index) < 175 + len(stream)


def test_tokens_past_the_surrogate_range_and_the_basic_plane_score_exactly():
    # Token codes are characters; tokens number 55,296 on would be lone surrogates and are skipped.
    vocabulary = [f"v{i}" for i in range(70_000)]
    texts = ["v55295 v55296 v55297 v1 v2", "v69999 v65535 v65536 v55296", "v55296 v55297 v1 v2 v69999"]
    index, ref = RougeIndex(texts, 0.5, vocabulary=vocabulary), Reference(texts, 0.5)
    for text in ["v55296 v55297 v1", "v69999 v65536 v55296 v3", "v55295 v2"]:
        assert_same(index.check(text), ref, text)


@pytest.mark.parametrize("threshold", [0.7, 0.5])
def test_shard_pairs_over_all_shards_are_every_pair_above_the_threshold(threshold):
    rng = random.Random(21)
    words = ["a", "b", "c", "d", "e", "f", "g", "h"]
    texts = [random_text(rng, words) for _ in range(250)]
    index = RougeIndex(threshold=threshold)
    encoded = index._encode_ranked(texts)
    tokens = [SCORER._tokenizer.tokenize(t) for t in texts]
    expected = {(i, j) for j in range(len(texts)) for i in range(j)
                if rouge_scorer._score_lcs(tokens[i], tokens[j]).fmeasure > threshold}
    for shards in (1, 4):
        found = np.concatenate([similarity.shard_pairs(encoded, threshold, k, shards) for k in range(shards)])
        assert set(map(tuple, found.tolist())) == expected and expected


@pytest.mark.parametrize("cells", [1_000_000, 50], ids=["one-block", "many-blocks"])
def test_greedy_dedup_across_many_batches_with_repeats_equals_rouge_score(monkeypatch, cells):
    # Enough texts for several batches of growing size; repeats (same tokens, other case and
    # punctuation) take the shortcut that skips the query. Scored in blocks of rows or at once,
    # the decisions are the same.
    monkeypatch.setattr(similarity, "_CELLS", cells)
    rng = random.Random(8)
    words = [f"w{i}" for i in range(40)]
    base = [random_text(rng, words) for _ in range(120)]
    texts = [rng.choice(base).upper() + rng.choice(["", "!", " ?"]) for _ in range(1000)]
    against = base[:5]
    flags = np.concatenate(list(similarity.greedy_dedup(texts, 0.7, against))).tolist()
    ref, expected = Reference(against, 0.7), []
    for text in texts:
        keep = not any(score > 0.7 for score in ref.scores(text))
        if keep:
            ref.add(text)
        expected.append(keep)
    assert flags == expected and 0 < sum(flags) < len(texts)


@pytest.mark.parametrize("cells", [1_000_000, 7], ids=["one-block", "blocks-of-rows"])
@pytest.mark.parametrize("full_scan_below", [5000, 10], ids=["scores-decide", "filtered-search-decides"])
@pytest.mark.parametrize("seeded", [True, False], ids=["seeded", "empty-index"])
def test_a_batch_checks_each_text_as_rouge_score_would_in_turn(monkeypatch, full_scan_below, seeded, cells):
    """The judge checks a unit's candidates in one batch: each one against the index and the
    batch's texts kept before it, exactly as rouge-score in turn, skipped texts never added;
    scored in one kernel call or a few rows at a time, the same bits."""
    monkeypatch.setattr(similarity, "FULL_SCAN_BELOW", full_scan_below)
    monkeypatch.setattr(similarity, "_CELLS", cells)
    rng = random.Random(full_scan_below + seeded)
    words = ["a", "b", "c", "d", "e", "f", "g", "h", "İ", "é", "!"]
    seeds = [random_text(rng, words) for _ in range(30)] + ["", "a b"] if seeded else []
    index, ref = RougeIndex(seeds), Reference(seeds, 0.7)
    for _ in range(40):
        texts = [random_text(rng, words) for _ in range(rng.randint(1, 12))]
        texts += rng.sample(texts, min(2, len(texts)))  # the same text twice in one batch
        batch, kept = index.batch(texts), []
        for n, text in enumerate(texts):
            if rng.random() < 0.2:
                continue  # what the judge skips (a filter, an exact duplicate) is never added
            match = batch.decide(n)
            if match is not None:
                assert_same(match, ref, text)
            else:
                kept.append((n, text, ref.expected(text) if ref.texts else ([], None, [])))
                ref.add(text)
        finished = batch.finish()
        assert sorted(finished) == [n for n, _, _ in kept]
        for n, text, (scores, best, top) in kept:
            match = finished[n]
            assert not match.similar and match.nearest == (ref.texts[best] if scores else None)
            assert [(t, s, type(s)) for t, s in match.most_similar] == [(t, s, type(s)) for t, s in top]
            assert match.mean == (float(np.mean(scores)) if scores else 0.0)
    assert len(index) == len(ref.texts)


def test_a_big_batch_and_a_big_dedup_batch_take_bounded_memory():
    """A unit of a book's worth of candidates (thousands) is scored a block of rows at a time:
    the all-pairs matrices of 4,000 texts alone would be 128 MB of LCS counts and as much again
    of F-measures; the blocks hold about a million scores each."""
    import tracemalloc

    rng = random.Random(3)
    words = [f"w{i}" for i in range(3000)]
    seeds = [random_text(rng, words) for _ in range(300)]
    texts = [random_text(rng, words) for _ in range(4000)]
    index = RougeIndex(seeds)
    tracemalloc.start()
    try:
        batch = index.batch(texts)
        similar = sum(batch.decide(n) is not None for n in range(len(texts)))
        finished = batch.finish()
        _, batch_peak = tracemalloc.get_traced_memory()
        tracemalloc.reset_peak()
        index._greedy_among([index._encode(text) for text in texts])
        _, greedy_peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert len(finished) + similar == len(texts) and len(finished) > 3000
    assert batch_peak < 64 * 2**20 and greedy_peak < 64 * 2**20, (batch_peak, greedy_peak)
