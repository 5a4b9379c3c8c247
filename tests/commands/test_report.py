"""The run report: made from a real run against the fake server, self-contained, every chart drawn,
and opened in headless Chromium to see that every image on it loads."""
import base64
import doctest
import hashlib
import html
import json
import re
import shutil
import struct
import subprocess
from collections import Counter
from pathlib import Path

import pytest

pytest.importorskip("matplotlib")
from self_instruct.reporting import summary as report  # noqa: E402
from self_instruct.engine.progress import StallError  # noqa: E402
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


ORCHARD = """# Orchard

## Apples

Apple trees need a cold winter to set fruit. Prune them in late February before the buds swell. Thin each cluster to a single apple in June.

## Pears

Pears ripen best off the tree in a cool room. Fire blight blackens pear shoots in wet springs. Plant two varieties so the blossoms cross-pollinate.

## Plums

Plums fruit on spurs older than two years. Silver leaf disease enters through pruning cuts made in winter. Wasps crowd around split plums in August.
"""
HERBS = """# Herbs

## Basil

Basil dies at the first touch of frost. Pinch out the flower buds to keep the leaves coming. Sow it again every three weeks for a steady supply.

## Thyme

Thyme prefers poor gravelly soil and full sun. Cut it back lightly after flowering. Old woody plants are best replaced every four years.
"""


def documents_teacher(supported=True):
    """A teacher for documents' qa mode: a question for each of a chunk's first two sentences and
    one about the moon that the check finds unsupported (every answer, when not `supported`);
    chunks about basil get a reply with no JSON in it (twice: the run asks once more)."""
    def reply(prompt, body):
        if prompt.startswith("Check each answer"):
            answers = re.findall(r"^Answer: (.*)$", prompt, re.M)
            return json.dumps([{"id": k, "supported": supported and "moon" not in a} for k, a in enumerate(answers, 1)])
        passage = prompt.split('"""')[1].strip()
        if "Basil" in passage:
            return "I would rather talk about something else."
        sentences = [s for s in re.split(r"(?<=\.)\s+", passage) if s.endswith(".")]
        openings = ("How does the guide explain that", "Why is it true that")
        pairs = [{"question": f"{opening} {s[0].lower()}{s[1:-1]}?", "answer": s} for opening, s in zip(openings, sentences)]
        pairs.append({"question": "When should fruit be picked by the light of the moon?", "answer": "Under a full moon."})
        return json.dumps(pairs)
    return reply


def documents_run(out: Path, supported=True) -> Path:
    pytest.importorskip("pysbd", reason="documents runs need the [docs] extra")
    from fake_openai import FakeOpenAI

    from self_instruct.documents import documents

    folder = out.parent / f"{out.name}-docs"
    folder.mkdir(parents=True)
    (folder / "orchard.md").write_text(ORCHARD, encoding="utf-8")
    (folder / "herbs.md").write_text(HERBS, encoding="utf-8")
    server = FakeOpenAI().start()
    server.reply_fn = documents_teacher(supported)
    try:
        documents([str(folder / "orchard.md"), str(folder / "herbs.md")], str(out), mode="qa", chunk_size=20,
                  chunk_overlap=0, base_url=server.base_url, model_name="fake-model", quiet=True)
    except StallError:  # chunks in a row that keep nothing stop a run, as they should
        assert not supported
    finally:
        server.stop()
    return out


@pytest.fixture(scope="module")
def docs_dir(tmp_path_factory):
    """A real documents run (qa mode) over two files, with ungrounded answers and unparseable replies."""
    return documents_run(tmp_path_factory.mktemp("docs") / "out")


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


DOCUMENT_SECTIONS = ["Kept and rejected", "Coverage of the documents", "Similarity of kept records", "Lengths",
                     "How the questions open", "Tokens and cost"]


def table_rows(page: str, css_class: str) -> list[list[str]]:
    table = page.split(f"<table class={css_class}>", 1)[1].split("</table>", 1)[0]
    return [re.findall(r"<td>(.*?)</td>", row, re.S) for row in table.split("<tr>")[2:]]


