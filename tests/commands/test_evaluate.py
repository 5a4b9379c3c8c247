"""Tests for self_instruct.evaluate and self_instruct.evaluation.metrics.

Endpoint systems and the judge are models behind the fake OpenAI server (tests/fake_openai.py):
"reader" answers a planted question only when the fact is in its prompt (so retrieval shows),
"judge" grades by whether the reference is in the answer. The slow tests build a tiny Llama,
fine-tune a LoRA adapter on the planted facts with self_instruct.train, and compare them.
"""
import base64
import importlib.util
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

os.environ["HF_HUB_OFFLINE"] = "1"  # before transformers is imported: nothing may reach a hub

import pytest

from self_instruct import evaluate
from self_instruct.evaluation import grading, questions as question_sets, systems
from self_instruct.evaluation import metrics
from self_instruct.errors import ConfigError
from planted import PARAPHRASES, QUESTIONS, write_documents

REPO = Path(__file__).resolve().parents[2]
FACTS = {q["question"]: q["answer"] for q in QUESTIONS}


def reader_and_judge(prompt, body):
    """The fake server's models: a reader that knows only what its prompt says, and a judge."""
    if body["model"] == "judge":
        answer = prompt.split("Answer to grade:", 1)[1].split("\n", 1)[0]
        reference = prompt.split("Reference answer:", 1)[1].split("\n", 1)[0]
        verdict = "correct" if metrics.normalize_answer(reference) in metrics.normalize_answer(answer) else "wrong"
        return f'{{"verdict": "{verdict}", "reason": "compared with the reference"}}'
    question = next(q for q in FACTS if q in prompt)
    fact = FACTS[question]
    # The reader finds the fact when its prompt, beside the question, holds the answer's last word.
    key = metrics.normalize_answer(fact).split()[-1]
    return fact if key in metrics.normalize_answer(prompt.replace(question, "")).split() else "I do not know."


def write_questions(path, questions=QUESTIONS):
    path.write_text("".join(json.dumps(q) + "\n" for q in questions))
    return path


def run_cli(args, capsys=None):
    evaluate.cli([str(a) for a in args])
    return capsys.readouterr() if capsys else None


@pytest.fixture
def study(tmp_path, fake_server):
    """Two systems, with and without retrieval over the planted documents (the [docs] and [eval]
    extras read and rank them), and a judge."""
    pytest.importorskip("bm25s")
    pytest.importorskip("markdown_it")
    fake_server.reply_fn = reader_and_judge
    docs = write_documents(tmp_path / "docs")
    questions = write_questions(tmp_path / "questions.jsonl")
    url = fake_server.base_url
    args = ["--questions", questions, "--docs", docs, "--retrieval", "bm25", "--chunk_tokens", 25, "--chunk_overlap", 5,
            "--system", f"base=openai:reader@{url}", f"base+rag=openai:reader@{url}",
            "--judge", f"openai:judge@{url}", "--output_dir", tmp_path / "out", "--quiet"]
    return {"args": args, "out": tmp_path / "out", "server": fake_server, "tmp": tmp_path}


def answers(out):
    return [json.loads(line) for line in (out / "answers.jsonl").read_text().splitlines()]


# --------------------------------------------------------------------------- metrics


def test_reference_metrics():
    assert metrics.score_answer("The winter moon pear.", "the Winter Moon pear") == {
        "exact_match": 1.0, "f1": 1.0, "rouge_l": 1.0}
    scores = metrics.score_answer("Nineteen days, I think.", "nineteen days")
    assert scores["exact_match"] == 0.0
    assert scores["f1"] == pytest.approx(2 * (2 / 4) * 1 / (2 / 4 + 1))
    assert scores["rouge_l"] == pytest.approx(2 * (2 / 4) * 1 / (2 / 4 + 1))  # LCS 2 of 4 and 2 tokens
    assert metrics.score_answer("", "beech logs") == {"exact_match": 0.0, "f1": 0.0, "rouge_l": 0.0}


