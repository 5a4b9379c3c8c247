"""The engine, driven in this process by the scripted FakeTeacher and small pipelines: units
commit strictly in order whatever order they finish in, a run stops at exactly its target, on
its budget (a unit cut short is not recorded, and its replies are not paid twice), after units
in a row that kept nothing, or when a unit raised (nothing new starts; the units before it are
recorded first), and a unit that samples the pool starts only once the units it reads are in."""
import asyncio
import json

import pytest

from self_instruct.engine.judge import Judge
from self_instruct.engine.ledger import Budget, Ledger, cache_key
from self_instruct.engine.pool import InstructionPool
from self_instruct.engine.progress import StallError
from self_instruct.engine.scheduler import Engine
from self_instruct.pipelines.base import Pipeline, UnitResult
from self_instruct.teachers.fake import FakeTeacher
from self_instruct.types import Decoding, Example


class Units(Pipeline):
    """`count` units; unit i asks `asks` questions one after another and returns `per_unit`
    candidates (kept, unless `keep` says otherwise). It waits for gates[i] first, if given, and
    raises if i is `fail`. `launched` records each unit handed out with the units then pooled."""

    def __init__(self, count, *, per_unit=1, asks=1, keep=lambda i: True, gates=None, fail=None, lag=None):
        self.count, self.per_unit, self.asks, self.keep = count, per_unit, asks, keep
        self.gates, self.fail, self.lag = gates or {}, fail, lag
        self.launched: list[tuple[int, int]] = []
        self.finished: list[int] = []

    def unit(self, index, pool):
        if index >= self.count:
            return None
        self.launched.append((index, pool.next_unit))
        return index

    async def run_unit(self, index, ask):
        if index in self.gates:
            await self.gates[index].wait()
        if index == self.fail:
            raise RuntimeError(f"unit {index} broke")
        for k in range(self.asks):
            reply = await ask(f"unit {index} question {k}")
        self.finished.append(index)
        instruction = (lambda j: f"Describe item {index}-{j} of the list in detail.") if self.keep(index) else (lambda j: f"Item {index}-{j}")
        return UnitResult([Example(instruction(j), "", reply.text) for j in range(self.per_unit)])


def answer(prompt: str) -> str:
    return f"The answer to {prompt}."


def run_engine(directory, pipeline, *, teacher=None, driver=None, **options):
    """Run `pipeline` to its end on a fresh engine over the pool in `directory`; `driver(engine,
    task)` may steer the run meanwhile. Returns what the run returned and the teacher."""
    teacher = teacher or FakeTeacher(respond=answer)
    options = {"max_concurrency": 4, "max_stall_units": None, **options}

    async def main():
        with InstructionPool.open(directory) as pool:
            engine = Engine(teacher, pool, Judge(threshold=1.0), Ledger(pool.dir, None, pool.next_unit),
                            decoding=Decoding(max_tokens=16), quiet=True, **options)
            task = asyncio.ensure_future(engine.run(pipeline))
            if driver is not None:
                await driver(engine, task)
            return await task
    return asyncio.run(asyncio.wait_for(main(), timeout=60)), teacher  # a hang guard, not a timing


def units_in(path) -> list[int]:
    return [json.loads(line)["provenance"]["unit"] for line in path.read_text().splitlines()]


async def until(condition):
    while not condition():
        await asyncio.sleep(0.001)


def test_units_commit_in_order_whatever_order_they_finish_in(tmp_path):
    gates = {i: asyncio.Event() for i in range(4)}
    pipeline = Units(4, per_unit=2, gates=gates)

    async def finish_backwards(engine, task):
        await until(lambda: len(pipeline.launched) == 4)
        for i in reversed(range(4)):
            gates[i].set()
            await until(lambda: i in pipeline.finished)

    stopped, _ = run_engine(tmp_path / "out", pipeline, driver=finish_backwards)
    assert stopped == "done" and pipeline.finished == [3, 2, 1, 0]
    assert units_in(tmp_path / "out" / "generated.jsonl") == [0, 0, 1, 1, 2, 2, 3, 3]
    with InstructionPool.open(tmp_path / "out") as pool:
        assert pool.kept_after == [2, 4, 6, 8]


