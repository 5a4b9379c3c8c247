"""The documents pipeline: prompts, tolerant reply parsing, grounding verdicts, sentence windows,
and each mode's run_unit against a real teacher talking HTTP to the fake server."""
from __future__ import annotations

import asyncio
import json
import re

import pytest

from self_instruct.errors import ConfigError
from self_instruct.pipelines.documents import (
    CATEGORIES, DocumentSettings, DocumentsPipeline, categories_for, count_for, fill, find_json, load_document_template,
    meta_reference, parse_items, parse_verdicts, window_examples, window_ranges,
)
from self_instruct.sources.chunking import chunk_documents, split_sentences, word_counts
from self_instruct.sources.loaders import Document, Section, load_paths
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


def test_nothing_parses_from_prose_or_broken_json():
    assert parse_items("I cannot help with that.", ("question", "answer")) == ([], [])
    assert parse_items('[{"question": "Q?", "answer": "A', ("question", "answer")) == ([], [])
    assert find_json("[] {} [1, 2]") == [1, 2]


def test_verdicts_by_id_in_order_or_bare():
    assert parse_verdicts('[{"id": 2, "supported": "no"}, {"id": 1, "supported": true}]', 3) == [True, False, None]
    assert parse_verdicts("Verdicts:\n```\n[true, false]\n```", 2) == [True, False]
    assert parse_verdicts('{"results": [{"id": "1", "supported": "Yes"}]}', 1) == [True]
    assert parse_verdicts("all fine", 2) == [None, None]


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

def test_prompt_templates_fill_in_one_pass_and_name_missing_placeholders(tmp_path):
    assert fill('{"q": "..."} on {chunk} ({n})', chunk="{n}", n=2) == '{"q": "..."} on {n} (2)'
    for name in ("qa", "instruct", "backtranslate", "verify"):
        load_document_template(name)
    (tmp_path / "mine.txt").write_text("Questions about {chunk}", encoding="utf-8")
    with pytest.raises(ConfigError, match=r"mine.txt: the qa template must hold \{num_questions\}"):
        load_document_template("qa", tmp_path / "mine.txt")


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


def test_exact_window_pairs_and_the_heading_pair():
    text = "S1 one.\nS2 two. S3 three.\n\nS4 four. S5 five. S6 six. S7 seven."
    doc = Document("d.md", text, (Section(("Part", "Chapter"), 0, len(text)),))
    [section] = chunk_documents([doc], word_counts, size=None, overlap=0)
    examples = window_examples(section, 3)
    assert [(e.instruction, e.output, e.metadata["kind"]) for e in examples] == [
        ("S1 one.", "S2 two. S3 three.", "window"),
        ("S4 four.", "S5 five. S6 six. S7 seven.", "window"),  # S7 alone would have no output
        ("Part > Chapter", "S1 one. S2 two. S3 three.\n\nS4 four. S5 five. S6 six. S7 seven.", "heading"),
    ]
    assert [(e.metadata["start"], e.metadata["end"]) for e in examples[:2]] == [(0, 25), (27, len(text))]


def test_windows_over_a_document_place_every_body_sentence_in_one_pair(tmp_path):
    path = tmp_path / "garden.md"
    path.write_text(GARDEN, encoding="utf-8")
    docs, _ = load_paths([path])
    sections = chunk_documents(docs, word_counts, size=None, overlap=0)
    pipeline = DocumentsPipeline(sections, DocumentSettings(mode="windows", window=3))
    windows = []
    for i in range(len(sections)):
        result = asyncio.run(pipeline.run_unit(pipeline.unit(i), ask=None))  # windows never asks
        windows += [e for e in result.examples if e.metadata["kind"] == "window"]
    spans = [span for s in docs[0].sections for span in split_sentences(docs[0].text, s.start, s.end)]
    placed = [span for e in windows for span in spans if e.metadata["start"] <= span[0] and span[1] <= e.metadata["end"]]
    assert sorted(placed) == sorted(spans) and len(set(placed)) == len(placed)


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
    assert pipeline.unit(0).requests == 1
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
    assert pipeline.unit(0).requests == 1
    result = asyncio.run(pipeline.run_unit(pipeline.unit(0), ask))
    [example] = result.examples
    assert (example.instruction, example.input, example.output) == ("How should I look after tomato plants?", "", chunks[0].text)
    assert len(prompts) == 1


def test_a_failed_check_rejects_as_unverified(fake_server, tmp_path):
    fake_server.reply_fn = scripted_teacher(lambda pairs: pairs, moon=False)
    fake_server.script(["ok", "500"])
    pipeline = DocumentsPipeline(garden_chunks(tmp_path), DocumentSettings(mode="qa"))
    ask, _ = make_ask(fake_server)
    result = asyncio.run(pipeline.run_unit(pipeline.unit(0), ask))
    assert result.examples == [] and {r.reason for r in result.rejections} == {"unverified"}
