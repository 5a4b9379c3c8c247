"""Client-side rates and the concurrency that adapts: the server never sees more than the set
requests and tokens in any window; 429 storms shrink concurrency and successes grow it back;
a server that answers one request at a time, slowly, is driven one at a time, with no timeout.

Counts, not wall times: the windows are checked on the server's own arrival log.
"""
import asyncio

import pytest

from fake_openai import FakeOpenAI
from self_instruct.errors import ConfigError
from self_instruct.teachers.openai_compat import OpenAITeacher
from self_instruct.teachers.rate_limits import AdaptiveLimit, RateLimits
from self_instruct.types import Decoding

PROMPT = "Come up with tasks.\n###\n4. Instruction:"
DECODING = Decoding(max_tokens=120, stop=("6. Instruction:",))


class VirtualClock:
    """Minutes pass in no time: sleeping moves the clock."""

    def __init__(self):
        self.now = 0.0

    def __call__(self):
        return self.now

    async def sleep(self, seconds):
        self.now += seconds
        await asyncio.sleep(0)


def most_in_window(events, period):
    """The most (amount summed) in any window of `period` seconds; events are (time, amount)."""
    events = sorted(events)
    return max(sum(a for t, a in events if start <= t < start + period) for start, _ in events)


def run_with(teacher, prompts, decoding=DECODING, watch=None):
    async def main():
        watcher = asyncio.create_task(watch()) if watch else None
        try:
            return await teacher.complete(prompts, decoding)
        finally:
            if watcher:
                watcher.cancel()
            await teacher.aclose()
    return asyncio.run(main())


# --- rates over a rolling minute (virtual time: the real per-minute semantics) ---

def test_requests_and_tokens_per_minute_hold_in_every_rolling_minute():
    clock = VirtualClock()
    limits = RateLimits(requests_per_minute=10, tokens_per_minute=1000, clock=clock, sleep=clock.sleep)
    granted = []

    async def one(i):
        grant = await limits.acquire(150)  # estimated: prompt + max_tokens
        granted.append((clock(), 150 if i % 2 else 60))
        limits.settle(grant, granted[-1][1])  # what the server reported using

    async def main():
        for i in range(60):
            await one(i)
    asyncio.run(main())
    assert most_in_window([(t, 1) for t, _ in granted], 60) <= 10
    assert most_in_window(granted, 60) <= 1000
    # Not stricter than it must be: six estimates of 150 fit at once, and settled usage frees room.
    assert [t for t, _ in granted[:6]] == [0.0] * 6
    assert clock() < 60 * 60 / 6  # faster than counting every request at its estimate


def test_a_minute_after_an_idle_spell_still_holds_the_limit():
    # A refilling bucket would let 2x through here: a full bucket, then its refill within the minute.
    clock = VirtualClock()
    limits = RateLimits(requests_per_minute=30, clock=clock, sleep=clock.sleep)
    times = []

    async def main():
        clock.now = 600.0
        for _ in range(90):
            limits.settle(await limits.acquire(1), 1)
            times.append(clock())
    asyncio.run(main())
    assert most_in_window([(t, 1) for t in times], 60) == 30


def test_a_request_larger_than_the_token_limit_goes_out_alone():
    clock = VirtualClock()
    limits = RateLimits(tokens_per_minute=100, clock=clock, sleep=clock.sleep)

    async def main():
        limits.settle(await limits.acquire(40), 40)
        await limits.acquire(500)  # would never fit: it waits for an empty window instead
        return clock()
    assert asyncio.run(main()) >= 60


def test_a_request_still_unanswered_keeps_its_place_in_the_window():
    # The server may count it at any moment until its answer begins.
    clock = VirtualClock()
    limits = RateLimits(requests_per_minute=1, clock=clock, sleep=clock.sleep)

    async def main():
        first = await limits.acquire(1)
        second = asyncio.create_task(limits.acquire(1))
        await clock.sleep(300)  # five minutes without an answer: the second still waits
        assert not second.done()
        limits.answered(first)
        answered_at = clock()
        await second
        return answered_at
    answered_at = asyncio.run(main())
    assert clock() >= answered_at + 60


def test_rates_are_checked():
    with pytest.raises(ConfigError, match="--requests_per_minute must be a positive number"):
        OpenAITeacher("m", base_url="http://127.0.0.1:9/v1", requests_per_minute=0)
    with pytest.raises(ConfigError, match="--tokens_per_minute"):
        OpenAITeacher("m", base_url="http://127.0.0.1:9/v1", tokens_per_minute="lots")


