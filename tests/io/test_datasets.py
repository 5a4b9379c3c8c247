"""The check every command makes of its outputs before any work: each one names the flag it came
from, and nothing is created by the check itself."""
import os

import pytest

from self_instruct.errors import ConfigError
from self_instruct.io.datasets import check_outputs


def refusal(*args, **kwargs) -> str:
    with pytest.raises(ConfigError) as info:
        check_outputs(*args, **kwargs)
    return str(info.value)


def test_a_directory_output_that_is_a_file_and_a_file_output_under_a_file(tmp_path):
    (tmp_path / "taken").write_text("x")
    assert refusal(directories=[("--output_dir", tmp_path / "taken")]) == \
        f"--output_dir {tmp_path / 'taken'} is a file, not a directory; pass another --output_dir"
    assert refusal([("--output", tmp_path / "taken" / "a" / "b.json")]) == \
        f"--output {tmp_path / 'taken' / 'a' / 'b.json'} lies under {tmp_path / 'taken'}, which is a file, not a folder; pass another --output"


def test_a_symlink_loop_is_one_line(tmp_path):
    (tmp_path / "loop").symlink_to(tmp_path / "loop")
    assert "--report" in refusal([("--report", tmp_path / "loop")]) and "symlink loop" in refusal([("--report", tmp_path / "loop")])


@pytest.mark.skipif(os.geteuid() == 0, reason="root may write anywhere")
def test_a_folder_that_cannot_be_written_is_named(tmp_path):
    locked = tmp_path / "locked"
    locked.mkdir(mode=0o555)
    assert refusal([("--output", locked / "new" / "out.json")]) == \
        f"--output {locked / 'new' / 'out.json'}: cannot write in {locked} (permission denied); pass another --output"


def test_outputs_that_may_be_written_pass_and_nothing_is_made(tmp_path):
    check_outputs([("--output", tmp_path / "new" / "out.json"), ("--report", None)],
                  directories=[("--output_dir", tmp_path / "run")], inputs=[("INPUT", tmp_path / "data.json")],
                  reserved=["generated.jsonl"])
    assert list(tmp_path.iterdir()) == []