def test_report_of_a_documents_run(docs_dir, capsys):
    """Coverage per source, the grounding pass rate and where each sample came from, checked
    against what the run's files hold."""
    status, err = run(capsys, docs_dir)
    assert status == 0, err
    page = (docs_dir / "report.html").read_text(encoding="utf-8")
    assert [t for t in re.findall(r"<h2>(.*?)</h2>", page) if "random" not in t] == \
        DOCUMENT_SECTIONS[:2] + ["Grounding check"] + DOCUMENT_SECTIONS[2:]
    assert len(images(page)) == len(DOCUMENT_SECTIONS)

    kept, rejected = jsonl(docs_dir / "generated.jsonl"), jsonl(docs_dir / "rejected.jsonl")
    commits = jsonl(docs_dir / "commits.jsonl")
    rows = {row[0]: row for row in table_rows(page, "coverage")}
    for name in ("orchard.md", "herbs.md"):
        path = next(r["metadata"]["source"] for r in kept if r["metadata"]["source"].endswith(name))
        mine = [r for r in kept + rejected if r["metadata"].get("source") == path]
        chunks = {r["metadata"]["chunk"] for r in mine}
        kept_here = [r for r in kept if r["metadata"]["source"] == path]
        reasons = Counter(r["reason"] for r in rejected if r["metadata"].get("source") == path)
        unanswered = {r["metadata"]["chunk"] for r in mine if r.get("reason") == "unparseable"}
        assert reasons["ungrounded"] == len(chunks - unanswered)  # the moon answer of every chunk that answered
        supported = sum(r["metadata"].get("grounded") is True for r in mine)
        assert rows[path] == [path, str(len(chunks)), str(len({r["metadata"]["chunk"] for r in kept_here})),
                              str(len(kept_here)), f"{sum(reasons.values())} (" + ", ".join(
                                  f"{r} {n}" for r, n in reasons.most_common()) + ")",
                              f"{supported} of {supported + reasons['ungrounded']} ({supported / (supported + reasons['ungrounded']):.0%})"]
    # Basil's chunks: two replies without JSON each; the rejections still name the file and chunk,
    # so they count in its row above, and no row is left without a source
    unparseable = [r for r in rejected if r["reason"] == "unparseable"]
    assert unparseable and all(r["metadata"]["source"].endswith("herbs.md") and "chunk" in r["metadata"]
                               for r in unparseable)
    assert "(no source recorded)" not in rows
    with_kept = len({r["metadata"]["chunk"] for r in kept})
    assert (f"<p>{with_kept} of {len(commits)} chunks asked have kept records, {len(commits) - with_kept} only rejected "
            f"ones and 0 none at all, from 2 source file(s).</p>") in page

    supported = sum(r["metadata"].get("grounded") is True for r in kept + rejected)
    ungrounded = sum(r["reason"] == "ungrounded" for r in rejected)
    assert (f"<p>{supported} of the {supported + ungrounded} answers the teacher checked against their chunk were "
            f"supported ({supported / (supported + ungrounded):.1%}); {ungrounded} were not and were rejected as ungrounded.</p>") in page
    assert f"<tr><th>grounded</th><td>{supported} of {supported + ungrounded}</td></tr>" in page

    assert report.summarize(docs_dir).openings == Counter(r["instruction"].split()[0].lower() for r in kept)

    by_question = {r["instruction"]: r for r in kept + rejected if "instruction" in r}
    shown = cells(page, "random kept records")
    assert len(shown) == len(kept)
    for where, question, *_ in shown:  # the file, then the heading path (a markdown file has no pages)
        meta = by_question[html.unescape(question)]["metadata"]
        assert html.unescape(where) == f"{Path(meta['source']).name}, {' > '.join(meta['headings'])}"


def test_a_run_that_kept_nothing_says_why(tmp_path, capsys):
    out = documents_run(tmp_path / "out", supported=False)  # it stops after 10 chunks kept nothing
    assert not (out / "generated.jsonl").exists() and len(jsonl(out / "commits.jsonl")) == 10
    rejected = jsonl(out / "rejected.jsonl")
    status, err = run(capsys, out)
    assert status == 0 and err.strip() == f"self_instruct: report in {out / 'report.html'}"
    page = (out / "report.html").read_text(encoding="utf-8")
    reasons = Counter(r["reason"] for r in rejected)
    assert set(reasons) == {"ungrounded", "unparseable"}
    assert (f"<p class=nothing><b>No record was kept.</b> Every one of the {len(rejected)} candidates was rejected; "
            f"the top reasons: ungrounded {reasons['ungrounded']} (first: the teacher found the answer not supported "
            f"by its chunk); unparseable {reasons['unparseable']} (first: no JSON in the reply).</p>") in page
    assert "<tr><th>grounded</th><td>0 of " in page and "<h2>0 random kept records</h2><p>none</p>" in page
    assert len(images(page)) == len(DOCUMENT_SECTIONS)


