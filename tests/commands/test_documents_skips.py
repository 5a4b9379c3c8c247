"""The documents command over a folder holding a zip bomb and a file over --max_file_mb: each
is one line on stderr and an entry of run.json's sources with its reason, and the run goes on."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

pytest.importorskip("pysbd", reason="needs the [docs] extra")
pytest.importorskip("lxml", reason="needs the [docs] extra")

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO / "tests" / "sources"))
from test_sources import make_epub  # noqa: E402


def test_files_over_the_cap_are_skipped_recorded_and_the_run_goes_on(tmp_path):
    folder = tmp_path / "docs"
    folder.mkdir()
    (folder / "notes.md").write_text("# Soil\n\nLoam holds water and air in a good balance. Sandy soil drains far too fast in summer. "
                                     "Heavy clay stays wet and cold through the spring. Compost improves all three kinds of soil.\n",
                                     encoding="utf-8")
    make_epub(folder / "bomb.epub", ["<p>x</p>"], replace={"OEBPS/c0.xhtml": b"<p>" + b"\0" * (8 * 2**20) + b"</p>"})
    (folder / "big.txt").write_text("word " * 250_000, encoding="utf-8")
    env = dict(os.environ, PYTHONPATH=str(REPO))
    done = subprocess.run([sys.executable, "-m", "self_instruct.documents", str(folder), "--mode", "windows",
                           "--window", "2", "--max_file_mb", "1", "--output_dir", "out", "--quiet", "--no_report"],
                          cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    skipped = [line for line in done.stderr.splitlines() if "skipped" in line]
    assert len(skipped) == 2 and "Traceback" not in done.stderr
    assert any("bomb.epub: EPUB member OEBPS/c0.xhtml holds 8.0 MB uncompressed, over the 1.0 MB cap" in s for s in skipped)
    run = json.loads((tmp_path / "out" / "run.json").read_text(encoding="utf-8"))
    sources = {Path(s["path"]).name: s for s in run["sources"]}
    assert set(sources) == {"notes.md", "bomb.epub", "big.txt"} and "sha256" in sources["notes.md"]
    assert sources["big.txt"]["skipped"].startswith("the file holds 1.2 MB, over the 1.0 MB cap")
    kept = [json.loads(line) for line in (tmp_path / "out" / "generated.jsonl").read_text(encoding="utf-8").splitlines()]
    assert kept and {Path(r["metadata"]["source"]).name for r in kept} == {"notes.md"}


def test_a_bad_cap_is_one_line_naming_the_flag(tmp_path):
    (tmp_path / "a.md").write_text("Text.", encoding="utf-8")
    env = dict(os.environ, PYTHONPATH=str(REPO))
    done = subprocess.run([sys.executable, "-m", "self_instruct.documents", "a.md", "--mode", "windows",
                           "--max_file_mb", "0"], cwd=tmp_path, env=env, capture_output=True, text=True, timeout=120)
    assert done.returncode == 2 and done.stderr.strip().count("\n") == 0 and "--max_file_mb" in done.stderr
    assert not (tmp_path / "out").exists()
