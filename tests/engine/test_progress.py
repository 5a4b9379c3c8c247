"""The progress bar, as a person watching a slow run sees it: alive before the first unit is
recorded (a unit of the embedded model can take minutes), and a token figure that never goes
down (reservations of requests out are not shown, only what replies used)."""
import asyncio
import re
import sys

from self_instruct.engine.judge import Judge
from self_instruct.engine.ledger import Ledger
from self_instruct.engine.pool import InstructionPool
from self_instruct.engine.scheduler import Engine
from self_instruct.pipelines.base import Pipeline, UnitResult
from self_instruct.teachers.fake import FakeTeacher
from self_instruct.types import Completion, Decoding, Example


class SlowTeacher(FakeTeacher):
    """Each reply takes a while and uses far fewer tokens than the request reserved."""

    async def complete(self, prompts, decoding):
        await asyncio.sleep(0.05)
        return [Completion(f"Reply to {p}.", prompt_tokens=300, completion_tokens=200) for p in prompts]


class Units(Pipeline):
    unit_name = "unit"

    def unit(self, index, pool):
        return index if index < 6 else None

    async def run_unit(self, index, ask):
        replies = [await ask(f"unit {index} question {k}") for k in range(3)]
        return UnitResult([Example(f"Describe item {index} of the list in detail.", "", replies[-1].text)])


def test_the_bar_shows_requests_out_before_any_unit_and_its_tokens_never_go_down(tmp_path, capsys):
    async def main():
        with InstructionPool.open(tmp_path / "out") as pool:
            engine = Engine(SlowTeacher(), pool, Judge(threshold=1.0), Ledger(pool.dir, None, pool.next_unit),
                            decoding=Decoding(max_tokens=4000), quiet=False, total_units=6, max_concurrency=3)
            return await engine.run(Units())
    assert asyncio.run(asyncio.wait_for(main(), timeout=60)) == "done"  # a hang guard, not a timing
    frames = capsys.readouterr().err.split("\r")
    first_done = next(i for i, frame in enumerate(frames) if " 1/6 " in frame)
    assert any("| out " in frame for frame in frames[:first_done])  # life before the first unit is in
    shown = [float(t) for frame in frames for t in re.findall(r"tok (\d+\.\d)k", frame)]
    assert shown == sorted(shown) and shown[-1] == 18 * 500 / 1000  # 18 requests of 500 tokens each


def test_a_run_on_the_embedded_model_says_so_before_loading_it(monkeypatch, capsys):
    from self_instruct.engine import run as run_module
    from self_instruct.generate import GenerateConfig

    def make_teacher(*args, **kwargs):
        print("(loading)", file=sys.stderr)
        return FakeTeacher()
    monkeypatch.setattr(run_module, "make_teacher", make_teacher)

    async def main(quiet):
        async with run_module.Run(GenerateConfig(teacher="local", quiet=quiet)):
            pass
    asyncio.run(main(quiet=False))
    assert capsys.readouterr().err.startswith("self_instruct: loading the embedded model;")
    asyncio.run(main(quiet=True))
    assert capsys.readouterr().err == "(loading)\n"
