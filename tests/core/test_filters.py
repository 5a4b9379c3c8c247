import pytest

from self_instruct import Example
from self_instruct.core.filters import (
    ALPACA, BLACKLIST, COVERAGE, FILTER_SETS, GROUNDED, blacklist_word, first_rejection, load_filters,
    output_copies_input,
)
from self_instruct.errors import ConfigError


def reason(instruction, output="An answer."):
    return first_rejection(Example(instruction, "", output))


@pytest.mark.parametrize("instruction,expected", [
    ("Summarize this text", "too_short"),                       # 3 words: Alpaca drops <= 3
    ("Summarize this text now", None),
    (" ".join(["word"] * 151), "too_long"),
    (" ".join(["word"] * 150), None),
    ("Describe the image of a cat", "blacklist"),
    ("Describe the IMAGES of a cat", "blacklist"),
    ("Describe the imagery of a cat", None),                    # whole words only
    ("Please go to the store and buy milk", "blacklist"),
    ("Write a program that sorts numbers", "write_a_program"),
    ("write a program that sorts numbers", None),               # case-sensitive, as Alpaca
    ("\"Quoted\" instruction starts with punctuation", "punctuation_start"),
    ("¿Cómo se dice hello en inglés?", "non_ascii_start"),
    ("Éxplain why the sky looks blue", "non_ascii_start"),
    ("3 ways to save money on food", None),
])
def test_filters(instruction, expected):
    assert reason(instruction) == expected


def test_empty_output():
    assert reason("Name three kinds of birds", output="  ") == "empty_output"


def test_every_blacklist_word_is_caught():
    for word in BLACKLIST:
        assert reason(f"Please consider the {word} in detail") == "blacklist", word
        assert blacklist_word(f"Please consider the {word.upper()} here") == word


@pytest.mark.parametrize("plural", ["videos", "plots", "diagrams", "flowcharts", "draws", "audios", "musics"])
def test_plurals_alpaca_missed_are_blacklisted(plural):
    assert reason(f"Summarize the {plural} from the last meeting") == "blacklist"
    assert blacklist_word(f"Summarize the {plural.capitalize()} here") == plural


@pytest.mark.parametrize("word", ["mapping", "imagery", "filesystem", "plotting", "videography", "diagrammatic", "drawer"])
def test_longer_words_holding_a_blacklisted_one_pass(word):
    assert reason(f"Explain the {word} in a short paragraph") is None


def test_order_is_alpacas():
    # A short blacklisted instruction reports the first filter in Alpaca's order.
    assert reason("Draw a map") == "too_short"


# --- the sets, and a user's own filters ---


def passes(filter_set, instruction, output="An answer.", input=""):
    return first_rejection(Example(instruction, input, output), filter_set.filters)


@pytest.mark.parametrize("instruction", [
    "What does the file header of a PNG file hold?",          # a format spec is about files
    '"Where are you going?" she asked. Who asked it?',        # dialogue opens with a quote
    "What is RAM?",                                           # three words: Alpaca's floor drops it
    "Écrivez un résumé du passage.",                          # not English
    "Plot the curve the text describes in words.",
])
def test_grounded_questions_are_judged_by_length_not_by_alpacas_word_list(instruction):
    assert passes(GROUNDED, instruction) is None
    assert passes(ALPACA, instruction) is not None  # each is one that Alpaca's set drops


def test_grounded_and_coverage_still_drop_what_is_no_pair():
    assert passes(GROUNDED, "True") == "too_short"  # a one-word "instruction" from a small model
    assert passes(GROUNDED, "  ") == "empty_instruction"
    assert passes(GROUNDED, "What is RAM?", output=" ") == "empty_output"
    assert passes(GROUNDED, " ".join(["word"] * 151)) == "too_long"
    assert passes(COVERAGE, "(file) A sentence of the spec.", output="- next one about images.") is None
    assert passes(COVERAGE, "", output="text") == "empty_instruction"
    assert passes(COVERAGE, "A sentence.", output="") == "empty_output"
    assert set(FILTER_SETS) == {"alpaca", "grounded", "coverage"}


