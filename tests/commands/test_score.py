"""Scoring a dataset with the teacher: verdicts parsed tolerantly, --min_score drops, reruns free."""
import json
import re

import pytest

from self_instruct.io.jsonl import read_jsonl
from self_instruct.pipelines.score import parse_scores
from self_instruct.score import cli, score_file

RECORDS = [{"instruction": f"Task number {w}.", "input": "", "output": f"Answer {w}."}
           for w in ("one", "two", "three", "four", "five", "six", "seven")]


def write_input(tmp_path, records=RECORDS):
    path = tmp_path / "data.json"
    path.write_text(json.dumps(records), encoding="utf-8")
    return path


def scores_by_task(scores: dict, style: str = "fence"):
    """A reply_fn rating each record of the prompt by its task word, in the given reply style."""
    def reply(prompt, body):
        words = re.findall(r'"instruction": "Task number (\w+)\."', prompt)
        verdicts = [{"index": i, "score": scores[w], "reason": f"{w} judged"} for i, w in enumerate(words, 1)]
        text = json.dumps(verdicts)
        return {"fence": f"Here are my ratings:\n```json\n{text}\n```\n", "preamble": f"Sure. {text} Hope it helps."}[style]
    return reply


@pytest.mark.parametrize("reply, expected", [
    ('```json\n[{"index": 1, "score": 4, "reason": "good"}, {"index": 2, "score": 2, "reason": "vague"}]\n```',
     [(4, "good"), (2, "vague")]),
    ('Ratings follow {not json} then [{"index": 2, "score": "3", "reason": "ok"}, {"index": 1, "score": 5}]',
     [(5, ""), (3, "ok")]),
    ('[{"index": 1, "score": 9, "reason": "off scale"}, {"index": 2, "reason": "no score"}]', [None, None]),
    ('I cannot rate these.', [None, None]),
    ('{"verdicts": [{"index": 1, "score": 4, "reason": "good"}, {"index": 2, "score": 2}]}', [(4, "good"), (2, "")]),
])
def test_verdicts_parse_from_fences_and_preambles(reply, expected):
    assert parse_scores(reply, 2) == expected


@pytest.mark.parametrize("style", ["fence", "preamble"])
def test_scores_go_to_metadata_and_min_score_drops(fake_server, tmp_path, style):
    scores = {"one": 5, "two": 4.5, "three": 1, "four": 3, "five": 5, "six": 4, "seven": 2}
    fake_server.reply_fn = scores_by_task(scores, style)
    out = tmp_path / "scored.jsonl"
    result = score_file(write_input(tmp_path), str(out), min_score=4.5, records_per_request=3,
                        base_url=fake_server.base_url, model_name="judge", quiet=True)
    assert result.stopped_by == "done"
    assert len(fake_server.requests) == 3  # 7 records, 3 a request
    kept = read_jsonl(out)
    assert [r["instruction"] for r in kept] == ["Task number one.", "Task number two.", "Task number five."]
    assert [r["metadata"]["score"] for r in kept] == [5, 4.5, 5]
    assert kept[0]["metadata"]["score_reason"] == "one judged"
    rejected = read_jsonl(result.output_dir / "rejected.jsonl")
    assert sorted((r["instruction"], r["reason"], r["metadata"]["score"]) for r in rejected) == [
        ("Task number four.", "low_score", 3), ("Task number seven.", "low_score", 2),
        ("Task number six.", "low_score", 4), ("Task number three.", "low_score", 1)]


def test_a_reply_without_a_valid_score_is_unscored_with_the_raw_reply(fake_server, tmp_path):
    fake_server.reply_fn = lambda prompt, body: '[{"index": 1, "score": 4, "reason": "fine"}, {"index": 2, "score": 7}]'
    result = score_file(write_input(tmp_path, RECORDS[:2]), str(tmp_path / "out.json"), records_per_request=2,
                        base_url=fake_server.base_url, quiet=True)
    assert [r["metadata"]["score"] for r in json.loads((tmp_path / "out.json").read_text())] == [4]
    [bad] = read_jsonl(result.output_dir / "rejected.jsonl")
    assert bad["reason"] == "unscored" and bad["instruction"] == "Task number two." and '"score": 7' in bad["raw"]


