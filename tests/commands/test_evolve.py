"""Evolving a dataset: lineage kept across rounds, each failure kind dropped with its reason,
operations reproducible from the seed, resumes free."""
import json
import re

import pytest

from self_instruct.io.jsonl import read_jsonl
from self_instruct.evolve import cli, evolve_file
from self_instruct.pipelines.evolve import OPERATIONS, EvolvePipeline, record_id
from self_instruct.types import Decoding, Example

PARENTS = [{"instruction": "Describe the water cycle.", "input": "", "output": "Water evaporates..."},
           {"instruction": "List three prime numbers.", "input": "", "output": "2, 3, 5"}]


def write_input(tmp_path, records=PARENTS):
    path = tmp_path / "data.json"
    path.write_text(json.dumps(records), encoding="utf-8")
    return path


def task_of(prompt):
    """The task an evolve prompt quotes, or None for an answer prompt."""
    m = re.search(r"Task to (?:change|start from):\n(.*?)\n\nReply with", prompt, re.S)
    return m.group(1) if m else None


def growing(prompt, body):
    """Each evolution appends a clause; each answer names its task."""
    task = task_of(prompt)
    if task is None:
        return f"An answer to: {prompt.strip()}"
    return json.dumps({"instruction": task + " Then justify every step with a worked example from daily life.", "input": ""})


def test_rounds_keep_lineage_and_feed_the_next_round(fake_server, tmp_path):
    fake_server.reply_fn = growing
    out = tmp_path / "evolved.json"
    result = evolve_file(write_input(tmp_path), str(out), rounds=2, base_url=fake_server.base_url, quiet=True,
                         similarity_threshold=1.0, no_change_threshold=1.0)
    assert result.stopped_by == "done" and result.rounds_done == 2
    records = json.loads(out.read_text())
    assert len(records) == 4 and len(fake_server.requests) == 8  # 2 rounds x 2 records x (evolve + answer)
    first, second = records[:2], records[2:]
    assert [r["metadata"]["parent"] for r in first] == [record_id(p["instruction"], "") for p in PARENTS]
    assert [r["metadata"]["parent"] for r in second] == [r["metadata"]["id"] for r in first]
    assert [r["metadata"]["generation"] for r in records] == [1, 1, 2, 2]
    assert all(r["metadata"]["operation"] in OPERATIONS for r in records)
    assert second[0]["instruction"].startswith(first[0]["instruction"])
    assert second[0]["output"] == f"An answer to: {second[0]['instruction']}"
    # a rerun of the same command finds every round done and asks nothing
    out.unlink()
    cli([str(tmp_path / "data.json"), "--rounds", "2", "--output", str(out), "--base_url", fake_server.base_url,
         "--similarity_threshold", "1.0", "--no_change_threshold", "1.0", "--quiet"])
    assert len(fake_server.requests) == 8 and json.loads(out.read_text()) == records


@pytest.mark.parametrize("evolved, answer, reason", [
    ({"instruction": "Describe the water cycle.", "input": ""}, "x", "evolve_no_change"),
    ({"instruction": "Describe the  water cycle!", "input": ""}, "x", "evolve_no_change"),
    ("I'm sorry, but I cannot rewrite this task.", "x", "evolve_refusal"),
    ({"instruction": "Explain how glaciers store fresh water over centuries.", "input": ""},
     "As an AI language model, I can't help with that.", "evolve_refusal"),
    ({"instruction": "#Rewritten Prompt#: Explain glaciers and their role.", "input": ""}, "x", "evolve_copied"),
    ({"instruction": "Task to change: explain how glaciers store water.", "input": ""}, "x", "evolve_copied"),
    ({"instruction": "Explain glaciers " + "in great detail " * 200, "input": ""}, "x", "evolve_too_long"),
    ("no task here at all", "x", "unparseable"),
])
def test_each_failed_evolution_is_dropped_with_its_reason(fake_server, tmp_path, evolved, answer, reason):
    reply = evolved if isinstance(evolved, str) else json.dumps(evolved)
    fake_server.reply_fn = lambda prompt, body: reply if task_of(prompt) is not None else answer
    out = tmp_path / "evolved.json"
    result = evolve_file(write_input(tmp_path, PARENTS[:1]), str(out), base_url=fake_server.base_url, quiet=True)
    assert result.stopped_by == "done" and json.loads(out.read_text()) == []
    [rejected] = read_jsonl(result.output_dir / "round_1" / "rejected.jsonl")
    assert rejected["reason"] == reason


def test_a_near_copy_of_another_generation_is_judged_similar(fake_server, tmp_path):
    # both parents evolve into the same new task: the second is a duplicate of the first
    fake_server.reply_fn = lambda prompt, body: (
        json.dumps({"instruction": "Compare how rain forms over oceans and over mountains.", "input": ""})
        if task_of(prompt) is not None else "An answer.")
    result = evolve_file(write_input(tmp_path), str(tmp_path / "e.json"), base_url=fake_server.base_url, quiet=True)
    assert len(result.records) == 1
    assert [r["reason"] for r in read_jsonl(result.output_dir / "round_1" / "rejected.jsonl")] == ["duplicate"]


def test_operations_come_from_the_seed():
    parents = [Example(f"Task {i}.") for i in range(40)]
    draw = lambda seed: [EvolvePipeline(parents, 1, seed=seed, decoding=Decoding()).unit(i).operation for i in range(40)]
    assert draw(3) == draw(3)
    assert draw(3) != draw(4)
    assert set(draw(3)) == set(OPERATIONS)


