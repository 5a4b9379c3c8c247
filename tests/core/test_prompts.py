
import pytest

from self_instruct import ConfigError, Example
from self_instruct.core.prompts import clean_instruction, encode_prompt, load_list_template, stop_sequences

EXAMPLES = [
    Example("Name three   primary\ncolors:", "", "Red, yellow and blue."),
    Example("Translate the sentence into French.", "I like tea.", "J'aime le thé."),
]

GOLDEN_TAIL = """List of 5 tasks:
###
1. Instruction: Name three primary colors
1. Input:
<noinput>
1. Output:
Red, yellow and blue.
###
2. Instruction: Translate the sentence into French.
2. Input:
I like tea.
2. Output:
J'aime le thé.
###
3. Instruction:"""


def test_bundled_prompt_renders_golden_string():
    prompt = encode_prompt(EXAMPLES, load_list_template(), num_tasks=5)
    header = load_list_template().split("{tasks}")[0].replace("{num_tasks}", "5").replace("{conditions}", "")
    assert prompt == header + GOLDEN_TAIL.split("List of 5 tasks:\n", 1)[1]
    assert prompt.endswith(GOLDEN_TAIL)
    assert prompt.startswith("You are helping to build a training set")
    assert "invent 5 new tasks" in prompt


def test_a_persona_and_topic_open_a_paragraph_before_the_list_or_the_prompt():
    paragraph = "The person asking: a baker."
    bundled = encode_prompt(EXAMPLES, load_list_template(), num_tasks=5, conditions=paragraph)
    assert f"in fewer than 100 words.\n\n{paragraph}\n\nList of 5 tasks:\n###\n1." in bundled
    own = encode_prompt(EXAMPLES, "Continue:\n{tasks}", num_tasks=5, conditions=paragraph)
    assert own.startswith(f"{paragraph}\n\nContinue:\n###\n1. Instruction:")


def test_alpaca_prompt_with_tasks_line_matches_alpaca_layout(anchors):
    # Alpaca: prompt.txt + "\n", then the numbered blocks. A user adds "{tasks}" on a last line.
    header = (anchors / "alpaca_prompt.txt").read_text()
    prompt = encode_prompt(EXAMPLES, header + "\n{tasks}", num_tasks=20)
    assert prompt.startswith(header + "\n###\n1. Instruction: Name three primary colors\n")
    assert prompt.endswith("###\n3. Instruction:")


def test_user_template_with_braces_and_without_num_tasks(tmp_path):
    path = tmp_path / "t.txt"
    path.write_text('Answer in JSON like {"a": 1}.\n{tasks}')
    prompt = encode_prompt(EXAMPLES[:1], load_list_template(path=path), num_tasks=4)
    assert prompt.startswith('Answer in JSON like {"a": 1}.\n###\n1. Instruction:')


@pytest.mark.parametrize("text", ["no placeholder here", "{tasks} twice {tasks}"])
def test_template_needs_tasks_placeholder_once(tmp_path, text):
    (tmp_path / "t.txt").write_text(text)
    with pytest.raises(ConfigError, match=r"--prompt_path: .*t.txt must hold the placeholder \{tasks\} exactly once"):
        load_list_template(path=tmp_path / "t.txt")


def test_missing_template_names_flag(tmp_path):
    with pytest.raises(ConfigError, match="--prompt_path: .* does not exist"):
        load_list_template(path=tmp_path / "nope.txt")


def test_num_tasks_must_exceed_examples():
    with pytest.raises(ConfigError, match="--num_tasks"):
        encode_prompt(EXAMPLES, "{tasks}", num_tasks=2)


def test_clean_instruction_and_stop():
    assert clean_instruction("  Sort these\n numbers:  ") == "Sort these numbers"
    assert stop_sequences(20) == ("21. Instruction:",)


def test_trailing_newline_after_tasks_is_dropped(tmp_path):
    path = tmp_path / "t.txt"
    path.write_text("Header\n{tasks}\n\n")
    assert encode_prompt(EXAMPLES[:1], load_list_template(path=path), num_tasks=4).endswith("###\n2. Instruction:")
