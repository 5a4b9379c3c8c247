"""Bad input never costs work: a malformed seed file or a bad flag gives one line that names
file:line:field (or the flag) and the fix, exit status 2, no traceback, and leaves the output
directory as it was (not created, or byte for byte unchanged).

The corpus of broken seed files is built here (a 10 MB line has no place in the repository).
Most cases run the console entry point in this process; two run it as a real process.
"""
import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest

from fake_openai import FakeOpenAI
from self_instruct.generate import cli, generate
from self_instruct.core.seeds import load_seed_tasks

REPO = Path(__file__).resolve().parents[2]


def task(i: int = 0, **fields) -> dict:
    base = {"id": f"seed_task_{i}", "name": f"task_{i}", "instruction": f"Give three reasons to learn topic number {i}.",
            "instances": [{"input": "", "output": "Curiosity, work and fun."}], "is_classification": False}
    base.update(fields)
    return {k: v for k, v in base.items() if v is not ...}


def lines(*objs) -> bytes:
    return b"".join(json.dumps(o).encode() + b"\n" for o in objs)


GOOD = lines(task(0), task(1), task(2), task(3))

# name -> (file bytes, text the one-line error must hold; "{path}" stands for the file)
CORPUS = {
    "not_json": (b"id,name,instruction\n1,a,b\n", "{path}:1: not valid JSON"),
    "bom": (b"\xef\xbb\xbf" + GOOD, "{path}:1: the file starts with a byte order mark; save it as UTF-8 without BOM"),
    "empty": (b"", "{path}: no seed tasks"),
    "blank_line": (lines(task(0)) + b"\n" + lines(task(1)), "{path}:2: blank line; remove it"),
    "missing_field": (GOOD + lines(task(4, instances=...)), '{path}:5: field "instances" is missing'),
    "extra_field": (lines(dict(task(0), category="open_qa")), '{path}:1: unknown field "category"; expected only id, name'),
    "instances_not_list": (lines(task(0, instances="Curiosity")), '{path}:1: field "instances" must be a list (got string)'),
    "flag_not_bool": (lines(task(0, is_classification="no")), '{path}:1: field "is_classification" must be true or false (got string)'),
    "id_not_string": (lines(task(0, id=7)), '{path}:1: field "id" must be a string (got number)'),
    "instruction_null": (lines(task(0, instruction=None)), '{path}:1: field "instruction" must be a string (got null)'),
    "empty_instruction": (lines(task(0, instruction="   ")), '{path}:1: field "instruction" is empty'),
    "no_instances": (lines(task(0, instances=[])), '{path}:1: field "instances" is empty; give at least one'),
    "instance_not_object": (lines(task(0, instances=["x"])), '{path}:1: field "instances[0]" must be an object'),
    "instance_without_output": (lines(task(0, instances=[{"input": ""}])), '{path}:1: field "instances[0].output" is missing'),
    "empty_output": (lines(task(0, instances=[{"input": "", "output": " "}])), '{path}:1: field "instances[0].output" is empty'),
    "duplicate_ids": (lines(task(0), task(1), task(0, name="again")), '{path}:3: field "id": "seed_task_0" is already used on line 1'),
    "not_utf8": (GOOD + json.dumps(task(9)).encode().replace(b"reasons", b"r\xe9asons") + b"\n",
                 "{path}:5: not UTF-8 (byte 0xe9 at column"),
    "huge_line": (b'{"id": "' + b"x" * 10_000_000 + b'"}\n', "{path}:1: line is 10,000,010 bytes, over the 1,000,000-byte limit"),
    "array_not_object": (b'[{"id": "a"}]\n', "{path}:1: expected a JSON object, got list"),
    "null_line": (GOOD + b"null\n", "{path}:5: expected a JSON object, got null"),
    "deep_nesting": (b"[" * 200_000 + b"]" * 200_000 + b"\n", "{path}:1: JSON nested too deeply"),
    "two_objects_on_a_line": (json.dumps(task(0)).encode() * 2 + b"\n", "{path}:1: not valid JSON (Extra data"),
    "lone_surrogate": (GOOD + lines(task(4, instances=[{"input": "", "output": "Half an emoji: \ud83d."}])),
                       '{path}:5: field "instances[0].output" holds a lone surrogate (\\ud83d)'),
}


def run_cli(args, capsys) -> str:
    """The console entry point in this process: returns its stderr after asserting exit status 2."""
    with pytest.raises(SystemExit) as info:
        cli([str(a) for a in args])
    captured = capsys.readouterr()
    assert info.value.code == 2, captured.err
    err = captured.err
    assert err.startswith("self_instruct: error: ") and err.count("\n") == 1, err
    assert "Traceback" not in err and captured.out == ""
    return err.strip()


def snapshot(directory: Path) -> dict:
    return {p.name: (p.read_bytes(), p.stat().st_mtime_ns) for p in sorted(directory.iterdir())}


@pytest.fixture(scope="module")
def server():
    server = FakeOpenAI(seed=5).start()
    yield server
    server.stop()