def test_a_documents_run_without_its_files_on_disk(tmp_path):
    """Coverage from the records alone: chunks named by metadata, rejections that name no file
    placed with the other records of their chunk, and the chunks asked from state.json."""
    kept = [{"instruction": f"What does section {u} of the manual say?", "input": "", "output": "It says so.",
             "metadata": {"source": f"docs/manual_{u % 2}.md", "chunk": u, "grounded": True}, "provenance": {"unit": u}}
            for u in (0, 0, 2, 5)]
    rejected = [{"reason": "ungrounded", "detail": "", "instruction": "Q?", "input": "", "output": "A.",
                 "metadata": {"source": "docs/manual_1.md", "chunk": 1}, "provenance": {"unit": 1}},
                {"reason": "missing_field", "detail": "", "raw": "{}", "metadata": {}, "provenance": {"unit": 2}},
                {"reason": "request_failed", "detail": "HTTP 500", "metadata": {}, "provenance": {"unit": 7}}]
    write_run(tmp_path / "docs", kept, rejected, {"units": 8}, config={"mode": "qa", "verify": True})
    page = write_report(tmp_path / "docs").read_text(encoding="utf-8")
    assert "<h2>Coverage of the documents</h2><p>3 of 8 chunks asked have kept records, 2 only rejected ones and 3 none at all, from 2 source file(s).</p>" in page
    assert table_rows(page, "coverage") == [
        ["docs/manual_0.md", "2", "2", "3", "1 (missing_field 1)", "3 of 3 (100%)"],
        ["docs/manual_1.md", "2", "1", "1", "1 (ungrounded 1)", "1 of 2 (50%)"],
        ["(no source recorded)", "1", "0", "0", "1 (request_failed 1)", "0 of 0"]]
    assert ("<p>4 of the 5 answers the teacher checked against their chunk were supported (80.0%); 1 were not and "
            "were rejected as ungrounded.</p>") in page
    unverified = rejected + [{"reason": "unverified", "detail": "", "instruction": "Q2?", "input": "", "output": "A.",
                              "metadata": {"source": "docs/manual_1.md", "chunk": 6}, "provenance": {"unit": 6}}]
    write_run(tmp_path / "docs", kept, unverified, {"units": 8}, config={"mode": "qa", "verify": True})
    page = write_report(tmp_path / "docs").read_text(encoding="utf-8")
    assert "1 were not and were rejected as ungrounded; 1 more got no verdict and were rejected as unverified.</p>" in page
    write_run(tmp_path / "docs", kept, rejected, {"units": 8}, config={"mode": "qa", "verify": False})
    page = write_report(tmp_path / "docs").read_text(encoding="utf-8")
    assert "<p>The grounding check was off (--no_verify): no answer was checked against its chunk.</p>" in page
    assert "<tr><th>grounded</th><td>not checked (--no_verify)</td></tr>" in page
    assert [len(row) for row in table_rows(page, "coverage")] == [5, 5, 5]  # no grounded column


def test_a_windows_run_counts_sections(tmp_path):
    """In windows mode a unit is a group of sections: coverage counts sections, there is no
    grounding check and no chart of verbs (the instructions are the documents' own sentences)."""
    kept = [{"instruction": f"Sentence {k} of section {sec}.", "input": "", "output": "More.",
             "metadata": {"source": "book.epub", "section": sec, "headings": ["Book", f"Part {sec}"], "kind": "window"},
             "provenance": {"unit": 0}} for sec in (0, 1, 3) for k in range(2)]
    rejected = [{"reason": "duplicate", "detail": "", "instruction": "Sentence 0 of section 0.", "input": "", "output": "More.",
                 "metadata": {"source": "book.epub", "section": 4}, "provenance": {"unit": 1}}]
    write_run(tmp_path / "win", kept, rejected, {"units": 2}, config={"mode": "windows"})
    page = write_report(tmp_path / "win").read_text(encoding="utf-8")
    assert ("<p>4 sections made records, 3 of them kept ones; a unit of a windows run is a group of sections, so "
            "sections that made no pair at all are not counted.</p>") in page
    assert table_rows(page, "coverage") == [["book.epub", "4", "3", "6", "1 (duplicate 1)"]]
    assert "Grounding check" not in page and "Leading verbs" not in page and "grounded" not in page
    assert len(images(page)) == len(DOCUMENT_SECTIONS) - 1
    assert "<td>book.epub, Book &gt; Part 3</td>" in page


