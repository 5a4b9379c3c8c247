"""The one command-line edge (cli.run), driven with a small `main`: flag values reach main as
the types it declares and text as it was typed, every expected failure is one line with its
exit status, --help runs nothing, and no secret is printed."""
import asyncio
import errno

import pytest

from self_instruct import cli
from self_instruct.engine.progress import StallError
from self_instruct.errors import ConfigError, DataError
from self_instruct.io import secrets

KEY, ENV_KEY = "sk-flag-5a1e0c77d3", "sk-env-93b2f10c44"


class Command:
    """A `main` with a positional word, numbers, text, a switch and a key; records its calls."""

    def __init__(self, fails: BaseException | None = None):
        self.calls: list[dict] = []
        self.fails = fails

        def main(input: str, num: int = 5, temperature: float = 1.0, model_name: str = "m",
                 max_cost: float | None = None, quiet: bool = False, api_key: str | None = None):
            """Do the thing.

            Args:
              num: how many
            """
            self.calls.append(dict(input=input, num=num, temperature=temperature, model_name=model_name,
                                   max_cost=max_cost, quiet=quiet, api_key=api_key))
            if self.fails is not None:
                raise self.fails
        self.main = main

    def __call__(self, *argv: str) -> dict:
        cli.run(self.main, list(argv), name="self_instruct.thing")
        return self.calls[-1]


@pytest.fixture(autouse=True)
def no_secrets_from_other_tests(monkeypatch):
    monkeypatch.setattr(secrets, "_secrets", set())


def fails(command: Command, argv: list[str], capsys) -> tuple[int, str]:
    """Exit status and the one stderr line of a command that fails; nothing on stdout."""
    with pytest.raises(SystemExit) as info:
        command(*argv)
    out, err = capsys.readouterr()
    assert out == "" and err.count("\n") == 1 and "Traceback" not in err, err
    return info.value.code, err.rstrip("\n")


def test_numbers_and_switches_reach_main_as_their_types():
    got = Command()("data.jsonl", "--num=7.0", "-t", "1", "--max_cost", "1e-3", "-q")
    assert got == dict(input="data.jsonl", num=7, temperature=1, model_name="m", max_cost=0.001, quiet=True, api_key=None)
    assert Command()("data.jsonl", "--quiet", "False")["quiet"] is False


@pytest.mark.parametrize("typed", ["007", "7", "a,b", "True", "[1, 2]", "1e3", "None"])
def test_a_text_flag_gets_the_text_as_typed(typed):
    """fire reads values as Python literals ("7" an int, "a,b" a tuple); a model name or a list
    of URLs is text whatever it looks like."""
    assert Command()("data.jsonl", "--model_name", typed)["model_name"] == typed


def test_a_lone_dash_is_a_word_or_a_value_not_fires_separator():
    assert Command()("-", "--model_name", "-", "--num", "3") == dict(
        input="-", num=3, temperature=1.0, model_name="-", max_cost=None, quiet=False, api_key=None)


@pytest.mark.parametrize("word", ["-5", "007", "-", "a,b", "[x"])
def test_a_word_that_looks_like_a_number_or_a_flag_is_a_word(word):
    assert Command()(word)["input"] == word


@pytest.mark.parametrize("word", ["1.50", "3.10", "1e3"])
def test_a_word_that_parses_as_a_float_is_kept_as_typed(word):
    assert Command()(word)["input"] == word


@pytest.mark.parametrize("argv,message", [
    (["--num", "7.5"], "--num must be a whole number (got '7.5')"),
    (["--num", "True"], "--num must be a whole number (got 'True')"),
    (["-t", "hot"], "--temperature must be a number (got 'hot')"),
    (["--quiet", "500"], "unexpected argument in position 3: --quiet is a switch and takes no value"),
    (["--num"], "--num needs a value"),
    (["--", "--num", "3"], "unexpected argument in position 2: '--' (flags go before it; see --help)"),
    (["-m", "x"], "unknown flag --m; did you mean --model_name?"),  # -m would be --model_name or --max_cost
    (["--model_name", "--quiet"], "--model_name needs a value"),  # not a model called "--quiet"
    (["--quiet", "yes"], "unexpected argument in position 3: --quiet is a switch and takes no value"),
])
def test_a_bad_flag_is_one_line_naming_it_and_main_never_runs(capsys, argv, message):
    command = Command()
    assert fails(command, ["data.jsonl", *argv], capsys) == (2, f"self_instruct: error: {message}")
    assert command.calls == []


