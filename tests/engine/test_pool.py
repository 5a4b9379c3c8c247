"""The pool on disk, opened and reopened in this process: a unit is done when its commit line is
durable, anything past the last commit is cut off by byte offset, an edit is named (never guessed
at), the lock comes before any write, and the settings that shape the data guard a resume."""
import json
import os

import pytest

from self_instruct.errors import ConfigError, DataError
from self_instruct.engine.pool import InstructionPool

SHAPING = ("model_name", "temperature")
CONFIG = {"model_name": "m", "temperature": 1.0, "max_concurrency": 8}


def kept(*names: str) -> list[dict]:
    return [{"instruction": name} for name in names]


def instructions(pool: InstructionPool) -> list[str]:
    return [r["instruction"] for r in pool.records]


def test_torn_last_line_is_cut_and_reported(tmp_path):
    out = tmp_path / "out"
    pool = InstructionPool.open(out)
    pool.append(0, [{"instruction": f"Task {i}", "metadata": {"round": 0}} for i in range(3)], [{"reason": "similar"}])
    pool.close()
    with open(out / "generated.jsonl", "ab") as f:
        f.write(b'{"instruction": "Task 3", "meta')
    with open(out / "rejected.jsonl", "ab") as f:
        f.write(b'{"reason": "too_short", "provenance": {"unit": 1}}')  # whole JSON, no newline: not finished

    again = InstructionPool.open(out)
    again.close()
    assert [r["instruction"] for r in again.records] == ["Task 0", "Task 1", "Task 2"]
    assert dict(again.reject_counts) == {"similar": 1}
    assert again.notes == [
        "generated.jsonl: cut off 31 bytes of unit 1, written but not committed when the run stopped (it runs again, from the reply cache)",
        "rejected.jsonl: cut off 50 bytes of unit 1, written but not committed when the run stopped (it runs again, from the reply cache)",
    ]
    assert (out / "generated.jsonl").read_bytes().endswith(b'"round": 0}}\n')
    # Cut once: the next open finds nothing to repair, and appends start on a fresh line.
    with InstructionPool.open(out) as pool:
        assert pool.notes == []


def test_a_broken_line_inside_the_file_is_not_guessed_at(tmp_path):
    out = tmp_path / "out"
    with InstructionPool.open(out) as pool:
        pool.append(0, [{"instruction": "a"}, {"instruction": "b"}, {"instruction": "c"}], [])
    data = (out / "generated.jsonl").read_bytes()
    (out / "generated.jsonl").write_bytes(data.replace(b'{"instruction": "b"}', b'not json, an edit.. '))
    with pytest.raises(Exception, match=r"generated.jsonl:2: not valid JSON.*--overwrite"):
        InstructionPool.open(out)


def test_a_unit_killed_between_its_appends_is_cut_and_run_again(tmp_path):
    """A unit is done when its line in commits.jsonl is durable, after both of its appends: a
    kill between them leaves a unit with its kept records and without its rejects (or its
    commit). On open, the files are cut back to the sizes the last commit recorded, by byte
    offset, so the unit runs again from the reply cache; nothing inside a record is read to
    decide it, so input metadata that looks like the engine's own cannot fool it."""
    out = tmp_path / "out"
    with InstructionPool.open(out) as pool:
        pool.append(0, [{"instruction": "Task 0", "metadata": {"unit": 5}}], [{"reason": "similar"}])
    with open(out / "generated.jsonl", "a") as f:  # unit 1's kept record reached the disk, then the process died
        f.write(json.dumps({"instruction": "Task 1", "metadata": {"unit": 0, "round": 0}, "provenance": {"unit": 1}}) + "\n")
    with InstructionPool.open(out) as again:
        assert [r["instruction"] for r in again.records] == ["Task 0"]
        assert again.next_unit == 1 and dict(again.reject_counts) == {"similar": 1}
        assert len(again.notes) == 1 and again.notes[0].startswith("generated.jsonl: cut off ")


def test_a_unit_whose_commit_line_was_torn_is_not_done(tmp_path):
    """Both appends of unit 1 made it, its commit line only in part: unit 1 runs again, so
    neither its kept records nor its rejects are left behind to be written twice."""
    out = tmp_path / "out"
    with InstructionPool.open(out) as pool:
        pool.append(0, kept("Task 0"), [{"reason": "similar"}])
        pool.append(1, [r | {"provenance": {"unit": 1}} for r in kept("Task 1", "Task 2")],
                    [{"reason": "too_short", "provenance": {"unit": 1}}])
    commits = out / "commits.jsonl"
    os.truncate(commits, commits.stat().st_size - 5)
    with InstructionPool.open(out) as again:
        assert again.next_unit == 1 and instructions(again) == ["Task 0"]
        assert dict(again.reject_counts) == {"similar": 1}
        assert [note.split(":")[0] for note in again.notes] == ["commits.jsonl", "generated.jsonl", "rejected.jsonl"]
        again.append(1, kept("Task 1 again"), [])
    with InstructionPool.open(out) as pool:
        assert instructions(pool) == ["Task 0", "Task 1 again"] and pool.notes == []


