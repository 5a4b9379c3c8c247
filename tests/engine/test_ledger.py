"""The spend journal and reply cache: what is on disk is what was spent (a request sent and never
answered counts at its reservation), no cap can be passed by requests out at once, a reopened
ledger asks nothing twice that is still needed and keeps no reply that is not."""
import asyncio
import json
import random
import time

import pytest

from fake_openai import self_instruct_reply
from self_instruct.engine.ledger import Budget, BudgetExhausted, Ledger, Spend, read_spend
from self_instruct.engine.prices import Price
from self_instruct.generate import GenerateConfig, agenerate
from self_instruct.teachers.fake import FakeTeacher
from self_instruct.types import Completion

PRICE = Price(1.0, 2.0)  # dollars per million prompt and completion tokens


def write_lines(path, lines):
    path.write_text("".join(json.dumps(line) + "\n" for line in lines))


def counted(spend: Spend) -> tuple:
    return spend.requests, spend.failed, spend.prompt_tokens, spend.completion_tokens, spend.reserved_tokens, spend.faults


def test_a_request_sent_and_never_answered_counts_at_its_reservation(tmp_path):
    path = tmp_path / "ledger.jsonl"
    write_lines(path, [
        {"event": "send", "id": 0, "unit": 0, "tokens": 1000, "cost": 0.002},
        {"event": "done", "id": 0, "unit": 0, "prompt_tokens": 300, "completion_tokens": 100, "cost": 0.0005,
         "faults": ["429"]},
        {"event": "send", "id": 1, "unit": 1, "tokens": 1000, "cost": 0.002},  # the process died meanwhile
        {"event": "send", "id": 2, "unit": 1, "tokens": 800, "cost": 0.0016},
        {"event": "retry", "id": 2, "unit": 1},
        {"event": "done", "id": 2, "unit": 1, "prompt_tokens": 0, "completion_tokens": 0, "cost": 0.0,
         "faults": ["500", "500"], "error": "server error"},
    ])
    spend, next_id = read_spend(path)
    assert next_id == 3
    assert (spend.requests, spend.failed) == (4, 1)  # a retry reached the server: it is a request
    assert (spend.prompt_tokens, spend.completion_tokens, spend.reserved_tokens) == (300, 100, 1000)
    assert spend.cost == pytest.approx(0.0025)
    assert spend.faults == {"500": 2, "429": 1}


def test_what_a_ledger_counts_is_what_its_file_says_after_a_kill(tmp_path):
    """Every request is on disk (sync) before it goes; a reopened ledger counts the same spend
    and goes on numbering after the last request."""
    ledger = Ledger(tmp_path, PRICE, next_unit=0)
    answered = ledger.reserve(0, 200, 100, Budget())
    failed = ledger.reserve(0, 200, 100, Budget())
    lost = ledger.reserve(1, 500, 100, Budget())
    asyncio.run(ledger.sync())
    assert ledger.retry(failed, 0, Budget())
    asyncio.run(ledger.sync())
    ledger.done(answered, 0, "k0", Completion("reply", prompt_tokens=150, completion_tokens=40))
    ledger.done(failed, 0, "k1", Completion("", finish_reason="error", error="500 from the server", faults=("500",)))
    # `lost` is still out when the process is killed
    again = Ledger(tmp_path, PRICE, next_unit=0)
    assert counted(again.spend) == counted(ledger.spend) == (4, 1, 150, 40, 600, {"500": 1})
    assert again.spend.cost == pytest.approx(ledger.spend.cost + ledger.in_flight_cost())  # `lost` at its reservation
    assert again.reserve(1, 10, 10, Budget()) == lost + 1


def test_no_request_goes_out_before_its_send_line_is_on_disk(tmp_path, monkeypatch):
    """Requests that leave together share an fsync; one whose line is in a flush that began
    after the one it waited on still waits for its own (a kill then would leave a request
    sent and not counted, and a rerun could pass the budget)."""
    from self_instruct.engine import ledger as ledger_module

    written: list[int] = []  # ids on disk, in order
    real_append = ledger_module.append_jsonl

    def slow_append(path, lines, **kwargs):
        import time
        time.sleep(0.02)  # the next requests queue up behind this flush meanwhile
        real_append(path, lines, **kwargs)
        written.extend(line["id"] for line in lines if line.get("event") == "send")
    monkeypatch.setattr(ledger_module, "append_jsonl", slow_append)
    ledger = Ledger(tmp_path, None, next_unit=0)
    early: list[int] = []

    async def request(delay):
        await asyncio.sleep(delay)
        rid = ledger.reserve(0, 10, 10, Budget())
        await ledger.sync()
        if rid not in written:
            early.append(rid)

    async def main():
        await asyncio.gather(request(0), *(request(0.005) for _ in range(4)), *(request(0.03) for _ in range(4)))
    asyncio.run(main())
    assert early == [] and sorted(written) == list(range(9))


