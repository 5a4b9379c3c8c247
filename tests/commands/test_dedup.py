"""The dedup tool: greedy decisions equal to rouge-score's, round trips for JSON and JSONL, one-line errors."""
import doctest
import json
import os
import random
import subprocess
import sys
from pathlib import Path

import pytest
from rouge_score import rouge_scorer

from self_instruct import dedup
from self_instruct.dedup import cli, greedy_keep, main, read_dataset

SCORER = rouge_scorer.RougeScorer(["rougeL"], use_stemmer=False)
RECORDS = [
    {"instruction": "Give three tips for staying healthy.", "input": "", "output": "Eat well."},
    {"instruction": "Give three tips for staying healthy!", "input": "", "output": "Sleep."},
    {"instruction": "Translate the sentence into French.", "input": "I like tea.", "output": "J'aime le thé."},
    {"instruction": "Name a colour.", "input": "", "output": "Blue"},
    {"instruction": "Translate the following sentence into French.", "input": "Hi", "output": "Salut"},
]
KEPT = [RECORDS[0], RECORDS[2], RECORDS[3]]


def reference_keep(instructions, threshold=0.7, against=()):
    pool = [SCORER._tokenizer.tokenize(t) for t in against]
    flags = []
    for text in instructions:
        tokens = SCORER._tokenizer.tokenize(text)
        keep = not any(rouge_scorer._score_lcs(tokens, t).fmeasure > threshold for t in pool)
        if keep:
            pool.append(tokens)
        flags.append(keep)
    return flags


def run(capsys, *args):
    """The command line as the console script runs it, in this process; returns (exit status, stderr)."""
    try:
        cli([str(arg) for arg in args])
        status = 0
    except SystemExit as exit:
        status = exit.code
    return status, capsys.readouterr().err


def test_docstring_examples():
    assert doctest.testmod(dedup).failed == 0


def test_greedy_keep_equals_rouge_score_reference():
    rng = random.Random(13)
    words = ["name", "a", "fruit", "colour", "the", "red", "give", "three", "tips", "Über", "x1"]
    texts = [" ".join(rng.choice(words) for _ in range(rng.randint(0, 9))) for _ in range(300)]
    against = texts[:10]
    for threshold in (0.7, 0.4):
        assert list(greedy_keep(texts, threshold, against)) == reference_keep(texts, threshold, against)


def test_json_list_round_trip_keeps_records_and_layout(tmp_path, capsys):
    source = tmp_path / "data.json"
    source.write_text(json.dumps(RECORDS, indent=4, ensure_ascii=False), encoding="utf-8")
    main(str(source))
    out = tmp_path / "data.dedup.json"
    assert out.read_text(encoding="utf-8") == json.dumps(KEPT, indent=4, ensure_ascii=False)
    assert capsys.readouterr().err.splitlines()[-1] == f"read 5, kept 3, dropped 2: near duplicates 2 -> {out}"


def test_one_line_json_list_is_copied_unchanged_when_nothing_is_dropped(tmp_path):
    source = tmp_path / "data.json"
    source.write_text(json.dumps(KEPT) + "\n")
    main(str(source), output=str(tmp_path / "out.json"))
    assert (tmp_path / "out.json").read_text() == source.read_text()


def test_jsonl_round_trip_copies_kept_lines_byte_for_byte(tmp_path, capsys):
    lines = [json.dumps(r, ensure_ascii=False) for r in RECORDS]
    lines[3] = '{ "output": "Blue",  "instruction": "Name a colour.", "extra": [1, 2] }'
    source = tmp_path / "gen.jsonl"
    source.write_text("\n".join(lines) + "\n\n", encoding="utf-8")
    assert run(capsys, source, "--output", tmp_path / "kept.jsonl")[0] == 0
    assert (tmp_path / "kept.jsonl").read_text(encoding="utf-8") == "\n".join([lines[0], lines[2], lines[3]]) + "\n"


def test_against_files_of_any_supported_kind(tmp_path, capsys):
    seeds = tmp_path / "seeds.jsonl"
    seeds.write_text(json.dumps({"id": "seed_task_0", "name": "colour", "instruction": "name a COLOUR",
                                 "instances": [{"input": "", "output": "Red"}], "is_classification": False}) + "\n")
    test_set = tmp_path / "test.json"
    test_set.write_text(json.dumps([{"instruction": "Give three tips for staying healthy."}]))
    source = tmp_path / "data.jsonl"
    source.write_text("".join(json.dumps(r) + "\n" for r in RECORDS))
    status, err = run(capsys, source, "--against", f"{seeds},{test_set}")
    assert status == 0 and err.splitlines()[-1].startswith("read 5, kept 1, dropped 4")
    assert (tmp_path / "data.dedup.jsonl").read_text() == json.dumps(RECORDS[2]) + "\n"


