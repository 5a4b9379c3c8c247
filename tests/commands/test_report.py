"""The run report: made from a real run against the fake server, self-contained, every chart drawn,
and opened in headless Chromium to see that every image on it loads."""
import base64
import doctest
import hashlib
import json
import re
import shutil
import struct
import subprocess
from collections import Counter
from pathlib import Path

import pytest

pytest.importorskip("matplotlib")
from self_instruct import report  # noqa: E402
from self_instruct.generate import generate  # noqa: E402
from self_instruct.report import cli, write_report  # noqa: E402

CHROMIUM = next((shutil.which(name) for name in ("chromium", "chromium-browser", "google-chrome") if shutil.which(name)), None)
SECTIONS = ["Kept and rejected", "Similarity of kept records", "Lengths", "Leading verbs and their objects", "Tokens and cost"]


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory):
    """A real generate run against the fake server, with faults so that rejections vary."""
    from fake_openai import FakeOpenAI

    server = FakeOpenAI().start()
    server.script(["500", "length", "wrong_numbering"])  # a failed request, a cut-off reply, a misnumbered one
    out = tmp_path_factory.mktemp("run") / "out"
    try:
        generate(str(out), base_url=server.base_url, model_name="fake-model", num_instructions_to_generate=80,
                 request_batch_size=3, max_attempts=1, quiet=True)
    finally:
        server.stop()
    return out


def jsonl(path):
    return [json.loads(line) for line in Path(path).read_text(encoding="utf-8").split("\n") if line]


def images(page: str) -> list[bytes]:
    return [base64.b64decode(data) for data in re.findall(r'<img alt="[^"]*" src="data:image/png;base64,([^"]+)">', page)]


def png_size(data: bytes) -> tuple[int, int]:
    assert data[:8] == b"\x89PNG\r\n\x1a\n"
    return struct.unpack(">II", data[16:24])


def cells(page: str, table_heading: str) -> list[list[str]]:
    """The rows of the table after a heading, as lists of cell texts (still HTML-escaped)."""
    table = page.split(table_heading, 1)[1].split("</table>", 1)[0]
    return [re.findall(r"<td>(.*?)</td>", row, re.S) for row in table.split("<tr>")[2:]]


def run(capsys, *args):
    try:
        cli([str(a) for a in args])
        status = 0
    except SystemExit as exc:
        status = exc.code
    return status, capsys.readouterr().err


def test_docstring_examples():
    assert doctest.testmod(report).failed == 0


def test_report_of_a_real_run(run_dir, capsys):
    files = {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in run_dir.iterdir()}
    status, err = run(capsys, run_dir)
    assert status == 0 and err.strip() == f"self_instruct: report in {run_dir / 'report.html'}"
    assert {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in run_dir.iterdir() if p.name != "report.html"} == files

    page = (run_dir / "report.html").read_text(encoding="utf-8")
    for title in SECTIONS:
        assert f"<h2>{title}</h2>" in page
    pictures = images(page)
    assert len(pictures) == len(SECTIONS)
    assert all(width > 300 and height > 200 for width, height in map(png_size, pictures))
    # Self-contained: nothing to fetch, nothing to run.
    assert not re.search(r'(src|href)="(?!data:)', page) and "<script" not in page

    kept, rejected = jsonl(run_dir / "generated.jsonl"), jsonl(run_dir / "rejected.jsonl")
    state = json.loads((run_dir / "state.json").read_text())
    reasons = Counter(r["reason"] for r in rejected)
    assert {"request_failed", "similar"} <= set(reasons)
    assert f"<tr><th>kept</th><td>{len(kept)}</td></tr>" in page
    assert f"<tr><th>rejected</th><td>{len(rejected)} (" in page
    assert f"{state['prompt_tokens']:,} prompt" in page

    shown = cells(page, "20 random kept records")
    assert len(shown) == 20
    instructions = {r["instruction"] for r in kept}
    assert all(row[0] in instructions for row in shown)  # fake-server text has nothing to escape
    shown_rejected = page.split("random rejected records, every reason shown", 1)[1]
    assert all(f"<b>{reason}</b>" in shown_rejected for reason in reasons)
    # The engine writes ledger.jsonl: tokens and cost are drawn over time from its replies.
    done = [e for e in jsonl(run_dir / "ledger.jsonl") if e["event"] == "done"]
    assert f"From ledger.jsonl: {len(done)} replies." in page


def test_samples_are_seeded_and_show_every_reason(run_dir):
    def shown(seed):
        summary = report.summarize(run_dir, seed=seed)
        return summary.kept_sample, report.rejected_sample(summary)

    assert shown(1) == shown(1)
    assert shown(1)[0] != shown(2)[0]
    kept, rejected = shown(1)
    assert len(kept) == len({r["instruction"] for r in kept}) == 20
    reasons = Counter(r["reason"] for r in jsonl(run_dir / "rejected.jsonl"))
    assert len(rejected) == min(20, sum(reasons.values()))
    assert {r["reason"] for r in rejected} == set(reasons)  # the rare reasons too


def write_run(directory: Path, kept, rejected, state=None, ledger=None, config=None):
    directory.mkdir(parents=True, exist_ok=True)
    (directory / "run.json").write_text(json.dumps(config or {}))
    for name, rows in (("generated.jsonl", kept), ("rejected.jsonl", rejected), ("ledger.jsonl", ledger)):
        if rows is not None:
            (directory / name).write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows), encoding="utf-8")
    (directory / "state.json").write_text(json.dumps(state or {}))
    return directory