def test_bootstrap_interval_brackets_the_mean_and_is_seeded():
    values = [1.0] * 6 + [0.0] * 4
    mean, low, high = metrics.bootstrap_interval(values)
    assert mean == 0.6 and 0.2 <= low < 0.6 < high <= 0.9
    assert metrics.bootstrap_interval(values) == (mean, low, high)
    wide = metrics.bootstrap_interval([1.0, 0.0])
    assert wide[1] == 0.0 and wide[2] == 1.0


@pytest.mark.parametrize("reply, verdict", [
    ('{"verdict": "correct", "reason": "Same city."}', {"verdict": "correct", "reason": "Same city."}),
    ('Here it is:\n{"verdict": "Partly",\n "reason": "Right city,\nwrong year."}\nDone.',
     {"verdict": "partly", "reason": "Right city, wrong year."}),
    ('{"verdict": "WRONG"}', {"verdict": "wrong", "reason": ""}),
    ('{"verdict": "maybe", "reason": "?"}', None),
    ("The answer is correct.", None),
    ('{"verdict": "correct", "reason": ', None),
])
def test_judge_replies_are_read_as_json_or_refused(reply, verdict):
    assert grading.parse_grade(reply) == verdict


# --------------------------------------------------------------------------- the study, with endpoints


def test_table_rows_columns_judge_and_retrieval(study, capsys):
    printed = run_cli(study["args"], capsys).out
    out = study["out"]
    results = json.loads((out / "results.json").read_text())
    assert [row["name"] for row in results["systems"]] == ["base", "base+rag"]
    assert results["metrics"] == ["exact_match", "f1", "rouge_l", "judge"]
    records = answers(out)
    assert sorted((r["system"], r["id"]) for r in records) == sorted(
        (system, i) for system in ("base", "base+rag") for i in range(len(QUESTIONS)))

    # Without retrieval the reader knows nothing; with it, exactly the questions whose snippets hold the fact.
    base, rag = ([r for r in records if r["system"] == name] for name in ("base", "base+rag"))
    assert all(r["answer"] == "I do not know." and r["snippets"] == [] for r in base)
    assert all(1 <= len(r["snippets"]) <= 3 for r in rag)
    found = [r for r in rag if r["answer"] == r["reference"]]
    assert 0 < len(found) < len(rag)
    for r in rag:
        assert r["judge"]["verdict"] == ("correct" if r in found else "wrong") and r["judge"]["reason"]
        assert r["scores"]["judge"] == r["scores"]["exact_match"]
    row = results["systems"][1]
    assert row["answered"] == len(QUESTIONS)
    assert row["metrics"]["exact_match"]["mean"] == pytest.approx(len(found) / len(rag))
    assert row["metrics"]["judge"]["low"] <= row["metrics"]["judge"]["mean"] <= row["metrics"]["judge"]["high"]
    assert results["systems"][0]["metrics"]["judge"]["mean"] == 0.0

    # The table: printed and in results.md, a row per system and a column per metric.
    table = [line for line in (out / "results.md").read_text().splitlines() if line.startswith("|")]
    assert table[0] == "| system | answered | exact_match | f1 | rouge_l | judge |"
    assert [line.split("|")[1].strip() for line in table[2:]] == ["base", "base+rag"]
    assert re.search(r"\| base\+rag \| 15/15 \| \d\.\d{3} \[\d\.\d{3}, \d\.\d{3}\] \|", table[3])
    assert "| base+rag | 15/15 |" in printed

    retrieval = json.loads((out / "retrieval.json").read_text())
    assert retrieval["k"] == 3 and retrieval["questions"] == len(QUESTIONS) and 0 < retrieval["hit_at_k"] <= 1


