"""The judge: filters, then exact duplicates, then ROUGE-L against the known and kept
instructions, each verdict saying why; a batch decides as judging one candidate after another
would, and candidates past the target's limit are left alone."""
import re
from types import SimpleNamespace

from self_instruct.core.filters import COVERAGE, GROUNDED
from self_instruct.engine.judge import Judge, reject_record
from self_instruct.engine.run import judge_of
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


# --- filter sets ---

SPEC = [  # sentences of a file-format spec, as windows or questions on it make them
    ex("(a) Every file starts with an 8-byte signature.", output="The signature is followed by chunks."),
    ex("Rule 1 says that the header is read first.", output="Rule 2 says that the length is read next."),
    ex("Rule 3 says that the type is read first.", output="Rule 4 says that the data is read next."),
    ex('"Image data," the spec says, "comes in IDAT chunks."', output="Several may follow one another."),
    ex("- A map of palette entries is optional.", output="It holds up to 256 entries."),
]


def test_coverage_keeps_every_window_of_a_spec_but_an_exact_copy():
    """Windows are a coverage task: a sentence is kept whatever its words or its shape; only empty
    text and a verbatim copy of a pair are dropped."""
    judge = Judge(filter_set=COVERAGE)
    copy = ex(SPEC[1].instruction, output=SPEC[1].output)
    same_start = ex(SPEC[1].instruction, output="Another output entirely.")
    verdicts = judge.judge_many([*SPEC, copy, same_start, ex("Lonely.", output="")])
    assert [reason(v) for v in verdicts] == ["kept"] * 5 + ["duplicate", "kept", "empty_output"]
    kept = verdicts[0]
    assert list(kept) == ["instruction", "input", "output", "metadata"]  # no similarity fields: none computed
    assert Judge(SEEDS).judge_many(SPEC[:4]) != verdicts[:4]  # Alpaca's judge drops most of them


def test_grounded_keeps_questions_alpaca_would_drop_and_tells_tasks_on_other_passages_apart():
    judge = Judge(filter_set=GROUNDED)
    questions = [ex("What does the file header hold?"), ex("What is RAM?"), ex('"Why?" Who asks this in chapter one?'),
                 ex("What does the file header hold?", output="Something else."),
                 Example("Summarize the passage.", "Passage one.", "One."), Example("Summarize the passage.", "Passage two.", "Two.")]
    assert [reason(v) for v in judge.judge_many(questions)] == ["kept", "kept", "kept", "duplicate", "kept", "kept"]
    # ROUGE-L only when a threshold is given
    near = [ex("Which bytes does the file header hold?"), ex("Which bytes does the file header hold now?")]
    assert [reason(v) for v in Judge(filter_set=GROUNDED).judge_many(near)] == ["kept", "kept"]
    assert [reason(v) for v in Judge(filter_set=GROUNDED, threshold=0.7).judge_many(near)] == ["kept", "similar"]


def test_a_resumed_judge_knows_the_pools_records_by_the_sets_key():
    pool = [{"instruction": "Summarize the passage.", "input": "Passage one.", "output": "One.", "metadata": {}}]
    judge = Judge(pool, filter_set=GROUNDED)
    again = [Example("Summarize the passage.", "Passage one.", "Other."), Example("Summarize the passage.", "Passage three.", "3.")]
    assert [reason(v) for v in judge.judge_many(again)] == ["duplicate", "kept"]


def test_judge_of_takes_the_pipelines_set_and_the_users_filters(tmp_path):
    (tmp_path / "mine.py").write_text("def no_rule(ex):\n    return 'rule' if ex.instruction.startswith('Rule') else None\n",
                                      encoding="utf-8")
    options = SimpleNamespace(similarity_threshold=None, decontaminate=None, filter=f"{tmp_path / 'mine.py'}:no_rule")
    judge = judge_of([], options, filter_set=COVERAGE)
    assert [reason(v) for v in judge.judge_many(SPEC)] == ["kept", "rule", "rule", "kept", "kept"]
    alpaca = judge_of(SEEDS, SimpleNamespace(similarity_threshold=0.7, decontaminate=None, filter=None))
    assert [reason(v) for v in alpaca.judge_many(SPEC[:1] + BATCH[:2])] == ["blacklist", "kept", "similar"]  # "file"
