"""Exports: every format round-trips or has the shape its tools read; hostile cells survive; sheets come back."""
import csv
import doctest
import json
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

from self_instruct import export
from self_instruct.export import assign_ids, cli, read_inputs

REPO = Path(__file__).resolve().parents[2]
datasets = pytest.importorskip("datasets")
openpyxl = pytest.importorskip("openpyxl")
pytest.importorskip("jsonlines")

# Texts that break naive writers and readers: line separators str.splitlines splits on, emoji,
# right-to-left text, embedded newlines, commas and quotes, and cells a spreadsheet would run.
HOSTILE = [
    "Line one\u2028line two\u2029para \x85 next",
    "Emoji 😀👍🏽 and family 👨‍👩‍👧 and flags 🇫🇷",
    "שלום עולם, مرحبا بالعالم (right to left) mixed with English",
    "multi\nline\r\nwith CRLF\rand a lone CR",
    'commas, "double quotes", \'single\' and ""doubled""',
    "=SUM(A1:A3)",
    "+1 (555) 123",
    "-5 degrees",
    "@cmd|' /C calc'!A0",
    "\tstarts with a tab",
    "'=already quoted",
    "''",
    "'plain apostrophe",
    "  leading and trailing spaces  ",
    "literal _x0041_ and form\x0cfeed and \x1b escape and NUL \x00 here",
    "中文指令：把这句话翻译成英文。",
    "trailing newline\n",
]

# every format an instruction record can go to (preference rows need the pairs preferences makes)
INSTRUCTION_FORMATS = [f for f in export.FORMATS if f != "preference"]

def hostile_records():
    records = []
    for i, text in enumerate(HOSTILE):
        records.append({"instruction": f"Task {i}: {text}", "input": text if i % 2 else "", "output": text,
                        "most_similar_instructions": {"x": 0.1}, "avg_similarity_score": 0.1 + i / 100,
                        "metadata": {**({"source": f"doc_{i}.md", "score": i / 2} if i % 3 == 0 else {})},
                        "provenance": {"run": "r1", "unit": i, "model": "m"}})
    return records


# A documents run's metadata (instruct mode, the chunk as input) and two keys its input brought:
# twelve keys that every export must keep.
CHUNK = ("Tomatoes need at least six hours of direct sun each day. Water them deeply twice a week. "
         "Loamy soil rich in organic matter works best. Mulch keeps the soil moist. ") * 6


def documents_records(n=6):
    return [{"instruction": f"Summarize what part {i} says about growing tomatoes.", "input": CHUNK,
             "output": f"Part {i}: sun, deep water, loam.",
             "most_similar_instructions": {"Summarize the soil section.": 0.3}, "avg_similarity_score": 0.3,
             "metadata": {"source": f"books/garden_{i % 2}.pdf", "page": 3 + i, "last_page": 4 + i,
                          "headings": ["Part One", f"Soil {i}"], "start": 1000 * i, "end": 1000 * i + len(CHUNK),
                          "chunk": i, "mode": "instruct", "category": "summarization", "grounded": True,
                          "persona": "a gardener", "tags": ["sun", "soil"]},
             "provenance": {"run": "abc123", "unit": i, "model": "teacher-m"}} for i in range(n)]


def alpaca(records):
    return [{k: r.get(k, "") for k in ("instruction", "input", "output")} for r in records]


def carried(records):
    """What the JSON formats keep of each record besides its id: texts, metadata and provenance (where there are any)."""
    return [{**{k: r.get(k, "") for k in ("instruction", "input", "output")},
             **{k: r[k] for k in ("metadata", "provenance") if r.get(k)}} for r in records]


def without_id(records):
    return [{k: v for k, v in r.items() if k != "id"} for r in records]


def write_jsonl(path, records):
    path.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in records), encoding="utf-8")
    return path


def read_lines(path):
    return [json.loads(line) for line in Path(path).read_text(encoding="utf-8").split("\n") if line]


def run(capsys, *args):
    """The command as `python -m self_instruct.export` runs it, in this process: (exit status, stderr)."""
    try:
        cli([str(a) for a in args])
        status = 0
    except SystemExit as exc:
        status = exc.code
    return status, capsys.readouterr().err


def rewrite_csv(sheet, edit):
    """Open a csv sheet as a reviewer's editor would, let `edit` change the rows (header first), save it without a BOM."""
    with open(sheet, newline="", encoding="utf-8-sig") as f:
        rows = list(csv.reader(f))
    rows = edit(rows) or rows
    with open(sheet, "w", newline="", encoding="utf-8") as f:
        csv.writer(f).writerows(rows)