def test_records_before_a_unit_are_those_of_the_units_before_it(tmp_path):
    """What a unit samples from (lag): a prefix by unit, whatever each unit kept, the same
    after a reopen."""
    out = tmp_path / "out"
    with InstructionPool.open(out) as pool:
        pool.append(0, kept("a", "b"), [])
        pool.append(1, [], [{"reason": "similar"}])
        pool.append(2, kept("c"), [])
        written = [[r["instruction"] for r in pool.records_before(u)] for u in range(5)]
    assert written == [[], ["a", "b"], ["a", "b"], ["a", "b", "c"], ["a", "b", "c"]]
    with InstructionPool.open(out) as again:
        assert [[r["instruction"] for r in again.records_before(u)] for u in range(5)] == written


def test_units_written_together_commit_one_by_one_and_a_stop_between_commit_lines_keeps_the_whole_ones(tmp_path):
    """Three units in one write a file: each gets its own commit line, at the byte its records
    end, so a stop after the first two commit lines (the third torn) keeps exactly units 0 and 1."""
    out = tmp_path / "out"
    with InstructionPool.open(out) as pool:
        pool.append(0, kept("a"), [])
        def by_run(unit, *names):  # as the engine writes them: a cut only ever removes a run's lines
            return [r | {"provenance": {"unit": unit}} for r in kept(*names)]
        units = [(1, by_run(1, "b", "c"), [{"reason": "similar"}]), (2, [], [{"reason": "similar"}]),
                 (3, by_run(3, "d"), [])]
        pool.write_units(units)
        for unit in units:
            pool.apply(*unit)
        commits = [json.loads(line) for line in (out / "commits.jsonl").read_text().splitlines()]
        assert [c["unit"] for c in commits] == [0, 1, 2, 3] and [c["kept_total"] for c in commits] == [1, 3, 3, 4]
        assert [r["instruction"] for r in pool.records_before(3)] == ["a", "b", "c"]
    with InstructionPool.open(out) as again:
        assert instructions(again) == ["a", "b", "c", "d"] and sum(again.reject_counts.values()) == 2
    lines = (out / "commits.jsonl").read_bytes().splitlines(keepends=True)
    (out / "commits.jsonl").write_bytes(b"".join(lines[:3]) + lines[3][:10])  # unit 3's commit line torn
    with InstructionPool.open(out) as again:
        assert instructions(again) == ["a", "b", "c"] and again.next_unit == 3
        assert sum(again.reject_counts.values()) == 2
        with pytest.raises(ValueError, match="unit 5 committed out of order"):
            again.write_units([(3, kept("e"), []), (5, kept("f"), [])])


def test_a_unit_out_of_order_is_refused_before_anything_is_written(tmp_path):
    out = tmp_path / "out"
    with InstructionPool.open(out) as pool:
        pool.append(0, kept("a"), [])
        before = {p.name: p.read_bytes() for p in out.iterdir()}
        for unit in (0, 2):
            with pytest.raises(ValueError, match=f"unit {unit} committed out of order"):
                pool.write(unit, kept("b"), [{"reason": "similar"}])
        assert {p.name: p.read_bytes() for p in out.iterdir()} == before


@pytest.mark.parametrize("edit,message", [
    ("truncate", r"generated.jsonl: \d+ bytes where commits.jsonl says \d+ were committed.*--overwrite"),
    ("blank_a_line", r"generated.jsonl: holds 1 records where commits.jsonl counts 2.*--overwrite"),
    ("renumber_commits", r"commits.jsonl:2: unit 5 where 1 was expected.*--overwrite"),
])
def test_an_edited_pool_is_refused_naming_the_file_and_the_fix(tmp_path, edit, message):
    out = tmp_path / "out"
    with InstructionPool.open(out) as pool:
        pool.append(0, kept("first task"), [])
        pool.append(1, kept("second task"), [])
    generated, commits = out / "generated.jsonl", out / "commits.jsonl"
    if edit == "truncate":
        os.truncate(generated, generated.stat().st_size - 10)
    elif edit == "blank_a_line":  # the same size, so only the record count can tell
        first, second = generated.read_text().splitlines(keepends=True)
        generated.write_text(first + " " * (len(second) - 1) + "\n")
    else:
        commits.write_text(commits.read_text().replace('"unit": 1', '"unit": 5'))
    before = {p.name: p.read_bytes() for p in out.iterdir()}
    with pytest.raises(DataError, match=message):
        InstructionPool.open(out)
    after = {p.name: p.read_bytes() for p in out.iterdir()}
    assert after == before  # nothing cut: an edit is for a person to look at


