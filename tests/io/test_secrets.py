"""The API key never leaves the process: not in run.json, state.json, the data files, the logs
or an error message, even when the server repeats it back in an error body."""
import os
import subprocess
import sys
from pathlib import Path

import pytest

from fake_openai import FakeOpenAI
from self_instruct.errors import SelfInstructError
from self_instruct.generate import cli, generate

REPO = Path(__file__).resolve().parents[2]
KEY = "sk-SENTINEL-7f3a9c1e5b2d4680"


@pytest.fixture
def keyed_server():
    server = FakeOpenAI(api_key=KEY, seed=2).start()
    yield server
    server.stop()


def assert_no_key_under(directory: Path) -> None:
    for path in directory.rglob("*"):
        if path.is_file():
            assert KEY.encode() not in path.read_bytes(), path
            assert KEY[3:].encode() not in path.read_bytes(), path


@pytest.mark.parametrize("how", ["env", "flag"])
def test_key_stays_out_of_files_and_logs(keyed_server, tmp_path, how):
    # The server repeats the key it got in a 500 body; one attempt only, so that body becomes
    # the recorded reason of a dropped prompt.
    keyed_server.script(["echo_key", "echo_key", "429"])
    env = dict(os.environ, PYTHONPATH=str(REPO))
    cmd = [sys.executable, "-m", "self_instruct.generate", "--output_dir", "out", "--base_url", keyed_server.base_url,
           "--model_name", "m", "--num_instructions_to_generate", "20", "--max_attempts", "1", "--retry_backoff", "0.01"]
    if how == "env":
        env["OPENAI_API_KEY"] = KEY
    else:
        cmd += ["--api_key", KEY]
    proc = subprocess.run(cmd, capture_output=True, text=True, cwd=tmp_path, env=env, timeout=60)
    assert proc.returncode == 0, proc.stderr
    assert "20 instructions in out" in proc.stderr and "faults met: 500 2, 429 1" in proc.stderr
    assert KEY not in proc.stderr and KEY not in proc.stdout
    rejected = (tmp_path / "out" / "rejected.jsonl").read_text()
    assert "upstream failed for credentials Bearer [api key]" in rejected  # the server's words, scrubbed
    assert_no_key_under(tmp_path)


def test_wrong_key_error_does_not_repeat_it(keyed_server, tmp_path, capsys):
    with pytest.raises(SystemExit) as info:
        cli(["--output_dir", str(tmp_path / "out"), "--base_url", keyed_server.base_url, "--api_key", KEY + "x"])
    err = capsys.readouterr().err
    assert info.value.code == 2 and "refused the API key (401)" in err and KEY not in err


def test_key_revoked_mid_run_error_does_not_repeat_it(keyed_server, tmp_path):
    def revoke(prompt, body):
        keyed_server.required_key = "sk-rotated"
        return " Sorry."
    keyed_server.reply_fn = revoke
    with pytest.raises(SelfInstructError) as info:
        generate(str(tmp_path / "out"), base_url=keyed_server.base_url, api_key=KEY, model_name="m",
                 request_batch_size=1, max_concurrency=1, quiet=True)
    assert KEY not in str(info.value) and "refused" in str(info.value)
    assert_no_key_under(tmp_path)


def test_a_flag_error_does_not_echo_the_key(tmp_path, capsys):
    for args in (["--api_key", KEY, "--num_instruction", "5"], ["--api_key", KEY, "--quiet", KEY], [KEY]):
        with pytest.raises(SystemExit):
            cli(["--output_dir", str(tmp_path / "out"), *args])
        err = capsys.readouterr().err
        assert "self_instruct: error:" in err and KEY not in err
