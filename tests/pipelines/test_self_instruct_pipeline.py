"""Self-instruct's pipeline (`generate --pipeline self_instruct`) against the fake OpenAI server.

The fake teacher reads our prompts as a model would: it continues the numbered instruction list,
answers the classification question, and writes instances in the layout the prompt asks for.
Its replies depend only on the prompt, so two runs that send the same prompts get the same pool.
"""
from __future__ import annotations

import hashlib
import json
import os
import random
import re
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path

import pytest
from fake_openai import FakeOpenAI

from self_instruct.generate import cli, generate
from self_instruct.io.jsonl import read_jsonl
from self_instruct.pipelines.self_instruct import check_instances, parse_instances, parse_instructions

LABELS = ("red", "green", "blue")
REPO = Path(__file__).resolve().parents[2]


def write_seeds(path, classification: int = 5, other: int = 5):
    lines = []
    for i in range(classification + other):
        clf = i < classification
        words = " ".join(_word(random.Random(f"seed{i}:{j}")) for j in range(5))
        instruction = f"Sort {words} as red, green or blue." if clf else f"Describe {words} briefly."
        lines.append(json.dumps({"id": f"s{i}", "name": f"task_{i}", "instruction": instruction,
                                 "instances": [{"input": f"{words} item", "output": "red" if clf else f"{words} text."}],
                                 "is_classification": clf}))
    path.write_text("\n".join(lines) + "\n")
    return path


def _word(rng: random.Random) -> str:
    return "".join(rng.choice("bcdfghjklmnprstvz") + rng.choice("aeiou") for _ in range(3))


def _task(prompt: str) -> str:
    return prompt.rsplit("Task: ", 1)[1].strip()


def teacher(prompt: str, body: dict) -> str:
    """A well-behaved teacher; for an input-first prompt on a classification task it answers
    'red' every time, as models asked for inputs then outputs tend to favour one label."""
    if prompt.endswith("Classification task?"):
        return " Yes" if " as red, green or blue" in _task(prompt) else " No"
    if "Class label: ..." in prompt:
        task = _task(prompt)
        return "\n".join(f"Class label: {label}\nInput: a {label} thing about {task[5:30]}" for label in LABELS)
    if "Example 1\nInput: ..." in prompt:
        task = _task(prompt)
        if " as red, green or blue" in task:
            return "\n".join(f"Example {k}\nInput: case {k} of {task[5:30]}\nOutput: red" for k in (1, 2, 3))
        return "\n".join(f"Example {k}\nInput: <noinput>\nOutput: answer {k} to {task[9:40]}." if k == 1 else
                         f"Example {k}\nInput: case {k} of {task[9:40]}\nOutput: answer {k}." for k in (1, 2, 3))
    rng = random.Random(hashlib.sha256(prompt.encode()).hexdigest())
    first = int(re.search(r"(\d+)\.$", prompt).group(1))
    items = []
    for k in range(first, first + 3):  # a short list: a run takes many rounds
        words = " ".join(_word(rng) for _ in range(6))
        items.append(f"Sort {words} as red, green or blue." if rng.random() < 0.5 else f"Describe {words} briefly.")
    return " " + "\n".join([items[0]] + [f"{k}. {text}" for k, text in enumerate(items[1:], first + 1)])


def run(server, out, seeds, **options):
    server.reply_fn = options.pop("reply_fn", teacher)
    options = {"num_instructions_to_generate": 30, "request_batch_size": 1, "quiet": True, **options}
    return generate(str(out), base_url=server.base_url, model_name="fake", pipeline="self_instruct",
                    seed_tasks_path=str(seeds), **options)


def test_output_first_keeps_classification_labels_balanced(fake_server, tmp_path):
    seeds = write_seeds(tmp_path / "seeds.jsonl")
    result = run(fake_server, tmp_path / "out", seeds)
    assert result.kept == 30 and result.stopped_by == "target"
    records = read_jsonl(tmp_path / "out" / "generated.jsonl")
    clf = [r for r in records if r["metadata"]["is_classification"]]
    other = [r for r in records if not r["metadata"]["is_classification"]]
    assert len(clf) >= 5 and len(other) >= 5
    # Every classification record holds one input per label (the input-first reply would be all "red").
    per_label = Counter(i["output"] for r in clf for i in r["metadata"]["instances"])
    assert per_label == {label: len(clf) for label in LABELS}
    assert {r["output"] for r in clf} == set(LABELS)  # the records' own labels rotate too
    for r in records:
        assert {"input": r["input"], "output": r["output"]} in r["metadata"]["instances"]
    # Input-first: the <noinput> instance comes back with an empty input, and every instance is kept.
    assert all(r["input"] == "" and len(r["metadata"]["instances"]) == 3 for r in other)
    # Prompts show 8 instructions and leave item 9 open; once the pool has grown, 2 come from it.
    lists = [b["prompt"] for b in fake_server.requests if b["prompt"].endswith("9.")]
    assert lists and all(re.search(r"^8\. ", p, re.MULTILINE) for p in lists)
    pool = {r["instruction"] for r in records}
    assert any(sum(line[3:] in pool for line in p.splitlines()[-9:-1]) == 2 for p in lists)