@pytest.mark.skipif(importlib.util.find_spec("matplotlib") is None, reason="the report needs the [export] extra")
def test_the_evaluation_writes_a_report_with_a_bar_per_system(study):
    run_cli(study["args"])
    page = (study["out"] / "report.html").read_text()
    assert page.count("<img") == 1 and "data:image/png;base64," in page
    assert "hit@3" in page and "15 questions" in page
    png = base64.b64decode(page.split("data:image/png;base64,", 1)[1].split('"', 1)[0])
    assert png.startswith(b"\x89PNG") and len(png) > 5000


def test_every_system_gets_the_same_prompt_layout(study):
    run_cli(study["args"])
    prompts = [r["prompt"] for r in study["server"].requests if r["model"] == "reader"]
    question = PARAPHRASES[0]["question"]
    plain, with_snippets = [p for p in prompts if question in p]
    instruction = f"{systems.SYSTEM_MESSAGE}\n\n{question}"
    # The training templates: system message and question as the instruction, snippets as the input.
    assert plain == (REPO / "prompts" / "train_no_input.txt").read_text().replace("{instruction}", instruction)
    snippets = next(r["snippets"] for r in answers(study["out"]) if r["system"] == "base+rag" and r["question"] == question)
    context = "\n\n".join(f"[{s['rank']}] {s['text']}" for s in snippets)
    assert with_snippets == (REPO / "prompts" / "train_with_input.txt").read_text().replace(
        "{instruction}", instruction).replace("{input}", context)
    for request in study["server"].requests:
        assert request.get("temperature") == 0.0


def test_chat_layout_sends_the_same_text_as_one_user_turn(study):
    run_cli(study["args"] + ["--prompt_layout", "chat"])
    chats = [r["messages"] for r in study["server"].requests if r["model"] == "reader"]
    assert all(len(m) == 1 and m[0]["role"] == "user" for m in chats)
    question = PARAPHRASES[0]["question"]
    plain, with_snippets = [m[0]["content"] for m in chats if question in m[0]["content"]]
    assert plain == f"{systems.SYSTEM_MESSAGE}\n\nQuestion: {question}"
    snippets = next(r["snippets"] for r in answers(study["out"]) if r["system"] == "base+rag" and r["question"] == question)
    context = "\n\n".join(f"[{s['rank']}] {s['text']}" for s in snippets)
    assert with_snippets == f"{systems.SYSTEM_MESSAGE}\n\nContext:\n{context}\n\nQuestion: {question}"


def test_rerun_sends_nothing_and_the_judge_cache_survives_new_answers(study):
    run_cli(study["args"])
    server, out = study["server"], study["out"]
    sent = len(server.requests)
    first = (out / "results.json").read_text()
    run_cli(study["args"])
    assert len(server.requests) == sent
    assert (out / "results.json").read_text() == first

    shutil.rmtree(out / "answers")  # answers asked again, verdicts from the grades the judge gave
    run_cli(study["args"])
    asked = server.requests[sent:]
    assert len(asked) == 2 * len(QUESTIONS) and all(r["model"] == "reader" for r in asked)
    assert (out / "results.json").read_text() == first


def test_a_judge_reply_without_a_verdict_is_asked_again_on_rerun(study, capsys):
    study["server"].reply_fn = lambda prompt, body: "Looks fine to me." if body["model"] == "judge" \
        else reader_and_judge(prompt, body)
    err = run_cli(study["args"], capsys).err
    assert all("judge" not in r["scores"] for r in answers(study["out"]))
    assert "the judge gave no usable verdict for 30 answers; rerun to ask again" in err

    study["server"].reply_fn = reader_and_judge
    sent = len(study["server"].requests)
    run_cli(study["args"])
    asked = study["server"].requests[sent:]
    distinct = {(r["question"], r["answer"]) for r in answers(study["out"])}  # equal answers are graded once
    assert len(asked) == len(distinct) < 2 * len(QUESTIONS) and all(r["model"] == "judge" for r in asked)
    assert all("judge" in r["scores"] for r in answers(study["out"]))


