"""Bundled data: the seed task file and the prompt templates.

They live at the top of the repository (seed_tasks/, prompts/) and are installed as the
packages self_instruct.seed_tasks and self_instruct.prompt_templates, so they are found through
importlib.resources after a plain `pip install .`. Running from a source checkout without an
install falls back to the directories beside the package, never to the current directory.
"""
from __future__ import annotations

from importlib import resources
from pathlib import Path

_SOURCE_ROOT = Path(__file__).resolve().parents[2]
# Directory in the repository -> package it is installed as (see setup.cfg).
_PACKAGES = {"seed_tasks": "self_instruct.seed_tasks", "prompts": "self_instruct.prompt_templates"}


def bundled_path(kind: str, name: str) -> Path:
    """Path of a bundled file: bundled_path("prompts", "generate.txt")."""
    try:
        root = resources.files(_PACKAGES[kind])
        candidate = Path(str(root.joinpath(name)))
        if candidate.is_file():
            return candidate
    except ModuleNotFoundError:
        pass
    return _SOURCE_ROOT / kind / name


def default_seed_tasks_path() -> Path:
    return bundled_path("seed_tasks", "seed_tasks.jsonl")