def test_docstring_examples():
    assert doctest.testmod(export).failed == 0


@pytest.mark.parametrize("fmt", ["alpaca", "jsonl", "csv", "xlsx"])
def test_every_format_round_trips_hostile_records(tmp_path, capsys, fmt):
    source = write_jsonl(tmp_path / "generated.jsonl", hostile_records())
    out = tmp_path / f"out.{fmt}"
    status, err = run(capsys, source, "--format", fmt, "--output", out)
    assert status == 0, err
    back, _ = read_inputs([out])
    assert [r["id"] for r in back] == [r["id"] for r in assign_ids(hostile_records())]
    if fmt in ("csv", "xlsx"):  # a sheet gives back the whole record: its json column holds what the columns do not
        assert without_id(back) == hostile_records()
    else:
        assert without_id(back) == carried(hostile_records())


def test_documents_provenance_reaches_every_format(tmp_path, capsys):
    """All twelve metadata keys of a documents record, its provenance and its id, in what each
    format's reader gives back: datasets for the JSON formats and hf, our own reader for sheets."""
    records = documents_records()
    source = write_jsonl(tmp_path / "generated.jsonl", records)
    ids = [r["id"] for r in assign_ids(records)]
    assert len(set(ids)) == len(records) and len(records[0]["metadata"]) == 12
    for fmt in INSTRUCTION_FORMATS:
        out = tmp_path / (f"out.{fmt}" if fmt in ("csv", "xlsx", "hf") else f"{fmt}.jsonl")
        status, err = run(capsys, source, "--format", fmt, "--output", out)
        assert status == 0, err
        if fmt in ("csv", "xlsx"):
            rows = read_inputs([out])[0]
        elif fmt == "hf":
            rows = [dict(r, metadata=json.loads(r["metadata"]), provenance=json.loads(r["provenance"]))
                    for r in datasets.load_from_disk(str(out)).to_list()]
        else:
            rows = datasets.load_dataset("json", data_files=str(out), split="train").to_list()
        assert [r["id"] for r in rows] == ids, fmt
        assert [r["metadata"] for r in rows] == [r["metadata"] for r in records], fmt
        assert [r["provenance"] for r in rows] == [r["provenance"] for r in records], fmt


def test_ids_are_stable_across_exports_and_unique(tmp_path, capsys):
    records = documents_records()
    source = write_jsonl(tmp_path / "in.jsonl", records)
    assert run(capsys, source, "--output", tmp_path / "all.jsonl")[0] == 0
    everything = {r["instruction"]: r["id"] for r in read_lines(tmp_path / "all.jsonl")}
    # a subset, another order, another format, a split: each record keeps its id
    subset = write_jsonl(tmp_path / "subset.jsonl", records[4:1:-1])
    assert run(capsys, subset, "--format", "messages", "--output", tmp_path / "m.jsonl", "--split", "0.5")[0] == 0
    parts = read_lines(tmp_path / "m.train.jsonl") + read_lines(tmp_path / "m.test.jsonl")
    assert sorted(r["id"] for r in parts) == sorted(everything[r["instruction"]] for r in records[2:5])
    # an id a record brings is its own; the same record twice gets a second id
    mine = [dict(records[0], id="chapter-1/q-1"), records[1], records[1]]
    source = write_jsonl(tmp_path / "mine.jsonl", mine)
    assert run(capsys, source, "--output", tmp_path / "mine.out.jsonl")[0] == 0
    got = [r["id"] for r in read_lines(tmp_path / "mine.out.jsonl")]
    first = everything[records[1]["instruction"]]
    assert got == ["chapter-1/q-1", first, f"{first}-2"]


@pytest.mark.parametrize("fmt", ["alpaca", "jsonl", "messages", "prompt-completion", "sharegpt"])
def test_the_suffix_decides_json_list_or_lines(tmp_path, capsys, fmt):
    source = write_jsonl(tmp_path / "in.jsonl", documents_records(3))
    for suffix in (".json", ".jsonl"):
        out = tmp_path / f"data{suffix}"
        status, err = run(capsys, source, "--format", fmt, "--output", out)
        assert status == 0, err
        text = out.read_text(encoding="utf-8")
        if suffix == ".json":
            assert isinstance(json.loads(text), list) and len(json.loads(text)) == 3
        else:
            assert len(text.splitlines()) == 3 and all(isinstance(json.loads(line), dict) for line in text.splitlines())
        loaded = datasets.load_dataset("json", data_files=str(out), split="train")
        assert loaded.num_rows == 3 and "id" in loaded.column_names
    if fmt == "sharegpt":  # LLaMA-Factory finds the file that was written, whichever its layout
        info = json.loads((tmp_path / "dataset_info.json").read_text())
        assert info["data"]["file_name"] == "data.jsonl"