def test_budget_stops_and_a_rerun_goes_on(study):
    run_cli(study["args"] + ["--batch_size", 4, "--max_requests", 8])
    out = study["out"]
    results = json.loads((out / "results.json").read_text())
    assert results["stopped_by"] == "max_requests" and len(answers(out)) == 8
    assert "Stopped by max_requests" in (out / "results.md").read_text()
    assert json.loads((out / "state.json").read_text())["requests"] == 8

    run_cli(study["args"] + ["--batch_size", 4, "--max_requests", 1000])
    results = json.loads((out / "results.json").read_text())
    assert results["stopped_by"] is None and len(answers(out)) == 2 * len(QUESTIONS)
    assert all("judge" in r for r in answers(out))


def pooled_answers(out):
    """Each system's answers as its stage of the run has them on disk, by system."""
    return {path.parent.name: path.read_bytes() for path in sorted((out / "answers").glob("*/generated.jsonl"))}


def committed_answers(out):
    """Each system's answers up to its last commit (what a kill cannot take back), by system."""
    committed = {}
    for name, data in pooled_answers(out).items():
        log = (out / "answers" / name / "commits.jsonl").read_bytes()
        commits = log[:log.rfind(b"\n") + 1].splitlines()  # a kill may tear the last commit line
        committed[name] = data[:json.loads(commits[-1])["generated.jsonl"]] if commits else b""
    return committed


def test_resume_after_kill(tmp_path, fake_server):
    """A killed evaluation, rerun, asks only what was not yet answered."""
    fake_server.latency = 0.2
    fake_server.reply_fn = lambda prompt, body: "yes"
    questions = write_questions(tmp_path / "q.jsonl", [{"question": f"Question {i}?", "answer": "yes"} for i in range(24)])
    out = tmp_path / "out"
    url = fake_server.base_url
    command = [sys.executable, "-m", "self_instruct.evaluate", "--questions", str(questions), "--output_dir", str(out),
               "--system", f"a=openai:m@{url}", f"b=openai:m@{url}", "--batch_size", "2", "--quiet"]
    run = subprocess.Popen(command, cwd=REPO)
    try:
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline and sum(p.count(b"\n") for p in pooled_answers(out).values()) < 6:
            time.sleep(0.05)
    finally:
        run.send_signal(signal.SIGKILL)
        run.wait()
    before = committed_answers(out)
    assert sum(p.count(b"\n") for p in before.values()) < 48

    subprocess.run(command, cwd=REPO, check=True, timeout=300)
    after = answers(out)
    assert sorted((r["system"], r["id"]) for r in after) == sorted((s, i) for s in "ab" for i in range(24))  # each once
    assert all(pooled_answers(out)[name].startswith(data) for name, data in before.items())  # kept as they were
    # Asked again: only what was in flight at the kill (one batch of 2), beside the 48 answers.
    assert 48 <= len(fake_server.requests) <= 50


# --------------------------------------------------------------------------- bad input


@pytest.mark.parametrize("text, message", [
    ('{"question": "Q?", "answer": "A"}\n{"question": "Q2?"}\n', 'q.jsonl:2: field "answer" is missing'),
    ('{"question": "Q?", "answer": 3}\n', 'q.jsonl:1: field "answer" must be a non-empty string (got 3)'),
    ('{"question": "", "answer": "A"}\n', 'q.jsonl:1: field "question" must be a non-empty string (got "")'),
    ('{"question": "Q?", "answer": "A", "source": ["a.md"]}\n', 'q.jsonl:1: field "source" must be a non-empty string'),
    ('{"question": "Q?", "answer": "A"}\n{"question": \n', "q.jsonl:2: not valid JSON"),
    ("\n", "q.jsonl: no questions"),
])
def test_bad_question_file_is_one_line_and_writes_nothing(tmp_path, capsys, text, message):
    (tmp_path / "q.jsonl").write_text(text)
    with pytest.raises(SystemExit) as exit:
        run_cli(["--questions", tmp_path / "q.jsonl", "--system", "a=openai:m@http://127.0.0.1:9/v1",
                 "--output_dir", tmp_path / "out"])
    err = capsys.readouterr().err
    assert exit.value.code == 2 and len(err.splitlines()) == 1
    assert err.startswith(f"self_instruct: error: {tmp_path}/{message}")
    assert not (tmp_path / "out").exists()


