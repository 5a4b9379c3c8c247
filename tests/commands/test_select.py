"""select: the judge ranking and its budget, the diversity walk, IFD's cache and batches, the
output records (metadata untouched, one `selection` entry) and bad input.

These tests need no model: a judge score is in the data, the diversity walk gets embeddings made
here, and the IFD cache is tested with a scorer whose numbers are worked out from the texts.
The tests with a real model (a tiny transformers Llama built here, the packaged MiniLM embedder,
the embedded GGUF) are in test_select_models.py, marked slow.
"""
import json
import math
import re
import zlib

import numpy as np
import pytest

from fake_openai import FakeOpenAI, _Handler

from self_instruct.select import cli, select_file
from self_instruct.selection.ifd import IFD, IFDCache, Scorer, fit, ifd_scores
from self_instruct.selection.pick import Verdict, walk


def write_jsonl(path, rows):
    path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    return path


def read_jsonl(path):
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines()]


def rated(i, score, **extra):
    record = {"instruction": f"Task number {i}: say something.", "input": "", "output": f"Answer {i}.",
              "metadata": {"owner": f"user-{i}", **({} if score is None else {"score": score})}}
    record.update(extra)
    return record


# --- judge ----------------------------------------------------------------------------------

def test_judge_keeps_the_highest_scores_ties_in_input_order(tmp_path):
    scores = [3, 5, None, 4, 5, 2, 4, None]
    data = write_jsonl(tmp_path / "scored.jsonl", [rated(i, s) for i, s in enumerate(scores)])
    result = select_file(data, tmp_path / "best.jsonl", by="judge", keep=4, quiet=True)
    kept = read_jsonl(tmp_path / "best.jsonl")
    # 5 (1), 5 (4), 4 (3), 4 (6): written in input order, ranked by score then position
    assert [r["metadata"]["owner"] for r in kept] == ["user-1", "user-3", "user-4", "user-6"]
    assert {r["metadata"]["owner"]: r["selection"]["rank"] for r in kept} == {"user-1": 1, "user-4": 2, "user-3": 3, "user-6": 4}
    dropped = read_jsonl(tmp_path / "best.dropped.jsonl")
    reasons = {r["metadata"]["owner"]: r["selection"]["dropped"] for r in dropped}
    assert reasons == {"user-0": "over_budget", "user-2": "unscored", "user-5": "over_budget", "user-7": "unscored"}
    assert dict(result.steps) == {"read": 8, "scored": 6, "kept": 4}


def test_unscored_records_can_rank_last_instead(tmp_path):
    data = write_jsonl(tmp_path / "scored.jsonl", [rated(0, None), rated(1, 2), rated(2, None), rated(3, 1)])
    select_file(data, tmp_path / "best.jsonl", by="judge", keep=3, unscored="last", quiet=True)
    kept = read_jsonl(tmp_path / "best.jsonl")
    assert [(r["metadata"]["owner"], r["selection"]["rank"]) for r in kept] == [("user-0", 3), ("user-1", 1), ("user-3", 2)]
    assert [r["selection"]["dropped"] for r in read_jsonl(tmp_path / "best.dropped.jsonl")] == ["over_budget"]


def test_records_pass_through_with_one_selection_entry_last(tmp_path):
    record = rated(0, 4, category="open_qa", provenance={"run": "r1"})
    data = write_jsonl(tmp_path / "scored.jsonl", [record])
    select_file(data, tmp_path / "best.json", by="judge", keep_fraction=1.0, quiet=True)
    kept = json.loads((tmp_path / "best.json").read_text())  # a JSON list, by OUTPUT's suffix
    assert list(kept[0]) == [*record, "selection"]
    assert {k: v for k, v in kept[0].items() if k != "selection"} == record
    assert kept[0]["selection"] == {"by": "judge", "score": 4, "rank": 1}
    # a second selection replaces the first one's entry rather than refusing it
    select_file(tmp_path / "best.json", tmp_path / "again.jsonl", by="judge", keep=1, quiet=True)
    assert read_jsonl(tmp_path / "again.jsonl")[0]["selection"] == {"by": "judge", "score": 4, "rank": 1}