def test_a_reason_with_a_raw_line_break_is_scored(fake_server, tmp_path):
    """Judges type line breaks inside strings; the documents pipeline reads such replies, and so
    does score (one reader for both): the record is scored, its reason kept whole."""
    fake_server.reply_fn = lambda prompt, body: '```json\n[{"index": 1, "score": 4, "reason": "Clear.\nBut terse."}]\n```'
    score_file(write_input(tmp_path, RECORDS[:1]), str(tmp_path / "out.json"), base_url=fake_server.base_url, quiet=True)
    [scored] = json.loads((tmp_path / "out.json").read_text())
    assert scored["metadata"]["score"] == 4 and scored["metadata"]["score_reason"] == "Clear.\nBut terse."


def test_verdicts_cut_off_by_max_tokens_are_read_up_to_the_cut():
    reply = '[{"index": 1, "score": 4, "reason": "ok"}, {"index": 2, "score": 2, "reason": "vague"}, {"index": 3, "sco'
    assert parse_scores(reply, 3) == [(4, "ok"), (2, "vague"), None]


def test_a_rerun_with_the_same_rubric_sends_no_request(fake_server, tmp_path):
    fake_server.reply_fn = scores_by_task({w: 4 for w in ("one", "two", "three", "four", "five", "six", "seven")})
    data, out = write_input(tmp_path), tmp_path / "scored.json"
    argv = [str(data), "--output", str(out), "--records_per_request", "2", "--base_url", fake_server.base_url, "--quiet"]
    cli(argv)
    assert len(fake_server.requests) == 4
    first = out.read_text()
    out.unlink()
    cli(argv)
    assert len(fake_server.requests) == 4
    assert out.read_text() == first and len(json.loads(first)) == 7


def test_a_run_cut_by_the_budget_resumes_where_it_stopped(fake_server, tmp_path):
    fake_server.reply_fn = scores_by_task({w: 5 for w in ("one", "two", "three", "four", "five", "six", "seven")})
    data, out = write_input(tmp_path), tmp_path / "scored.json"
    first = score_file(data, str(out), records_per_request=2, max_requests=2, max_concurrency=1,
                       base_url=fake_server.base_url, quiet=True)
    assert first.stopped_by == "max_requests" and not out.exists()
    second = score_file(data, str(out), records_per_request=2, base_url=fake_server.base_url, quiet=True)
    assert second.stopped_by == "done" and len(fake_server.requests) == 4
    assert [r["instruction"] for r in json.loads(out.read_text())] == [r["instruction"] for r in RECORDS]


def test_a_record_without_an_instruction_names_its_line(tmp_path, capsys):
    path = tmp_path / "data.jsonl"
    path.write_text('{"instruction": "ok", "output": "x"}\n{"output": "no instruction"}\n', encoding="utf-8")
    with pytest.raises(SystemExit) as exit_info:
        cli([str(path), "--output", str(tmp_path / "o.json"), "--base_url", "http://127.0.0.1:9/v1"])
    assert exit_info.value.code == 2
    assert f"{path}:2" in capsys.readouterr().err and not (tmp_path / "o.json").exists()


@pytest.mark.parametrize("outputs,message", [
    (["--output", "DIR"], "--output DIR is a directory; name a file to write"),
    (["--output", "DATA"], "--output DATA would overwrite the input DATA (INPUT); pass another --output"),
    (["--output", "s.json", "--output_dir", "./s.json"], "--output_dir s.json is the same directory as --output s.json"),
    (["--output", "run/generated.jsonl", "--output_dir", "run"],
     "--output run/generated.jsonl would overwrite generated.jsonl, which the run keeps in --output_dir run"),
    (["--output", "DATA/s.json"], "--output DATA/s.json lies under DATA, which is a file, not a folder"),
], ids=["directory", "the_input", "output_is_the_run_dir", "a_run_file", "under_a_file"])
def test_outputs_are_checked_before_any_record_is_sent(fake_server, tmp_path, capsys, monkeypatch, outputs, message):
    """Every record used to go to the teacher before the output was found to be a directory."""
    monkeypatch.chdir(tmp_path)
    data = write_input(tmp_path)
    (tmp_path / "DIR").mkdir()
    before = data.read_bytes()
    args = [a.replace("DATA", data.name) for a in outputs]
    with pytest.raises(SystemExit) as exit_info:
        cli([data.name, *args, "--base_url", fake_server.base_url, "--quiet"])
    err = capsys.readouterr().err
    assert exit_info.value.code == 2 and err.startswith(f"self_instruct: error: {message.replace('DATA', data.name)}")
    assert err.count("\n") == 1 and fake_server.requests == []
    assert sorted(p.name for p in tmp_path.iterdir()) == ["DIR", "data.json"] and data.read_bytes() == before