def test_the_sets_say_what_a_duplicate_is():
    summary = Example("Summarize the passage.", "Passage one.", "One.")
    other_passage = Example("Summarize  the passage.", "Passage two.", "Two.")
    assert ALPACA.key(summary) == ALPACA.key(other_passage)          # Alpaca: the instruction alone
    assert GROUNDED.key(summary) != GROUNDED.key(other_passage)      # the same task on another passage
    assert GROUNDED.key(summary) == GROUNDED.key(Example("summarize the passage.", "Passage one.", "Else."))
    window = Example("A sentence.", "", "The next one.")
    assert COVERAGE.key(window) == COVERAGE.key(Example("A sentence.", "", "The next one."))
    assert COVERAGE.key(window) != COVERAGE.key(Example("A sentence.", "", "Another one."))
    assert COVERAGE.key(window) != COVERAGE.key(Example("a sentence.", "", "The next one."))  # verbatim only
    assert (ALPACA.threshold, GROUNDED.threshold, COVERAGE.threshold) == (0.7, None, None)


def test_a_users_filter_loads_from_a_module_or_a_file(tmp_path, monkeypatch):
    (tmp_path / "checks.py").write_text(
        "def no_urls(ex):\n    return ('url', ex.instruction.split()[-1]) if 'http' in ex.instruction else None\n"
        "def short_output(ex):\n    return 'short_output' if len(ex.output) < 5 else None\n", encoding="utf-8")
    by_file = load_filters(f"{tmp_path / 'checks.py'}:no_urls, {tmp_path / 'checks.py'}:short_output")
    assert [f(Example("See http://x.io", "", "Long enough.")) for f in by_file] == [("url", "http://x.io"), None]
    assert by_file[1](Example("Anything", "", "ok")) == "short_output"
    monkeypatch.chdir(tmp_path)  # module:function finds a module in the current directory, as python -m does
    [by_module] = load_filters("checks:no_urls")
    assert by_module(Example("Read http://y.io")) == ("url", "http://y.io")
    [builtin] = load_filters(["self_instruct.core.filters:blacklisted"])
    assert builtin(Example("Describe the file format")) == "blacklist"
    assert load_filters(None) == () and load_filters("") == ()


@pytest.mark.parametrize("spec, message", [
    ("no_colon", "--filter no_colon: expected module:function or path/to/file.py:function"),
    ("no_such_module_here:f", "--filter no_such_module_here:f: cannot import no_such_module_here (ModuleNotFoundError"),
    ("self_instruct.core.filters:nothing", "--filter self_instruct.core.filters:nothing: self_instruct.core.filters has no function nothing"),
    ("missing.py:f", "--filter missing.py:f: no such file: missing.py"),
])
def test_a_filter_that_does_not_resolve_names_the_flag(spec, message, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    with pytest.raises(ConfigError) as caught:
        load_filters(spec)
    assert str(caught.value).startswith(message) and "\n" not in str(caught.value)


def test_a_filter_that_fails_or_answers_nonsense_names_the_flag(tmp_path):
    (tmp_path / "bad.py").write_text("def boom(ex):\n    raise ValueError('no')\ndef number(ex):\n    return 3\n",
                                     encoding="utf-8")
    boom, number = load_filters(f"{tmp_path}/bad.py:boom,{tmp_path}/bad.py:number")
    with pytest.raises(ConfigError, match=r"^--filter .*bad.py:boom raised ValueError: no$"):
        boom(Example("x"))
    with pytest.raises(ConfigError, match=r"returned 3: a filter returns None, a reason, or a \(reason, detail\) pair"):
        number(Example("x"))


@pytest.mark.parametrize("example,copies", [
    (Example("Fix the typo.", "Teh cat sat.", "teh  cat SAT."), True),
    (Example("Repeat after me: hello.", "", "Repeat after me:  hello."), True),
    (Example("Fix the typo.", "Teh cat sat.", "The cat sat."), False),
    (Example("Say hello.", "", "Hello!"), False),
    (Example("Say hello.", "", "  "), False),  # empty_output's to catch, not this filter's
])
def test_an_output_that_repeats_its_input_or_instruction_is_dropped(example, copies):
    assert output_copies_input(example) == ("output_copies_input" if copies else None)


def test_the_embedded_teachers_filter_joins_the_users_and_is_recorded(tmp_path):
    from self_instruct.generate import GenerateConfig
    from self_instruct.teachers.local import LocalTeacher

    mine = "self_instruct.core.filters:blacklisted"
    preferred = LocalTeacher.default_options["filter"]
    assert GenerateConfig(output_dir=str(tmp_path)).resolved(LocalTeacher.default_options).filter == preferred
    both = GenerateConfig(output_dir=str(tmp_path), filter=mine).resolved(LocalTeacher.default_options)
    assert both.filter == f"{preferred},{mine}" and both.num_tasks == 6
    assert GenerateConfig(output_dir=str(tmp_path), filter=mine).resolved({}).filter == mine