@pytest.fixture(scope="module")
def finished_run(server, tmp_path_factory):
    """An output directory holding a finished run made with FLAGS."""
    out = tmp_path_factory.mktemp("run") / "out"
    generate(str(out), base_url=server.base_url, model_name="m", num_instructions_to_generate=8, quiet=True)
    return out


def flags(server, out) -> list:
    return ["--output_dir", out, "--base_url", server.base_url, "--model_name", "m", "--quiet"]


@pytest.mark.parametrize("name", sorted(CORPUS))
def test_malformed_seed_file_gives_one_line(name, tmp_path, capsys, server):
    content, expected = CORPUS[name]
    path = tmp_path / f"{name}.jsonl"
    path.write_bytes(content)
    out = tmp_path / "out"
    err = run_cli(flags(server, out) + ["--seed_tasks_path", path], capsys)
    assert expected.format(path=path) in err
    assert len(err) < 400  # a line a person reads, not a dump of the file
    assert not out.exists()


def test_corpus_is_large_enough():
    assert len(CORPUS) >= 15


@pytest.mark.parametrize("make,expected", [
    (lambda p: p.mkdir(), "cannot read the seed task file"),
    (lambda p: None, "seed task file does not exist (--seed_tasks_path)"),
], ids=["directory", "missing"])
def test_unreadable_seed_path(make, expected, tmp_path, capsys, server):
    path = tmp_path / "seeds.jsonl"
    make(path)
    err = run_cli(flags(server, tmp_path / "out") + ["--seed_tasks_path", path], capsys)
    assert expected in err and str(path) in err
    assert not (tmp_path / "out").exists()


def test_windows_line_endings_and_no_final_newline_are_fine(tmp_path):
    path = tmp_path / "seeds.jsonl"
    path.write_bytes(GOOD.replace(b"\n", b"\r\n").rstrip())
    assert len(load_seed_tasks(path)) == 4


def closed_port_url() -> str:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    return f"http://127.0.0.1:{port}/v1"


# (extra flags, text the error must hold). Each runs against an output directory that holds a
# finished run, which must come out byte for byte unchanged.
BAD_FLAGS = {
    "negative_count": (["--num_instructions_to_generate", "-5"], "--num_instructions_to_generate must be a positive whole number (got -5)"),
    "zero_batch": (["--request_batch_size", "0"], "--request_batch_size must be a positive whole number"),
    "huge_batch": (["--request_batch_size", "1000000000"], "--request_batch_size must be at most 10,000"),
    "count_not_a_number": (["--max_requests", "lots"], "--max_requests must be a whole number (got 'lots')"),
    "more_prompt_tasks_than_seeds": (["--seed_tasks_path", "TWO_SEEDS", "--num_prompt_instructions", "3"],
                                     "--num_prompt_instructions (3) is more than the 2 seed tasks in"),
    "num_tasks_too_small": (["--num_tasks", "3"], "--num_tasks (3) must be larger than --num_prompt_instructions (3)"),
    "unknown_api": (["--api", "responses"], "--api must be one of completions, chat (got 'responses')"),
    "temperature": (["--temperature", "7"], "temperature must be between 0 and 2 (got 7)"),
    "threshold": (["--similarity_threshold", "1.5"], "--similarity_threshold must be in (0, 1]"),
    "unknown_flag": (["--num_instructions", "500"], "unknown flag --num_instructions; did you mean --num_instructions_to_generate?"),
    "stray_word": (["500"], "unexpected argument in position"),
    "url_without_scheme": (["--base_url", "localhost:8000/v1"], "--base_url must be an http:// or https:// URL"),
    "unreachable_url": (["--base_url", "CLOSED_PORT"], "cannot reach the teacher at http://127.0.0.1:"),
    "template_without_placeholder": (["--prompt_path", "NO_PLACEHOLDER"], "must hold the placeholder {tasks} exactly once (found 0)"),
    "template_missing": (["--prompt_path", "/nonexistent/prompt.txt"], "--prompt_path: /nonexistent/prompt.txt does not exist"),
    "template_not_utf8": (["--prompt_path", "LATIN1"], "is not UTF-8 text"),
    "output_dir_is_a_file": (["--output_dir", "A_FILE"], "is a file, not a directory"),
}


@pytest.mark.parametrize("name", sorted(BAD_FLAGS))
def test_bad_flag_gives_one_line_and_touches_nothing(name, tmp_path, capsys, server, finished_run):
    extra, expected = BAD_FLAGS[name]
    (tmp_path / "two.jsonl").write_bytes(lines(task(0), task(1)))
    (tmp_path / "no_placeholder.txt").write_text("Write 20 tasks like these:\n")
    (tmp_path / "latin1.txt").write_bytes("Écrivez des tâches:\n{tasks}".encode("latin-1"))
    (tmp_path / "a_file").write_text("not a directory")
    stand_ins = {"TWO_SEEDS": tmp_path / "two.jsonl", "NO_PLACEHOLDER": tmp_path / "no_placeholder.txt",
                 "LATIN1": tmp_path / "latin1.txt", "A_FILE": tmp_path / "a_file", "CLOSED_PORT": closed_port_url()}
    extra = [stand_ins.get(a, a) for a in extra]
    before = snapshot(finished_run)
    err = run_cli(flags(server, finished_run) + extra, capsys)
    assert expected in err
    assert snapshot(finished_run) == before
    if name == "output_dir_is_a_file":
        assert (tmp_path / "a_file").read_text() == "not a directory"