def test_provenance_drop_writes_the_formats_own_fields_only(tmp_path, capsys):
    source = write_jsonl(tmp_path / "in.jsonl", documents_records(2))
    expected = {"alpaca": ["input", "instruction", "output"], "messages": ["messages"],
                "prompt-completion": ["completion", "prompt"], "sharegpt": ["conversations"]}
    for fmt, keys in expected.items():
        out = tmp_path / f"{fmt}.jsonl"
        assert run(capsys, source, "--format", fmt, "--output", out, "--provenance", "drop")[0] == 0
        assert [sorted(r) for r in read_lines(out)] == [keys, keys]
    assert run(capsys, source, "--format", "hf", "--output", tmp_path / "ds", "--provenance", "drop")[0] == 0
    assert datasets.load_from_disk(str(tmp_path / "ds")).column_names == ["instruction", "input", "output"]


def test_sheet_back_to_jsonl_is_the_records(tmp_path, capsys):
    for fmt in ("csv", "xlsx"):
        source = write_jsonl(tmp_path / "generated.jsonl", hostile_records())
        sheet, back = tmp_path / f"review.{fmt}", tmp_path / "back.jsonl"
        assert run(capsys, source, "--format", fmt, "--output", sheet)[0] == 0
        renamed = sheet.rename(tmp_path / "review.data")  # --from names the kind when the suffix does not
        status, err = run(capsys, renamed, "--from", fmt, "--format", "jsonl", "--output", back)
        assert status == 0, err
        assert read_lines(back) == [{"id": r["id"], **c} for r, c in zip(assign_ids(hostile_records()), carried(hostile_records()))]
        assert "\u2028" not in back.read_text(encoding="utf-8")  # escaped for splitlines-based readers


def test_formula_cells_are_written_as_text(tmp_path, capsys):
    source = write_jsonl(tmp_path / "in.jsonl", [{"instruction": "=SUM(A1:A3)", "input": "+1", "output": "@cmd|' /C calc'!A0"}])
    assert run(capsys, source, "--format", "csv", "--output", tmp_path / "r.csv")[0] == 0
    assert run(capsys, source, "--format", "xlsx", "--output", tmp_path / "r.xlsx")[0] == 0
    rows = list(csv.reader(open(tmp_path / "r.csv", newline="", encoding="utf-8-sig")))
    assert rows[1][1:4] == ["'=SUM(A1:A3)", "'+1", "'@cmd|' /C calc'!A0"]
    sheet_xml = zipfile.ZipFile(tmp_path / "r.xlsx").read("xl/worksheets/sheet1.xml").decode()
    assert "<f>" not in sheet_xml and "=SUM(A1:A3)" in sheet_xml
    (tmp_path / "ff.jsonl").write_text(json.dumps({"instruction": "page\fbreak", "output": "ok"}) + "\n")
    assert run(capsys, tmp_path / "ff.jsonl", "--format", "xlsx", "--output", tmp_path / "ff.xlsx")[0] == 0
    assert "page_x000C_break" in zipfile.ZipFile(tmp_path / "ff.xlsx").read("xl/worksheets/sheet1.xml").decode()
    cell = openpyxl.load_workbook(tmp_path / "r.xlsx").active["B2"]
    assert (cell.value, cell.data_type, cell.quotePrefix) == ("=SUM(A1:A3)", "s", True)


def test_a_formula_typed_into_an_xlsx_sheet_is_refused(tmp_path, capsys):
    source = write_jsonl(tmp_path / "in.jsonl", documents_records(3))
    sheet, out = tmp_path / "review.xlsx", tmp_path / "back.jsonl"
    assert run(capsys, source, "--format", "xlsx", "--output", sheet)[0] == 0
    book = openpyxl.load_workbook(sheet)
    book.active["D3"] = "=B3&C3"  # the output of the second record, computed from its other cells
    book.save(sheet)
    status, err = run(capsys, sheet, "--output", out)
    assert status == 2 and len(err.strip().splitlines()) == 1
    assert err.startswith(f'self_instruct: error: {sheet}: row 3: column "output" holds a formula (=B3&C3)')
    assert not out.exists()
    book.active["D3"] = "=B3&C3"
    book.active["D3"].data_type = "s"  # the same text typed as text (an apostrophe first): kept as it is
    book.save(sheet)
    assert run(capsys, sheet, "--output", out)[0] == 0
    assert read_lines(out)[1]["output"] == "=B3&C3"


