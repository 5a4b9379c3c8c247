"""The judge: filters, then exact duplicates, then ROUGE-L against the known and kept
instructions, each verdict saying why; a batch decides as judging one candidate after another
would, and candidates past the target's limit are left alone."""
import re

from self_instruct.engine.judge import Judge, reject_record
from self_instruct.types import Example, Rejection

SEEDS = ["Name three primary colors and explain how they mix.", "Summarize the plot of a famous novel in two sentences."]


def ex(instruction: str, output: str = "An answer.", **metadata) -> Example:
    return Example(instruction, "", output, metadata)


def reason(verdict) -> str:
    return verdict.reason if isinstance(verdict, Rejection) else "kept" if verdict else "unjudged"


BATCH = [
    ex("Describe the water cycle to a ten year old child."),
    ex("Name three primary colours and explain how they mix."),           # near a seed
    ex("Describe the water cycle to a ten year old student."),           # near the first, kept just before
    ex("Write a haiku about autumn leaves falling slowly."),
    ex("write a HAIKU about autumn   leaves falling slowly."),           # the one before, but for case and spaces
    ex("Plot the sales of last year against this year."),                 # blacklisted, and like nothing known
    ex("Hi there"),
    ex("List four ways to save energy at home this winter.", output=" "),
]


def test_a_batch_decides_as_one_candidate_after_another():
    together = Judge(SEEDS).judge_many(BATCH)
    one_judge = Judge(SEEDS)
    assert together == [one_judge(candidate) for candidate in BATCH]
    assert [reason(v) for v in together] == ["kept", "similar", "similar", "kept", "duplicate", "blacklist", "too_short",
                                             "empty_output"]


def test_every_verdict_says_why():
    """rejected.jsonl tells a person what to fix: the blacklisted word, the score and the known
    text it came too close to; a kept record carries Alpaca's similarity fields and its metadata."""
    judge = Judge(SEEDS, top_k=1)
    blacklisted, similar, kept = judge.judge_many([
        ex("Describe a MAP of the town where you grew up."),
        ex("Name three primary colours and explain how they mix."),
        ex("Name two secondary colors and explain how they are made.", source="doc.pdf"),
    ])
    assert (blacklisted.reason, blacklisted.detail) == ("blacklist", "map")
    assert re.fullmatch(rf"0\.\d{{4}} vs {re.escape(repr(SEEDS[0]))}", similar.detail), similar.detail
    assert list(kept) == ["instruction", "input", "output", "most_similar_instructions", "avg_similarity_score", "metadata"]
    assert list(kept["most_similar_instructions"]) == [SEEDS[0]] and kept["metadata"] == {"source": "doc.pdf"}
    assert 0 < kept["avg_similarity_score"] < 0.7


def test_candidates_past_the_limit_are_left_unjudged_and_not_remembered():
    """At the target the rest of a unit is left alone: not rejected, and not known to the judge,
    so a later unit may still keep the same instruction."""
    judge = Judge(SEEDS)
    verdicts = judge.judge_many([BATCH[0], BATCH[1], BATCH[3], BATCH[6], BATCH[7]], limit=2)
    assert [reason(v) for v in verdicts] == ["kept", "similar", "kept", "unjudged", "unjudged"]
    assert reason(judge(ex("List four ways to save energy at home this winter."))) == "kept"


def test_texts_rouge_cannot_see_are_still_told_from_their_copies():
    """ROUGE-L scores only [a-z0-9] tokens: two Japanese instructions score 0 against each other
    (both are kept), and an exact copy is caught by its duplicate key."""
    judge = Judge(filters=())
    verdicts = judge.judge_many([ex("日本の 首都は どこですか。"), ex("東京の 人口は 何人ですか。"), ex(" 日本の  首都は\tどこですか。")])
    assert [reason(v) for v in verdicts] == ["kept", "kept", "duplicate"]


def test_a_users_filter_runs_after_the_defaults_with_its_own_detail():
    def no_urls(example):
        url = re.search(r"https?://\S+", example.instruction)
        return ("url", url.group()) if url else None

    judge = Judge(extra_filters=[no_urls])
    too_short, url = judge.judge_many([ex("See http://x.io"), ex("Summarize the page at https://example.com/a for me.", page=3)])
    assert too_short.reason == "too_short"
    assert reject_record(url) == {"reason": "url", "detail": "https://example.com/a", "instruction": url.example.instruction,
                                  "input": "", "output": "An answer.", "metadata": {"page": 3}}
    assert list(reject_record(url))[:2] == ["reason", "detail"]