def test_the_target_is_met_exactly_and_the_rest_is_left_unjudged(tmp_path):
    """Candidates past the target are neither kept nor rejected: the rejects file holds only what
    the judge refused, and the summary counts the rest as left unjudged."""
    out = tmp_path / "out"
    stopped, _ = run_engine(out, Units(10, per_unit=3), target=7)
    assert stopped == "target"
    assert units_in(out / "generated.jsonl") == [0, 0, 0, 1, 1, 1, 2]
    state = json.loads((out / "state.json").read_text())
    assert (state["kept"], state["parsed"], state["unjudged"], state["rejects"]) == (7, 7, 2, {})
    with InstructionPool.open(out) as pool:
        assert pool.next_unit == 3 and not pool.reject_counts


def test_a_unit_that_keeps_something_restarts_the_stall_count(tmp_path):
    """Only units in a row that keep nothing stop a run: unit 2 keeps, so the third unit in a row
    to keep nothing is unit 5, and units 0 to 5 are all recorded before the run stops."""
    out = tmp_path / "out"
    pipeline = Units(20, keep=lambda i: i == 2)
    with pytest.raises(StallError, match=r"3 units in a row kept no instruction \(rejected: too_short 3\)"):
        run_engine(out, pipeline, max_stall_units=3)
    with InstructionPool.open(out) as pool:
        assert pool.next_unit == 6 and pool.reject_counts == {"too_short": 5}


def test_a_budget_stop_records_whole_units_only_and_a_rerun_pays_nothing_twice(tmp_path):
    """Units ask two questions in turn, so a budget of 5 requests runs out inside a unit. The
    units recorded are whole, and the rerun asks only what was never answered: a half-done
    unit's first reply comes from the cache."""
    out = tmp_path / "out"
    stopped, teacher = run_engine(out, Units(6, asks=2), budget=Budget(max_requests=5))
    assert stopped == "max_requests" and len(teacher.history) == 5
    first = [prompt for prompt, _ in teacher.history]
    with InstructionPool.open(out) as pool:
        done = pool.next_unit
    assert all(f"unit {u} question 1" in first for u in range(done))

    stopped, teacher = run_engine(out, Units(6, asks=2), budget=Budget(max_requests=20))
    again = [prompt for prompt, _ in teacher.history]
    assert stopped == "done" and not set(again) & set(first)
    assert sorted(first + again) == sorted(f"unit {u} question {k}" for u in range(6) for k in range(2))
    assert units_in(out / "generated.jsonl") == list(range(6))


def test_a_run_that_finishes_its_units_on_its_last_request_is_done(tmp_path):
    stopped, teacher = run_engine(tmp_path / "out", Units(3), budget=Budget(max_requests=3))
    assert len(teacher.history) == 3 and units_in(tmp_path / "out" / "generated.jsonl") == [0, 1, 2]
    assert stopped == "done"


def test_a_failing_unit_stops_new_units_and_is_raised_after_the_units_before_it_commit(tmp_path):
    out = tmp_path / "out"
    gates = {0: asyncio.Event()}
    pipeline = Units(10, gates=gates, fail=1)

    async def release_unit_0_after_the_failure(engine, task):
        await until(lambda: engine.failed)
        gates[0].set()

    with pytest.raises(RuntimeError, match="unit 1 broke"):
        run_engine(out, pipeline, max_concurrency=2, driver=release_unit_0_after_the_failure)
    assert [index for index, _ in pipeline.launched] == [0, 1]  # unit 0's reply opened a slot: nothing took it
    assert units_in(out / "generated.jsonl") == [0]