@pytest.mark.parametrize("name,content,note", [
    ("state.json", "[1, 2]", "state.json holds a JSON list, not an object; its counters are left out"),
    ("state.json", '"done"', "state.json holds a JSON string, not an object; its counters are left out"),
    ("state.json", "{", ("{run}/state.json:1: not valid JSON (Expecting property name enclosed in double quotes at column 2); "
                         "its counters are left out")),
    ("run.json", "42", "run.json holds a JSON number, not an object; the run's settings are unknown"),
    ("run.json", "null", None),
])
def test_odd_state_or_run_json_is_a_note_not_a_traceback(tmp_path, capsys, name, content, note):
    kept = [{"instruction": "Explain a topic to a child.", "input": "", "output": "Sure.", "provenance": {"unit": 0}}]
    write_run(tmp_path / "run", kept, [], {"requests": "many", "prompt_tokens": None, "cost": "free"})
    (tmp_path / "run" / name).write_text(content)
    status, err = run(capsys, tmp_path / "run")
    assert status == 0, err
    page = (tmp_path / "run" / "report.html").read_text(encoding="utf-8")
    if note:
        assert f"<p class=note>{html.escape(note.replace('{run}', str(tmp_path / 'run')))}</p>" in page
    assert "<tr><th>kept</th><td>1</td></tr>" in page and "<tr><th>requests</th><td>0 (0 failed)</td></tr>" in page


def test_files_a_resume_would_repair_are_read_as_it_would_and_left_alone(run_dir, tmp_path, capsys):
    """A unit past the commit log, a torn last line and a torn commit: the report counts what
    the last commit holds, says what it left out, and changes no byte on disk."""
    copy = tmp_path / "run"
    shutil.copytree(run_dir, copy)
    kept, rejected = jsonl(copy / "generated.jsonl"), jsonl(copy / "rejected.jsonl")
    with open(copy / "generated.jsonl", "a", encoding="utf-8") as f:
        f.write(json.dumps(dict(kept[0], instruction="A unit the run was killed while writing.")) + "\n")
        f.write('{"instruction": "torn')
    torn_reject, torn_commit = '{"reason": "similar", "det', '{"unit": 99, "generated.j'
    with open(copy / "rejected.jsonl", "a", encoding="utf-8") as f:
        f.write(torn_reject)
    with open(copy / "commits.jsonl", "a", encoding="utf-8") as f:
        f.write(torn_commit)
    files = {p.name: p.read_bytes() for p in copy.iterdir() if p.name != "report.html"}
    status, err = run(capsys, copy)
    assert status == 0, err
    assert {p.name: p.read_bytes() for p in copy.iterdir() if p.name != "report.html"} == files
    page = (copy / "report.html").read_text(encoding="utf-8")
    assert f"<tr><th>kept</th><td>{len(kept)}</td></tr>" in page
    assert f"<tr><th>rejected</th><td>{len(rejected)} (" in page
    assert "A unit the run was killed while writing." not in page
    notes = re.findall(r"<p class=note>(.*?)</p>", page)
    assert any(n.startswith(f"commits.jsonl: a torn last line of {len(torn_commit)} bytes left out") for n in notes)
    assert any(n.startswith("generated.jsonl: ") and "bytes past the last commit left out" in n for n in notes)
    assert any(n.startswith(f"rejected.jsonl: {len(torn_reject)} bytes past the last commit left out") for n in notes)
    # and a resume reads the same: the pool opened there holds exactly what the report counted
    from self_instruct.engine.pool import InstructionPool
    with InstructionPool.open(copy) as pool:
        assert len(pool) == len(kept) and sum(pool.reject_counts.values()) == len(rejected)


def test_hostile_text_is_escaped_and_an_empty_pool_still_reports(tmp_path):
    rejected = [{"reason": "blacklist", "detail": "image", "instruction": "<script>alert(1)</script> Draw an image.",
                 "input": "", "output": "x", "provenance": {"unit": 0}},
                {"reason": "request_failed", "detail": "HTTP 500 & <b>", "provenance": {"unit": 1}}]
    write_run(tmp_path / "run", [], rejected)
    page = write_report(tmp_path / "run").read_text(encoding="utf-8")
    assert "<script>" not in page and "&lt;script&gt;alert(1)&lt;/script&gt;" in page
    assert "HTTP 500 &amp; &lt;b&gt;" in page
    assert "<h2>0 random kept records</h2><p>none</p>" in page
    assert "<p class=nothing><b>No record was kept.</b> Every one of the 2 candidates was rejected" in page
    assert len(images(page)) == len(SECTIONS)