def test_tokens_and_cost_come_from_the_ledger(tmp_path):
    kept = [{"instruction": f"Explain topic number {i} to a child.", "input": "", "output": "Sure.", "provenance": {"unit": i}} for i in range(4)]
    ledger = []
    for unit in range(4):
        ledger.append({"event": "send", "unit": unit, "t": 1000.0 + 30 * unit})
        ledger.append({"event": "done", "unit": unit, "t": 1010.0 + 30 * unit, "prompt_tokens": 100, "completion_tokens": 50, "cost": 0.01})
    write_run(tmp_path / "run", kept, [], {"prompt_tokens": 400, "completion_tokens": 200, "cost": 0.04}, ledger)
    page = write_report(tmp_path / "run").read_text(encoding="utf-8")
    assert "From ledger.jsonl: 4 replies." in page and "no ledger.jsonl" not in page
    assert "<tr><th>cost</th><td>0.0400 USD</td></tr>" in page
    assert len(images(page)) == len(SECTIONS)


def test_a_documents_run_shows_coverage(tmp_path):
    kept = [{"instruction": f"What does section {u} of the manual say?", "input": "", "output": "It says so.",
             "metadata": {"source": f"docs/manual_{u % 2}.md"}, "provenance": {"unit": u}} for u in (0, 0, 2, 5)]
    rejected = [{"reason": "ungrounded", "detail": "", "instruction": "Q?", "input": "", "output": "A.",
                 "provenance": {"unit": u}} for u in (1, 2)]
    write_run(tmp_path / "docs", kept, rejected, {"units": 8}, config={"mode": "qa"})
    page = write_report(tmp_path / "docs").read_text(encoding="utf-8")
    assert "<h2>Coverage of the documents</h2><p>3 of 8 chunks have kept records.</p>" in page
    assert "Kept and rejected by reason" not in page or "per chunk" in page
    assert len(images(page)) == len(SECTIONS) + 1


def test_hostile_text_is_escaped_and_an_empty_pool_still_reports(tmp_path):
    rejected = [{"reason": "blacklist", "detail": "image", "instruction": "<script>alert(1)</script> Draw an image.",
                 "input": "", "output": "x", "provenance": {"unit": 0}},
                {"reason": "request_failed", "detail": "HTTP 500 & <b>", "provenance": {"unit": 1}}]
    write_run(tmp_path / "run", [], rejected)
    page = write_report(tmp_path / "run").read_text(encoding="utf-8")
    assert "<script>" not in page and "&lt;script&gt;alert(1)&lt;/script&gt;" in page
    assert "HTTP 500 &amp; &lt;b&gt;" in page
    assert "<h2>0 random kept records</h2><p>none</p>" in page
    assert len(images(page)) == len(SECTIONS)


def test_not_a_run_directory_is_one_line(tmp_path, capsys):
    status, err = run(capsys, tmp_path)
    assert status == 2
    assert err.strip() == f"self_instruct: error: {tmp_path}: no generated.jsonl here; pass the --output_dir of a generate or documents run"
    (tmp_path / "generated.jsonl").write_text('{"instruction": "ok", "output": "fine"}\n{"instruction": \n', encoding="utf-8")
    status, err = run(capsys, tmp_path)
    assert status == 2 and err.startswith(f"self_instruct: error: {tmp_path / 'generated.jsonl'}:2: not valid JSON")
    assert not (tmp_path / "report.html").exists()


# Appended to a copy of the report: after the page has loaded, write what each image decoded to
# into the DOM, which --dump-dom then prints.
PROBE = """<script>
window.addEventListener("load", () => {
  const out = document.createElement("pre");
  out.id = "image-check";
  out.textContent = JSON.stringify(Array.from(document.images, i => [i.complete, i.naturalWidth, i.naturalHeight]));
  document.body.appendChild(out);
});
</script></body>"""


@pytest.mark.slow
@pytest.mark.skipif(CHROMIUM is None, reason="needs a Chromium browser (Debian: apt-get install chromium; .ci/run installs it)")
def test_every_image_loads_in_headless_chromium(run_dir, tmp_path):
    page = write_report(run_dir).read_text(encoding="utf-8")
    check = tmp_path / "check.html"
    check.write_text(page.replace("</body>", PROBE), encoding="utf-8")
    browser = [CHROMIUM, "--headless", "--no-sandbox", "--disable-gpu", "--hide-scrollbars",
               f"--user-data-dir={tmp_path / 'profile'}", "--virtual-time-budget=10000"]
    dom = subprocess.run(browser + ["--dump-dom", check.as_uri()], capture_output=True, text=True, timeout=300).stdout
    found = re.search(r'<pre id="image-check">(.*?)</pre>', dom)
    assert found, dom[-2000:]
    loaded = json.loads(found.group(1))
    assert len(loaded) == len(images(page)) == len(SECTIONS)
    assert all(complete and width > 0 and height > 0 for complete, width, height in loaded), loaded

    shot = tmp_path / "report.png"  # the test's artifact: what a person sees
    subprocess.run(browser + ["--window-size=1100,5200", f"--screenshot={shot}", (run_dir / "report.html").as_uri()],
                   capture_output=True, timeout=300, check=True)
    assert png_size(shot.read_bytes()) == (1100, 5200)
    print(f"screenshot: {shot}")
