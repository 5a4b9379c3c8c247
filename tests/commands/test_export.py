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
from self_instruct.export import cli, read_inputs, to_row

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


def hostile_records():
    records = []
    for i, text in enumerate(HOSTILE):
        records.append({"instruction": f"Task {i}: {text}", "input": text if i % 2 else "", "output": text,
                        "most_similar_instructions": {"x": 0.1}, "avg_similarity_score": 0.1 + i / 100,
                        "metadata": {**({"source": f"doc_{i}.md", "score": i / 2} if i % 3 == 0 else {})},
                        "provenance": {"run": "r1", "unit": i, "model": "m"}})
    return records


def alpaca(records):
    return [{k: r.get(k, "") for k in ("instruction", "input", "output")} for r in records]


def write_jsonl(path, records):
    path.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in records), encoding="utf-8")
    return path


def run(capsys, *args):
    """The command as `python -m self_instruct.export` runs it, in this process: (exit status, stderr)."""
    try:
        cli([str(a) for a in args])
        status = 0
    except SystemExit as exc:
        status = exc.code
    return status, capsys.readouterr().err


def test_docstring_examples():
    assert doctest.testmod(export).failed == 0


@pytest.mark.parametrize("fmt", ["alpaca", "jsonl", "csv", "xlsx"])
def test_every_format_round_trips_hostile_records(tmp_path, capsys, fmt):
    source = write_jsonl(tmp_path / "generated.jsonl", hostile_records())
    out = tmp_path / f"out.{fmt}"
    status, err = run(capsys, source, "--format", fmt, "--output", out)
    assert status == 0, err
    back, _ = read_inputs([out])
    assert alpaca(back) == alpaca(hostile_records())
    if fmt in ("csv", "xlsx"):  # the review columns come back too
        assert [to_row(r) for r in back] == [to_row(r) for r in hostile_records()]


@pytest.mark.parametrize("fmt", ["csv", "xlsx"])
def test_sheet_back_to_jsonl_is_the_records(tmp_path, capsys, fmt):
    source = write_jsonl(tmp_path / "generated.jsonl", hostile_records())
    sheet, back = tmp_path / f"review.{fmt}", tmp_path / "back.jsonl"
    assert run(capsys, source, "--format", fmt, "--output", sheet)[0] == 0
    renamed = sheet.rename(tmp_path / "review.data")  # --from names the kind when the suffix does not
    status, err = run(capsys, renamed, "--from", fmt, "--format", "jsonl", "--output", back)
    assert status == 0, err
    lines = back.read_text(encoding="utf-8").split("\n")
    assert [json.loads(line) for line in lines if line] == alpaca(hostile_records())
    assert "\u2028" not in back.read_text(encoding="utf-8")  # escaped for splitlines-based readers


def test_formula_cells_are_text_not_formulas(tmp_path, capsys):
    source = write_jsonl(tmp_path / "in.jsonl", [{"instruction": "=SUM(A1:A3)", "input": "+1", "output": "@cmd|' /C calc'!A0"}])
    assert run(capsys, source, "--format", "csv", "--output", tmp_path / "r.csv")[0] == 0
    assert run(capsys, source, "--format", "xlsx", "--output", tmp_path / "r.xlsx")[0] == 0
    rows = list(csv.reader(open(tmp_path / "r.csv", newline="", encoding="utf-8-sig")))
    assert rows[1][:3] == ["'=SUM(A1:A3)", "'+1", "'@cmd|' /C calc'!A0"]
    sheet_xml = zipfile.ZipFile(tmp_path / "r.xlsx").read("xl/worksheets/sheet1.xml").decode()
    assert "<f>" not in sheet_xml and "=SUM(A1:A3)" in sheet_xml
    (tmp_path / "ff.jsonl").write_text(json.dumps({"instruction": "page\fbreak", "output": "ok"}) + "\n")
    assert run(capsys, tmp_path / "ff.jsonl", "--format", "xlsx", "--output", tmp_path / "ff.xlsx")[0] == 0
    assert "page_x000C_break" in zipfile.ZipFile(tmp_path / "ff.xlsx").read("xl/worksheets/sheet1.xml").decode()
    cell = openpyxl.load_workbook(tmp_path / "r.xlsx").active["A2"]
    assert (cell.value, cell.data_type, cell.quotePrefix) == ("=SUM(A1:A3)", "s", True)


