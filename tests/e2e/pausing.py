"""Run a command with one write stopped halfway, so that a kill test's SIGKILL lands mid-write
for certain:

    python tests/e2e/pausing.py generated.jsonl@2 -m self_instruct.generate --output_dir out ...

The 2nd write of generated.jsonl (any file of that name; for an atomic write, the file it will
replace, so state.json@1 stops inside .state.json.<pid>.tmp) writes half of its last line,
fsyncs it, says PAUSED on stderr and sleeps until killed. Every append and atomic write of the
package goes through one seam, self_instruct.io.jsonl._write_all, which this patches in this
process before running the module as `python -m` would; production code holds no test hook.
"""
from __future__ import annotations

import os
import runpy
import sys
import time
from collections import Counter
from pathlib import Path

PAUSED = "pausing.py: paused halfway through a write of"


def pause_at(target: str, nth: int) -> None:
    from self_instruct.io import jsonl

    write, writes = jsonl._write_all, Counter()

    def pausing_write(fd: int, payload: bytes, path: Path) -> None:
        name = Path(path).name
        writes[name] += 1
        if name != target or writes[name] != nth:
            return write(fd, payload, path)
        last_line = payload.rfind(b"\n", 0, len(payload) - 1) + 1
        write(fd, payload[:last_line + (len(payload) - last_line) // 2], path)
        os.fsync(fd)
        print(f"{PAUSED} {name}", file=sys.stderr, flush=True)
        time.sleep(600)  # the test kills us long before
        os._exit(3)  # never finish a write a test meant to tear: a test that gave up must not see it whole

    jsonl._write_all = pausing_write


def main(argv: list[str]) -> None:
    if len(argv) < 3 or "@" not in argv[0] or argv[1] != "-m":
        sys.exit("usage: pausing.py FILE@N -m MODULE [ARGS...]")
    (target, _, nth), module, args = argv[0].partition("@"), argv[2], argv[3:]
    pause_at(target, int(nth))
    sys.path[0] = os.getcwd()  # as `python -m` has it
    sys.argv = [module, *args]
    runpy.run_module(module, run_name="__main__", alter_sys=True)


if __name__ == "__main__":
    main(sys.argv[1:])