def test_a_unit_starts_only_once_the_units_it_samples_are_pooled(tmp_path):
    """With lag 1, unit r reads the records of units < r - 1: it is handed out only once they
    are in the pool, so a resumed run draws the same prompts; the slots still run ahead by one."""
    pipeline = Units(12, lag=1)
    stopped, _ = run_engine(tmp_path / "out", pipeline, max_concurrency=4)
    assert stopped == "done"
    ahead = [index - pooled for index, pooled in pipeline.launched]
    assert max(ahead) == 1 and len(ahead) == 12


class Together(Pipeline):
    """`count` units of `width` prompts asked at once (as Alpaca's rounds are)."""

    def __init__(self, count, width):
        self.count, self.width = count, width
        self.launched: list[int] = []

    def unit(self, index, pool):
        if index >= self.count:
            return None
        self.launched.append(index)
        return index

    def requests(self, unit):
        return self.width

    async def run_unit(self, index, ask):
        replies = await asyncio.gather(*(ask(f"unit {index} prompt {k}") for k in range(self.width)))
        return UnitResult([Example(f"Describe item {index} of the list in detail.", "", replies[0].text)])


class Gated(FakeTeacher):
    """Holds every request until `open` is set; `waiting` counts the requests held."""

    def __init__(self):
        super().__init__(respond=answer)
        self.open, self.waiting = asyncio.Event(), 0

    async def complete(self, prompts, decoding):
        self.waiting += 1
        await self.open.wait()
        return await super().complete(prompts, decoding)


def test_a_reply_from_the_cache_does_not_free_the_slots_of_asks_yet_to_start(tmp_path):
    """A resumed round whose first prompt is cached: the other prompts of the round have not
    started when that answer comes back, and must still count as out (a unit launched then is
    one more than max_concurrency allows, and near a target a round paid for nothing)."""
    out = tmp_path / "out"
    out.mkdir()
    key = cache_key("fake", "", "unit 0 prompt 0", Decoding(max_tokens=16))
    (out / "responses.jsonl").write_text(json.dumps({"key": key, "unit": 0, "text": "cached", "finish_reason": "stop"}) + "\n")
    pipeline, teacher = Together(3, width=5), Gated()

    async def driver(engine, task):
        await until(lambda: teacher.waiting == 9)  # unit 0's four prompts not cached, and unit 1's five
        assert pipeline.launched == [0, 1]
        teacher.open.set()
    outcome, _ = run_engine(out, pipeline, teacher=teacher, driver=driver, max_concurrency=9, total_units=3)
    assert outcome == "done" and pipeline.launched == [0, 1, 2]


class SlowFor(FakeTeacher):
    """Answers at once, except prompts holding `slow`, which wait for `release`."""

    def __init__(self, slow: str):
        super().__init__(respond=answer)
        self.slow, self.release = slow, None

    async def complete(self, prompts, decoding):
        if self.release is None:
            self.release = asyncio.Event()
        if any(self.slow in p for p in prompts):
            await self.release.wait()
        return await super().complete(prompts, decoding)


def test_a_budget_stop_waits_for_the_requests_out_so_their_replies_are_kept(tmp_path):
    """Unit 0 asks twice and its second ask is refused; unit 1's one request is out at that
    moment. The run waits for it (it is paid for), so the rerun answers it from the cache."""
    teacher = SlowFor("unit 1 ")
    pipeline = Units(2, asks=2)

    async def driver(engine, task):
        await until(lambda: engine.exhausted is not None)
        teacher.release.set()  # unit 1's reply comes back after the budget ran out

    outcome, _ = run_engine(tmp_path / "out", pipeline, teacher=teacher, driver=driver,
                            budget=Budget(max_requests=2))
    assert outcome == "max_requests"
    cached = [json.loads(line) for line in (tmp_path / "out" / "responses.jsonl").read_text().splitlines()]
    assert sorted(entry["unit"] for entry in cached) == [0, 1]  # unit 1's reply too, paid and kept
    asked = len(teacher.history)
    outcome, _ = run_engine(tmp_path / "out", Units(2, asks=2), teacher=teacher, budget=Budget(max_requests=4))
    assert outcome == "done" and len(teacher.history) == asked + 2  # only the two second questions, never asked
