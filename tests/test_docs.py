"""The documentation stays true to the code: the flag reference is what --help prints now, the
README stays short, and every relative link and anchor in README.md and docs/ leads somewhere."""
from __future__ import annotations

import configparser
import importlib.util
import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
DOCS = ROOT / "docs"
PAGES = [ROOT / "README.md", *sorted(DOCS.glob("*.md"))]
README_MAX_LINES = 200


def load_flags_script():
    spec = importlib.util.spec_from_file_location("docs_flags", DOCS / "flags.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


flags = load_flags_script()


@pytest.fixture(scope="module")
def fresh_sections() -> dict[str, str]:
    """Each command's section of docs/flags.md as its --help makes it now (once for all tests)."""
    return flags.sections()


@pytest.mark.parametrize("command", list(flags.COMMANDS))
def test_flag_reference_is_current(command, fresh_sections):
    text = flags.FLAGS_MD.read_text(encoding="utf-8")
    if not flags.stale(text, {command: fresh_sections[command]}):
        return
    _, made_with = flags.parse(text)
    if made_with is not None and made_with != flags.versions():
        # fire's layout and typing's names differ between versions: only a run under the versions
        # the page was made with can tell a changed flag from a changed printer.
        pytest.skip(f"docs/flags.md was made with fire {made_with[0]} on Python {made_with[1]}, this is "
                    f"fire {flags.versions()[0]} on Python {flags.versions()[1]}")
    pytest.fail(f"docs/flags.md is stale for {command}: its --help changed; run python docs/flags.py")


def test_flag_reference_covers_every_command():
    """A new console script needs its section (and its docs page) in docs/flags.py's COMMANDS."""
    setup = configparser.ConfigParser()
    setup.read(ROOT / "setup.cfg")
    scripts = setup["options.entry_points"]["console_scripts"]
    modules = set(re.findall(r"= self_instruct\.(\w+):cli", scripts))
    assert modules == set(flags.COMMANDS), f"in setup.cfg, not in docs/flags.py: {modules - set(flags.COMMANDS)}; " \
                                           f"in docs/flags.py, not in setup.cfg: {set(flags.COMMANDS) - modules}"


def test_readme_is_short():
    lines = (ROOT / "README.md").read_text(encoding="utf-8").count("\n")
    assert lines <= README_MAX_LINES, f"README.md has {lines} lines (at most {README_MAX_LINES}): move detail to docs/"


# --- links ---

_FENCE = re.compile(r"^(```|~~~).*?^\1[^\n]*$", re.MULTILINE | re.DOTALL)
_CODE_SPAN = re.compile(r"`[^`\n]*`")
_LINK = re.compile(r"!?\[[^\]]*\]\(([^)\s]+)(?:\s+\"[^\"]*\")?\)")


def prose(text: str) -> str:
    """The text without fenced code blocks, and code spans as a placeholder (a `[x](y)` inside
    code is no link)."""
    return _CODE_SPAN.sub("code", _FENCE.sub("", text))


def slug(heading: str) -> str:
    """GitHub's anchor for a heading: lower case, punctuation but hyphens and underscores gone,
    spaces as hyphens.

    >>> slug("Output files (in `--output_dir`)")
    'output-files-in---output_dir'
    """
    return re.sub(r"[^\w\- ]", "", heading.strip().lower()).replace(" ", "-")


def anchors(page: Path) -> set[str]:
    found: set[str] = set()
    for line in _FENCE.sub("", page.read_text(encoding="utf-8")).splitlines():
        heading = re.match(r"#{1,6}\s+(.*?)\s*#*\s*$", line)
        if heading:
            base = slug(heading.group(1))
            name, n = base, 0
            while name in found:  # GitHub numbers repeated headings: name, name-1, name-2
                n += 1
                name = f"{base}-{n}"
            found.add(name)
    return found


@pytest.mark.parametrize("page", PAGES, ids=lambda p: str(p.relative_to(ROOT)))
def test_relative_links_lead_somewhere(page):
    broken = []
    for target in _LINK.findall(prose(page.read_text(encoding="utf-8"))):
        if re.match(r"[a-z][a-z0-9+.-]*:", target):  # https:, mailto:
            continue
        path, _, anchor = target.partition("#")
        file = (page.parent / path).resolve() if path else page
        if not file.exists():
            broken.append(f"{target} (no file {file.relative_to(ROOT) if file.is_relative_to(ROOT) else file})")
        elif anchor and file.suffix == ".md" and anchor not in anchors(file):
            broken.append(f"{target} (no heading with anchor #{anchor} in {file.relative_to(ROOT)})")
    assert not broken, f"{page.relative_to(ROOT)}: " + "; ".join(broken)


def test_slug_matches_github():
    assert slug("Output files (in `--output_dir`)") == "output-files-in---output_dir"
    assert slug("`--judge`: rating a run at its end") == "--judge-rating-a-run-at-its-end"
    assert slug("Self-instruct's pipeline: classification-aware instances") == \
        "self-instructs-pipeline-classification-aware-instances"


@pytest.mark.parametrize("command", list(flags.COMMANDS))
def test_every_flag_has_a_line_of_help(command, fresh_sections):
    """Every flag and positional argument --help lists says what it is for (one options layer
    writes each flag's help once, for the flag, the library keyword and this page)."""
    section = fresh_sections[command]
    listed = re.search(r"^(?:POSITIONAL ARGUMENTS|FLAGS)\n(.*?)(?:^NOTES\n|^```)", section, re.M | re.S).group(1)
    entries = re.findall(r"^    (-.*|[A-Z_]+)\n((?:        .*\n)*)", listed, re.M)
    assert entries, f"{command}: no flags found in its --help"
    silent = [head for head, body in entries
              if not [line for line in body.splitlines() if not line.strip().startswith(("Type:", "Default:"))]]
    assert not silent, f"{command}: no help line for {silent}"
