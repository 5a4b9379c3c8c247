"""Write docs/flags.md, the flag reference, from each command's own --help.

    python docs/flags.py            # rewrite docs/flags.md
    python docs/flags.py --check    # exit 1, naming the commands whose section is stale

Each command runs as `python -m self_instruct.COMMAND --help` from the repository root, so the
reference is exactly what a user sees. fire writes the help to stderr after one line
`INFO: Showing help with the command ...`, which is dropped; the help itself has a fixed width
(fire wraps at 80 columns whatever the terminal says), and with the output a pipe fire uses no
pager and no colour. COLUMNS, NO_COLOR and PAGER are set all the same, and any escape sequence
is removed, so the text does not depend on the terminal it was made in.

The type names fire prints come from Python's typing, and the layout from fire, so the header
names both versions: tests/test_docs.py skips its comparison, rather than failing, under others.
"""
from __future__ import annotations

import os
import re
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
FLAGS_MD = ROOT / "docs" / "flags.md"
# Every command, in the order the README's table lists them, and the page that explains it.
COMMANDS = {
    "generate": "generate.md", "documents": "documents.md", "score": "score-and-evolve.md",
    "evolve": "score-and-evolve.md", "dedup": "dedup.md", "export": "export-and-report.md",
    "report": "export-and-report.md#the-run-report", "train": "train.md", "evaluate": "evaluate.md",
    "serve": "embedded-teacher.md#serving-it-self_instructserve", "preferences": "preferences.md",
    "select": "select.md",
}
_ESCAPE = re.compile(r"\x1b\[[0-9;]*[A-Za-z]")
_VERSIONS = re.compile(r"<!-- made with fire (\S+) on Python (\S+) -->")


def versions() -> tuple[str, str]:
    """(fire's version, Python's major.minor): what the help text's form depends on."""
    from importlib.metadata import version

    return version("fire"), f"{sys.version_info[0]}.{sys.version_info[1]}"


def help_text(command: str) -> str:
    """The --help of `python -m self_instruct.COMMAND`, without fire's INFO line."""
    env = {**os.environ, "COLUMNS": "80", "NO_COLOR": "1", "ANSI_COLORS_DISABLED": "1", "PAGER": "cat",
           "TERM": "dumb", "PYTHONWARNINGS": "ignore"}
    env.pop("FORCE_COLOR", None)
    done = subprocess.run([sys.executable, "-m", f"self_instruct.{command}", "--help"], cwd=ROOT, env=env,
                          stdin=subprocess.DEVNULL, capture_output=True, text=True, timeout=300)
    if done.returncode != 0:
        raise RuntimeError(f"{command} --help exited with {done.returncode}:\n{done.stderr}")
    text = _ESCAPE.sub("", done.stderr + done.stdout)
    lines = text.splitlines()
    start = lines.index("NAME")  # fire's help opens with its NAME section; what comes before is the INFO line
    return "\n".join(line.rstrip() for line in lines[start:]).strip() + "\n"


def sections() -> dict[str, str]:
    """Each command's section of flags.md, made now."""
    with ThreadPoolExecutor(max_workers=4) as pool:
        helps = dict(zip(COMMANDS, pool.map(help_text, COMMANDS)))
    return {name: (f"## {name}\n\n`python -m self_instruct.{name}`; what it does: "
                   f"[{COMMANDS[name].split('#')[0]}]({COMMANDS[name]}).\n\n```text\n{helps[name]}```\n")
            for name in COMMANDS}


def render(parts: dict[str, str], made_with: tuple[str, str]) -> str:
    fire_version, python_version = made_with
    head = ("# Flag reference\n\n"
            f"<!-- made with fire {fire_version} on Python {python_version} -->\n"
            "Every command's `--help`, as it prints it. Made by `python docs/flags.py`: do not edit by hand\n"
            "(tests/test_docs.py fails when this page is stale).\n\n"
            + " · ".join(f"[{name}](#{name})" for name in parts) + "\n\n")
    return head + "\n".join(parts.values())


def parse(text: str) -> tuple[dict[str, str], tuple[str, str] | None]:
    """The sections of a flags.md and the versions it was made with."""
    found = _VERSIONS.search(text)
    chunks = re.split(r"(?m)^(?=## )", text)
    parts = {chunk.split("\n", 1)[0][3:].strip(): chunk.rstrip("\n") + "\n" for chunk in chunks[1:]}
    return parts, (found.group(1), found.group(2)) if found else None


def stale(text: str, parts: dict[str, str]) -> list[str]:
    """The commands whose section in `text` differs from `parts` (or is missing from it)."""
    written, _ = parse(text)
    return [name for name in parts if written.get(name, "").rstrip("\n") != parts[name].rstrip("\n")]


def main(argv: list[str]) -> int:
    parts = sections()
    if "--check" in argv:
        old = stale(FLAGS_MD.read_text(encoding="utf-8") if FLAGS_MD.exists() else "", parts)
        if old:
            print(f"docs/flags.md is stale for: {', '.join(old)}; run python docs/flags.py", file=sys.stderr)
            return 1
        return 0
    FLAGS_MD.write_text(render(parts, versions()), encoding="utf-8")
    print(f"wrote {FLAGS_MD.relative_to(ROOT)} ({len(parts)} commands)", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