@pytest.mark.parametrize("rpm,tpm", [(5, None), (None, 400)], ids=["requests", "tokens"])
def test_the_server_never_sees_more_than_the_set_rates(fake_server, rpm, tpm):
    # A 1.5 s "minute" keeps the test short; the server's own arrival log is what is checked.
    # Unlimited, all 16 requests (about 47 tokens each) would arrive at once.
    fake_server.tasks_per_reply = 1
    period = 1.5
    teacher = OpenAITeacher("fake-model", base_url=fake_server.base_url, max_concurrency=16,
                            requests_per_minute=rpm, tokens_per_minute=tpm, rate_period=period)
    replies = run_with(teacher, [PROMPT] * 16, Decoding(max_tokens=60, stop=("6. Instruction:",)))
    assert all(r.ok for r in replies) and len(fake_server.requests) == 16
    if rpm:
        assert fake_server.most_in_window(period) == rpm
    else:
        # Estimated at 73 tokens before sending, settled at the usage reported after; all of them
        # in one window would have been more than the limit.
        assert fake_server.most_in_window(period, tokens=True) <= tpm < sum(t for _, t in fake_server.charges)


def test_a_cancelled_request_leaves_the_window_in_time(fake_server):
    # A request cancelled before its answer began must not hold its place in the window for ever.
    fake_server.latency, fake_server.tasks_per_reply = 5.0, 1
    teacher = OpenAITeacher("fake-model", base_url=fake_server.base_url, requests_per_minute=1, rate_period=0.5)

    async def main():
        first = asyncio.create_task(teacher.complete([PROMPT], DECODING))
        while not fake_server.requests:
            await asyncio.sleep(0.01)
        first.cancel()
        fake_server.latency = 0.0
        replies = await asyncio.wait_for(teacher.complete([PROMPT], DECODING), timeout=60)  # a hang guard
        await teacher.aclose()
        return replies
    assert asyncio.run(main())[0].ok


# --- concurrency that adapts ---

def test_adaptive_limit_cuts_once_per_signal_and_grows_back():
    limit = AdaptiveLimit(8)
    sent = limit.epoch
    for _ in range(5):  # five 429s for requests that all went out before the first cut
        limit.cut(sent)
    assert limit.value == 6
    limit.cut(limit.epoch)
    assert limit.value == 4
    for _ in range(4 + 5 + 6 + 7):
        limit.succeed()
    assert limit.value == 8
    limit.succeed()
    assert limit.value == 8  # never above the maximum
    limit.cap(1)
    for _ in range(50):
        limit.succeed()
    assert limit.value == 1  # a one-slot server is not probed again soon


def test_a_429_storm_shrinks_concurrency_and_successes_regrow_it(fake_server):
    fake_server.latency, fake_server.tasks_per_reply = 0.01, 1
    fake_server.script(["429"] * 24)
    teacher = OpenAITeacher("fake-model", base_url=fake_server.base_url, max_concurrency=8,
                            backoff_initial=0.01, max_attempts=12)
    seen = []

    async def watch():
        while True:
            seen.append(teacher.concurrency)
            await asyncio.sleep(0.001)
    replies = run_with(teacher, [PROMPT] * 150, watch=watch)
    assert all(r.ok for r in replies)
    assert sum(r.faults.count("429") for r in replies) == 24
    assert seen[0] == 8 and min(seen) <= 3
    assert teacher.concurrency == 8  # grown back, one step per window of successes
    assert fake_server.max_in_flight <= 8


def test_a_one_slot_slow_server_is_driven_one_request_at_a_time(tmp_path):
    # One slot, 50 ms a token, about 40 tokens a reply: each reply takes about 2 s and the others
    # wait, silent. A silence limit of 5 s would time out the third in line if they all waited.
    server = FakeOpenAI(slots=1, token_delay=0.05, tasks_per_reply=1, seed=3).start()
    teacher = OpenAITeacher("fake-model", base_url=server.base_url, max_concurrency=8, request_timeout=5.0)
    try:
        replies = run_with(teacher, [PROMPT] * 5)
    finally:
        server.stop()
    assert all(r.ok and r.finish_reason == "stop" for r in replies)
    assert not any(r.faults for r in replies)  # no timeout, no retry
    assert teacher.concurrency == 1
    stats = teacher.endpoint_stats()[server.base_url]
    assert stats["withdrawn"] >= 3  # pulled back from the server's queue rather than left to time out
    # After the first burst, every request found the server otherwise idle.
    assert [n for _, n in server.arrivals[5:]] == [1] * (len(server.arrivals) - 5)


def test_a_server_that_cuts_streams_for_queued_requests_converges_to_one(tmp_path):
    # llama-cpp-python's server ends the running stream (a bare [DONE]) whenever another request
    # waits: the cut replies are retried, not taken as finished, and the teacher settles at one.
    server = FakeOpenAI(slots=1, interrupt=True, token_delay=0.005, tasks_per_reply=1, seed=4).start()
    teacher = OpenAITeacher("fake-model", base_url=server.base_url, max_concurrency=8, backoff_initial=0.01)
    try:
        replies = run_with(teacher, [PROMPT] * 6)
    finally:
        server.stop()
    assert all(r.ok and r.finish_reason == "stop" and "4. Output:" in r.text for r in replies)
    faults = [f for r in replies for f in r.faults]
    assert set(faults) <= {"interrupted"} and len(faults) <= 6
    assert teacher.concurrency == 1