def test_formula_text_in_a_csv_sheet_is_kept_as_text(tmp_path, capsys):
    """A csv holds no formulas, only text: what a reviewer typed is what comes back, never a value computed from it."""
    source = write_jsonl(tmp_path / "in.jsonl", documents_records(2))
    sheet, out = tmp_path / "review.csv", tmp_path / "back.jsonl"
    assert run(capsys, source, "--format", "csv", "--output", sheet)[0] == 0

    def edit(rows):
        rows[1][3] = "=1+1"
    rewrite_csv(sheet, edit)
    assert run(capsys, sheet, "--output", out)[0] == 0
    assert read_lines(out)[0]["output"] == "=1+1"


@pytest.mark.parametrize("fmt", ["csv", "xlsx"])
def test_a_reviewed_sheet_joins_back_by_id(tmp_path, capsys, fmt):
    """Edited cells win, deleted rows are gone, every kept row keeps its id and all its metadata,
    a row a reviewer added or copied gets an id of its own."""
    records = documents_records(5)
    ids = [r["id"] for r in assign_ids(records)]
    source = write_jsonl(tmp_path / "in.jsonl", records)
    sheet, back = tmp_path / f"review.{fmt}", tmp_path / "back.jsonl"
    assert run(capsys, source, "--format", fmt, "--output", sheet)[0] == 0
    column = {name: i for i, name in enumerate(export.SHEET_COLUMNS)}
    if fmt == "csv":
        def edit(rows):
            rows[1][column["output"]] = "An edited answer, with a comma\nand a new line."
            rows[2][column["page"]] = "42"  # a reviewer corrects the page
            rows[2][column["headings"]] = "Part One > Watering"
            rows[2][column["last_page"]] = ""  # an emptied cell removes the value
            rows.append(list(rows[5]))  # a copy of the last row, to vary it
            rows[-1][column["output"]] = "A variant of part 4."
            del rows[4]  # record 3
            rows.append(["", "Name a colour a reviewer added.", "", "Blue"])
        rewrite_csv(sheet, edit)
    else:
        book = openpyxl.load_workbook(sheet)
        ws = book.active
        cell = lambda row, name: ws.cell(row, column[name] + 1)  # noqa: E731
        cell(2, "output").value = "An edited answer, with a comma\nand a new line."
        cell(3, "page").value = 42
        cell(3, "headings").value = "Part One > Watering"
        cell(3, "last_page").value = None
        ws.append([c.value for c in ws[6]])
        cell(7, "output").value = "A variant of part 4."
        ws.delete_rows(5)
        ws.append([None, "Name a colour a reviewer added.", None, "Blue"])
        ws.append([None] * 4)  # a blank row spreadsheets leave behind
        book.save(sheet)
    status, err = run(capsys, sheet, "--format", "jsonl", "--output", back)
    assert status == 0, err
    got = read_lines(back)
    expected = carried(records)
    expected[0]["output"] = "An edited answer, with a comma\nand a new line."
    expected[1]["metadata"] = dict(expected[1]["metadata"], page=42, headings=["Part One", "Watering"])
    del expected[1]["metadata"]["last_page"]
    variant = dict(expected[4], output="A variant of part 4.")
    added = {"instruction": "Name a colour a reviewer added.", "input": "", "output": "Blue"}
    assert without_id(got) == [expected[0], expected[1], expected[2], expected[4], variant, added]
    assert [r["id"] for r in got[:4]] == [ids[0], ids[1], ids[2], ids[4]]
    assert len({r["id"] for r in got}) == 6 and not {got[4]["id"], got[5]["id"]} & set(ids)


def test_sheet_columns_are_found_by_header_and_blank_rows_skipped(tmp_path, capsys):
    records = documents_records(4)
    source = write_jsonl(tmp_path / "in.jsonl", records)
    sheet = tmp_path / "review.csv"
    assert run(capsys, source, "--format", "csv", "--output", sheet)[0] == 0
    assert sheet.read_bytes().startswith(b"\xef\xbb\xbf")  # the BOM that makes Excel read UTF-8

    def edit(rows):  # a reviewer moves the last column first, adds a comment column and leaves a blank row
        rows[:] = [[row[-1], *row[:-1], note] for row, note in zip(rows, ["comment", "fine", "", "typo?", ""])]
        rows.insert(3, [""] * len(rows[0]))
    rewrite_csv(sheet, edit)
    status, err = run(capsys, sheet, "--output", tmp_path / "back.jsonl")
    assert status == 0, err
    assert without_id(read_lines(tmp_path / "back.jsonl")) == carried(records)