def test_the_report_draws_the_funnel(tmp_path):
    pytest.importorskip("matplotlib")
    data = write_jsonl(tmp_path / "scored.jsonl", [rated(i, 1 + i % 5) for i in range(20)])
    result = select_file(data, tmp_path / "best.jsonl", by="judge", keep_fraction=0.25, quiet=True)
    page = result.report.read_text(encoding="utf-8")
    assert result.report == tmp_path / "best.report.html"
    assert "<h2>Funnel</h2>" in page and "<th>kept</th><td>5</td>" in page and "over_budget" in page
    assert page.count("data:image/png;base64,") == 2


# --- the diversity walk --------------------------------------------------------------------

def naive_walk(order, vectors, keep, threshold):
    """Deita's rule, one record at a time against every kept one."""
    unit = vectors / np.linalg.norm(vectors, axis=1, keepdims=True)
    kept = []
    for i in order:
        if len(kept) == keep:
            break
        if all(float(unit[i] @ unit[j]) <= threshold for j in kept):
            kept.append(i)
    return kept


@pytest.mark.parametrize("threshold", [0.2, 0.5, 0.9])
def test_the_diversity_walk_is_deitas_rule_across_chunks(threshold, monkeypatch):
    from self_instruct.selection import pick

    monkeypatch.setattr(pick, "CHUNK", 7)  # decisions span many chunks, and the budget ends mid-chunk
    rng = np.random.default_rng(0)
    centres = rng.normal(size=(12, 16))
    vectors = centres[rng.integers(0, 12, 300)] + 0.4 * rng.normal(size=(300, 16))  # clusters of near duplicates
    order = list(rng.permutation(300))
    verdicts = [Verdict() for _ in range(300)]
    walk(order, 40, verdicts, embed=lambda ids: vectors[ids], threshold=threshold)
    kept = sorted((v.rank, i) for i, v in enumerate(verdicts) if v.rank is not None)
    assert [i for _, i in kept] == naive_walk(order, vectors, 40, threshold)
    unit = vectors / np.linalg.norm(vectors, axis=1, keepdims=True)
    ids = [i for _, i in kept]
    sims = unit[ids] @ unit[ids].T
    assert (sims[~np.eye(len(ids), dtype=bool)] <= threshold + 1e-6).all()
    for i, v in enumerate(verdicts):
        assert (v.rank is None) == (v.reason is not None)
        if v.reason == "too_similar":
            assert v.extra["similarity"] > threshold and verdicts[v.extra["similar_to"]].rank is not None


def bag_of_words(text, dimensions=64):
    vector = np.zeros(dimensions)
    for word in re.findall(r"[a-z0-9]+", text.lower()):
        vector[zlib.crc32(word.encode()) % dimensions] += 1.0
    return vector


class _Embeddings(_Handler):
    """OpenAI's /v1/embeddings, each text a bag of its words."""

    def do_POST(self):
        body = json.loads(self.rfile.read(int(self.headers.get("Content-Length", 0))))
        data = [{"object": "embedding", "index": i, "embedding": bag_of_words(t).tolist()} for i, t in enumerate(body["input"])]
        self._json(200, {"object": "list", "data": data, "model": body["model"], "usage": {"prompt_tokens": 0, "total_tokens": 0}})