def test_edited_csv_comes_back_with_edits_deletions_and_additions(tmp_path, capsys):
    records = alpaca(hostile_records())[:5]
    source = write_jsonl(tmp_path / "in.jsonl", records)
    sheet = tmp_path / "review.csv"
    assert run(capsys, source, "--format", "csv", "--output", sheet)[0] == 0
    with open(sheet, newline="", encoding="utf-8-sig") as f:
        rows = list(csv.reader(f))
    rows[1][2] = "An edited answer, with a comma\nand a new line."
    del rows[3]
    rows.append(["Name a colour added by a reviewer.", "", "Blue", "", "", "", ""])
    with open(sheet, "w", newline="", encoding="utf-8") as f:  # as an editor saves it: no BOM
        csv.writer(f).writerows(rows)
    status, err = run(capsys, sheet, "--format", "jsonl", "--output", tmp_path / "back.jsonl")
    assert status == 0, err
    expected = [dict(records[0], output="An edited answer, with a comma\nand a new line."), records[1], *records[3:],
                {"instruction": "Name a colour added by a reviewer.", "input": "", "output": "Blue"}]
    assert [json.loads(line) for line in (tmp_path / "back.jsonl").read_text(encoding="utf-8").splitlines()] == expected


def test_sheet_columns_are_found_by_header_and_blank_rows_skipped(tmp_path, capsys):
    records = alpaca(hostile_records())[:4]
    source = write_jsonl(tmp_path / "in.jsonl", records)
    sheet = tmp_path / "review.csv"
    assert run(capsys, source, "--format", "csv", "--output", sheet)[0] == 0
    assert sheet.read_bytes().startswith(b"\xef\xbb\xbf")  # the BOM that makes Excel read UTF-8
    with open(sheet, newline="", encoding="utf-8-sig") as f:
        rows = list(csv.reader(f))
    # A reviewer moves output first, adds a comment column and leaves a blank row.
    reordered = [[row[2], row[0], row[1], note] for row, note in zip(rows, ["comment", "fine", "", "typo?", ""])]
    reordered.insert(3, ["", "", "", ""])
    with open(sheet, "w", newline="", encoding="utf-8") as f:
        csv.writer(f).writerows(reordered)
    status, err = run(capsys, sheet, "--output", tmp_path / "back.jsonl")
    assert status == 0, err
    assert [json.loads(line) for line in (tmp_path / "back.jsonl").read_text(encoding="utf-8").splitlines()] == records


def test_edited_xlsx_comes_back_with_edits_deletions_and_additions(tmp_path, capsys):
    records = alpaca(hostile_records())[:5]
    source = write_jsonl(tmp_path / "in.jsonl", records)
    sheet = tmp_path / "review.xlsx"
    assert run(capsys, source, "--format", "xlsx", "--output", sheet)[0] == 0
    book = openpyxl.load_workbook(sheet)
    ws = book.active
    ws["C2"] = "=A edited answer that looks like a formula"
    ws["C2"].data_type = "s"
    ws.delete_rows(4)
    ws.append(["Name a colour added by a reviewer.", None, "Blue"])
    ws.append([None, None, None])  # a blank row spreadsheets leave behind
    book.save(sheet)
    status, err = run(capsys, sheet, "--format", "alpaca", "--output", tmp_path / "back.json")
    assert status == 0, err
    expected = [dict(records[0], output="=A edited answer that looks like a formula"), records[1], *records[3:],
                {"instruction": "Name a colour added by a reviewer.", "input": "", "output": "Blue"}]
    assert json.loads((tmp_path / "back.json").read_text(encoding="utf-8")) == expected


@pytest.mark.parametrize("fmt,row,column,value,message", [
    ("csv", 4, 0, "", 'review.csv: row 4: field "instruction" is empty'),
    ("csv", 3, 5, "second", 'review.csv: row 3: column "unit" must be a whole number (got \'second\')'),
    ("csv", 1, 2, "answer", "review.csv: row 1: the header lacks 'output'"),
    ("xlsx", 5, 3, "high", 'review.xlsx: row 5: column "similarity" must be a number (got \'high\')'),
    ("xlsx", 2, 2, None, 'review.xlsx: row 2: field "output" is empty'),
])
def test_a_bad_row_is_one_line_naming_it(tmp_path, capsys, fmt, row, column, value, message):
    source = write_jsonl(tmp_path / "in.jsonl", hostile_records()[:5])
    sheet, out = tmp_path / f"review.{fmt}", tmp_path / "back.jsonl"
    assert run(capsys, source, "--format", fmt, "--output", sheet)[0] == 0
    if fmt == "csv":
        with open(sheet, newline="", encoding="utf-8-sig") as f:
            rows = list(csv.reader(f))
        rows[row - 1][column] = value
        with open(sheet, "w", newline="", encoding="utf-8") as f:
            csv.writer(f).writerows(rows)
    else:
        book = openpyxl.load_workbook(sheet)
        book.active.cell(row, column + 1).value = value
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

    chat = datasets.load_dataset("json", data_files=str(tmp_path / "chat.jsonl"), split="train")
    assert chat.column_names == ["messages"]
    first = chat[1]["messages"]
    assert [m["role"] for m in first] == ["system", "user", "assistant"]
    assert first[1]["content"] == f"{records[1]['instruction']}\n\n{records[1]['input']}"
    assert chat[0]["messages"][1]["content"] == records[0]["instruction"]  # no input: the instruction alone
    assert [row["messages"][2]["content"] for row in chat] == [r["output"] for r in records]

    pc = datasets.load_dataset("json", data_files=str(tmp_path / "pc.jsonl"), split="train")
    assert pc.column_names == ["prompt", "completion"]
    templates = load_training_templates()
    assert pc["prompt"] == [render_training_prompt(dict(r), templates) for r in records]  # exactly what train.py trains on
    assert pc["completion"] == [r["output"] for r in records]

    share = datasets.load_dataset("json", data_files=str(tmp_path / "sharegpt.json"), split="train")
    assert sorted(share.column_names) == ["conversations", "system"]
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
    assert datasets.load_from_disk(str(tmp_path / "ds")).to_list() == alpaca(records)
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
        return [[json.loads(line) for line in (tmp_path / name.replace(".", f".{part}.")).read_text().splitlines()]
                for part in ("train", "test")]

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
    for fmt in export.FORMATS:
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
    assert json.loads((tmp_path / "all.json").read_text()) == together[:5] + together[:3]