def test_threshold_flag(tmp_path):
    source = tmp_path / "data.jsonl"
    source.write_text("".join(json.dumps(r) + "\n" for r in RECORDS))
    main(str(source), threshold=1)
    assert len((tmp_path / "data.dedup.jsonl").read_text().splitlines()) == 5


@pytest.mark.parametrize("name, text, message", [
    ("bad.jsonl", '{"instruction": "ok"}\n{"input": "no instruction"}\n',
     'bad.jsonl:2: field "instruction" is missing'),
    ("bad.jsonl", '{"instruction": "ok"}\n{"instruction": \n', "bad.jsonl:2: not valid JSON"),
    ("bad.json", '[\n  {"instruction": "ok"},\n  {"instruction": 7}\n]',
     'bad.json:3: field "instruction" must be a string (got number)'),
    ("bad.json", '[\n  {"instruction": "ok"}\n  {"instruction": "b"}\n]', "bad.json:3: not valid JSON"),
    ("bad.json", '[{"instruction": "ok"}, "text"]',
     'bad.json:1: expected a JSON object with an "instruction" field (got string)'),
    ("bom.jsonl", '\ufeff{"instruction": "ok"}\n', "bom.jsonl:1: the file starts with a byte order mark"),
    ("split.jsonl", '{"instruction": "a\u2028b"}\n{"instruction": 1}\n', 'split.jsonl:2: field "instruction" must be'),
    ("deep.json", "[" * 100_000 + "]" * 100_000, "deep.json:1: JSON nested too deeply"),
    ("deep.jsonl", '{"instruction": "ok"}\n' + "[" * 100_000, "deep.jsonl:2: JSON nested too deeply"),
])
def test_bad_input_is_one_line_exit_2_and_no_output(tmp_path, capsys, name, text, message):
    source = tmp_path / name
    source.write_text(text)
    status, err = run(capsys, source)
    assert status == 2 and len(err.splitlines()) == 1 and err.startswith(f"self_instruct: error: {source.parent}/{message}")
    assert sorted(p.name for p in tmp_path.iterdir()) == [name]


def test_bad_flags_are_one_line_errors(tmp_path, capsys):
    source = tmp_path / "data.jsonl"
    source.write_text(json.dumps(RECORDS[0]) + "\n")
    (tmp_path / "loop").symlink_to(tmp_path / "loop")
    (tmp_path / "outdir").mkdir()
    for args, message in [(["--threshold", "2"], "threshold must be between 0 and 1"),
                          (["--threshold", "abc"], "--threshold must be a number (got 'abc')"),
                          (["--against", tmp_path / "missing.jsonl"], "missing.jsonl: no such file"),
                          (["--output", source], f"--output {source} would overwrite the input {source} (INPUT)"),
                          (["--output", tmp_path / "outdir"], "outdir is a directory; name a file to write"),
                          (["--output", tmp_path / "loop"], "loop: too many levels of symbolic links"),
                          (["--report", tmp_path / "outdir"], "outdir is a directory"),
                          (["--ngram", "0", "--against", source], "--ngram must be a whole number of words, 1 or more"),
                          (["--ngram", "x"], "--ngram must be a whole number"),
                          (["--fields", "question"], "--fields chooses benchmark fields for --ngram"),
                          (["--thresold", "0.5"], "unknown flag --thresold; did you mean --threshold?")]:
        status, err = run(capsys, source, *args)
        assert status == 2 and len(err.splitlines()) == 1 and message in err, err
    assert sorted(p.name for p in tmp_path.iterdir()) == ["data.jsonl", "loop", "outdir"]
    assert not any((tmp_path / "outdir").iterdir())


@pytest.mark.parametrize("report", ["kept.jsonl", "./kept.jsonl", "../work/kept.jsonl", "link.jsonl", "hard.jsonl"])
def test_an_output_and_a_report_that_are_one_file_are_refused_before_any_work(tmp_path, capsys, monkeypatch, report):
    """The report written over the kept records would leave a 'kept 13' line and no records."""
    work = tmp_path / "work"
    work.mkdir()
    monkeypatch.chdir(work)
    (work / "data.jsonl").write_text("".join(json.dumps(r) + "\n" for r in RECORDS))
    (work / "kept.jsonl").write_text("earlier\n")
    (work / "link.jsonl").symlink_to(work / "kept.jsonl")
    os.link(work / "kept.jsonl", work / "hard.jsonl")
    status, err = run(capsys, "data.jsonl", "--output", "kept.jsonl", "--report", report)
    assert status == 2 and err == f"self_instruct: error: --report {report} is the same file as --output kept.jsonl; give each its own path\n"
    assert (work / "kept.jsonl").read_text() == "earlier\n"