def test_the_send_lines_of_one_turn_share_one_write_and_fail_together(tmp_path, monkeypatch):
    """Requests leaving in one turn of the event loop are made durable by one write at its end;
    when that write fails (a full disk), every one of them raises and none goes out, and the
    next turn's requests get a write of their own."""
    from self_instruct.engine import ledger as ledger_module

    writes: list[list[int]] = []
    real_append = ledger_module.append_jsonl
    full = [True]

    def append(path, lines, **kwargs):
        sends = [line["id"] for line in lines if line.get("event") == "send"]
        if sends and full[0]:
            raise OSError(28, "No space left on device")
        real_append(path, lines, **kwargs)
        writes.append(sends)
    monkeypatch.setattr(ledger_module, "append_jsonl", append)
    ledger = Ledger(tmp_path, None, next_unit=0)

    async def request():
        ledger.reserve(0, 10, 10, Budget())
        await ledger.sync()

    async def main():
        outcomes = await asyncio.gather(*(request() for _ in range(3)), return_exceptions=True)
        assert [type(o) for o in outcomes] == [OSError] * 3
        full[0] = False
        await asyncio.gather(*(request() for _ in range(4)))
    asyncio.run(main())
    assert writes == [[3, 4, 5, 6]]
    sent = [line["id"] for line in map(json.loads, (tmp_path / "ledger.jsonl").read_text().splitlines())]
    assert sent == [3, 4, 5, 6]


def test_a_request_cancelled_while_waiting_for_the_write_leaves_the_others_theirs(tmp_path):
    """Ctrl-C reaches one request waiting for its turn's write: the write still happens, and
    the other requests of that turn go out with their lines on disk."""
    ledger = Ledger(tmp_path, None, next_unit=0)
    gone: list[int] = []

    async def request():
        rid = ledger.reserve(0, 10, 10, Budget())
        await ledger.sync()
        gone.append(rid)

    async def main():
        tasks = [asyncio.ensure_future(request()) for _ in range(3)]
        await asyncio.sleep(0)  # all three wait for the write now
        tasks[1].cancel()
        outcomes = await asyncio.gather(*tasks, return_exceptions=True)
        assert isinstance(outcomes[1], asyncio.CancelledError)
    asyncio.run(main())
    assert gone == [0, 2]
    on_disk = [line["id"] for line in map(json.loads, (tmp_path / "ledger.jsonl").read_text().splitlines())]
    assert on_disk == [0, 1, 2]  # the cancelled one counts: it may have been about to go


def test_a_slow_disk_moves_the_writes_off_the_event_loop(tmp_path, monkeypatch):
    """A turn's write that takes longer than SLOW_WRITE (a network file system's fsync) is the
    last one made in the event loop: the writes after it go through a worker thread, where the
    wait holds up no reply being read, and each request still waits for its own line."""
    import threading

    from self_instruct.engine import ledger as ledger_module

    real_append = ledger_module.append_jsonl
    writes: list[tuple[int, list[int]]] = []  # (thread, send ids) for each write

    def slow_append(path, lines, **kwargs):
        time.sleep(ledger_module.SLOW_WRITE * 3)
        real_append(path, lines, **kwargs)
        writes.append((threading.get_ident(), [line["id"] for line in lines]))
    monkeypatch.setattr(ledger_module, "append_jsonl", slow_append)
    ledger = Ledger(tmp_path, None, next_unit=0)

    async def request() -> int:
        rid = ledger.reserve(0, 10, 10, Budget())
        await ledger.sync()
        assert any(rid in ids for _, ids in writes)  # on disk before it goes
        return rid

    async def main() -> int:
        for _ in range(3):
            await request()
        return threading.get_ident()
    loop_thread = asyncio.run(main())
    assert [ids for _, ids in writes] == [[0], [1], [2]]
    assert writes[0][0] == loop_thread and loop_thread not in {thread for thread, _ in writes[1:]}


def test_concurrent_requests_cannot_pass_a_cap_together(tmp_path):
    """A request reserves the most it can use (its prompt's bound and max_tokens, at the price):
    requests out at once count at their reservations, so together they stay within the caps."""
    ledger = Ledger(tmp_path, PRICE, next_unit=0)
    budget = Budget(max_total_tokens=2000, max_cost=0.003)
    first = ledger.reserve(0, 500, 500, budget)  # reserves 1000 tokens, $0.0015
    with pytest.raises(BudgetExhausted) as info:
        ledger.reserve(0, 500, 600, budget)  # 2100 tokens in all
    assert info.value.reason == "max_total_tokens"
    with pytest.raises(BudgetExhausted) as info:
        ledger.reserve(0, 100, 800, budget)  # 1900 tokens, but $0.0017 + $0.0015 in flight
    assert info.value.reason == "max_cost"
    ledger.done(first, 0, "k", Completion("short", prompt_tokens=400, completion_tokens=50))  # $0.0005 used
    ledger.reserve(0, 100, 800, budget)
    asyncio.run(ledger.sync())
    sent = [line for line in map(json.loads, (tmp_path / "ledger.jsonl").read_text().splitlines()) if line["event"] == "send"]
    assert [line["tokens"] for line in sent] == [1000, 900]  # a refused request is never journalled


