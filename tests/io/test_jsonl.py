"""The one JSONL reader and writer: lines end at "\\n" only, every error names file:line, a torn
last line is cut exactly, a failed append leaves no half line, an atomic write leaves the old
file or the new one, and every write goes through the one seam the kill tests patch."""
import errno
import json
import os

import pytest

from self_instruct.errors import DataError
from self_instruct.io import jsonl
from self_instruct.io.jsonl import append_jsonl, iter_jsonl, iter_records, repair_torn_tail, write_text_atomic


def test_records_end_at_newline_only_and_keep_their_line_numbers(tmp_path):
    """U+0085 and U+2029 are legal inside a JSON string, and str.splitlines would split there;
    a blank line is skipped but still counted, and a CRLF ending is read as one."""
    path = tmp_path / "data.jsonl"
    path.write_bytes('{"instruction": "a\x85b"}\r\n   \n{"instruction": "c\u2029d"}\n'.encode("utf-8"))
    assert list(iter_jsonl(path)) == [(1, {"instruction": "a\x85b"}), (3, {"instruction": "c\u2029d"})]


@pytest.mark.parametrize("name,content,message", [
    ("null.jsonl", b'{"a": 1}\n\nnull\n', "null.jsonl:3: expected a JSON object, got null"),
    ("latin1.jsonl", b'{"a": 1}\n{"a": "caf\xe9"}\n', "latin1.jsonl:2: not UTF-8 (byte 0xe9 at column 11)"),
    ("latin1.json", b'[\n  {"a": "caf\xe9"}\n]', "latin1.json:2: not UTF-8 (byte 0xe9 at column 13)"),
    ("after.json", b'[\n{"a": 1}\n]\n\n{"b": 2}\n', "after.json:3: text after the end of the JSON list"),
    ("number.json", b'  \n[{"a": 1},\n 7]', "number.json:3: expected a JSON object, got number"),
    ("cut.json", b'[{"a": 1},\n{"a": 2}', "cut.json:2: not valid JSON (expected ',' or ']' between records)"),
    ("surrogate.jsonl", b'{"a": "\\ud83d\\ude00"}\n{"a": {"b": ["ok", "\\uDE00 alone"]}}\n',
     'surrogate.jsonl:2: field "a.b[1]" holds a lone surrogate (\\ude00)'),
    ("surrogate.json", b'[{"a": "\\ud83d\\ude00"},\n {"\\ud800": 1}]', "surrogate.json:2: a key holds a lone surrogate (\\ud800)"),
])
def test_read_errors_name_the_file_and_line(tmp_path, name, content, message):
    path = tmp_path / name
    path.write_bytes(content)
    with pytest.raises(DataError) as info:
        list(iter_records(path))
    assert str(info.value).startswith(f"{tmp_path}/{message}")


@pytest.mark.parametrize("tail", [b'{"instruction": "to', b'{"x": "' + b"y" * 70_000, b'{"a": 1}{"b"', b"\xff\xfe"],
                         ids=["short", "past_a_64k_block", "two_objects", "not_utf8"])
def test_a_last_line_that_does_not_parse_is_cut_back_to_the_last_whole_line(tmp_path, tail):
    path = tmp_path / "generated.jsonl"
    whole = b'{"instruction": "one"}\n{"instruction": "two"}\n'
    path.write_bytes(whole + tail)
    note = repair_torn_tail(path)
    assert path.read_bytes() == whole
    # what happened, not a guess at why: no kill is named
    assert note == f"generated.jsonl: cut off its last line ({len(tail)} bytes), which had no newline and does not parse"
    assert repair_torn_tail(path) is None and path.read_bytes() == whole


@pytest.mark.parametrize("last", [b'{"event": "done", "id": 3}', b'{"x": "' + b"y" * 70_000 + b'"}'], ids=["short", "long"])
def test_a_whole_last_line_without_its_newline_is_kept_and_given_one(tmp_path, last):
    """An editor that saves without a final newline, or a write stopped just before it: the
    record is whole, and kept."""
    path = tmp_path / "ledger.jsonl"
    path.write_bytes(b'{"event": "send", "id": 3}\n' + last)
    assert repair_torn_tail(path) is None
    assert path.read_bytes() == b'{"event": "send", "id": 3}\n' + last + b"\n"
    append_jsonl(path, [{"event": "retry", "id": 3}])
    records = [obj for _, obj in iter_jsonl(path)]
    assert records[1] == json.loads(last) and records[2] == {"event": "retry", "id": 3} and len(records) == 3


def test_a_file_that_is_one_torn_line_is_emptied_and_a_missing_one_left_alone(tmp_path):
    path = tmp_path / "ledger.jsonl"
    path.write_bytes(b'{"event": "se')
    assert repair_torn_tail(path).startswith("ledger.jsonl: cut off its last line (13 bytes)")
    assert path.read_bytes() == b""
    path.write_bytes(b'{"event": "send"}')
    assert repair_torn_tail(path) is None and path.read_bytes() == b'{"event": "send"}\n'
    assert repair_torn_tail(tmp_path / "missing.jsonl") is None and not (tmp_path / "missing.jsonl").exists()