def test_diversity_through_an_embeddings_endpoint_never_shows_its_password(tmp_path, capsys):
    pytest.importorskip("matplotlib")
    server = FakeOpenAI()
    server.RequestHandlerClass = _Embeddings
    server.start()
    try:
        topics = ["apples and pears", "rivers in spring", "old stone bridges", "jazz records"]
        records = [rated(i, 5 - i % 3, instruction=f"Write about {topics[i % 4]} please, version {i}.")
                   for i in range(24)]
        data = write_jsonl(tmp_path / "scored.jsonl", records)
        url = server.base_url.replace("http://", "http://ann:s3cret@")
        cli([str(data), str(tmp_path / "best.jsonl"), "--by", "judge", "--keep", "10", "--diversity", "0.6",
             "--embedder", f"openai:bow@{url}", "--quiet"])
    finally:
        server.stop()
    kept = read_jsonl(tmp_path / "best.jsonl")
    vectors = np.array([bag_of_words(f"{r['instruction']}\n{r['output']}") for r in kept])
    unit = vectors / np.linalg.norm(vectors, axis=1, keepdims=True)
    sims = unit @ unit.T
    assert (sims[~np.eye(len(kept), dtype=bool)] <= 0.6 + 1e-6).all()
    dropped = read_jsonl(tmp_path / "best.dropped.jsonl")
    assert 0 < len(kept) < 10 and {r["selection"]["dropped"] for r in dropped} == {"too_similar"}
    written = "".join(p.read_text(encoding="utf-8") for p in tmp_path.iterdir()) + capsys.readouterr().err
    assert "s3cret" not in written and "ann:***@" in (tmp_path / "best.report.html").read_text(encoding="utf-8")


# --- IFD: the cache and its batches ------------------------------------------------------------

class CountingScorer(Scorer):
    """Characters as tokens; the NLL of an answer is a number worked out from the texts alone."""

    model_id, max_length, start = "counting", 64, 0

    def __init__(self):
        self.batches = []

    def encode(self, text):
        return [ord(c) for c in text]

    def mean_nll(self, pairs):
        self.batches.append(len(pairs))
        return [1.0 + (sum(prefix) % 7) / 10 + len(answer) / 100 for prefix, answer in pairs]


def test_each_distinct_record_is_scored_once_and_a_rerun_scores_none(tmp_path):
    texts = [(f"Task {i % 9}\n", f"answer {i % 9}") for i in range(20)] + [("Empty answer\n", "")]
    scorer = CountingScorer()
    first = ifd_scores(texts, scorer, IFDCache(tmp_path / "cache.jsonl", "counting", 64), batch_size=4)
    assert len(read_jsonl(tmp_path / "cache.jsonl")) == 10  # 9 distinct answers and the empty one
    assert scorer.batches == [8, 8, 2]  # two passes a record; the empty answer has none
    again = CountingScorer()
    assert ifd_scores(texts, again, IFDCache(tmp_path / "cache.jsonl", "counting", 64), batch_size=4) == first
    assert again.batches == []
    assert first[-1] is None and first[0] == first[9]
    # "Task 1\n" after the start token 0 against the start token alone; "answer 1" is 8 tokens
    conditioned, alone = 1.0 + (sum(map(ord, "Task 1\n")) % 7) / 10 + 0.08, 1.0 + 0.08
    assert (first[1].ppl_conditioned, first[1].ppl_alone) == (math.exp(conditioned), math.exp(alone))
    assert first[1].ifd == pytest.approx(math.exp(conditioned) / math.exp(alone), rel=1e-12)


def test_a_torn_cache_line_is_computed_again(tmp_path):
    texts = [(f"Task {i}\n", f"answer {i}") for i in range(6)]
    whole = ifd_scores(texts, CountingScorer(), IFDCache(tmp_path / "cache.jsonl", "counting", 64), batch_size=2)
    raw = (tmp_path / "cache.jsonl").read_bytes()
    (tmp_path / "cache.jsonl").write_bytes(raw[:-20])  # a kill in the middle of the last append
    scorer = CountingScorer()
    assert ifd_scores(texts, scorer, IFDCache(tmp_path / "cache.jsonl", "counting", 64), batch_size=2) == whole
    assert scorer.batches == [2]  # the torn record alone, as a batch of its own


def test_another_model_or_length_does_not_reuse_the_cache(tmp_path):
    cache = IFDCache(tmp_path / "cache.jsonl", "counting", 64)
    cache.put([(cache.key("Task\n", "answer"), IFD(2.0, 4.0, 0.5, 6))])
    assert IFDCache(tmp_path / "cache.jsonl", "counting", 64).get(cache.key("Task\n", "answer")) == IFD(2.0, 4.0, 0.5, 6)
    for other in (IFDCache(tmp_path / "cache.jsonl", "other-model", 64), IFDCache(tmp_path / "cache.jsonl", "counting", 32)):
        assert other.get(other.key("Task\n", "answer")) is False


