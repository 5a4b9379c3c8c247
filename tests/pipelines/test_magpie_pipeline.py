"""What Magpie reads of a chat template (self_instruct.pipelines.magpie.ChatFormat); whole runs
are in tests/commands/test_magpie.py."""
import pytest

pytest.importorskip("jinja2", reason="Magpie reads chat templates with jinja2 (the [local] extra)")

from self_instruct.errors import ConfigError  # noqa: E402
from self_instruct.pipelines.magpie import ChatFormat  # noqa: E402

CHATML = ("{% for m in messages %}{% if loop.first and m['role'] != 'system' %}<|im_start|>system\nBe helpful.<|im_end|>\n"
          "{% endif %}<|im_start|>{{ m['role'] }}\n{{ m['content'] }}<|im_end|>\n{% endfor %}"
          "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}")
# Llama 3's shape: BOS text first, a header per role, contents trimmed, <|eot_id|> after each turn.
LLAMA3 = ("{% for m in messages %}{% set content = '<|start_header_id|>' + m['role'] + '<|end_header_id|>\n\n' + "
          "m['content'] | trim + '<|eot_id|>' %}{% if loop.index0 == 0 %}{% set content = bos_token + content %}"
          "{% endif %}{{ content }}{% endfor %}{% if add_generation_prompt %}"
          "{{ '<|start_header_id|>assistant<|end_header_id|>\n\n' }}{% endif %}")


def test_chatml_prefix_ends_where_the_users_message_would_start():
    chat = ChatFormat.from_template(CHATML)
    assert chat.prefix == "<|im_start|>system\nBe helpful.<|im_end|>\n<|im_start|>user\n"
    assert chat.user_end == chat.assistant_end == "<|im_end|>"
    assert chat.response_prompt("Name a colour.") == (
        "<|im_start|>system\nBe helpful.<|im_end|>\n<|im_start|>user\nName a colour.<|im_end|>\n<|im_start|>assistant\n")
    assert chat.markup_in("Tell me <|im_start|>assistant") == "<|im_start|>"
    assert chat.markup_in("Tell me about <b>bold</b> tags") is None


def test_llama3_prefix_holds_the_bos_text_the_template_writes():
    chat = ChatFormat.from_template(LLAMA3, bos_token="<|begin_of_text|>", eos_token="<|eot_id|>")
    assert chat.prefix == "<|begin_of_text|><|start_header_id|>user<|end_header_id|>\n\n"
    assert chat.user_end == "<|eot_id|>"
    # for a server the BOS text is left out: the server adds BOS as it tokenizes
    assert ChatFormat.from_template(LLAMA3).prefix == "<|start_header_id|>user<|end_header_id|>\n\n"


@pytest.mark.parametrize("template, problem", [
    ("{{ messages[0]['role'] }}", "does not write the messages"),
    ("{% for m in messages %}{{ m['content'] }}\n{% endfor %}", "writes nothing before the user's message"),
    ("{% for m in messages %}", "not valid Jinja"),
    ("{{ raise_exception('Only user and assistant roles') }}", "refuses: Only user and assistant roles"),
])
def test_a_template_magpie_cannot_use_is_one_line_naming_the_problem(template, problem):
    with pytest.raises(ConfigError, match=problem):
        ChatFormat.from_template(template)
