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
from self_instruct.io import secrets
from self_instruct.io.secrets import redact, redact_record, redact_url, register_secret

REPO = Path(__file__).resolve().parents[2]
KEY = "sk-SENTINEL-7f3a9c1e5b2d4680"


@pytest.fixture(autouse=True)
def no_secrets_from_other_tests(monkeypatch):
    monkeypatch.setattr(secrets, "_secrets", set())


@pytest.mark.parametrize("text, shown", [
    ("http://ann:s3cret-pw@host:8000/v1", "http://ann:***@host:8000/v1"),
    ("https://TOKEN-abc123@host/v1", "https://***@host/v1"),  # a token alone as the user part
    ("http://TOKEN-abc123:@host/v1", "http://***@host/v1"),  # ... or with an empty password
    ("http://ann:p@ss@w0rd@host/v1", "http://ann:***@host/v1"),  # the last @ before the host ends it
    ("http://ann:p%40ss@host/v1", "http://ann:***@host/v1"),
    ("openai:m@http://ann:pw@127.0.0.1:9/v1", "openai:m@http://ann:***@127.0.0.1:9/v1"),
    ("http://a:pw1@h1/v1,http://TOK@h2/v1", "http://a:***@h1/v1,http://***@h2/v1"),
    ("GET /v1/models?api_key=k-123&x=1 HTTP/1.1", "GET /v1/models?api_key=***&x=1 HTTP/1.1"),
    ("http://h/v1?x=1&key=k-123#top", "http://h/v1?x=1&key=***#top"),
    ("http://h/v1?access_token=t1&token=t2&client_secret=s&sig=z&password=p",
     "http://h/v1?access_token=***&token=***&client_secret=***&sig=***&password=***"),
    ("500: upstream failed for credentials Bearer sk-abc.def_1", "500: upstream failed for credentials Bearer ***"),
    ("echo: {'Authorization': 'Bearer sk-abc'}", "echo: {'Authorization': 'Bearer ***'}"),
    ("Authorization: Basic dXNlcjpwdw==", "Authorization: Basic ***"),
    ("credentials Basic dXNlcjpwdw==", "credentials Basic ***"),  # base64 of user:pw
    ('{"api_key": "sk-abc", "x-api-key": "k2"}', '{"api_key": "***", "x-api-key": "***"}'),
    ("--api_key=sk-abc refused", "--api_key=*** refused"),
    ("unexpected argument 'sk-proj-Ab12Cd34Ef56Gh78Ij90'", "unexpected argument '[secret]'"),
    ("token hf_AbCdEfGhIjKlMnOpQrStUv", "token [secret]"),
])
def test_every_form_of_credential_is_masked(text, shown):
    assert redact(text) == shown
    assert redact(shown) == shown  # masking twice changes nothing


@pytest.mark.parametrize("text", [
    "Basic arithmetic and the bearer. of news", "max_tokens=256 prompt_tokens: 12 monkey=3",
    "http://127.0.0.1:8000/v1?model=m&stream=true", "a key: instruction", "user@example.com wrote",
    "see https://host/v1/@mention", "round 3: 429 Too Many Requests",
    "send it as 'Authorization: Bearer <key>'",
])
def test_text_without_credentials_is_left_as_it_is(text):
    assert redact(text) == text


def test_registered_keys_are_masked_wherever_they_appear():
    register_secret(KEY)
    register_secret("abc")  # too short to mask without mangling ordinary words
    assert redact(f"key {KEY} in ?key={KEY} and Bearer {KEY}; abc") == \
        "key [secret] in ?key=[secret] and Bearer [secret]; abc"


def test_a_record_is_redacted_in_every_string_and_keeps_its_shape():
    record = {"base_url": "http://t0ken@h/v1", "n": 3, "urls": ["http://a:b1@h/v1", None], "ok": True}
    assert redact_record(record) == {"base_url": "http://***@h/v1", "n": 3, "urls": ["http://a:***@h/v1", None], "ok": True}
    assert redact_url(None) is None


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


def test_a_flag_error_does_not_echo_the_key(tmp_path, capsys, monkeypatch):
    for args in (["--api_key", KEY, "--num_instruction", "5"], ["--api_key", KEY, "--quiet", KEY], [KEY]):
        monkeypatch.setattr(secrets, "_secrets", set())  # each as in a process of its own
        with pytest.raises(SystemExit):
            cli(["--output_dir", str(tmp_path / "out"), *args])
        err = capsys.readouterr().err
        assert "self_instruct: error:" in err and KEY not in err


def test_any_teachers_error_is_masked_where_it_enters_the_engine(tmp_path):
    """A teacher of a library caller's own that repeats a URL's password, a query key and an
    Authorization header in its errors: the ledger, the rejects and state.json show none of it."""
    from self_instruct.teachers.fake import FakeTeacher
    from self_instruct.types import Completion

    error = "502 from http://ann:PWSENT1x@host/v1?api_key=QSENT2x: headers {'Authorization': 'Bearer BSENT3x'}"
    teacher = FakeTeacher(respond=lambda prompt: Completion("", finish_reason="error", error=error))
    with pytest.raises(SelfInstructError):  # every round fails: the run stalls, saying why
        generate(str(tmp_path / "out"), teacher=teacher, request_batch_size=2, max_stall_rounds=2, quiet=True)
    rejected = (tmp_path / "out" / "rejected.jsonl").read_text()
    assert "http://ann:***@host/v1?api_key=***" in rejected and "'Bearer ***'" in rejected
    for path in (tmp_path / "out").iterdir():
        for sentinel in ("PWSENT1x", "QSENT2x", "BSENT3x"):
            assert sentinel not in path.read_text(), path


def test_whatever_a_command_writes_to_stderr_is_masked_and_stdout_is_left_alone(capsys):
    """A print of the command's own or a library's, a progress line: all pass the redaction at the
    CLI edge; stdout carries data (a dry run's prompt) and is written as it is."""
    from self_instruct.cli import run

    def main(path: str = "x"):
        print(f"self_instruct: skipped {path}", file=sys.stderr)
        sys.stderr.write("progress | Authorization: Bearer tok-123\r")
        print("The prompt says: Authorization: Bearer tok-123")

    run(main, ["--path", "http://TOKSENT9@host/docs?token=QSENT9"], name="self_instruct.thing")
    out, err = capsys.readouterr()
    assert "TOKSENT9" not in err and "QSENT9" not in err and "tok-123" not in err
    assert "skipped http://***@host/docs?token=***\n" in err and "Bearer ***\r" in err
    assert out == "The prompt says: Authorization: Bearer tok-123\n"
    assert not isinstance(sys.stderr, secrets.RedactedStream)  # put back when the command ends