def test_chunk_overlap_must_be_below_the_chunk_size(tmp_path, capsys):
    with pytest.raises(SystemExit):
        run_cli(["--questions", write_questions(tmp_path / "q.jsonl"), "--output_dir", tmp_path / "out",
                 "--docs", write_documents(tmp_path / "docs"), "--chunk_tokens", 40,
                 "--system", "a+rag=openai:m@http://127.0.0.1:9/v1"])
    assert capsys.readouterr().err == ("self_instruct: error: --chunk_overlap must be from 0 to below "
                                       "--chunk_tokens (40) (got 50)\n")
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize("systems, message", [
    (["base"], "--system base: expected NAME=hf:PATH"),
    (["base=gguf:model.gguf"], "--system base=gguf:model.gguf: the model must be hf:PATH"),
    (["base=hf:/no/such/model"], "--system base=hf:/no/such/model: /no/such/model is not a model directory"),
    (["a=openai:m@http://x/v1", "a=openai:n@http://x/v1"], "--system a is given twice"),
    (["a+rag=openai:m@http://x/v1"], "--system a+rag retrieves from documents: pass --docs"),
    ([], "give at least one --system"),
])
def test_bad_system_specs_are_one_line(tmp_path, capsys, systems, message):
    questions = write_questions(tmp_path / "q.jsonl")
    with pytest.raises(SystemExit) as exit:
        run_cli(["--questions", questions, "--output_dir", tmp_path / "out", "--system", *systems])
    err = capsys.readouterr().err
    assert exit.value.code == 2 and err.splitlines() == [f"self_instruct: error: {err.split('error: ', 1)[1].strip()}"]
    assert message in err
    assert not (tmp_path / "out").exists()


def test_unreachable_server_or_refused_key_stops_before_anything_is_written(tmp_path, capsys):
    questions = write_questions(tmp_path / "q.jsonl")
    with pytest.raises(SystemExit) as exit:
        run_cli(["--questions", questions, "--output_dir", tmp_path / "out", "--system", "a=openai:m@http://127.0.0.1:9/v1"])
    assert exit.value.code == 2
    assert capsys.readouterr().err == ("self_instruct: error: --system a: the server at http://127.0.0.1:9/v1 "
                                       "cannot be reached: start it or fix the URL\n")

    from fake_openai import FakeOpenAI

    server = FakeOpenAI(api_key="sk-right-key").start()
    try:
        with pytest.raises(SystemExit):
            run_cli(["--questions", questions, "--output_dir", tmp_path / "out", "--api_key", "sk-wrong-key",
                     "--system", f"a=openai:m@{server.base_url}", "--judge", f"openai:j@{server.base_url}"])
    finally:
        server.stop()
    err = capsys.readouterr().err
    assert "--system a: the server at" in err and "refused the API key (401)" in err and "sk-wrong-key" not in err
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize("name,text,message", [
    ("blank.txt", "  \n", "the documents hold no text to retrieve from"),
    ("notes.xyz", "Rivers run.\n", "no readable documents"),
])
def test_documents_that_cannot_be_read_are_refused_before_anything_is_written(tmp_path, capsys, fake_server,
                                                                             name, text, message):
    questions = write_questions(tmp_path / "q.jsonl")
    (tmp_path / "docs").mkdir()
    (tmp_path / "docs" / name).write_text(text, encoding="utf-8")
    with pytest.raises(SystemExit) as exit:
        run_cli(["--questions", questions, "--output_dir", tmp_path / "out", "--docs", tmp_path / "docs",
                 "--system", f"a+rag=openai:m@{fake_server.base_url}"])
    assert exit.value.code == 2
    assert message in capsys.readouterr().err
    assert not (tmp_path / "out").exists() and not fake_server.requests