@pytest.mark.parametrize("failure,status,line", [
    (DataError("data.jsonl:3: not valid JSON"), 2, "self_instruct: error: data.jsonl:3: not valid JSON"),
    (StallError("stopped: 10 rounds in a row kept no instruction"), 1,
     "self_instruct: stopped: 10 rounds in a row kept no instruction"),
    (OSError(errno.ENOSPC, "No space left on device", "out/generated.jsonl"), 2,
     "self_instruct: error: out/generated.jsonl: the disk is full: free space, then rerun the same command to resume"),
    (OSError(errno.EROFS, "Read-only file system", "/mnt/out"), 2,
     "self_instruct: error: /mnt/out: the file system is read-only: write somewhere else"),  # no flag: any command's output
    (RecursionError(), 2, "self_instruct: error: input nested too deeply to process"),
    (KeyboardInterrupt(), 130, "self_instruct: interrupted; nothing half-written is left behind"),
    (asyncio.CancelledError(), 130, "self_instruct: interrupted; nothing half-written is left behind"),
], ids=["data", "stall", "disk_full", "read_only", "recursion", "ctrl_c", "cancelled"])
def test_an_expected_failure_is_one_line_with_its_exit_status(capsys, failure, status, line):
    assert fails(Command(fails=failure), ["data.jsonl"], capsys) == (status, line)


def test_no_secret_is_printed(capsys, monkeypatch):
    """Keys from the flags and the environment and passwords in URLs are masked in whatever a
    command's error says."""
    monkeypatch.setenv("OPENAI_API_KEY", ENV_KEY)
    command = Command(fails=ConfigError(f"{KEY} and {ENV_KEY} refused at http://ann:hunter22@host:8000/v1"))
    status, line = fails(command, ["data.jsonl", "--api_key", KEY], capsys)
    assert (status, line) == (2, "self_instruct: error: [secret] and [secret] refused at http://ann:***@host:8000/v1")


def test_help_runs_nothing_and_repeats_no_other_word(capsys):
    command = Command()
    with pytest.raises(SystemExit) as info:
        command("data.jsonl", "--api_key", KEY, "--help")
    shown = "".join(capsys.readouterr())  # fire writes help to stderr when it is not a terminal
    assert info.value.code == 0 and command.calls == []
    assert "--num=NUM" in shown and "how many" in shown
    assert KEY not in shown and "data.jsonl" not in shown


def test_a_missing_positional_argument_is_one_line(capsys):
    command = Command()
    assert fails(command, ["--num", "3"], capsys) == (
        2, "self_instruct: error: INPUT is missing: give it as a word or as --input (see --help)")
    assert Command()("--input", "data.jsonl", "--num", "3")["input"] == "data.jsonl"
    assert fails(Command(), ["--input", "a.jsonl", "b.jsonl"], capsys)[1].startswith(
        "self_instruct: error: unexpected argument in position 3: 'b.jsonl'")


def test_a_word_after_a_switch_is_a_word_when_one_is_due():
    """documents --no_verify book.pdf: the path is a path, not the switch's value."""
    calls = []

    def main(*paths: str, verify: bool = True, quiet: bool = False, output_dir: str = "out"):
        calls.append((paths, verify, quiet, output_dir))
    cli.run(main, ["--noverify", "book.pdf", "-q", "notes.md", "--output_dir", "o"], name="self_instruct.thing")
    cli.run(main, ["--verify", "false", "book.pdf", "--quiet=True"], name="self_instruct.thing")
    assert calls == [(("book.pdf", "notes.md"), False, True, "o"), (("book.pdf",), False, True, "out")]
    assert Command()("--quiet", "data.jsonl")["input"] == "data.jsonl"


def test_dash_h_is_help_even_where_a_flag_starts_with_h(capsys):
    calls = []

    def main(host: str = "127.0.0.1", port: int = 8000):
        """Serve.

        Args:
          host: where to listen
          port: which port
        """
        calls.append(host)
    for flag in ("-h", "--help"):
        with pytest.raises(SystemExit) as info:
            cli.run(main, ["--port", "1", flag], name="self_instruct.serve")
        shown = "".join(capsys.readouterr())
        assert info.value.code == 0 and calls == []
        assert "--host=HOST" in shown and "-h, --host" not in shown and "-p, --port" in shown
    with pytest.raises(SystemExit):
        cli.run(main, ["-h=0.0.0.0"], name="self_instruct.serve")
    assert calls == []


@pytest.mark.parametrize("command", ["generate", "documents", "score", "evolve", "dedup", "export", "report", "train",
                                     "evaluate", "serve"])
def test_dash_h_is_help_in_every_command_and_no_flag_is_listed_with_it(command, capsys):
    """serve -h meant --host, and evaluate -h --holdout: fire gives -x to a lone flag starting with x."""
    import importlib

    with pytest.raises(SystemExit) as info:
        importlib.import_module(f"self_instruct.{command}").cli(["-h"])
    shown = "".join(capsys.readouterr())
    assert info.value.code == 0 and "NAME" in shown and "\n    -h, " not in shown
