"""The whole loop against the fake OpenAI server on loopback (completions and chat)."""
import importlib.util
import json
import random
import re
import os
import subprocess
import sys
from pathlib import Path

import pytest
from rouge_score import rouge_scorer

from fake_openai import FakeOpenAI, make_task, self_instruct_reply
from self_instruct.teachers.fake import FakeTeacher
from self_instruct.core.filters import first_rejection
from self_instruct.generate import generate
from self_instruct.core.seeds import load_seed_tasks
from self_instruct.types import Example

REPO = Path(__file__).resolve().parents[2]
SCORER = rouge_scorer.RougeScorer(["rougeL"], use_stemmer=False)


def read_jsonl(path):
    return [json.loads(line) for line in Path(path).read_text().splitlines()]


def assert_valid_pool(out: Path, target: int, seeds_path=None):
    records = read_jsonl(out / "generated.jsonl")
    assert len(records) == target
    instructions = [r["instruction"] for r in records]
    assert len(set(instructions)) == target
    for r in records:
        assert first_rejection(Example(r["instruction"], r["input"], r["output"])) is None
    # The reference decision: no kept instruction above 0.7 against a seed or an earlier kept one.
    seeds = [t.instruction for t in load_seed_tasks(seeds_path)]
    for i, inst in enumerate(instructions):
        for other in seeds + instructions[:i]:
            assert SCORER.score(other, inst)["rougeL"].fmeasure <= 0.7, (inst, other)
    regen = json.loads((out / "regen.json").read_text())
    assert [r["instruction"] for r in regen] == instructions
    assert set(regen[0]) == {"instruction", "input", "output", "most_similar_instructions", "avg_similarity_score"}
    return records


@pytest.mark.parametrize("api", ["completions", "chat"])
def test_loop_reaches_exact_target(fake_server, tmp_path, api):
    out = tmp_path / "out"
    result = generate(str(out), base_url=fake_server.base_url, model_name="fake-model", api=api,
                      num_instructions_to_generate=60, request_batch_size=4, quiet=True)
    assert result.kept == 60 and result.stopped_by == "target"
    records = assert_valid_pool(out, 60)
    assert all(r["provenance"]["model"] == "fake-model" for r in records)
    # Requests carry Alpaca's decoding and our stop sequence.
    body = fake_server.requests[0]
    assert body["temperature"] == 1.0 and body["top_p"] == 1.0 and body["stop"] == ["21. Instruction:"]
    assert ("messages" in body) == (api == "chat")
    run = json.loads((out / "run.json").read_text())
    assert run["api"] == api and run["num_instructions_to_generate"] == 60


def test_similarity_fields_match_rouge_score(fake_server, tmp_path):
    out = tmp_path / "out"
    generate(str(out), base_url=fake_server.base_url, model_name="m", num_instructions_to_generate=15, quiet=True)
    records = read_jsonl(out / "generated.jsonl")
    seeds = [t.instruction for t in load_seed_tasks()]
    for i, r in enumerate(records):
        pool = seeds + [x["instruction"] for x in records[:i]]
        scores = [SCORER.score(r["instruction"], p)["rougeL"].fmeasure for p in pool]
        assert r["avg_similarity_score"] == sum(scores) / len(scores) or abs(r["avg_similarity_score"] - sum(scores) / len(scores)) < 1e-12
        best = sorted(scores, reverse=True)[:10]
        assert sorted(r["most_similar_instructions"].values(), reverse=True) == best[: len(r["most_similar_instructions"])]
        for text, score in r["most_similar_instructions"].items():
            assert SCORER.score(r["instruction"], text)["rougeL"].fmeasure == score


def test_resume_grows_to_new_target_without_duplicates(fake_server, tmp_path):
    out = tmp_path / "out"
    generate(str(out), base_url=fake_server.base_url, model_name="m", num_instructions_to_generate=30, quiet=True)
    first = read_jsonl(out / "generated.jsonl")
    result = generate(str(out), base_url=fake_server.base_url, model_name="m", num_instructions_to_generate=70, quiet=True)
    assert result.kept == 70
    records = assert_valid_pool(out, 70)
    assert records[:30] == first  # append-only: earlier records untouched
    # Rounds continue from where the first run stopped rather than replaying prompt samples.
    rounds = [r["provenance"]["unit"] for r in records]
    assert rounds == sorted(rounds) and rounds[30] > rounds[29] - 1