def test_long_pairs_keep_the_answers_start_and_the_prompts_end():
    prompt, answer = list(range(100)), list(range(1000, 1100))
    p, a = fit(prompt, answer, 63)
    assert len(p) + len(a) == 63 and a == answer[:len(a)] and p == prompt[-len(p):] and len(a) >= 31


# --- bad input and flags ----------------------------------------------------------------------

BAD = {
    "not_an_object": (["[1, 2]"], ':2: expected a JSON object, got list'),
    "no_instruction": ([json.dumps({"output": "x"})], ':2: field "instruction" is missing'),
    "output_number": ([json.dumps({"instruction": "Say hi.", "output": 3})], ':2: field "output" must be a string (got number)'),
    "no_output_for_ifd": ([json.dumps({"instruction": "Say hi."})], ':2: field "output" is missing: IFD scores the answer'),
    "score_text": ([json.dumps(rated(1, "high"))], ':2: field "metadata.score" must be a number (got string)'),
    "metadata_list": ([json.dumps({"instruction": "Say hi.", "output": "hi", "metadata": []})],
                      ':2: field "metadata" must be an object (got list)'),
    "selection_taken": ([json.dumps(rated(1, 3, selection="mine"))], ':2: field "selection" is taken by the input'),
    "not_json": (['{"instruction": "Say hi.", "output": '], ":2: not valid JSON"),
}


@pytest.mark.parametrize("case", list(BAD))
def test_bad_records_are_one_line_exit_2_and_no_output(case, tmp_path, capsys):
    lines, message = BAD[case]
    data = tmp_path / "data.jsonl"
    data.write_text(json.dumps(rated(0, 4)) + "\n" + "\n".join(lines) + "\n", encoding="utf-8")
    by = "ifd" if case == "no_output_for_ifd" else "judge"
    with pytest.raises(SystemExit) as stop:
        cli([str(data), str(tmp_path / "best.jsonl"), "--by", by, "--keep", "1", "--quiet"])
    assert stop.value.code == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith(f"self_instruct: error: {data}{message}"), err
    assert sorted(p.name for p in tmp_path.iterdir()) == ["data.jsonl"]


@pytest.mark.parametrize("flags, message", [
    ([], "give one budget: --keep N or --keep_fraction F"),
    (["--keep", "3", "--keep_fraction", "0.1"], "give one budget"),
    (["--keep_fraction", "1.5"], "--keep_fraction must be in (0, 1] (got 1.5)"),
    (["--keep", "0"], "--keep must be a positive whole number (got 0)"),
    (["--keep", "3", "--by", "random"], "--by must be one of ifd, judge (got 'random')"),
    (["--keep", "3", "--diversity", "2"], "--diversity must be a cosine similarity from -1 to 1 (got 2)"),
    (["--keep", "3", "--dropped", "{data}"], "would overwrite the input"),
    (["--keep", "3", "--model", "m.gguf"], "--model is for --by ifd"),
    (["--keep", "3", "--embedder", "packaged"], "--embedder is for --diversity"),
    (["--keep", "3", "--report", "{out}"], "is the same file as OUTPUT"),
])
def test_bad_flags_name_the_flag(flags, message, tmp_path, capsys):
    data = write_jsonl(tmp_path / "data.jsonl", [rated(0, 4)])
    out = tmp_path / "best.jsonl"
    flags = [f.format(data=data, out=out) for f in flags]
    with pytest.raises(SystemExit) as stop:
        cli([str(data), str(out), "--by", "judge", *flags] if "--by" not in flags else [str(data), str(out), *flags])
    assert stop.value.code == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and message in err[0], err
    assert sorted(p.name for p in tmp_path.iterdir()) == ["data.jsonl"]