def test_input_that_is_a_symlink_loop_or_a_directory_is_one_line(tmp_path, capsys):
    (tmp_path / "loop.jsonl").symlink_to(tmp_path / "loop.jsonl")
    status, err = run(capsys, tmp_path / "loop.jsonl", "--output", tmp_path / "out.jsonl")
    assert status == 2 and len(err.splitlines()) == 1 and "symbolic links" in err
    status, err = run(capsys, tmp_path, "--output", tmp_path / "out.jsonl")
    assert status == 2 and len(err.splitlines()) == 1 and "is a directory" in err
    assert not (tmp_path / "out.jsonl").exists()


def test_read_dataset_reads_alpaca_data(anchors):
    dataset = read_dataset(anchors / "alpaca_data_5000_sample.json")
    assert dataset.is_json_list and len(dataset.records) == 5000
    assert dataset.render(dataset.records) == (anchors / "alpaca_data_5000_sample.json").read_text(encoding="utf-8")


def test_module_entry_point_runs(tmp_path):
    source = tmp_path / "data.json"
    source.write_text(json.dumps(RECORDS))
    result = subprocess.run([sys.executable, "-m", "self_instruct.dedup", str(source), "--threshold", "0.7"],
                            capture_output=True, text=True, cwd=Path(__file__).resolve().parents[2])
    assert result.returncode == 0, result.stderr
    assert json.loads((tmp_path / "data.dedup.json").read_text()) == KEPT


@pytest.mark.parametrize("threshold, shards", [(0.7, 1), (0.7, 5), (0.4, 3), (0.0, 2)])
def test_sharded_pairs_and_one_greedy_pass_decide_like_the_sequential_greedy(tmp_path, threshold, shards):
    rng = random.Random(int(threshold * 10) + shards)
    words = ["name", "a", "fruit", "colour", "the", "red", "give", "three", "tips", "Über", "x1"]
    texts = [" ".join(rng.choice(words) for _ in range(rng.randint(0, 9))) for _ in range(400)]
    against = texts[:10]
    flags = dedup.sharded_keep(texts, threshold, against, shards=shards, directory=tmp_path)
    assert flags == reference_keep(texts, threshold, against) == list(greedy_keep(texts, threshold, against))
    assert sorted(p.name for p in tmp_path.iterdir()) == [f"pairs-{k:04d}-of-{shards:04d}.npy" for k in range(shards)]


def test_sharded_decisions_on_perturbed_alpaca_equal_the_sequential_ones(tmp_path, anchors):
    records = json.loads((anchors / "alpaca_data_5000_sample.json").read_text())
    rng = random.Random(5)
    stream = []
    for record in rng.choices(records, k=3000):
        words = record["instruction"].split()
        for _ in range(rng.randint(0, 3)):
            words.insert(rng.randrange(len(words) + 1), rng.choice(["please", "the", "new", "café"]))
        stream.append(" ".join(words))
    seeds = [json.loads(line)["instruction"] for line in open(anchors / "alpaca_seed_tasks.jsonl")]
    sequential = list(greedy_keep(stream, 0.7, seeds))
    assert dedup.sharded_keep(stream, 0.7, seeds, shards=4, directory=tmp_path) == sequential
    assert 0 < sum(sequential) < len(stream)


def perturbed_alpaca(anchors, count=3000, seed=5):
    """Alpaca instructions with words inserted, dropped and swapped: clusters of near duplicates."""
    records = json.loads((anchors / "alpaca_data_5000_sample.json").read_text())
    rng = random.Random(seed)
    stream = []
    for record in rng.choices(records[:600], k=count):
        words = record["instruction"].split()
        for _ in range(rng.randint(0, 3)):
            edit = rng.randrange(3)
            if edit == 0:
                words.insert(rng.randrange(len(words) + 1), rng.choice(["please", "the", "new", "café"]))
            elif edit == 1 and len(words) > 1:
                del words[rng.randrange(len(words))]
            else:
                i, j = rng.randrange(len(words)), rng.randrange(len(words))
                words[i], words[j] = words[j], words[i]
        stream.append(" ".join(words))
    return stream