def test_a_sheet_without_the_json_column_still_comes_back(tmp_path, capsys):
    """A reviewer who deletes the json column keeps what the visible columns show."""
    source = write_jsonl(tmp_path / "in.jsonl", documents_records(2))
    sheet = tmp_path / "review.csv"
    assert run(capsys, source, "--format", "csv", "--output", sheet)[0] == 0
    rewrite_csv(sheet, lambda rows: [row[:-1] for row in rows])
    assert run(capsys, sheet, "--output", tmp_path / "back.jsonl")[0] == 0
    first = read_lines(tmp_path / "back.jsonl")[0]
    assert first["metadata"] == {"source": "books/garden_0.pdf", "page": 3, "last_page": 4, "headings": ["Part One", "Soil 0"],
                                 "start": 0, "end": len(CHUNK)}
    assert first["provenance"] == {"unit": 0}


@pytest.mark.parametrize("fmt,row,column,value,message", [
    ("csv", 4, "instruction", "", 'review.csv: row 4: field "instruction" is empty'),
    ("csv", 3, "unit", "second", 'review.csv: row 3: column "unit" must be a whole number (got \'second\')'),
    ("csv", 2, "json", '{"metadata": ', 'review.csv: row 2: column "json" is not valid JSON'),
    ("csv", 1, "output", "answer", "review.csv: row 1: the header lacks 'output'"),
    ("xlsx", 5, "similarity", "high", 'review.xlsx: row 5: column "similarity" must be a number (got \'high\')'),
    ("xlsx", 2, "output", None, 'review.xlsx: row 2: field "output" is empty'),
    ("xlsx", 3, "json", "[1, 2]", 'review.xlsx: row 3: column "json" must hold a JSON object (got list)'),
])
def test_a_bad_row_is_one_line_naming_it(tmp_path, capsys, fmt, row, column, value, message):
    source = write_jsonl(tmp_path / "in.jsonl", hostile_records()[:5])
    sheet, out = tmp_path / f"review.{fmt}", tmp_path / "back.jsonl"
    assert run(capsys, source, "--format", fmt, "--output", sheet)[0] == 0
    index = export.SHEET_COLUMNS.index(column)
    if fmt == "csv":
        def edit(rows):
            rows[row - 1][index] = value
        rewrite_csv(sheet, edit)
    else:
        book = openpyxl.load_workbook(sheet)
        book.active.cell(row, index + 1).value = value
        book.save(sheet)
    status, err = run(capsys, sheet, "--output", out)
    assert status == 2
    assert len(err.strip().splitlines()) == 1 and err.startswith(f"self_instruct: error: {tmp_path / message}")
    assert not out.exists()


def test_messages_prompt_completion_and_sharegpt_have_the_shapes_their_tools_read(tmp_path, capsys):
    from self_instruct.core.templates import load_training_templates, render_training_prompt

    records = hostile_records()[:6]
    source = write_jsonl(tmp_path / "generated.jsonl", records)
    for fmt, name in (("messages", "chat.jsonl"), ("prompt-completion", "pc.jsonl"), ("sharegpt", "sharegpt.json")):
        status, err = run(capsys, source, "--format", fmt, "--output", tmp_path / name, "--system", "Answer briefly.")
        assert status == 0, err
    ids = [r["id"] for r in assign_ids(records)]

    chat = datasets.load_dataset("json", data_files=str(tmp_path / "chat.jsonl"), split="train")
    assert chat.column_names == ["id", "messages", "metadata", "provenance"] and chat["id"] == ids
    first = chat[1]["messages"]
    assert [m["role"] for m in first] == ["system", "user", "assistant"]
    assert first[1]["content"] == f"{records[1]['instruction']}\n\n{records[1]['input']}"
    assert chat[0]["messages"][1]["content"] == records[0]["instruction"]  # no input: the instruction alone
    assert [row["messages"][2]["content"] for row in chat] == [r["output"] for r in records]

    pc = datasets.load_dataset("json", data_files=str(tmp_path / "pc.jsonl"), split="train")
    assert pc.column_names == ["id", "prompt", "completion", "metadata", "provenance"]
    templates = load_training_templates()
    assert pc["prompt"] == [render_training_prompt(dict(r), templates) for r in records]  # exactly what train.py trains on
    assert pc["completion"] == [r["output"] for r in records]

    share = datasets.load_dataset("json", data_files=str(tmp_path / "sharegpt.json"), split="train")
    assert sorted(share.column_names) == ["conversations", "id", "metadata", "provenance", "system"]
    assert [[turn["from"] for turn in row] for row in share["conversations"]] == [["human", "gpt"]] * len(records)
    assert share["system"] == ["Answer briefly."] * len(records)
    info = json.loads((tmp_path / "dataset_info.json").read_text())
    assert info["sharegpt"] == {
        "file_name": "sharegpt.json", "formatting": "sharegpt", "columns": {"messages": "conversations", "system": "system"},
        "tags": {"role_tag": "from", "content_tag": "value", "user_tag": "human", "assistant_tag": "gpt"}}