def test_a_key_or_url_password_in_a_record_is_masked_on_the_page(tmp_path):
    """A teacher can echo what it was sent: the page shows records, never the credentials in them."""
    from self_instruct.io.secrets import register_secret

    register_secret("not-a-real-key-4b1d")
    kept = [{"instruction": "Repeat the key not-a-real-key-4b1d.", "input": "", "output": "not-a-real-key-4b1d",
             "provenance": {"unit": 0}}]
    rejected = [{"reason": "request_failed", "detail": "http://ann:hunter2pass@host/v1 refused",
                 "provenance": {"unit": 1}}]
    write_run(tmp_path / "run", kept, rejected)
    page = write_report(tmp_path / "run").read_text(encoding="utf-8")
    assert "Repeat the key" in page and "http://ann:***@host/v1 refused" in page
    assert "not-a-real-key-4b1d" not in page and "hunter2pass" not in page


def test_not_a_run_directory_is_one_line(tmp_path, capsys):
    status, err = run(capsys, tmp_path)
    assert status == 2
    assert err.strip() == f"self_instruct: error: {tmp_path}: no generated.jsonl here; pass the --output_dir of a generate or documents run"
    (tmp_path / "generated.jsonl").write_text('{"instruction": "ok", "output": "fine"}\n{"instruction": \n', encoding="utf-8")
    status, err = run(capsys, tmp_path)
    assert status == 2 and err.startswith(f"self_instruct: error: {tmp_path / 'generated.jsonl'}:2: not valid JSON")
    assert not (tmp_path / "report.html").exists()


# Appended to a copy of the report: after the page has loaded, write what each image decoded to,
# the section headings and the coverage table's rows into the DOM, which --dump-dom then prints.
PROBE = """<script>
window.addEventListener("load", () => {
  const out = document.createElement("pre");
  out.id = "image-check";
  const table = document.querySelector("table.coverage");
  out.textContent = JSON.stringify({
    images: Array.from(document.images, i => [i.complete, i.naturalWidth, i.naturalHeight]),
    headings: Array.from(document.querySelectorAll("h2"), h => h.textContent),
    coverage: table ? Array.from(table.rows, r => Array.from(r.cells, c => c.textContent)) : null});
  document.body.appendChild(out);
});
</script></body>"""


@pytest.mark.slow
@pytest.mark.skipif(CHROMIUM is None, reason="needs a Chromium browser (Debian: apt-get install chromium; .ci/run installs it)")
@pytest.mark.parametrize("which", ["generate", "documents"])
def test_every_image_loads_in_headless_chromium(request, tmp_path, which):
    directory = request.getfixturevalue("run_dir" if which == "generate" else "docs_dir")
    page = write_report(directory).read_text(encoding="utf-8")
    check = tmp_path / "check.html"
    check.write_text(page.replace("</body>", PROBE), encoding="utf-8")
    browser = [CHROMIUM, "--headless", "--no-sandbox", "--disable-gpu", "--hide-scrollbars",
               f"--user-data-dir={tmp_path / 'profile'}", "--virtual-time-budget=10000"]
    dom = subprocess.run(browser + ["--dump-dom", check.as_uri()], capture_output=True, text=True, timeout=300).stdout
    found = re.search(r'<pre id="image-check">(.*?)</pre>', dom)
    assert found, dom[-2000:]
    seen = json.loads(html.unescape(found.group(1)))
    sections = SECTIONS if which == "generate" else DOCUMENT_SECTIONS
    assert len(seen["images"]) == len(images(page)) == len(sections)
    assert all(complete and width > 0 and height > 0 for complete, width, height in seen["images"]), seen["images"]
    assert all(title in seen["headings"] for title in sections)
    if which == "documents":  # the coverage table as a browser lays it out: a header and a row per source
        assert seen["coverage"][0][:5] == ["source", "chunks", "with kept records", "kept", "rejected"]
        assert sorted(Path(row[0]).name for row in seen["coverage"][1:]) == ["(no source recorded)", "herbs.md", "orchard.md"]
        assert "Grounding check" in seen["headings"]
    else:
        assert seen["coverage"] is None

    shot = tmp_path / "report.png"  # the test's artifact: what a person sees
    subprocess.run(browser + ["--window-size=1100,5200", f"--screenshot={shot}", (directory / "report.html").as_uri()],
                   capture_output=True, timeout=300, check=True)
    assert png_size(shot.read_bytes()) == (1100, 5200)
    print(f"screenshot: {shot}")


def test_a_missing_library_after_a_run_is_a_note_with_the_install_line(tmp_path, capsys, monkeypatch):
    from self_instruct import report as command

    def missing(output_dir, seed=0):
        raise ImportError("No module named 'PIL'")
    monkeypatch.setattr(command, "write_report", missing)
    command.write_report_after_run(tmp_path)
    assert capsys.readouterr().err == ("self_instruct: no report (No module named 'PIL'; "
                                       "pip install 'self_instruct[export]')\n")