@pytest.mark.parametrize("threshold, shards", [(0.7, 1), (0.7, 2), (0.4, 3), (0.0, 2), (1.0, 2)])
def test_parallel_keep_decides_like_the_sequential_greedy(threshold, shards):
    rng = random.Random(int(threshold * 10) + shards)
    words = ["name", "a", "fruit", "colour", "the", "red", "give", "three", "tips", "Über", "x1"]
    texts = [" ".join(rng.choice(words) for _ in range(rng.randint(0, 9))) for _ in range(600)]
    against = texts[:10]
    flags = dedup.parallel_keep(texts, threshold, against, shards=shards)
    assert flags == reference_keep(texts, threshold, against) == list(greedy_keep(texts, threshold, against))


def test_parallel_keep_on_perturbed_alpaca_equals_the_sequential_greedy(anchors):
    stream = perturbed_alpaca(anchors)
    seeds = [json.loads(line)["instruction"] for line in open(anchors / "alpaca_seed_tasks.jsonl")]
    sequential = list(greedy_keep(stream, 0.7, seeds))
    assert dedup.parallel_keep(stream, 0.7, seeds, shards=3) == sequential
    assert 0 < sum(sequential) < len(stream) // 2


def test_shards_flag_writes_the_same_files_as_the_sequential_run(tmp_path, capsys):
    lines = [json.dumps(r, ensure_ascii=False) for r in RECORDS]
    lines[3] = '{ "output": "Blue",  "instruction": "Name a colour.", "extra": [1, 2] }'
    source = tmp_path / "data.jsonl"
    source.write_text("\n".join(lines[:2]) + "\n\n" + "\n".join(lines[2:]), encoding="utf-8")  # a blank line, no last newline
    status, _ = run(capsys, source, "--output", tmp_path / "one.jsonl", "--report", tmp_path / "one.report.jsonl")
    assert status == 0
    status, err = run(capsys, source, "--shards", 3, "--output", tmp_path / "three.jsonl",
                      "--report", tmp_path / "three.report.jsonl")
    assert status == 0
    assert (tmp_path / "three.jsonl").read_bytes() == (tmp_path / "one.jsonl").read_bytes()
    assert (tmp_path / "three.report.jsonl").read_bytes() == (tmp_path / "one.report.jsonl").read_bytes()
    assert err.splitlines()[-1] == f"read 5, kept 3, dropped 2: near duplicates 2 -> {tmp_path / 'three.jsonl'}"
    json_list = tmp_path / "data.json"
    json_list.write_text(json.dumps(RECORDS, indent=2))
    assert run(capsys, json_list, "--shards", 2)[0] == 0
    assert json.loads((tmp_path / "data.dedup.json").read_text()) == KEPT


@pytest.mark.parametrize("flags, message", [
    (["--executor", "spark"], "--executor must be one of local, ray (got 'spark')"),
    (["--shards", "0"], "--shards must be a whole number of at least 1 (got 0)"),
    (["--ray_address", "ray://head:10001"], "--ray_address goes with --executor ray"),
])
def test_executor_flags_are_checked_before_any_work(tmp_path, capsys, flags, message):
    source = tmp_path / "data.jsonl"
    source.write_text(json.dumps(RECORDS[0]) + "\n")
    status, err = run(capsys, source, *flags)
    assert (status, err.strip()) == (2, f"self_instruct: error: {message}")
    assert not (tmp_path / "data.dedup.jsonl").exists()


def test_a_bad_line_in_a_streamed_jsonl_is_one_line_and_no_output(tmp_path, capsys):
    source = tmp_path / "data.jsonl"
    source.write_text(json.dumps(RECORDS[0]) + "\n" + '{"input": "x"}\n')
    status, err = run(capsys, source, "--shards", 2)
    assert (status, err.strip().splitlines()[-1]) == (2, f'self_instruct: error: {source}:2: field "instruction" is missing')
    assert not (tmp_path / "data.dedup.jsonl").exists()


def test_executor_ray_without_ray_says_how_to_install_it(tmp_path):
    source = tmp_path / "data.jsonl"
    source.write_text(json.dumps(RECORDS[0]) + "\n")
    code = ("import sys; sys.modules['ray'] = None\n"  # what an install without the [ray] extra sees
            "from self_instruct.dedup import cli; cli(sys.argv[1:])")
    result = subprocess.run([sys.executable, "-c", code, str(source), "--executor", "ray"],
                            capture_output=True, text=True, cwd=Path(__file__).resolve().parents[2])
    assert result.returncode == 2
    assert result.stderr.strip().splitlines() == [
        "self_instruct: error: --executor ray needs Ray: pip install 'self_instruct[ray]'"]
    assert not (tmp_path / "data.dedup.jsonl").exists()