def test_server_that_needs_a_key_and_got_none(tmp_path, capsys):
    server = FakeOpenAI(api_key="sk-needed").start()
    try:
        err = run_cli(flags(server, tmp_path / "out"), capsys)
    finally:
        server.stop()
    assert "refused the API key (401); set OPENAI_API_KEY or pass --api_key" in err
    assert not (tmp_path / "out").exists()


def test_resume_with_other_settings_is_refused_unless_overwrite(server, tmp_path, capsys):
    out = tmp_path / "out"
    generate(str(out), base_url=server.base_url, model_name="m", num_instructions_to_generate=5, quiet=True)
    before = snapshot(out)
    err = run_cli(flags(server, out) + ["--temperature", "0.7"], capsys)
    assert f"{out / 'run.json'}: this output directory holds a run with other settings (temperature: 1.0 -> 0.7)" in err
    assert "--overwrite" in err
    assert snapshot(out) == before
    # A different seed file is a different run too, even under the same path.
    err = run_cli(flags(server, out) + ["--seed_tasks_path", _write(tmp_path / "s.jsonl", GOOD)], capsys)
    assert "seed_tasks_sha256" in err and snapshot(out) == before
    # Settings that do not shape the data may change: a larger target resumes.
    cli([str(a) for a in flags(server, out) + ["--num_instructions_to_generate", "7", "--max_concurrency", "2"]])
    assert len((out / "generated.jsonl").read_text().splitlines()) == 7
    # --overwrite starts again with the new settings.
    cli([str(a) for a in flags(server, out) + ["--temperature", "0.7", "--num_instructions_to_generate", "3", "--overwrite"]])
    assert json.loads((out / "run.json").read_text())["temperature"] == 0.7
    assert len((out / "generated.jsonl").read_text().splitlines()) == 3


def _write(path: Path, content: bytes) -> Path:
    path.write_bytes(content)
    return path


@pytest.mark.parametrize("args,expected", [
    (["--seed_tasks_path", "bad.jsonl"], "bad.jsonl:1: not valid JSON"),
    (["--api", "responses"], "--api must be one of completions, chat"),
])
def test_as_a_real_process(tmp_path, args, expected):
    (tmp_path / "bad.jsonl").write_bytes(b"{oops\n")
    env = dict(os.environ, PYTHONPATH=str(REPO))
    proc = subprocess.run([sys.executable, "-m", "self_instruct.generate", "--output_dir", "out",
                           "--base_url", "http://127.0.0.1:9/v1", *args],
                          capture_output=True, text=True, cwd=tmp_path, env=env, timeout=60)
    assert proc.returncode == 2
    assert proc.stderr.count("\n") == 1 and expected in proc.stderr and "Traceback" not in proc.stderr
    assert proc.stdout == "" and not (tmp_path / "out").exists()


def test_a_missing_report_extra_is_one_hint_once(server, tmp_path, capsys, monkeypatch):
    """The "no report" note used to repeat the pip hint its own reason already gave."""
    monkeypatch.setitem(sys.modules, "matplotlib.figure", None)  # import matplotlib.figure fails
    cli([str(a) for a in flags(server, tmp_path / "out") + ["--num_instructions_to_generate", "3"]])
    err = capsys.readouterr().err
    assert "self_instruct: no report (the report needs matplotlib: pip install 'self_instruct[export]')\n" in err
    assert err.count("pip install") == 1


@pytest.mark.parametrize("output_dir,message", [
    ("data.jsonl", "--output_dir data.jsonl is a file, not a directory; pass another --output_dir"),
    ("data.jsonl/run", "--output_dir data.jsonl/run lies under data.jsonl, which is a file, not a folder"),
    ("./base/", "--output_dir ./base/ would overwrite the input base (--model_name_or_path); pass another --output_dir"),
], ids=["a_file", "under_a_file", "the_base_model"])
def test_train_refuses_an_output_dir_it_cannot_use_before_loading_anything(tmp_path, capsys, monkeypatch, output_dir, message):
    """train saves the model and tokenizer into --output_dir: over the base model's own files, or
    after an hour of training into a path that cannot be a directory."""
    from self_instruct import train

    monkeypatch.chdir(tmp_path)
    (tmp_path / "base").mkdir()
    (tmp_path / "base" / "config.json").write_text("{}")
    (tmp_path / "data.jsonl").write_text('{"instruction": "a", "output": "b"}\n')
    with pytest.raises(SystemExit) as info:
        train.cli(["--model_name_or_path", "base", "--data_path", "data.jsonl", "--output_dir", output_dir])
    err = capsys.readouterr().err
    assert info.value.code == 2 and err.startswith(f"self_instruct: error: {message}")
    assert err.count("\n") == 1 and sorted(p.name for p in (tmp_path / "base").iterdir()) == ["config.json"]