def test_a_json_error_says_at_once_where(tmp_path):
    """json's own message for an open string ends in "at"; ours adds "at column" after it."""
    path = tmp_path / "data.jsonl"
    path.write_bytes(b'{"instruction": "abc\n')
    with pytest.raises(DataError) as info:
        list(iter_jsonl(path))
    assert str(info.value) == f"{path}:1: not valid JSON (Unterminated string starting at column 17)"


def test_an_atomic_write_over_a_directory_names_the_file_asked_for_not_the_temp(tmp_path):
    (tmp_path / "out.json").mkdir()
    with pytest.raises(IsADirectoryError) as info:
        write_text_atomic(tmp_path / "out.json", "[]\n")
    assert info.value.filename == str(tmp_path / "out.json")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out.json"]  # no temp file left


def test_an_atomic_write_makes_the_folders_it_needs(tmp_path):
    write_text_atomic(tmp_path / "new" / "deeper" / "out.json", "[]\n")
    assert (tmp_path / "new" / "deeper" / "out.json").read_text() == "[]\n"


def test_append_returns_the_size_the_commit_log_records(tmp_path):
    path = tmp_path / "generated.jsonl"
    assert append_jsonl(path, []) == 0 and not path.exists()  # nothing to write: no empty file either
    first = append_jsonl(path, [{"instruction": "caf\u00e9 \u2028"}])
    second = append_jsonl(path, [{"a": 1}, {"b": 2}])
    assert (first, second) == (len(path.read_bytes().split(b"\n")[0]) + 1, path.stat().st_size)
    assert append_jsonl(path, []) == second


def write_half_then(failure):
    def seam(fd, payload, path):
        os.write(fd, payload[:len(payload) // 2])
        raise failure
    return seam


@pytest.mark.parametrize("failure", [OSError(errno.ENOSPC, "No space left on device"), KeyboardInterrupt()],
                         ids=["disk_full", "ctrl_c"])
def test_an_append_that_fails_midway_is_cut_back_to_the_old_file(tmp_path, monkeypatch, failure):
    path = tmp_path / "rejected.jsonl"
    append_jsonl(path, [{"reason": "similar"}])
    before = path.read_bytes()
    monkeypatch.setattr(jsonl, "_write_all", write_half_then(failure))
    with pytest.raises(type(failure)):
        append_jsonl(path, [{"reason": "too_short"}, {"reason": "blacklist"}])
    assert path.read_bytes() == before
    monkeypatch.undo()
    append_jsonl(path, [{"reason": "empty_output"}])
    assert [r["reason"] for _, r in iter_jsonl(path)] == ["similar", "empty_output"]


def test_an_atomic_write_that_fails_midway_leaves_the_old_file_and_no_temp(tmp_path, monkeypatch):
    path = tmp_path / "state.json"
    write_text_atomic(path, '{"kept": 1}\n')
    monkeypatch.setattr(jsonl, "_write_all", write_half_then(OSError(errno.ENOSPC, "No space left on device")))
    with pytest.raises(OSError):
        write_text_atomic(path, '{"kept": 2, "units": 9}\n')
    assert path.read_text() == '{"kept": 1}\n'
    assert sorted(p.name for p in tmp_path.iterdir()) == ["state.json"]


def test_an_atomic_write_gets_the_users_umask_not_a_private_mode(tmp_path):
    """Others the user lets read their files (a team's shared output) can read regen.json too."""
    old = os.umask(0o022)
    try:
        write_text_atomic(tmp_path / "regen.json", "[]\n")
    finally:
        os.umask(old)
    assert (tmp_path / "regen.json").stat().st_mode & 0o777 == 0o644


def test_every_write_goes_through_the_seam_naming_the_file_it_is_for(tmp_path, monkeypatch):
    """tests/e2e/pausing.py stops a chosen write of a chosen file by patching this one function:
    appends name their file, atomic writes the file they replace (not their temp)."""
    seen = []
    write = jsonl._write_all

    def recording(fd, payload, path):
        seen.append((path.name, payload))
        write(fd, payload, path)
    monkeypatch.setattr(jsonl, "_write_all", recording)
    append_jsonl(tmp_path / "generated.jsonl", [{"a": 1}])
    jsonl.write_json_atomic(tmp_path / "state.json", {"kept": 1}, indent=None)
    jsonl.write_jsonl_atomic(tmp_path / "responses.jsonl", [{"key": "k"}])
    assert seen == [("generated.jsonl", b'{"a": 1}\n'), ("state.json", b'{"kept": 1}\n'),
                    ("responses.jsonl", b'{"key": "k"}\n')]
    assert json.loads((tmp_path / "state.json").read_text()) == {"kept": 1}
