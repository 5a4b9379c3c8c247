"""Tests for self_instruct.core.templates: the one loader of every prompt template and the one fill."""
import pytest

from self_instruct.core.templates import (REQUIRED, fill, load_template, load_training_templates,
                                          render_training_prompt)
from self_instruct.errors import ConfigError
from self_instruct.io.resources import bundled_path


def test_every_bundled_template_is_listed_and_holds_what_it_needs():
    bundled = {path.name for path in bundled_path("prompts", "generate.txt").parent.glob("*.txt")}
    assert bundled == set(REQUIRED)
    for name in REQUIRED:
        load_template(name)


def test_fill_is_one_pass_and_leaves_other_braces_alone():
    assert fill('{"q": "..."} on {chunk} ({n})', chunk="{n}", n=2) == '{"q": "..."} on {n} (2)'
    assert fill("{a} {b} {a}", a=1) == "1 {b} 1"


@pytest.mark.parametrize("content, problem", [
    (None, "does not exist"),
    (b"caf\xe9 {records}", "is not UTF-8 text (invalid continuation byte at byte 3)"),
    (b"Rate these records.", "must hold {records}"),
])
def test_a_user_file_that_cannot_be_used_is_one_line_naming_the_flag_and_the_file(tmp_path, content, problem):
    path = tmp_path / "rubric.txt"
    if content is not None:
        path.write_bytes(content)
    with pytest.raises(ConfigError) as error:
        load_template("score.txt", path, "--rubric_path")
    assert str(error.value) == f"--rubric_path: {path} {problem}"


def test_a_directory_is_refused_with_the_reason(tmp_path):
    with pytest.raises(ConfigError, match=rf"^--prompt_path: {tmp_path} cannot be read \("):
        load_template("generate.txt", tmp_path)


def test_every_missing_placeholder_is_named_and_the_callers_rule_comes_first(tmp_path):
    path = tmp_path / "mine.txt"
    path.write_text("Check these.", encoding="utf-8")
    with pytest.raises(ConfigError, match=r"must hold \{chunk\} and \{items\}$"):
        load_template("documents_verify.txt", path)
    with pytest.raises(ConfigError, match=r"must be short$"):
        load_template("documents_verify.txt", path, check=lambda text: "must be short")


def test_training_prompt_picks_the_template_by_input_and_keeps_braces():
    templates = load_training_templates()
    no_input = render_training_prompt({"instruction": "Print {x}.", "input": "", "output": ""}, templates)
    with_input = render_training_prompt({"instruction": "Sort.", "input": "b {input} a", "output": ""}, templates)
    assert "Print {x}." in no_input and "### Input:" not in no_input and no_input.endswith("### Response:\n")
    assert "Sort." in with_input and "### Input:\nb {input} a\n" in with_input


def test_a_training_template_without_its_placeholder_names_its_flag(tmp_path):
    (tmp_path / "bad.txt").write_text("Answer this:\n")
    with pytest.raises(ConfigError, match=r"^--prompt_no_input: .*bad.txt must hold \{instruction\}$"):
        load_training_templates(prompt_no_input=str(tmp_path / "bad.txt"))
    with pytest.raises(ConfigError, match=r"^--prompt_with_input: .*bad.txt must hold \{instruction\} and \{input\}$"):
        load_training_templates(prompt_with_input=str(tmp_path / "bad.txt"))