def test_the_budget_covers_all_rounds_and_a_rerun_finishes(fake_server, tmp_path):
    fake_server.reply_fn = growing
    data, out = write_input(tmp_path), tmp_path / "evolved.json"
    options = dict(rounds=2, base_url=fake_server.base_url, quiet=True, max_concurrency=1,
                   similarity_threshold=1.0, no_change_threshold=1.0)
    cut = evolve_file(data, str(out), max_requests=6, **options)
    assert cut.stopped_by == "max_requests" and cut.rounds_done == 1 and not out.exists()
    assert len(fake_server.requests) == 6  # round 1's four, then one record of round 2
    done = evolve_file(data, str(out), **options)
    assert done.stopped_by == "done" and len(fake_server.requests) == 8
    assert [r["metadata"]["generation"] for r in json.loads(out.read_text())] == [1, 1, 2, 2]


def test_a_bad_flag_value_is_one_line_and_exit_2(tmp_path, capsys):
    with pytest.raises(SystemExit) as exit_info:
        cli([str(write_input(tmp_path)), "--rounds", "abc", "--output", str(tmp_path / "e.json")])
    assert exit_info.value.code == 2 and "--rounds" in capsys.readouterr().err
    assert not (tmp_path / "e.json").exists()


def test_an_output_that_cannot_be_written_is_refused_before_any_request(fake_server, tmp_path, capsys):
    data = write_input(tmp_path)
    (tmp_path / "evolved.json").mkdir()
    for outputs, message in [(["--output", tmp_path / "evolved.json"], "is a directory; name a file to write"),
                             (["--output", data], f"would overwrite the input {data} (INPUT)"),
                             (["--output_dir", tmp_path / "run", "--output", tmp_path / "run" / "round_2" / "e.json"],
                              "lies inside round_2, which the run keeps in --output_dir")]:
        with pytest.raises(SystemExit) as exit_info:
            cli([str(data), "--rounds", "2", *map(str, outputs), "--base_url", fake_server.base_url, "--quiet"])
        err = capsys.readouterr().err
        assert exit_info.value.code == 2 and message in err and err.count("\n") == 1
    assert fake_server.requests == [] and not (tmp_path / "run").exists()


def test_max_cost_holds_across_rounds_and_shows_in_the_summary(fake_server, tmp_path, capsys):
    """Each round's engine gets what the rounds before left of --max_cost."""
    fake_server.reply_fn = growing
    data, out = write_input(tmp_path), tmp_path / "evolved.json"
    flags = [str(data), "--rounds", "3", "--output", str(out), "--base_url", fake_server.base_url, "--model_name", "m",
             "--max_concurrency", "1", "--max_tokens", "100", "--similarity_threshold", "1.0",
             "--no_change_threshold", "1.0", "--price_prompt", "2.5", "--price_completion", "10", "--quiet"]
    cli(flags + ["--max_cost", "0.006"])
    err = capsys.readouterr().err
    assert "budget max_cost reached" in err and "cost $" in err and not out.exists()
    spent = sum(json.loads(state.read_text())["cost"] for state in (tmp_path / "evolved.json.run").glob("round_*/state.json"))
    assert 0 < spent <= 0.006
    assert len(fake_server.requests) < 12  # three rounds of two records, two requests each, were not all paid for
    cli(flags + ["--max_cost", "1"])
    assert "stopped by done" in capsys.readouterr().err and len(json.loads(out.read_text())) == 6


def test_max_cost_without_a_price_is_one_line(fake_server, tmp_path, capsys):
    with pytest.raises(SystemExit) as exit_info:
        cli([str(write_input(tmp_path)), "--output", str(tmp_path / "e.json"), "--base_url", fake_server.base_url,
             "--model_name", "my-model", "--max_cost", "1"])
    assert exit_info.value.code == 2 and "--price_prompt" in capsys.readouterr().err


def test_input_metadata_passes_through_evolving_twice_and_a_rerun(fake_server, tmp_path):
    """A record's metadata (its source, its tags, keys the engine once used for itself) passes to
    its evolved child untouched, through a second evolve of the evolved file and a rerun of it."""
    fake_server.reply_fn = growing
    parents = [{**p, "metadata": {"source": f"doc{i}.md", "unit": 9, "round": 9, "persona": "teacher"}}
               for i, p in enumerate(PARENTS)]
    flags = ["--base_url", fake_server.base_url, "--similarity_threshold", "1.0", "--no_change_threshold", "1.0",
             "--quiet"]
    cli([str(write_input(tmp_path, parents)), "--output", str(tmp_path / "once.json")] + flags)
    twice = [str(tmp_path / "once.json"), "--output", str(tmp_path / "twice.json")] + flags
    cli(twice)
    sent = len(fake_server.requests)
    first = json.loads((tmp_path / "twice.json").read_text())
    cli(twice)
    assert len(fake_server.requests) == sent and json.loads((tmp_path / "twice.json").read_text()) == first
    assert len(first) == 2
    for parent, child in zip(parents, first):
        assert {k: child["metadata"][k] for k in parent["metadata"]} == parent["metadata"]
        assert child["metadata"]["generation"] == 1 and child["provenance"]["unit"] in (0, 1)