def test_overwrite_on_a_busy_directory_deletes_nothing(tmp_path):
    """The lock is taken before --overwrite clears anything: a second command cannot delete the
    files of the run writing there."""
    out = tmp_path / "out"
    with InstructionPool.open(out, config=CONFIG, shaping=SHAPING) as running:
        running.append(0, kept("a"), [{"reason": "similar"}])
        before = {p.name: p.read_bytes() for p in out.iterdir()}
        with pytest.raises(ConfigError, match=f"another run \\(pid {os.getpid()}\\) is writing to this output directory"):
            InstructionPool.open(out, config=dict(CONFIG, temperature=0.5), shaping=SHAPING, overwrite=True)
        assert {p.name: p.read_bytes() for p in out.iterdir()} == before
    with InstructionPool.open(out, config=dict(CONFIG, temperature=0.5), shaping=SHAPING, overwrite=True) as fresh:
        assert len(fresh) == 0 and fresh.next_unit == 0


def test_the_run_id_follows_the_settings_that_shape_the_data_and_a_resume_keeps_it(tmp_path):
    """Records carry the run id as provenance: the same settings make the same id anywhere (the
    same seeded command makes the same bytes), a setting that shapes nothing leaves it alone, and
    a resume keeps the id the run started with, even when a shaping setting that an older
    run.json lacks now enters the digest."""
    def run_id(directory, config, shaping=SHAPING):
        with InstructionPool.open(tmp_path / directory, config=config, shaping=shaping) as pool:
            return pool.run_id

    first = run_id("a", CONFIG)
    assert run_id("b", dict(CONFIG, max_concurrency=64)) == first
    assert run_id("c", dict(CONFIG, temperature=0.5)) != first
    newer = dict(CONFIG, seed=7)
    assert run_id("d", newer, SHAPING + ("seed",)) != first
    assert run_id("a", newer, SHAPING + ("seed",)) == first  # "a" was made before "seed" was recorded
    assert json.loads((tmp_path / "a" / "run.json").read_text()) == dict(newer, run_id=first)


def test_rejects_are_counted_back_by_reason_and_only_candidates_count_as_judged(tmp_path):
    """A resumed run's summary ("kept N of M judged") counts the rejects that were candidates,
    not the requests that failed before any candidate was read."""
    out = tmp_path / "out"
    rejects = [{"reason": "similar", "instruction": "x"}, {"reason": "similar", "instruction": "y"},
               {"reason": "request_failed", "detail": "500"}]
    with InstructionPool.open(out) as pool:
        pool.append(0, kept("a"), rejects)
        counted = (dict(pool.reject_counts), pool.judged_rejects)
    with InstructionPool.open(out) as again:
        assert (dict(again.reject_counts), again.judged_rejects) == counted == ({"similar": 2, "request_failed": 1}, 2)


def test_a_pool_of_an_earlier_version_is_refused_with_what_to_do(tmp_path):
    out = tmp_path / "out"
    out.mkdir()
    (out / "generated.jsonl").write_text('{"instruction": "a", "metadata": {"round": 0}}\n')
    (out / "state.json").write_text('{"units_done": 1}')
    with pytest.raises(ConfigError, match="earlier version of self_instruct.*export what it holds.*--overwrite"):
        InstructionPool.open(out)
    assert (out / "generated.jsonl").read_text() == '{"instruction": "a", "metadata": {"round": 0}}\n'



@pytest.mark.parametrize("added", [
    {"instruction": "My own record, written by hand."},
    {"instruction": "Metadata that looks like ours.", "metadata": {"unit": 1, "provenance": {"unit": 1}}},
    {"instruction": "A provenance of another making.", "provenance": "mine"},
], ids=["by_hand", "metadata_like_ours", "provenance_not_ours"])
def test_lines_added_after_the_last_commit_are_refused_not_cut(tmp_path, added):
    """Only the records of the unit that was being written when the run stopped are cut; a
    record someone appended was cut off too, silently, with a note blaming a kill."""
    out = tmp_path / "out"
    with InstructionPool.open(out) as pool:
        pool.append(0, kept("Task 0"), [])
    with open(out / "generated.jsonl", "a") as f:
        f.write(json.dumps(added) + "\n")
    before = (out / "generated.jsonl").read_bytes()
    with pytest.raises(DataError) as info:
        InstructionPool.open(out)
    assert str(info.value).startswith(f"{out / 'generated.jsonl'}: 1 line(s) after byte ")
    assert "that no run wrote here" in str(info.value) and "--overwrite" in str(info.value)
    assert (out / "generated.jsonl").read_bytes() == before