def test_dataset_info_keeps_the_other_datasets(tmp_path, capsys):
    (tmp_path / "dataset_info.json").write_text(json.dumps({"alpaca_en": {"file_name": "alpaca_en.json"}}))
    source = write_jsonl(tmp_path / "in.jsonl", alpaca(hostile_records())[:4])
    assert run(capsys, source, "--format", "sharegpt", "--output", tmp_path / "ours.json", "--split", "0.5")[0] == 0
    info = json.loads((tmp_path / "dataset_info.json").read_text())
    assert sorted(info) == ["alpaca_en", "ours_test", "ours_train"]
    assert info["ours_train"]["file_name"] == "ours.train.json" and "system" not in info["ours_train"]["columns"]


def test_hf_dataset_saved_to_disk(tmp_path, capsys):
    records = hostile_records()
    source = write_jsonl(tmp_path / "in.jsonl", records)
    assert run(capsys, source, "--format", "hf", "--output", tmp_path / "ds")[0] == 0
    saved = datasets.load_from_disk(str(tmp_path / "ds"))
    assert saved.column_names == ["id", "instruction", "input", "output", "metadata", "provenance"]
    assert [{k: r[k] for k in ("instruction", "input", "output")} for r in saved.to_list()] == alpaca(records)
    assert [json.loads(m) for m in saved["metadata"]] == [r["metadata"] for r in records]
    assert run(capsys, source, "--format", "hf", "--output", tmp_path / "ds", "--split", "0.75")[0] == 0  # replaces it
    split = datasets.load_from_disk(str(tmp_path / "ds"))
    assert (split.num_rows) == {"train": 13, "test": 4}
    assert sorted(list(split["train"]["instruction"]) + list(split["test"]["instruction"])) == sorted(r["instruction"] for r in records)
    (tmp_path / "notes").mkdir()
    (tmp_path / "notes" / "mine.txt").write_text("keep me")
    status, err = run(capsys, source, "--format", "hf", "--output", tmp_path / "notes")
    assert status == 2 and "exists and is not a saved dataset" in err
    assert (tmp_path / "notes" / "mine.txt").read_text() == "keep me"


def test_split_is_seeded_disjoint_and_complete(tmp_path, capsys):
    records = [{"instruction": f"Task number {i}.", "input": "", "output": str(i)} for i in range(200)]
    source = write_jsonl(tmp_path / "in.jsonl", records)

    def parts(seed, name):
        assert run(capsys, source, "--output", tmp_path / name, "--split", "0.95", "--seed", seed)[0] == 0
        return [without_id(read_lines(tmp_path / name.replace(".", f".{part}."))) for part in ("train", "test")]

    train, test = parts(1, "a.jsonl")
    assert (len(train), len(test)) == (190, 10)
    assert sorted(train + test, key=lambda r: int(r["output"])) == records
    assert train == sorted(train, key=lambda r: int(r["output"]))  # each part keeps the input order
    assert parts(1, "b.jsonl") == [train, test]
    assert parts(2, "c.jsonl")[1] != test


def test_held_out_records_are_never_exported(tmp_path, capsys):
    records = [{"instruction": f"Task KEPT-{i}.", "input": "", "output": "Yes."} for i in range(6)]
    for i in (1, 4):
        records[i].update(instruction=f"Task HELD-{i}.", metadata={"holdout": True})
    source = write_jsonl(tmp_path / "in.jsonl", records)
    for fmt in INSTRUCTION_FORMATS:
        out = tmp_path / f"out.{fmt}"
        status, err = run(capsys, source, "--format", fmt, "--output", out)
        assert status == 0, err
        assert "4 records" in err and "skipped 2 held out for evaluation (metadata.holdout)" in err
        if fmt == "hf":
            text = json.dumps(datasets.load_from_disk(str(out)).to_list())
        elif fmt == "xlsx":
            text = json.dumps(read_inputs([out])[0])
        else:
            text = out.read_text(encoding="utf-8")
        assert [i for i in range(6) if f"KEPT-{i}" in text] == [0, 2, 3, 5] and "HELD" not in text, fmt


def test_inputs_are_concatenated_in_order_and_a_run_directory_is_its_pool(tmp_path, capsys):
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    first = write_jsonl(run_dir / "generated.jsonl", hostile_records()[:3])
    second = tmp_path / "more.json"
    second.write_text(json.dumps(alpaca(hostile_records())[3:5]), encoding="utf-8")
    status, err = run(capsys, run_dir, second, first, "--format", "alpaca", "--output", tmp_path / "all.json")
    assert status == 0, err
    together = alpaca(hostile_records())
    assert alpaca(json.loads((tmp_path / "all.json").read_text())) == together[:5] + together[:3]