@pytest.mark.parametrize("lines,message", [
    (['{"instruction": "Name a colour.", "output": "Red."}', '{"instruction": "Add 2 and 3."}'],
     'in.jsonl:2: field "output" is missing'),
    (['{"instruction": "Name a colour.", "input": null, "output": "Red."}'], 'in.jsonl:1: field "input" must be text (got null)'),
    (['{"instruction": "  ", "output": "Red."}'], 'in.jsonl:1: field "instruction" is empty'),
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
    (["--fromat", "csv"], "unknown flag --fromat; did you mean --format?"),
])
def test_bad_flags_are_one_line(tmp_path, capsys, args, message):
    source = write_jsonl(tmp_path / "in.jsonl", alpaca(hostile_records())[:3])
    status, err = run(capsys, source, "--output", tmp_path / "o.jsonl", *args)
    assert status == 2 and message in err and len(err.strip().splitlines()) == 1
    assert not (tmp_path / "o.jsonl").exists()


@pytest.mark.slow
def test_trl_sft_trainer_trains_on_messages_and_prompt_completion(tmp_path, capsys):
    """TRL's SFTTrainer reads both exports as they are and takes a few steps on a tiny Llama
    (built here, with a tokenizer trained here: nothing comes from a hub)."""
    pytest.importorskip("torch")
    transformers = pytest.importorskip("transformers")
    trl = pytest.importorskip("trl")
    from tiny_models import CHAT_TEMPLATE, tiny_llama
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

    records = [{"instruction": f"Repeat the word number {i}.", "input": "" if i % 2 else f"word {i}", "output": f"word {i}"}
               for i in range(16)]
    source = write_jsonl(tmp_path / "in.jsonl", records)
    for fmt in ("messages", "prompt-completion"):
        assert run(capsys, source, "--format", fmt, "--output", tmp_path / f"{fmt}.jsonl")[0] == 0

    bpe = Tokenizer(models.BPE())
    bpe.pre_tokenizer, bpe.decoder = pre_tokenizers.ByteLevel(add_prefix_space=False), decoders.ByteLevel()
    texts = [(tmp_path / f"{fmt}.jsonl").read_text() for fmt in ("messages", "prompt-completion")] + [CHAT_TEMPLATE]
    bpe.train_from_iterator(texts, trainers.BpeTrainer(vocab_size=300, special_tokens=["<s>", "</s>", "<pad>"],
                                                       initial_alphabet=pre_tokenizers.ByteLevel.alphabet()))
    tokenizer = transformers.PreTrainedTokenizerFast(tokenizer_object=bpe, bos_token="<s>", eos_token="</s>", pad_token="<pad>")
    tokenizer.chat_template = CHAT_TEMPLATE

    for fmt in ("messages", "prompt-completion"):
        dataset = datasets.load_dataset("json", data_files=str(tmp_path / f"{fmt}.jsonl"), split="train")
        args = trl.SFTConfig(output_dir=str(tmp_path / f"sft-{fmt}"), max_steps=3, per_device_train_batch_size=4,
                             learning_rate=1e-3, logging_steps=1, save_strategy="no", report_to=[], use_cpu=True,
                             dataloader_num_workers=0)
        trainer = trl.SFTTrainer(model=tiny_llama(tokenizer), args=args, train_dataset=dataset, processing_class=tokenizer)
        first = trainer.train_dataset[1]
        if fmt == "messages":
            assert tokenizer.decode(first["input_ids"]).startswith(tokenizer.apply_chat_template(dataset[1]["messages"], tokenize=False).rstrip())
        else:  # the loss falls on the completion (and EOS) only, as train.py puts it
            learned = [label for label in first["labels"] if label != -100]
            assert tokenizer.decode(learned) == records[1]["output"] + "</s>"
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