DEFECTS = {
    "Explain why two witnesses might disagree about one event.":
        "Example 1\nInput: same\nOutput: one\nExample 2\nInput: same\nOutput: two",
    "Repeat the given sentence back in your own careful wording.": "Example 1\nInput: echo this\nOutput: Echo this",
    "Name the largest desert found on each continent.": "Example 1\nInput: nothing follows\nOutput:",
    "Summarize the story of a long novel you know well.": "Example 1\nInput: long\nOutput: " + "word " * 1000,
    "Sort the surplus fruit samples as red, green or blue.":
        "Class label: red\nInput: apple\nClass label: red\nInput: cherry\nClass label: green\nInput: leaf",
}
DEFECT_REASONS = {"instance_conflict": 2, "output_copies_input": 1, "instance_empty": 1, "instance_too_long": 1, "label_surplus": 1}


def defective_teacher(prompt: str, body: dict) -> str:
    """Lists the five instructions above; answers each with its defect plus one good instance."""
    if "Task: " not in prompt:
        listed = [*DEFECTS, next(iter(DEFECTS))]  # one twice: the repeat costs no call
        return " " + "\n".join(text if k == 0 else f"{k + 9}. {text}" for k, text in enumerate(listed))
    if prompt.endswith("Classification task?"):
        return teacher(prompt, body)
    task = _task(prompt)
    good = "" if task.startswith("Sort") else "Example 9\nInput: fine\nOutput: A fine answer.\n"
    return DEFECTS[task] + "\n" + good


def test_each_instance_defect_is_rejected_with_its_reason(fake_server, tmp_path):
    seeds = write_seeds(tmp_path / "seeds.jsonl")
    result = run(fake_server, tmp_path / "out", seeds, reply_fn=defective_teacher, num_instructions_to_generate=5,
                 request_batch_size=1)
    assert result.kept == 5
    records = {r["instruction"]: r for r in read_jsonl(tmp_path / "out" / "generated.jsonl")}
    assert set(records) == set(DEFECTS)
    for instruction, record in records.items():
        good = [{"input": "apple", "output": "red"}, {"input": "leaf", "output": "green"}] \
            if instruction.startswith("Sort") else [{"input": "fine", "output": "A fine answer."}]
        assert record["metadata"]["instances"] == good
    rejected = read_jsonl(tmp_path / "out" / "rejected.jsonl")
    assert Counter(r["reason"] for r in rejected) == {**DEFECT_REASONS, "duplicate": 1}
    by_reason = {r["reason"]: r for r in rejected}
    assert by_reason["output_copies_input"]["output"] == "Echo this"
    assert by_reason["label_surplus"]["input"] == "cherry" and by_reason["label_surplus"]["metadata"]["is_classification"]
    assert by_reason["duplicate"]["instruction"] == next(iter(DEFECTS))
    state = json.loads((tmp_path / "out" / "state.json").read_text())
    assert state["rejects"] == {**DEFECT_REASONS, "duplicate": 1}
    asked = Counter(_task(b["prompt"]).splitlines()[0] for b in fake_server.requests if b["prompt"].endswith("Classification task?"))
    assert asked == {instruction: 1 for instruction in DEFECTS}


def test_parsers_read_replies_and_cut_truncated_tails():
    assert parse_instructions(" Add 2 and 3.\n10. Name a color.\n\nThat is all.", "stop") == (["Add 2 and 3.", "Name a color."], [])
    found, rejections = parse_instructions("Sure, here they are:\n9. Add 2 and 3.\n10. Name a co", "length")
    assert found == ["Add 2 and 3."] and rejections[0].reason == "truncated"
    pairs, _ = parse_instances("Example 1\nInput: <noinput>\nOutput: Hi.\n\nExample 2\nInput: x\nOutput: y", "stop", False)
    assert pairs == [("", "Hi."), ("x", "y")]
    pairs, _ = parse_instances("Example 1\nInput: ...\nOutput: ...\nExample 2\nInput: -\nOutput: 42", "stop", False)
    assert pairs == [("", ""), ("", "42")]  # a layout placeholder copied by a small model is no text
    pairs, rejections = parse_instances("Class label: yes\nInput: a\nClass label: no\nInput: b", "length", True)
    assert pairs == [("a", "yes")] and rejections[0].reason == "truncated"
    kept, rejections = check_instances("t", [("a", "x"), ("a", "x"), ("b", "")], False)
    assert kept == [("a", "x")] and [r.reason for r in rejections] == ["instance_empty", "instance_duplicate"]


