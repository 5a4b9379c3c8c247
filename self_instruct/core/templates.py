"""Prompt templates: the one way a template is read and the one way it is filled.

A template is plain text with `{name}` placeholders. Each has a bundled version in prompts/
(found through io.resources, so a plain `pip install .` has them) that a user may replace with a
file of their own, given by a flag; the file must hold the placeholders the bundled one needs.

    template = load_template("documents_qa.txt", "mine.txt", flag="--prompt_path")
    fill(template, chunk="Tomatoes need sun.", num_questions=2, source="garden.md")

Filling is one pass over `{name}` and leaves every other brace alone: JSON examples in a
template and braces in the text put in (code, a record that mentions `{input}`) stay as written.
The training prompt (Alpaca's two templates, with and without an input) is read and filled here
too, so train, export and evaluate render exactly the same text.
"""
from __future__ import annotations

import re
from pathlib import Path
from typing import Any, Callable, Mapping

from ..errors import ConfigError
from ..io.resources import bundled_path

# What each bundled template must hold, and so what a user's replacement must hold. Optional
# ones are left out: {num_tasks} in the list templates, {source} in the documents templates.
REQUIRED: Mapping[str, tuple[str, ...]] = {
    "generate.txt": ("{tasks}",),
    "generate_local.txt": ("{tasks}",),
    "self_instruct_instructions.txt": ("{tasks}",),
    "self_instruct_classify.txt": ("{examples}", "{instruction}"),
    "self_instruct_input_first.txt": ("{instruction}", "{num_instances}"),
    "self_instruct_output_first.txt": ("{instruction}",),
    "documents_qa.txt": ("{chunk}", "{num_questions}"),
    "documents_instruct.txt": ("{chunk}", "{num_tasks}", "{categories}"),
    "documents_backtranslate.txt": ("{chunk}",),
    "documents_verify.txt": ("{chunk}", "{items}"),
    "score.txt": ("{records}",),
    "preference.txt": ("{instruction}", "{responses}"),
    "evolve_depth.txt": ("{operation}", "{task}"),
    "evolve_breadth.txt": ("{task}",),
    "evolve_answer.txt": ("{instruction}",),
    "conversation_user.txt": ("{transcript}",),
    "conversation_assistant.txt": ("{transcript}",),
    "conversation_assistant_document.txt": ("{chunk}", "{transcript}"),
    "train_with_input.txt": ("{instruction}", "{input}"),
    "train_no_input.txt": ("{instruction}",),
}
_PLACEHOLDER = re.compile(r"\{(\w+)\}")


def load_template(name: str, path: str | Path | None = None, flag: str = "--prompt_path",
                  check: Callable[[str], str | None] | None = None) -> str:
    """The text of the user's file at `path` (given by `flag`), else of the bundled prompts/`name`,
    once it holds the placeholders `name` needs. `check` may add a rule of the caller's own: it
    returns what is wrong with the text, or None. Every failure is one line naming the flag and
    the file: "--rubric_path: mine.txt must hold {records}".
    """
    source = Path(path) if path else bundled_path("prompts", name)
    where = f"{flag}: {source}" if path else f"bundled template {source}"
    try:
        text = source.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise ConfigError(f"{where} does not exist") from None
    except UnicodeDecodeError as exc:
        raise ConfigError(f"{where} is not UTF-8 text ({exc.reason} at byte {exc.start})") from None
    except OSError as exc:
        raise ConfigError(f"{where} cannot be read ({exc.strerror})") from None
    missing = [p for p in REQUIRED[name] if p not in text]
    # the caller's rule first: it knows more about where a placeholder goes
    problem = (check(text) if check else None) or (f"must hold {' and '.join(missing)}" if missing else None)
    if problem:
        raise ConfigError(f"{where} {problem}")
    return text


def fill(template: str, **values: Any) -> str:
    """Replace each {name} given in `values`, in one pass: braces in the values, and any other
    braces in the template, are left alone.

    Example: fill('{"q": "..."} about {chunk}', chunk="{x}") -> '{"q": "..."} about {x}'
    """
    return _PLACEHOLDER.sub(lambda m: str(values[m.group(1)]) if m.group(1) in values else m.group(0), template)


# --- the training prompt ---

def load_training_templates(prompt_with_input: str | Path | None = None,
                            prompt_no_input: str | Path | None = None) -> dict[str, str]:
    """The two training prompt templates, keyed "with_input" and "no_input": the users' files
    given by --prompt_with_input and --prompt_no_input, else the bundled Alpaca-style ones."""
    return {"with_input": load_template("train_with_input.txt", prompt_with_input, "--prompt_with_input"),
            "no_input": load_template("train_no_input.txt", prompt_no_input, "--prompt_no_input")}


def render_training_prompt(record: Mapping[str, str], templates: Mapping[str, str]) -> str:
    """The prompt a record is trained (and asked) with: the template chosen by whether the record
    has an input (as Alpaca: input != ""), filled with its instruction and input.

    Example: {"instruction": "Add {x}.", "input": ""} with "Q: {instruction}\\nA: " -> "Q: Add {x}.\\nA: "
    """
    template = templates["with_input"] if record["input"] else templates["no_input"]
    return fill(template, instruction=record["instruction"], input=record["input"])
