"""Time and peak memory of documents on big plain texts: is every stage linear in the input?

Texts of 1, 10 and 100 MB (made here, streamed to disk: prose of made-up words with the
abbreviations and numbers that make sentence splitting hard), each in four shapes:

    lines+ends    a novel as Project Gutenberg has it: hard-wrapped lines, blank lines between
                  paragraphs, sentences ending in . ? !
    line+ends     the same sentences on one line: no line break at all
    lines         words only, no sentence end, hard-wrapped lines and paragraphs
    line          words only on one line: no sentence end and no line break

Each is run in its own process, so its peak resident memory is its own (os.wait4):

    windows   the whole command: python -m self_instruct.documents FILE --mode windows
              (load, split, every window, the judge, generated.jsonl, regen.json)
    qa        the chunking of a qa run: load and chunk_documents(size=512, overlap=64), no teacher

CPU seconds per MB that stay flat from 1 to 100 MB say linear time (CPU rather than wall time:
the figure a shared machine leaves alone); peak memory per MB that falls or stays flat says
linear memory (a Python process starts at about 40 MB). Then the stop: a windows run on the biggest one-line text gets SIGTERM
while it splits, and the time it takes to exit is printed.

    python benchmarks/big_inputs.py [--sizes 1,10,100] [--shapes lines+ends,line+ends,lines,line]
                                    [--modes windows,qa] [--no-stop]
"""
from __future__ import annotations

import argparse
import os
import random
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
MB = 1_000_000
SHAPES = ("lines+ends", "line+ends", "lines", "line")
ABBREVIATED = ("Dr. Hale", "Mr. Ortiz", "e.g. compost", "about 3.5 kg", "St. Louis", "the U.S. market", "at 6 p.m. daily")


def write_text(path: Path, size: int, shape: str, seed: int = 0) -> None:
    """`size` characters of `shape` (see the module's doc), written a paragraph at a time."""
    rng = random.Random(seed)
    syllables = "ba ko ri tu me sa lo vi ne da pu go ta el an or".split()
    vocabulary = ["".join(rng.choice(syllables) for _ in range(rng.randint(1, 4))) for _ in range(3000)]
    lines, ends = shape.startswith("lines"), shape.endswith("ends")
    written = 0
    with open(path, "w", encoding="utf-8") as out:
        while written < size:
            sentences = []
            for _ in range(rng.randint(3, 8)):
                body = [rng.choice(vocabulary) for _ in range(rng.randint(5, 30))]
                if ends:
                    if rng.random() < 0.2:
                        body.insert(rng.randint(1, len(body)), rng.choice(ABBREVIATED))
                    sentences.append(" ".join(body).capitalize() + rng.choice(".....?!"))
                else:
                    sentences.append(" ".join(body))
            paragraph = " ".join(sentences)
            if lines:
                paragraph = wrap(paragraph, 72) + "\n\n"
            else:
                paragraph += " "
            paragraph = paragraph[:size - written]
            out.write(paragraph)
            written += len(paragraph)


def wrap(text: str, width: int) -> str:
    """Words into lines of at most `width` characters (textwrap's result, faster on 100 MB)."""
    lines, line = [], ""
    for word in text.split(" "):
        if line and len(line) + 1 + len(word) > width:
            lines.append(line)
            line = word
        else:
            line = f"{line} {word}" if line else word
    return "\n".join(lines + [line])


QA_CHILD = """
import sys
from self_instruct.sources.chunking import chunk_documents, word_counts
from self_instruct.sources.loaders import load_document
chunks = chunk_documents([load_document(sys.argv[1])], word_counts, size=512, overlap=64)
print(len(chunks), sum(len(c.sentences) for c in chunks))
"""


def run_measured(args: list[str], cwd: Path) -> tuple[float, float, float, int, str]:
    """(wall seconds, CPU seconds, peak resident MB, exit status, stdout+stderr tail) of one child
    process. CPU time, user and system, is the figure to read on a shared machine."""
    env = dict(os.environ, PYTHONPATH=str(REPO))
    start = time.perf_counter()
    child = subprocess.Popen(args, cwd=cwd, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    output = child.stdout.read()
    _, status, usage = os.wait4(child.pid, 0)
    child.returncode = os.waitstatus_to_exitcode(status)
    return (time.perf_counter() - start, usage.ru_utime + usage.ru_stime, usage.ru_maxrss / 1024, child.returncode,
            output.decode(errors="replace")[-300:])


def measure(path: Path, mode: str, work: Path) -> tuple[float, float, float, int, str]:
    if mode == "qa":
        return run_measured([sys.executable, "-c", QA_CHILD, str(path)], work)
    out = work / f"out-{path.stem}"
    return run_measured([sys.executable, "-m", "self_instruct.documents", str(path), "--mode", "windows",
                         "--output_dir", str(out), "--overwrite", "--quiet", "--no_report"], work)


def stop_latency(path: Path, work: Path) -> tuple[float, int]:
    """Seconds from SIGTERM to exit of a windows run that has split for 3 s of CPU, and its status."""
    env = dict(os.environ, PYTHONPATH=str(REPO))
    child = subprocess.Popen([sys.executable, "-m", "self_instruct.documents", str(path), "--mode", "windows",
                              "--output_dir", str(work / "stopped"), "--overwrite", "--quiet", "--no_report"],
                             cwd=work, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    while cpu_seconds(child.pid) < 3.0 and child.poll() is None:
        time.sleep(0.05)
    sent = time.perf_counter()
    child.send_signal(signal.SIGTERM)
    child.wait()
    return time.perf_counter() - sent, child.returncode


def cpu_seconds(pid: int) -> float:
    """User and system CPU time of a running process (Linux /proc)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", default="1,10,100", help="MB, comma-separated")
    parser.add_argument("--shapes", default=",".join(SHAPES))
    parser.add_argument("--modes", default="windows,qa")
    parser.add_argument("--no-stop", action="store_true", help="skip the SIGTERM measurement")
    args = parser.parse_args()
    sizes = [float(s) for s in args.sizes.split(",")]
    print(f"{'shape':<11} {'MB':>5} {'mode':<8} {'wall s':>7} {'CPU s':>7} {'CPU s/MB':>8} {'peak MB':>8} {'peak/MB':>8}")
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        for size in sizes:
            for shape in args.shapes.split(","):
                path = work / f"{shape.replace('+', '_')}-{size:g}MB.txt"
                write_text(path, int(size * MB), shape)
                for mode in args.modes.split(","):
                    wall, cpu, peak, status, tail = measure(path, mode, work)
                    note = "" if status == 0 else f"  exit {status}: {tail.strip().splitlines()[-1] if tail.strip() else ''}"
                    print(f"{shape:<11} {size:>5g} {mode:<8} {wall:>7.1f} {cpu:>7.1f} {cpu / size:>8.2f} {peak:>8.0f} "
                          f"{peak / size:>8.1f}{note}", flush=True)
                path.unlink()
                for out in work.glob("out-*"):
                    subprocess.run(["rm", "-rf", str(out)], check=False)
        if not args.no_stop:
            size = max(sizes)
            path = work / "stop-line.txt"
            write_text(path, int(size * MB), "line")
            seconds, status = stop_latency(path, work)
            print(f"SIGTERM while splitting {size:g} MB on one line: exit {status} after {seconds:.2f} s")


if __name__ == "__main__":
    main()