@pytest.mark.parametrize("lines,message", [
    (['{"instruction": "Name a colour.", "output": "Red."}', '{"instruction": "Add 2 and 3."}'],
     'in.jsonl:2: field "output" is missing'),
    (['{"instruction": "Name a colour.", "input": null, "output": "Red."}'], 'in.jsonl:1: field "input" must be text (got null)'),
    (['{"instruction": "  ", "output": "Red."}'], 'in.jsonl:1: field "instruction" is empty'),
    (['{"instruction": "Name a colour.", "output": "Red.", "id": [1]}'], 'in.jsonl:1: field "id" must be text or a whole number (got list)'),
    (['{"instruction": "Name a colour.", "output": "Red."', ""], "in.jsonl:1: not valid JSON"),
])
def test_bad_input_is_one_line_and_writes_nothing(tmp_path, capsys, lines, message):
    (tmp_path / "in.jsonl").write_text("\n".join(lines) + "\n", encoding="utf-8")
    out = tmp_path / "out.jsonl"
    status, err = run(capsys, tmp_path / "in.jsonl", "--output", out)
    assert status == 2
    assert len(err.strip().splitlines()) == 1 and err.startswith(f"self_instruct: error: {tmp_path / message}")
    assert not out.exists() and list(tmp_path.iterdir()) == [tmp_path / "in.jsonl"]


@pytest.mark.parametrize("args,message", [
    (["--format", "parquet"], "--format must be one of alpaca, jsonl, messages"),
    (["--split", "1.5"], "--split must be between 0 and 1"),
    (["--from", "ods"], "--from must be csv or xlsx"),
    (["--provenance", "some"], "--provenance must be keep or drop"),
    (["--fromat", "csv"], "unknown flag --fromat; did you mean --format?"),
])
def test_bad_flags_are_one_line(tmp_path, capsys, args, message):
    source = write_jsonl(tmp_path / "in.jsonl", alpaca(hostile_records())[:3])
    status, err = run(capsys, source, "--output", tmp_path / "o.jsonl", *args)
    assert status == 2 and message in err and len(err.strip().splitlines()) == 1
    assert not (tmp_path / "o.jsonl").exists()


@pytest.mark.parametrize("source,args,clash", [
    ("in.jsonl", ["--output", "./in.jsonl"], "would overwrite the input"),
    ("in.train.jsonl", ["--output", "in.jsonl", "--split", "0.5"], "would overwrite the input"),
    ("run", ["--output", "run/commits.jsonl"], "would overwrite commits.jsonl of the run"),
    ("run", ["--output", "run/generated.jsonl", "--format", "alpaca"], "would overwrite the input"),
])
def test_an_output_that_is_an_input_is_refused_before_anything_is_written(tmp_path, capsys, monkeypatch,
                                                                        source, args, clash):
    monkeypatch.chdir(tmp_path)
    path = Path("run/generated.jsonl") if source == "run" else Path(source)
    path.parent.mkdir(exist_ok=True)
    write_jsonl(path, alpaca(hostile_records())[:4])
    if source == "run":
        Path("run/commits.jsonl").write_text('{"unit": 0}\n', encoding="utf-8")
    before = {p: p.read_bytes() for p in tmp_path.rglob("*") if p.is_file()}
    status, err = run(capsys, source, *args)
    assert status == 2 and clash in err and len(err.strip().splitlines()) == 1
    assert {p: p.read_bytes() for p in tmp_path.rglob("*") if p.is_file()} == before


def trl_qwen_template():
    """Qwen2.5's chat template as TRL ships it (a file inside the trl package, not a download)."""
    import trl
    return (Path(trl.__file__).parent / "chat_templates" / "qwen2_5.jinja").read_text(encoding="utf-8")


