"""A plain (non-editable) install finds the bundled seed tasks and templates from any directory."""
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent


@pytest.mark.slow
def test_plain_install_ships_seeds_and_prompts(tmp_path):
    target = tmp_path / "site"
    build = subprocess.run(
        [sys.executable, "-m", "pip", "install", "--no-deps", "--no-build-isolation", "--no-compile", "-q",
         "--target", str(target), str(REPO)],
        capture_output=True, text=True, timeout=300,
    )
    if build.returncode != 0:
        pytest.fail(build.stderr[-2000:])
    probe = (
        "import self_instruct, pathlib;"
        "from self_instruct.core.seeds import load_seed_tasks;"
        "from self_instruct.core.templates import REQUIRED, load_template;"
        "from self_instruct.io.resources import default_seed_tasks_path;"
        "assert pathlib.Path(self_instruct.__file__).is_relative_to(pathlib.Path(r'%s'));"
        "assert default_seed_tasks_path().is_relative_to(pathlib.Path(r'%s'));"
        "print(len(load_seed_tasks()), '{tasks}' in load_template('generate.txt') and all(map(load_template, REQUIRED)))" % (target, target)
    )
    # cwd is an empty directory and the checkout is not on the path: only the install can answer.
    run = subprocess.run([sys.executable, "-I", "-c", f"import sys; sys.path.insert(0, r'{target}'); " + probe],
                         capture_output=True, text=True, cwd=tmp_path, timeout=60)
    assert run.returncode == 0, run.stderr
    count, has_tasks = run.stdout.split()
    assert int(count) >= 175 and has_tasks == "True"


def test_setup_cfg_lists_every_subpackage():
    """setup.cfg names its packages one by one (two come from folders outside the package): a new
    subpackage left out would be missing from every plain install."""
    import configparser

    setup = configparser.ConfigParser()
    setup.read(REPO / "setup.cfg")
    listed = set(setup["options"]["packages"].split())
    found = {".".join(p.parent.relative_to(REPO).parts) for p in (REPO / "self_instruct").rglob("__init__.py")}
    assert found - listed == set()