def test_a_retry_is_refused_at_max_requests(tmp_path):
    ledger = Ledger(tmp_path, None, next_unit=0)
    budget = Budget(max_requests=2)
    rid = ledger.reserve(0, 10, 10, budget)
    assert ledger.retry(rid, 0, budget) and not ledger.retry(rid, 0, budget)
    assert ledger.spend.requests == 2


def test_only_good_replies_of_units_not_yet_pooled_are_cached(tmp_path):
    """A failed or cancelled reply is asked again; a reply whose unit is in the pool is never
    asked again, so the cache drops it on the next open (it would only grow)."""
    ledger = Ledger(tmp_path, None, next_unit=0)
    for unit, key, completion in [(0, "pooled", Completion("old reply")),
                                  (1, "good", Completion("new reply", finish_reason="length")),
                                  (1, "failed", Completion("", finish_reason="error", error="timeout")),
                                  (1, "cancelled", Completion("half a re", finish_reason="cancelled"))]:
        ledger.done(ledger.reserve(unit, 10, 10, Budget()), unit, key, completion)
    with open(tmp_path / "responses.jsonl", "a") as f:
        f.write('{"key": "torn", "unit": 1, "te')  # killed while caching a reply
    again = Ledger(tmp_path, None, next_unit=1)
    assert again.cached("good") == Completion("new reply", finish_reason="length")
    assert [again.cached(k) for k in ("pooled", "failed", "cancelled", "torn")] == [None] * 4
    assert [json.loads(line)["key"] for line in (tmp_path / "responses.jsonl").read_text().splitlines()] == ["good"]


def test_a_stage_gets_the_caps_minus_what_the_other_stages_spent():
    spent = Spend(requests=7, prompt_tokens=900, completion_tokens=50, reserved_tokens=100, cost=0.25)
    assert Budget(10, 1000, 0.2).after(spent) == Budget(3, 0, 0)
    assert Budget(max_requests=10).after(spent) == Budget(3, None, None)


def test_a_lost_ledger_does_not_reset_the_budget(tmp_path):
    rng = random.Random(0)
    teacher = FakeTeacher(respond=lambda prompt: self_instruct_reply(prompt, 20, rng))
    cfg = GenerateConfig(output_dir=str(tmp_path / "out"), num_instructions_to_generate=1000, max_requests=6,
                         request_batch_size=2, quiet=True)
    assert asyncio.run(agenerate(cfg, teacher=teacher)).stopped_by == "max_requests"
    assert len(teacher.history) == 6
    (tmp_path / "out" / "ledger.jsonl").unlink()  # state.json still says 6 requests were sent
    asyncio.run(agenerate(cfg, teacher=teacher))
    assert len(teacher.history) == 6


def test_replies_are_on_disk_when_the_event_loops_turn_ends(tmp_path):
    """Replies that come back in one turn of the event loop are written together when it ends:
    a reply is cached, and its request settled, before any other task runs."""
    ledger = Ledger(tmp_path, None, next_unit=0)

    def on_disk(name, event=None):
        path = tmp_path / name
        lines = [json.loads(line) for line in path.read_text().splitlines()] if path.exists() else []
        return [line for line in lines if event is None or line["event"] == event]

    async def main():
        rids = [ledger.reserve(0, 10, 10, Budget()) for _ in range(3)]
        await ledger.sync()
        for i, rid in enumerate(rids):
            ledger.done(rid, 0, f"k{i}", Completion(f"reply {i}"))
        await asyncio.sleep(0)  # the next turn
        assert [line["id"] for line in on_disk("ledger.jsonl", "done")] == rids
        assert [entry["key"] for entry in on_disk("responses.jsonl")] == ["k0", "k1", "k2"]
    asyncio.run(main())
    assert Ledger(tmp_path, None, next_unit=0).cached("k2") == Completion("reply 2")


def test_a_reply_that_cannot_be_written_stops_the_next_request(tmp_path, monkeypatch):
    """A full disk when the replies of a turn are written is not lost in the event loop's log:
    the next request's sync raises it, before that request goes out."""
    from self_instruct.engine import ledger as ledger_module

    ledger = Ledger(tmp_path, None, next_unit=0)
    real_append = ledger_module.append_jsonl

    def full_for_replies(path, lines, **kwargs):
        if any(line.get("event") == "done" for line in lines):
            raise OSError(28, "No space left on device")
        return real_append(path, lines, **kwargs)
    monkeypatch.setattr(ledger_module, "append_jsonl", full_for_replies)

    async def main():
        rid = ledger.reserve(0, 10, 10, Budget())
        await ledger.sync()
        ledger.done(rid, 0, "k", Completion("reply"))
        await asyncio.sleep(0)
        ledger.reserve(0, 10, 10, Budget())
        with pytest.raises(OSError, match="No space"):
            await ledger.sync()
    asyncio.run(main())