def test_changed_settings_are_refused_unless_overwrite(study, capsys):
    run_cli(study["args"])
    with pytest.raises(SystemExit):
        run_cli(study["args"] + ["--system_message", "Answer in French."], capsys)
    assert "holds answers made with other settings (system_message)" in capsys.readouterr().err
    run_cli(study["args"] + ["--system_message", "Answer in French.", "--overwrite"])
    assert all(r["answer"] for r in answers(study["out"]))


def test_list_flags_gather_words_and_repeats():
    assert evaluate.join_list_flags(["--docs", "a.md", "b/", "--system", "x=hf:m", "--docs=c.md", "--k", "2"]) == [
        "--k", "2", "--docs", "a.md\nb/\nc.md", "--system", "x=hf:m"]


# --------------------------------------------------------------------------- holdout


def test_holdout_questions_are_the_records_the_run_held_out(tmp_path, study):
    records = [{"instruction": f"What is fact {i}?", "input": "", "output": f"Fact {i}.",
                "metadata": {"round": 1, "source": "facts.md", **({"holdout": True} if i % 4 == 0 else {})}}
               for i in range(12)]
    run = tmp_path / "run"
    run.mkdir()
    (run / "generated.jsonl").write_text("".join(json.dumps(r) + "\n" for r in records))
    held = question_sets.holdout_questions(run)
    assert [(q.question, q.answer, q.source) for q in held] == [
        (f"What is fact {i}?", f"Fact {i}.", "facts.md") for i in (0, 4, 8)]

    study["server"].reply_fn = lambda prompt, body: "Fact 4."
    run_cli(["--holdout", run, "--system", f"m=openai:m@{study['server'].base_url}", "--output_dir", tmp_path / "ev", "--quiet"])
    assert [r["question"] for r in answers(tmp_path / "ev")] == [q.question for q in held]

    export = pytest.importorskip("self_instruct.export")  # on main beside this module
    exported, skipped = export.read_inputs([run])
    assert skipped == len(held)
    assert not {r["instruction"] for r in exported} & {q.question for q in held}


def test_a_run_without_holdout_is_a_clear_error(tmp_path):
    (tmp_path / "generated.jsonl").write_text(json.dumps({"instruction": "Q?", "input": "", "output": "A."}) + "\n")
    with pytest.raises(ConfigError, match="no record is held out"):
        question_sets.holdout_questions(tmp_path)


# --------------------------------------------------------------------------- local models (torch)


def planted_tokenizer(texts):
    """A byte-level BPE trained on the planted texts (every printable ASCII character included),
    with BOS and EOS and no pad token, as tests/test_train.py builds its tokenizer."""
    transformers = pytest.importorskip("transformers")
    import string

    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers

    bpe = Tokenizer(models.BPE())
    bpe.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    bpe.decoder = decoders.ByteLevel()
    bpe.train_from_iterator([string.printable, *texts], trainers.BpeTrainer(vocab_size=128, min_frequency=2,
                                                                         special_tokens=["<s>", "</s>"]))
    bpe.post_processor = processors.TemplateProcessing(single="<s> $A", special_tokens=[("<s>", bpe.token_to_id("<s>"))])
    return transformers.PreTrainedTokenizerFast(tokenizer_object=bpe, bos_token="<s>", eos_token="</s>")