def test_resume_at_target_makes_no_request(fake_server, tmp_path):
    out = tmp_path / "out"
    generate(str(out), base_url=fake_server.base_url, model_name="m", num_instructions_to_generate=10, quiet=True)
    sent = len(fake_server.requests)
    (out / "regen.json").unlink()
    generate(str(out), base_url=fake_server.base_url, model_name="m", num_instructions_to_generate=10, quiet=True)
    assert len(fake_server.requests) == sent
    assert len(json.loads((out / "regen.json").read_text())) == 10


def test_same_seed_same_prompts(tmp_path):
    prompts = []
    for run in range(2):
        server = FakeOpenAI(seed=7).start()
        try:
            generate(str(tmp_path / f"o{run}"), base_url=server.base_url, model_name="m", num_instructions_to_generate=20,
                     request_batch_size=3, max_concurrency=1, seed=5, quiet=True)
            prompts.append([b["prompt"] for b in server.requests])
        finally:
            server.stop()
    # A round cancelled at the target may or may not have reached the server: compare what both sent.
    n = min(map(len, prompts))
    assert n >= 3 and prompts[0][:n] == prompts[1][:n]


def test_machine_instructions_mixed_into_prompts(fake_server, tmp_path):
    fake_server.tasks_per_reply = 2  # many rounds, so late prompts see a grown pool
    out = tmp_path / "out"
    generate(str(out), base_url=fake_server.base_url, model_name="m", num_instructions_to_generate=40,
             num_machine_instructions=2, num_prompt_instructions=4, request_batch_size=2, quiet=True)
    kept = {r["instruction"] for r in read_jsonl(out / "generated.jsonl")}
    late_prompt = fake_server.requests[-1]["prompt"]
    shown = [line.split("Instruction: ", 1)[1] for line in late_prompt.splitlines() if ". Instruction: " in line]
    assert len(shown) == 4 and sum(s in kept for s in shown) == 2
    assert "###\n5. Instruction:" in late_prompt


def test_concurrency_is_bounded(tmp_path):
    server = FakeOpenAI(latency=0.05).start()
    try:
        generate(str(tmp_path / "o"), base_url=server.base_url, model_name="m", num_instructions_to_generate=80,
                 request_batch_size=6, max_concurrency=3, quiet=True)
        assert server.max_in_flight == 3
    finally:
        server.stop()


def test_rejected_file_explains_every_drop(fake_server, tmp_path):
    fake_server.script(["zero_tasks", "wrong_numbering", "length"])
    out = tmp_path / "out"
    generate(str(out), base_url=fake_server.base_url, model_name="m", num_instructions_to_generate=30, quiet=True)
    reasons = {r["reason"] for r in read_jsonl(out / "rejected.jsonl")}
    assert {"missing_field", "wrong_number", "truncated"} <= reasons
    state = json.loads((out / "state.json").read_text())
    assert state["kept"] == 30 and sum(state["rejects"].values()) == len(read_jsonl(out / "rejected.jsonl"))


def test_dry_run_prints_one_prompt_and_calls_nothing(tmp_path):
    env = dict(os.environ, PYTHONPATH=str(REPO))
    proc = subprocess.run([sys.executable, "-m", "self_instruct.generate", "--dry_run", "--output_dir", str(tmp_path / "o")],
                          capture_output=True, text=True, cwd=tmp_path, env=env, timeout=60)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.rstrip().endswith("###\n4. Instruction:")
    assert proc.stdout.count("###\n") == 4
    assert not (tmp_path / "o").exists()


def test_dry_run_bounds_requests_tokens_and_cost(tmp_path):
    """The estimate's hard bounds follow from the budget flags and the model's price: 3 requests,
    each at most the prompt's bytes (+32 for a chat template) and max_tokens, at gpt-4o-mini's price."""
    env = dict(os.environ, PYTHONPATH=str(REPO))
    proc = subprocess.run([sys.executable, "-m", "self_instruct.generate", "--dry_run", "--model_name", "gpt-4o-mini",
                           "--base_url", "http://127.0.0.1:9/v1", "--max_requests", "3", "--max_tokens", "1000"],
                          capture_output=True, text=True, cwd=tmp_path, env=env, timeout=60)
    assert proc.returncode == 0, proc.stderr
    prompt_tokens = len(proc.stdout[:-1].encode("utf-8")) + 32
    assert "requests: about 3 " in proc.stderr
    assert f"tokens: at most {prompt_tokens + 1000} a request, at most {3 * (prompt_tokens + 1000)}" in proc.stderr
    cost = 3 * (prompt_tokens * 0.15 + 1000 * 0.60) / 1e6
    assert f"cost: at most ${cost:.4f}" in proc.stderr