def test_a_chat_reply_restating_the_list_spends_no_call_on_shown_tasks(fake_server, tmp_path):
    seeds = write_seeds(tmp_path / "seeds.jsonl")

    def restating(prompt: str, body: dict) -> str:
        if "Task: " in prompt:
            return teacher(prompt, body)
        shown = re.findall(r"^\d+\. (.*)$", prompt, re.MULTILINE)
        return "Sure! Here is the list:\n" + "".join(f"{k}. {text}\n" for k, text in enumerate(shown, 1)) + \
            teacher(prompt, body).replace(" ", "9. ", 1)

    run(fake_server, tmp_path / "out", seeds, reply_fn=restating, api="chat", num_instructions_to_generate=6)
    records = read_jsonl(tmp_path / "out" / "generated.jsonl")
    seed_texts = {json.loads(line)["instruction"] for line in seeds.read_text().splitlines()}
    assert len(records) == 6 and not {r["instruction"] for r in records} & seed_texts
    asked = {_task(b["messages"][-1]["content"]).splitlines()[0] for b in fake_server.requests
             if b["messages"][-1]["content"].endswith("Classification task?")}
    assert asked and not asked & seed_texts  # the restated seeds cost no classification call


def test_budget_stop_and_resume_make_the_same_pool(fake_server, tmp_path):
    seeds = write_seeds(tmp_path / "seeds.jsonl")
    run(fake_server, tmp_path / "straight", seeds)
    stopped = run(fake_server, tmp_path / "resumed", seeds, max_requests=25)
    assert stopped.stopped_by == "max_requests" and stopped.kept < 30
    run(fake_server, tmp_path / "resumed", seeds)
    straight = read_jsonl(tmp_path / "straight" / "generated.jsonl")
    assert read_jsonl(tmp_path / "resumed" / "generated.jsonl") == straight
    assert max(r["provenance"]["unit"] for r in straight) > 4  # later rounds sampled grown instructions


def test_sigkill_and_resume_make_the_same_pool(tmp_path):
    seeds = write_seeds(tmp_path / "seeds.jsonl")
    server = FakeOpenAI(latency=0.05).start()
    try:
        run(server, tmp_path / "straight", seeds)
        cmd = [sys.executable, "-m", "self_instruct.generate", "--pipeline", "self_instruct", "--output_dir",
               str(tmp_path / "killed"), "--base_url", server.base_url, "--model_name", "fake", "--seed_tasks_path",
               str(seeds), "--num_instructions_to_generate", "30", "--request_batch_size", "1", "--quiet"]
        env = dict(os.environ, PYTHONPATH=str(REPO))
        before = len(server.requests)
        proc = subprocess.Popen(cmd, env=env, stderr=subprocess.DEVNULL)
        deadline = time.monotonic() + 120
        while len(server.requests) < before + 25 and time.monotonic() < deadline and proc.poll() is None:
            time.sleep(0.005)
        proc.kill()
        assert proc.wait(timeout=60) == -9  # killed mid-run, not finished
        subprocess.run(cmd, env=env, check=True, timeout=300)
    finally:
        server.stop()
    assert read_jsonl(tmp_path / "killed" / "generated.jsonl") == read_jsonl(tmp_path / "straight" / "generated.jsonl")


def test_dry_run_shows_the_open_list_and_what_it_may_take(tmp_path, capsys):
    cli(["--pipeline", "self_instruct", "--dry_run", "--base_url", "http://127.0.0.1:9/v1",
         "--seed_tasks_path", str(write_seeds(tmp_path / "seeds.jsonl"))])
    out, err = capsys.readouterr()
    lines = out.rstrip().splitlines()
    assert lines[-1] == "9." and [line.split(". ")[0] for line in lines[-9:-1]] == [str(i) for i in range(1, 9)]
    assert "7 new tasks (then 2 requests for each task)" in err


def test_cli_flag_and_resume_with_another_pipeline_refused(fake_server, tmp_path, capsys):
    seeds = write_seeds(tmp_path / "seeds.jsonl")
    fake_server.reply_fn = teacher
    out = tmp_path / "out"
    argv = ["--output_dir", str(out), "--base_url", fake_server.base_url, "--seed_tasks_path", str(seeds),
            "--num_instructions_to_generate", "6", "--quiet"]
    cli(argv + ["--pipeline", "self_instruct"])
    assert json.loads((out / "run.json").read_text())["pipeline"] == "self_instruct"
    assert all("is_classification" in r["metadata"] for r in read_jsonl(out / "generated.jsonl"))
    sent = len(fake_server.requests)
    with pytest.raises(SystemExit) as exc:
        cli(argv)  # the default, alpaca
    assert exc.value.code == 2 and len(fake_server.requests) == sent
    assert "pipeline: 'self_instruct' -> 'alpaca'" in capsys.readouterr().err
    with pytest.raises(SystemExit) as exc:
        cli(argv + ["--pipeline", "evolve", "--overwrite"])
    assert exc.value.code == 2 and "--pipeline must be one of alpaca, self_instruct" in capsys.readouterr().err
