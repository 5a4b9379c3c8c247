"""Reading and chunking many files: the local executor against Ray tasks (a file a task).

    python benchmarks/documents_ray.py [--files 64] [--kb 400]

Writes --files Markdown files of about --kb KB each (sections of made-up sentences), then runs
``self_instruct.documents.read_chunks`` (load, clean, split into sentences with pysbd, pack into
512-word chunks) in this process, then with ``--executor ray`` on a local Ray instance started for
the reading (its start is timed separately). The chunks must be equal. Prints wall seconds.
"""
from __future__ import annotations

import argparse
import random
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from self_instruct.documents import DocumentsConfig, read_chunks  # noqa: E402
from self_instruct.executors import open_executor  # noqa: E402

WORDS = ("tomato basil garden water soil compost leaf root seed sun shade frost mulch harvest plant "
         "grow prune spring autumn summer winter pot bed row weed insect bee flower fruit").split()


def write_files(directory: Path, files: int, kb: int) -> None:
    rng = random.Random(1)
    for k in range(files):
        parts, size, section = [], 0, 0
        while size < kb * 1024:
            section += 1
            parts.append(f"\n## Section {section}\n\n")
            for _ in range(rng.randint(3, 8)):
                paragraph = " ".join(" ".join(rng.choices(WORDS, k=rng.randint(6, 18))).capitalize() + "."
                                     for _ in range(rng.randint(2, 6)))
                parts.append(paragraph + "\n\n")
                size += len(paragraph)
        (directory / f"book{k:03d}.md").write_text(f"# Book {k}\n" + "".join(parts), encoding="utf-8")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--files", type=int, default=64)
    parser.add_argument("--kb", type=int, default=400)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as directory:
        write_files(Path(directory), args.files, args.kb)
        print(f"== {args.files} Markdown files of about {args.kb} KB")
        start = time.perf_counter()
        local = read_chunks(DocumentsConfig(paths=(directory,)))
        local_wall = time.perf_counter() - start
        print(f"local: {local_wall:6.1f} s wall, {len(local[0])} chunks")
        start = time.perf_counter()
        with open_executor("ray") as executor:
            started = time.perf_counter() - start
            start = time.perf_counter()
            ray = read_chunks(DocumentsConfig(paths=(directory,), executor="ray"), executor=executor)
            ray_wall = time.perf_counter() - start
        print(f"ray:   {ray_wall:6.1f} s wall ({local_wall / ray_wall:.2f}x local) after {started:.1f} s to start "
              f"Ray; chunks {'identical' if ray == local else 'DIFFER'}")
        if ray != local:
            sys.exit(1)


if __name__ == "__main__":
    main()
