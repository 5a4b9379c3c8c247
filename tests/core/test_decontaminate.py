"""Benchmark decontamination: n-gram hits in JSON, JSONL, CSV and Parquet benchmarks, through the library and the dedup CLI."""
import doctest
import json
import random

import pytest

from self_instruct.core import decontaminate
from self_instruct.core.decontaminate import Decontaminator, ngram_words
from self_instruct.dedup import cli

PLANTED = "the committee agreed that every river in the northern valley should be measured twice a year"
THIRTEEN = " ".join(PLANTED.split()[2:15])  # words 3..15 of the planted sentence


def run(capsys, *args):
    try:
        cli([str(arg) for arg in args])
        status = 0
    except SystemExit as exit:
        status = exit.code
    return status, capsys.readouterr().err


def test_docstring_examples():
    assert doctest.testmod(decontaminate).failed == 0


@pytest.mark.slow
def test_planted_13_gram_is_found_in_a_million_line_benchmark_and_a_12_gram_is_not(tmp_path):
    rng = random.Random(4)
    words = [f"w{i}" for i in range(5000)]
    lines = [json.dumps({"question": " ".join(rng.choices(words, k=16)), "id": i}) for i in range(1_000_000)]
    lines[654_321] = json.dumps({"question": PLANTED.upper() + "!", "id": "planted"})
    bench = tmp_path / "bench.jsonl"
    bench.write_text("\n".join(lines) + "\n")
    index = Decontaminator([bench])
    twelve = THIRTEEN.rsplit(" ", 1)[0]
    assert index.hits([f"Tell me why {THIRTEEN}, please.", f"Tell me why {twelve}, please.",
                       f"{twelve} river"]) == [(str(bench), THIRTEEN), None, None]


def test_normalisation_ignores_case_punctuation_and_spacing():
    index = Decontaminator.from_texts({"b": ["It's a state-of-the-art model: fast,  small and free!"]}, n=5)
    assert index.hit("its A STATE OF the art") is None  # hyphens join words: stateoftheart
    assert index.hit("Note: its a   stateoftheart model, FAST.") == ("b", "its a stateoftheart model fast")
    assert ngram_words("Ünïcode WORDS\u00a0too") == ["ünïcode", "words", "too"]


def test_ngrams_do_not_cross_fields_or_list_items(tmp_path):
    bench = tmp_path / "b.json"
    bench.write_text(json.dumps([{"a": "one two three", "b": "four five six", "choices": ["seven eight", "nine ten"]}]))
    index = Decontaminator([bench], n=3)
    assert index.hit("two three four") is None and index.hit("eight nine ten") is None
    assert index.hit("x one two three") == (str(bench), "one two three")
    assert len(index) == 2  # "one two three" and "four five six"


def test_fields_choose_the_columns_of_a_csv(tmp_path):
    bench = tmp_path / "test.csv"
    bench.write_text('question,answer\n"What, exactly, is the boiling point of water at sea level",100 C\n'
                     'other,"the boiling point of water at sea level is one hundred degrees"\n', encoding="utf-8")
    ngram = "the boiling point of water at sea level"
    assert Decontaminator([bench], n=8).hit(ngram) == (str(bench), ngram)
    assert Decontaminator([bench], n=8, fields=["answer"]).hit("What exactly is the boiling point of water at sea") is None
    assert Decontaminator([bench], n=8, fields=["answer"]).hit(ngram + " is") == (str(bench), ngram)


def test_parquet_benchmark(tmp_path):
    pa = pytest.importorskip("pyarrow")
    import pyarrow.parquet as pq
    bench = tmp_path / "mmlu.parquet"
    pq.write_table(pa.table({"question": ["Which planet is known as the red planet of the solar system", "2+2"],
                             "subject": ["astronomy", "math"], "answer": [3, 1]}), bench)
    index = Decontaminator([bench], n=6)
    assert index.hit("Which planet is known as the red one?") == (str(bench), "which planet is known as the")
    assert index.hit("astronomy math") is None


def test_first_file_holding_an_ngram_is_named(tmp_path):
    first, second = tmp_path / "a.jsonl", tmp_path / "b.jsonl"
    first.write_text(json.dumps({"q": "alpha beta gamma"}) + "\n")
    second.write_text(json.dumps({"q": "alpha beta gamma"}) + "\n" + json.dumps({"q": "delta epsilon zeta"}) + "\n")
    index = Decontaminator([first, second], n=3)
    assert index.hits(["alpha beta gamma", "delta epsilon zeta", "alpha beta"]) == [
        (str(first), "alpha beta gamma"), (str(second), "delta epsilon zeta"), None]


def test_dedup_cli_drops_contaminated_records_and_reports_them(tmp_path, capsys):
    bench = tmp_path / "test.jsonl"
    bench.write_text(json.dumps({"question": PLANTED, "answer": "twice"}) + "\n")
    records = [
        {"instruction": "Summarize the report.", "input": f"Minutes: {THIRTEEN}.", "output": "Rivers get measured."},
        {"instruction": "Name a colour.", "input": "", "output": "Blue"},
        {"instruction": f"Explain why {THIRTEEN}", "input": "", "output": "Data."},
        {"instruction": "Name a colour!", "input": "", "output": "Red"},
    ]
    source = tmp_path / "data.jsonl"
    source.write_text("".join(json.dumps(r) + "\n" for r in records))
    status, err = run(capsys, source, "--against", bench, "--ngram", 13, "--report", tmp_path / "dropped.jsonl")
    assert status == 0
    assert err.splitlines()[-1] == (f"read 4, kept 1, dropped 3: near duplicates 1, contaminated 2 ({bench} 2) "
                                    f"-> {tmp_path / 'data.dedup.jsonl'}")
    assert (tmp_path / "data.dedup.jsonl").read_text() == json.dumps(records[1]) + "\n"
    report = [json.loads(line) for line in (tmp_path / "dropped.jsonl").read_text().splitlines()]
    assert report == [
        {"line": 1, "reason": "contaminated", "benchmark": str(bench), "ngram": THIRTEEN, "instruction": records[0]["instruction"]},
        {"line": 3, "reason": "contaminated", "benchmark": str(bench), "ngram": THIRTEEN, "instruction": records[2]["instruction"]},
        {"line": 4, "reason": "near_duplicate", "instruction": "Name a colour!"},
    ]


@pytest.mark.parametrize("name, text, message", [
    ("bad.jsonl", '{"q": "fine"}\n{"q": \n', "bad.jsonl:2: not valid JSON"),
    ("bad.csv", b'q\n"caf\xe9"\n', "bad.csv:"),
    ("bad.parquet", "not parquet", "bad.parquet: not a Parquet file"),
])
def test_bad_benchmark_file_is_one_line_and_no_output(tmp_path, capsys, name, text, message):
    if name.endswith(".parquet"):
        pytest.importorskip("pyarrow")
    bench = tmp_path / name
    bench.write_bytes(text if isinstance(text, bytes) else text.encode())
    source = tmp_path / "data.jsonl"
    source.write_text(json.dumps({"instruction": "Name a colour."}) + "\n")
    status, err = run(capsys, source, "--against", bench, "--ngram", 13)
    assert status == 2 and len(err.splitlines()) == 1 and message in err, err
    assert not (tmp_path / "data.dedup.jsonl").exists()