@pytest.mark.slow
def test_trl_trains_on_the_answer_only_with_the_documented_recipes(tmp_path, capsys):
    """docs/export-and-report.md's two TRL recipes on our exports of instruct-mode records (the
    chunk is the input, 95% of the tokens): SFTConfig(assistant_only_loss=True) on the
    messages export, under Qwen2.5's chat template, for which TRL swaps in its training template,
    and SFTConfig(completion_only_loss=True) on the prompt-completion export. In both, every
    prompt and chunk token is labelled -100 and the labels left are exactly the answer and the
    end of its turn; id, metadata and provenance ride along and TRL drops them before the model.
    A tiny Llama built here takes three steps on each (nothing comes from a hub)."""
    pytest.importorskip("torch")
    transformers = pytest.importorskip("transformers")
    trl = pytest.importorskip("trl")
    from tiny_models import tiny_llama
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

    records = documents_records(8)
    source = write_jsonl(tmp_path / "in.jsonl", records)
    for fmt in ("messages", "prompt-completion"):
        assert run(capsys, source, "--format", fmt, "--output", tmp_path / f"{fmt}.jsonl")[0] == 0

    special = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]
    bpe = Tokenizer(models.BPE())
    bpe.pre_tokenizer, bpe.decoder = pre_tokenizers.ByteLevel(add_prefix_space=False), decoders.ByteLevel()
    texts = [(tmp_path / f"{fmt}.jsonl").read_text() for fmt in ("messages", "prompt-completion")] + [trl_qwen_template()]
    bpe.train_from_iterator(texts, trainers.BpeTrainer(vocab_size=400, special_tokens=special,
                                                       initial_alphabet=pre_tokenizers.ByteLevel.alphabet()))
    tokenizer = transformers.PreTrainedTokenizerFast(tokenizer_object=bpe, eos_token="<|im_end|>", pad_token="<|endoftext|>")
    tokenizer.chat_template = trl_qwen_template()

    recipes = {"messages": ({"assistant_only_loss": True}, "\n{output}<|im_end|>\n"),
               "prompt-completion": ({"completion_only_loss": True}, "{output}<|im_end|>")}
    for fmt, (loss, answer) in recipes.items():
        dataset = datasets.load_dataset("json", data_files=str(tmp_path / f"{fmt}.jsonl"), split="train")
        assert {"id", "metadata", "provenance"} <= set(dataset.column_names)
        args = trl.SFTConfig(output_dir=str(tmp_path / f"sft-{fmt}"), max_steps=3, per_device_train_batch_size=4,
                             learning_rate=1e-3, logging_steps=1, save_strategy="no", report_to=[], use_cpu=True,
                             dataloader_num_workers=0, max_length=None, **loss)
        trainer = trl.SFTTrainer(model=tiny_llama(tokenizer), args=args, train_dataset=dataset, processing_class=tokenizer)
        masked = total = 0
        for record, row in zip(records, trainer.train_dataset):
            learned = [label for label in row["labels"] if label != -100]
            assert tokenizer.decode(learned) == answer.format(output=record["output"]), fmt
            masked, total = masked + len(row["labels"]) - len(learned), total + len(row["labels"])
        assert masked / total > 0.9, fmt  # the chunk and the prompt (95% here), none of it learned
        batch = next(iter(trainer.get_train_dataloader()))
        assert set(batch) >= {"input_ids", "labels"} and not {"id", "metadata", "provenance"} & set(batch)
        trainer.train()
        losses = [entry["loss"] for entry in trainer.state.log_history if "loss" in entry]
        assert len(losses) == 3 and all(loss == loss and loss > 0 for loss in losses)


def test_the_command_runs_as_a_module_with_words_anywhere(tmp_path):
    source = write_jsonl(tmp_path / "in.jsonl", alpaca(hostile_records())[:3])
    done = subprocess.run([sys.executable, "-m", "self_instruct.export", "--format", "csv", source, "--output", tmp_path / "r.csv"],
                          capture_output=True, text=True, cwd=REPO, timeout=300)
    assert done.returncode == 0, done.stderr
    assert done.stderr.strip() == f"self_instruct: 3 records as csv in {tmp_path / 'r.csv'}"
    done = subprocess.run([sys.executable, "-m", "self_instruct.export", source, "--output"], capture_output=True, text=True, cwd=REPO, timeout=300)
    assert done.returncode == 2 and done.stderr.strip() == "self_instruct: error: --output needs a value"


def test_long_cells_round_trip_through_csv_and_are_refused_by_xlsx(tmp_path, capsys):
    records = [{"instruction": "Summarize the chapter.", "input": "word " * 60000, "output": "Short."}]
    source = write_jsonl(tmp_path / "in.jsonl", records)
    assert run(capsys, source, "--format", "csv", "--output", tmp_path / "r.csv")[0] == 0
    assert alpaca(read_inputs([tmp_path / "r.csv"])[0]) == records
    status, err = run(capsys, source, "--format", "xlsx", "--output", tmp_path / "r.xlsx")
    assert status == 2 and err.strip() == ("self_instruct: error: record 1: its input has 300,000 characters, "
                                           "more than an xlsx cell holds (32,767); export it as csv")
    assert not (tmp_path / "r.xlsx").exists()