def test_cli_200_against_loopback_server(fake_server, tmp_path):
    env = dict(os.environ, PYTHONPATH=str(REPO))
    cmd = [sys.executable, "-m", "self_instruct.generate", "--num_instructions_to_generate", "200", "--output_dir", "out",
           "--base_url", fake_server.base_url, "--model_name", "fake-model"]
    proc = subprocess.run(cmd, capture_output=True, text=True, cwd=tmp_path, env=env, timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert "200 instructions in out" in proc.stderr
    assert_valid_pool(tmp_path / "out", 200)


def test_a_users_filter_by_flag_drops_what_it_names(fake_server, tmp_path):
    (tmp_path / "mine.py").write_text("def no_even(ex):\n    return ('even', ex.instruction[-2:]) "
                                      "if len(ex.instruction) % 2 == 0 else None\n", encoding="utf-8")
    env = dict(os.environ, PYTHONPATH=str(REPO))
    base = [sys.executable, "-m", "self_instruct.generate", "--num_instructions_to_generate", "20", "--output_dir", "out",
            "--base_url", fake_server.base_url, "--model_name", "fake-model", "--quiet", "--no_report"]
    bad = subprocess.run(base + ["--filter", "mine:nothing"], capture_output=True, text=True, cwd=tmp_path, env=env, timeout=120)
    assert bad.returncode == 2 and bad.stderr.strip() == "self_instruct: error: --filter mine:nothing: mine has no function nothing"
    assert not (tmp_path / "out").exists() and fake_server.requests == []
    done = subprocess.run(base + ["--filter", "mine.py:no_even"], capture_output=True, text=True, cwd=tmp_path, env=env,
                          timeout=120)
    assert done.returncode == 0, done.stderr
    kept, rejected = read_jsonl(tmp_path / "out" / "generated.jsonl"), read_jsonl(tmp_path / "out" / "rejected.jsonl")
    assert len(kept) == 20 and all(len(r["instruction"]) % 2 for r in kept)
    assert [(r["reason"], r["detail"]) for r in rejected if r["reason"] == "even"] == [
        ("even", r["instruction"][-2:]) for r in rejected if r["reason"] == "even"] != []


def test_library_api(fake_server, tmp_path):
    import self_instruct
    import self_instruct.generate as module  # importing the submodule must not hide the function

    assert callable(self_instruct.generate) and module.GenerateConfig
    result = self_instruct.generate(str(tmp_path / "o"), base_url=fake_server.base_url, model_name="m",
                                    num_instructions_to_generate=5, quiet=True)
    assert result.kept == 5
    tasks = self_instruct.load_seed_tasks()
    prompt = self_instruct.encode_prompt(self_instruct.seed_examples(tasks[:3]), self_instruct.load_list_template())
    assert prompt.endswith("###\n4. Instruction:")
    index = self_instruct.RougeIndex(t.instruction for t in tasks)
    assert index.check(tasks[0].instruction).similar


@pytest.mark.skipif(importlib.util.find_spec("matplotlib") is None, reason="the report needs the [export] extra")
def test_the_command_writes_the_report_unless_told_not_to(fake_server, tmp_path):
    env = dict(os.environ, PYTHONPATH=str(REPO))
    base = [sys.executable, "-m", "self_instruct.generate", "--num_instructions_to_generate", "10",
            "--base_url", fake_server.base_url, "--model_name", "m", "--quiet"]
    proc = subprocess.run(base + ["--output_dir", "a"], capture_output=True, text=True, cwd=tmp_path, env=env, timeout=300)
    assert proc.returncode == 0 and "report in" in proc.stderr, proc.stderr
    assert "<img" in (tmp_path / "a" / "report.html").read_text()
    proc = subprocess.run(base + ["--output_dir", "b", "--no_report"], capture_output=True, text=True, cwd=tmp_path, env=env, timeout=300)
    assert proc.returncode == 0 and not (tmp_path / "b" / "report.html").exists()


def test_a_chat_teacher_that_talks_and_drifts_keeps_its_tasks(fake_server, tmp_path):
    """A preamble, numbers that skip (4, 5, 7) and a closing remark: all three tasks are kept."""
    reply = ("Sure! Here are more tasks:\n\n"
             "4. Instruction: Name the largest desert on the continent of Africa.\n4. Input:\n<noinput>\n4. Output:\nThe Sahara.\n###\n"
             "5. Instruction: Convert ninety minutes into hours and explain the step.\n5. Input:\n<noinput>\n5. Output:\n1.5 hours.\n###\n"
             "7. Instruction: Suggest a polite way to decline a wedding invitation.\n7. Input:\n<noinput>\n7. Output:\nThank you so much.\n\n"
             "Let me know if you need more tasks!")
    fake_server.reply_fn = lambda prompt, body: reply
    fake_server.raw_chat = True
    result = generate(str(tmp_path / "out"), base_url=fake_server.base_url, model_name="m", api="chat",
                      num_instructions_to_generate=3, request_batch_size=1, max_concurrency=1, quiet=True)
    assert result.kept == 3
    outputs = [r["output"] for r in read_jsonl(tmp_path / "out" / "generated.jsonl")]
    assert outputs == ["The Sahara.", "1.5 hours.", "Thank you so much."]


def test_decontaminate_drops_records_sharing_13_words_with_a_benchmark(fake_server, tmp_path):
    """A benchmark line holding 13 words in a row of a reply's output makes its record contaminated;
    12 shared words are not enough."""
    leaked = "the quick brown fox jumps over the lazy dog while the farmer watches closely"  # 14 words
    bench = tmp_path / "bench.jsonl"
    bench.write_text(json.dumps({"question": f"Q: {leaked}?"}) + "\n" + json.dumps({"question": "alpha beta gamma"}) + "\n")
    outputs = iter([leaked, " ".join(leaked.split()[:12]) + " and nothing else"] * 50)
    rng = random.Random(3)

    def reply(prompt, body):
        return (f" {make_task(rng, synthetic=True)[0]}\n4. Input:\n<noinput>\n"
                f"4. Output:\nIn short, {next(outputs)}.\n")
    fake_server.reply_fn = reply
    result = generate(str(tmp_path / "out"), base_url=fake_server.base_url, model_name="m", decontaminate=str(bench),
                      num_instructions_to_generate=2, request_batch_size=1, max_concurrency=1, quiet=True)
    rejected = read_jsonl(tmp_path / "out" / "rejected.jsonl")
    kept = read_jsonl(tmp_path / "out" / "generated.jsonl")
    assert result.kept == 2 and all("nothing else" in r["output"] for r in kept)
    assert rejected and {r["reason"] for r in rejected} == {"contaminated"}
    assert "bench.jsonl" in rejected[0]["detail"] and "quick brown fox" in rejected[0]["detail"]


def test_judge_rates_the_pool_at_the_end_and_a_rerun_sends_nothing_new(fake_server, tmp_path):
    """--judge: the run's teacher rates every kept record; --min_score keeps the 4s and 5s in scored.json."""
    def reply(prompt, body):
        if "### Record 1" in prompt:  # the rubric prompt of self_instruct.score
            count = len(re.findall(r"### Record \d+", prompt))
            return "```json\n" + json.dumps([{"index": i, "score": 5 if i % 2 else 2, "reason": "r"} for i in range(1, count + 1)]) + "\n```"
        return self_instruct_reply(prompt, 20, random.Random(prompt), synthetic=True)
    fake_server.reply_fn = reply
    options = dict(base_url=fake_server.base_url, model_name="m", num_instructions_to_generate=10, judge=True,
                   min_score=4, quiet=True)
    generate(str(tmp_path / "out"), **options)
    scored = json.loads((tmp_path / "out" / "scored.json").read_text())
    kept = read_jsonl(tmp_path / "out" / "generated.jsonl")
    assert len(kept) == 10 and 0 < len(scored) < 10
    assert all(r["metadata"]["score"] == 5 and r["metadata"]["score_reason"] == "r" for r in scored)
    asked = len(fake_server.requests)
    generate(str(tmp_path / "out"), **options)
    assert len(fake_server.requests) == asked  # the pool is at its target and every record is rated


def test_personas_and_topics_condition_every_prompt_and_tag_its_records(fake_server, tmp_path):
    personas = REPO / "seed_tasks" / "personas.txt"
    topics = tmp_path / "topics.txt"
    topics.write_text("Science\n  Physics\n    Optics\n  Biology\nCooking\n  Baking\n")
    fake_server.tasks_per_reply = 2  # many prompts, so many draws
    out = tmp_path / "out"
    result = generate(str(out), base_url=fake_server.base_url, model_name="m", num_instructions_to_generate=40,
                      personas=str(personas), topics=str(topics), quiet=True)
    assert result.kept == 40
    known = {line for line in personas.read_text().splitlines() if line and not line.startswith("#")}
    leaves = {"Science > Physics > Optics", "Science > Biology", "Cooking > Baking"}
    records = read_jsonl(out / "generated.jsonl")
    assert all(r["metadata"]["persona"] in known and r["metadata"]["topic"] in leaves for r in records)
    assert len({r["metadata"]["persona"] for r in records}) > 3 and len({r["metadata"]["topic"] for r in records}) == 3
    # each prompt names the persona and topic its records are tagged with
    prompts = [body["prompt"] for body in fake_server.requests]
    assert all(re.search(r"^The person asking: .+\.", p, re.M) and re.search(r"^The topic: .+\.", p, re.M)
               for p in prompts)
    config = json.loads((out / "run.json").read_text())
    assert config["personas_sha256"] and config["topics_sha256"]
    # another topic tree is another run: resuming with it is refused
    topics.write_text("Music\n")
    with pytest.raises(Exception, match="topics_sha256"):
        generate(str(out), base_url=fake_server.base_url, model_name="m", num_instructions_to_generate=50,
                 personas=str(personas), topics=str(topics), quiet=True)


def test_export_balances_records_by_persona(fake_server, tmp_path, capsys):
    from self_instruct.export import cli as export

    fake_server.tasks_per_reply = 2
    out = tmp_path / "out"
    generate(str(out), base_url=fake_server.base_url, model_name="m", num_instructions_to_generate=60,
             personas=str(REPO / "seed_tasks" / "personas.txt"), quiet=True)
    counts = {}
    for r in read_jsonl(out / "generated.jsonl"):
        counts[r["metadata"]["persona"]] = counts.get(r["metadata"]["persona"], 0) + 1
    export([str(out), "--balance", "persona", "--output", str(tmp_path / "balanced.jsonl")])
    kept = read_jsonl(tmp_path / "balanced.jsonl")
    per = {}
    for r in kept:
        per[r["metadata"]["persona"]] = per.get(r["metadata"]["persona"], 0) + 1
    assert set(per) == set(counts) and set(per.values()) == {min(counts.values())}
    assert len(kept) == len(counts) * min(counts.values()) < 60
    assert f"--balance persona: {len(counts)} values" in capsys.readouterr().err


@pytest.mark.skipif(importlib.util.find_spec("matplotlib") is None, reason="the report needs the [export] extra")
def test_the_report_shows_records_and_novelty_per_persona_and_topic(fake_server, tmp_path):
    from self_instruct.report import write_report

    topics = tmp_path / "topics.txt"
    topics.write_text("Science\n  Physics\nCooking\n")
    fake_server.tasks_per_reply = 2
    generate(str(tmp_path / "out"), base_url=fake_server.base_url, model_name="m", num_instructions_to_generate=20,
             personas=str(REPO / "seed_tasks" / "personas.txt"), topics=str(topics), quiet=True, no_report=True)
    page = write_report(tmp_path / "out").read_text()
    for tag, count in (("persona", None), ("topic", 2)):
        section = page.split(f"<h2>Kept records per {tag}</h2>", 1)[1].split("<h2>", 1)[0]
        assert '<img alt="Kept records per' in section and "data:image/png;base64," in section
        if count:
            assert section.startswith(f"<p>{count} {tag}s;")


class RestartingTeacher(FakeTeacher):
    """Replies as the embedded 135M model often does: the open task, then a list restarted at 1."""

    def __init__(self, renumbers: bool):
        self.renumbers, self.asked, self.rng = renumbers, 0, random.Random(7)
        super().__init__(respond=self.reply)

    def reply(self, prompt: str) -> str:
        self.asked += 1
        (a, _, x), (b, _, y), (c, _, z) = (make_task(self.rng, synthetic=True) for _ in range(3))
        return (f" {a}\n4. Input:\n<noinput>\n4. Output:\n{x}\n###\n"
                f"1. Instruction: {b}\n1. Input:\n<noinput>\n1. Output:\n{y}\n###\n"
                f"2. Instruction: {c}\n2. Input:\n<noinput>\n2. Output:\n{z}")


@pytest.mark.parametrize("renumbers", [False, True])
def test_a_teacher_that_restarts_its_numbering_keeps_every_block_when_it_says_so(tmp_path, renumbers):
    teacher = RestartingTeacher(renumbers)
    outcome = generate(str(tmp_path / "out"), teacher=teacher, num_instructions_to_generate=6, num_tasks=6,
                       request_batch_size=1, max_stall_rounds=3, quiet=True, no_report=True)
    rejects = tmp_path / "out" / "rejected.jsonl"
    rejected = [json.loads(line) for line in rejects.read_text().splitlines()] if rejects.exists() else []
    if renumbers:  # every block of every reply kept: 3 a request
        assert outcome.kept == 6 and teacher.asked == 2
        assert not [r for r in rejected if r["reason"] == "wrong_number"]
    else:  # only the open task; the restarted blocks are rejected as misnumbered
        assert outcome.kept == 6 and teacher.asked == 6
        assert sum(r["reason"] == "wrong_number" for r in rejected) == 12