def test_the_chat_api_scores_the_same(fake_server, tmp_path):
    fake_server.reply_fn = scores_by_task({w: 3 for w in ("one", "two", "three", "four", "five", "six", "seven")})
    result = score_file(write_input(tmp_path), str(tmp_path / "o.json"), api="chat", base_url=fake_server.base_url,
                        quiet=True)
    assert [r["metadata"]["score"] for r in result.kept] == [3] * 7
    assert all("messages" in body for body in fake_server.requests)


def test_verdicts_survive_overwrite_and_a_grown_input(fake_server, tmp_path):
    fake_server.reply_fn = scores_by_task({w: 4 for w in ("one", "two", "three", "four", "five", "six", "seven")})
    out, run = tmp_path / "scored.json", tmp_path / "run"
    score_file(write_input(tmp_path, RECORDS[:4]), str(out), output_dir=str(run), records_per_request=3,
               base_url=fake_server.base_url, quiet=True)
    assert len(fake_server.requests) == 2
    # the dataset grew by three records: only they are sent (batches [1-3] [4-6] [7]: two requests)
    result = score_file(write_input(tmp_path), str(out), output_dir=str(run), records_per_request=3, overwrite=True,
                        base_url=fake_server.base_url, quiet=True)
    assert len(fake_server.requests) == 4 and len(result.kept) == 7
    sent = " ".join(body["prompt"] for body in fake_server.requests[2:])
    assert sorted(re.findall(r"Task number (\w+)", sent)) == ["five", "seven", "six"]


def test_the_judge_stage_of_a_grown_run_sends_only_the_new_records(fake_server, tmp_path):
    """generate --judge rates its pool into scored.json each time it ends; a run that grew is
    rated again from its verdict cache, asking only about the new records."""
    import asyncio

    from self_instruct.engine.run import Run
    from self_instruct.generate import GenerateConfig
    from self_instruct.io.jsonl import append_jsonl
    from self_instruct.score import judge_run

    fake_server.reply_fn = scores_by_task({"one": 5, "two": 2, "three": 5, "four": 5, "five": 5, "six": 5, "seven": 5})
    append_jsonl(tmp_path / "generated.jsonl", RECORDS[:2])
    cfg = GenerateConfig(output_dir=str(tmp_path), model_name="judge", base_url=fake_server.base_url,
                         api_key="sk-test", min_score=4.5, judge=True, quiet=True)

    async def judge():
        async with Run(cfg, stages=[tmp_path / "score"]) as run:
            await judge_run(run, tmp_path)
        return json.loads((tmp_path / "scored.json").read_text())

    assert [r["instruction"] for r in asyncio.run(judge())] == ["Task number one."]
    append_jsonl(tmp_path / "generated.jsonl", RECORDS[2:3])
    assert [r["metadata"]["score"] for r in asyncio.run(judge())] == [5, 5]
    assert len(fake_server.requests) == 2 and "Task number one." not in fake_server.requests[1]["prompt"]


def test_rescoring_a_scored_file_and_rerunning_keeps_every_record_and_its_metadata(fake_server, tmp_path, capsys):
    """The engine's bookkeeping lives under `provenance`, not in the records' metadata: scoring a
    scored.json again (three a request), then rerunning that command, keeps all six records with
    the metadata they came with, and names the second scorer as their model."""
    records = [{**r, "metadata": {"source": f"doc{i}.md", "unit": 7 - i, "batch": i}} for i, r in enumerate(RECORDS[:6])]
    fake_server.reply_fn = scores_by_task({w: 5 for w in ("one", "two", "three", "four", "five", "six")})
    first = tmp_path / "scored.json"
    cli([str(write_input(tmp_path, records)), "--output", str(first), "--records_per_request", "1",
         "--base_url", fake_server.base_url, "--model_name", "judge-a", "--quiet"])
    second = [str(first), "--output", str(tmp_path / "rescored.json"), "--records_per_request", "3",
              "--base_url", fake_server.base_url, "--model_name", "judge-b", "--quiet"]
    cli(second)
    sent = len(fake_server.requests)
    capsys.readouterr()
    cli(second)
    assert len(fake_server.requests) == sent == 6 + 2  # the rerun asks nothing
    assert "kept 6 of 6 records" in capsys.readouterr().err
    rescored = json.loads((tmp_path / "rescored.json").read_text())
    assert [r["instruction"] for r in rescored] == [r["instruction"] for r in records]
    for before, after in zip(records, rescored):
        assert after["metadata"] == {**before["metadata"], "score": 5, "score_reason": after["metadata"]["score_reason"]}
        assert after["provenance"]["model"] == "judge-b"
        assert list(after)[-1] == "provenance"  # written last