@pytest.fixture(scope="module")
def tiny_models(tmp_path_factory):
    """A tiny Llama built here and a LoRA adapter that self_instruct.train fine-tunes on the
    planted facts (question as the instruction, in short templates)."""
    torch = pytest.importorskip("torch")
    pytest.importorskip("peft")
    from self_instruct import train
    from tiny_models import tiny_llama

    root = tmp_path_factory.mktemp("tiny")
    records = [{"instruction": q["question"], "input": "", "output": q["answer"]} for q in PARAPHRASES]
    tokenizer = planted_tokenizer([f"{r['instruction']} {r['output']}" for r in records])
    tiny_llama(tokenizer).save_pretrained(root / "base")
    tokenizer.save_pretrained(root / "base")
    (root / "with_input.txt").write_text("### Instruction:\n{instruction}\n\n### Input:\n{input}\n\n### Response:\n")
    (root / "no_input.txt").write_text("### Instruction:\n{instruction}\n\n### Response:\n")
    (root / "facts.jsonl").write_text("".join(json.dumps(r) + "\n" for r in records))
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # the tiny matrices gain nothing from a second thread (see test_train)
    try:
        train.main(str(root / "base"), str(root / "facts.jsonl"), str(root / "lora"), mode="lora", max_steps=60,
                   per_device_train_batch_size=len(records), gradient_accumulation_steps=1, learning_rate=1e-2,
                   warmup_ratio=0.1, model_max_length=256, logging_steps=10, lora_r=16, lora_alpha=32,
                   prompt_with_input=str(root / "with_input.txt"), prompt_no_input=str(root / "no_input.txt"))
        yield root
    finally:
        torch.set_num_threads(threads)


@pytest.mark.slow
def test_base_vs_lora_fine_tune_on_planted_facts(tiny_models, tmp_path, capsys):
    root = tiny_models
    questions = write_questions(tmp_path / "q.jsonl", PARAPHRASES)
    write_documents(tmp_path / "docs")
    run_cli(["--questions", questions, "--docs", tmp_path / "docs", "--retrieval", "bm25", "--k", 1,
             "--chunk_tokens", 25, "--chunk_overlap", 5,
             "--system_message", "", "--prompt_with_input", root / "with_input.txt", "--prompt_no_input", root / "no_input.txt",
             "--max_new_tokens", 16, "--batch_size", 4, "--output_dir", tmp_path / "out", "--quiet",
             "--system", f"base=hf:{root / 'base'}", f"tuned=hf:{root / 'base'}:{root / 'lora'}",
             f"tuned+rag=hf:{root / 'base'}:{root / 'lora'}"])
    results = json.loads((tmp_path / "out" / "results.json").read_text())
    rows = {row["name"]: row for row in results["systems"]}
    assert list(rows) == ["base", "tuned", "tuned+rag"] and all(r["answered"] == len(PARAPHRASES) for r in rows.values())
    # The adapter learned the facts the base model never saw (most of them word for word).
    assert rows["base"]["metrics"]["exact_match"]["mean"] == 0.0
    assert rows["tuned"]["metrics"]["f1"]["mean"] >= 0.7 > rows["base"]["metrics"]["f1"]["mean"]
    rag = [r for r in answers(tmp_path / "out") if r["system"] == "tuned+rag"]
    assert all(len(r["snippets"]) == 1 for r in rag)


@pytest.mark.slow
def test_batched_generation_equals_one_at_a_time(tiny_models):

    from self_instruct.types import Decoding

    root = tiny_models
    model = systems.LocalModel(str(root / "base"), str(root / "lora"), "template")
    templates = {"with_input": (root / "with_input.txt").read_text(), "no_input": (root / "no_input.txt").read_text()}
    prompts = [systems.build_prompt(q["question"], [], "template", "", templates) for q in PARAPHRASES[:4]]
    decoding = Decoding(max_tokens=12, temperature=0.0, stop=systems.TEMPLATE_STOP)
    together = model.generate(prompts, decoding)
    alone = [model.generate([p], decoding)[0] for p in prompts]
    assert [c.text for c in together] == [c.text for c in alone]
    assert [c.completion_tokens for c in together] == [c.completion_tokens for c in alone]
