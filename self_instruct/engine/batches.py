"""Requests sent through a provider's Batch API, behind the engine's `ask` (--batch).

A unit asks as it always does; in batch mode its request is reserved in the ledger (at the
batch price, so every budget holds as before) and parked in a queue instead of being sent. When
every running unit waits on a parked request and no other unit may start, the queue becomes one
batch (or several of at most --batch_size requests); each ask awaits a future that the batch's
reply fills, through the same ledger, reply cache and judge as a direct reply. A pipeline cannot
tell the two apart.

`batches.jsonl` in the run's directory records each batch, fsynced, append-only:

    {"event": "intent", "seq": 0, "tag": "...", "t": ..., "requests": [{"custom_id": "r7", "rid": 7, "unit": 3, "key": "..."}], "lines": [...]}
    {"event": "created", "seq": 0, "batch_id": "batch_abc", "file_id": "file-xyz"}
    {"event": "ended", "seq": 0, "status": "completed", "answered": 40, "failed": 0}

The order of a batch's life, and what a kill at each point leaves:
1. its requests are reserved in ledger.jsonl (fsynced): a kill now leaves reservations that
   count at their upper bound, as for any request lost to a kill; no batch exists;
2. the intent line (the requests and the input file's lines): from here a resumed run owns it;
3. the input file is uploaded and the batch created, with the intent's tag in its metadata;
4. the created line. A kill between 3 and 4 leaves a batch on the server that no line names:
   the resumed run looks for the intent's tag among the server's batches (`GET /v1/batches`,
   newest first, back to the intent's time) and adopts the batch it finds; only when none
   carries the tag is the batch created, with the same tag. A server that keeps no metadata or
   cannot list batches would be asked twice in that window of a few milliseconds; OpenAI does both;
5. polls, with waits doubling from --batch_poll to --batch_poll_max, until the batch ends;
6. the output and error files are read, every request settled in the ledger and its reply
   cached (both fsynced), then the ended line. A kill before the ended line: the resumed run
   polls the same batch again and settles only the requests still open.

A request the batch did not answer (a line of the error file, or none at all when the batch
failed, expired or was cancelled) is settled as failed, at no cost, and asked again as
--batch_retry says: as an ordinary request (`requests`), or in the next batch (`batch`, at most
BATCH_TRIES batches each, then the request counts as failed as any other does).
"""
from __future__ import annotations

import asyncio
import secrets
import time
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Awaitable, Callable

from ..errors import DataError, TeacherError
from ..io.jsonl import append_jsonl, iter_jsonl, repair_torn_tail
from ..teachers.batch import BatchClient, BatchRefused, CreateUnknown, failed_in_batch, is_failed_in_batch
from ..types import Completion, Decoding
from .ledger import Budget, Ledger
from .prices import Price, prompt_bound

BATCHES = "batches.jsonl"
# Batches a request may go through before it counts as failed (with --batch_retry batch).
BATCH_TRIES = 3
# Tries of a create whose outcome stays unknown (each after a look for its tag).
CREATE_TRIES = 5


@dataclass
class Parked:
    """One request waiting in the queue or in a batch."""

    custom_id: str
    rid: int
    unit: int
    key: str
    prompt: str
    decoding: Decoding
    reply: asyncio.Future


def open_batches(directory: Path) -> bool:
    """Whether an earlier run in `directory` left a batch that has not ended."""
    path = Path(directory) / BATCHES
    if not path.exists():
        return False
    repair_torn_tail(path)
    events = Counter(line.get("event") for _, line in iter_jsonl(path) if isinstance(line, dict))
    return events["intent"] > events["ended"]


class Batches:
    """The batches of one run directory: the queue, the state file and a follower per batch."""

    def __init__(self, client: BatchClient, ledger: Ledger, directory: Path, *, price: Price | None, budget: Budget,
                 enabled: bool = True, size: int = 50000, poll: float = 30.0, poll_max: float = 600.0,
                 retry: str = "requests", say: Callable[[str], None] = lambda message: None):
        self.client, self.ledger, self.path = client, ledger, Path(directory) / BATCHES
        self.price, self.budget, self.size, self.retry = price, budget, size, retry
        # False: a run without --batch that follows an earlier run's batches; its new requests go directly
        self.enabled = enabled
        self.poll, self.poll_max, self.say = poll, poll_max, say
        self.queue: list[Parked] = []
        self.out: dict[str, asyncio.Future] = {}  # cache key -> the reply of the batch it is in
        self.parked: Counter = Counter()  # unit -> its asks waiting on a batch
        self.notify: Callable[[], None] = lambda: None  # the engine's: a request was parked
        self.tasks: set[asyncio.Task] = set()
        self.failure: BaseException | None = None  # a batch that could not be made: the run stops
        self._seq = 0
        self._resumed: list[tuple[dict, dict | None]] = []
        self._read()

    # -- reading back ------------------------------------------------------------------------

    def _read(self) -> None:
        """The batches of an earlier run that did not end: their requests are taken back from
        the ledger, and followed (or created, when no batch was made) once the run starts."""
        if not self.path.exists():
            return
        repair_torn_tail(self.path)
        intents: dict[int, dict] = {}
        created: dict[int, dict] = {}
        try:
            for lineno, line in iter_jsonl(self.path):
                seq = int(line["seq"])
                self._seq = max(self._seq, seq + 1)
                if line["event"] == "intent":
                    intents[seq] = line
                elif line["event"] == "created":
                    created[seq] = line
                elif line["event"] == "ended":
                    intents.pop(seq, None)
        except (KeyError, TypeError, ValueError) as exc:
            raise DataError(f"{self.path}:{lineno}: not a batch line ({type(exc).__name__}: {exc}); it records a "
                            f"batch the run paid for: restore the line") from None
        for seq, intent in sorted(intents.items()):
            self._resumed.append((intent, created.get(seq)))

    def start(self) -> None:
        """Follow the batches an earlier run left, now that an event loop runs."""
        loop = asyncio.get_running_loop()
        for intent, created in self._resumed:
            items = []
            for request, line in zip(intent["requests"], intent["lines"]):
                if not self.ledger.adopt(request["rid"]):
                    continue  # settled before the kill: its reply is in the ledger and the cache
                items.append(Parked(request["custom_id"], request["rid"], request["unit"], request["key"],
                                    self.client.prompt_of(line), Decoding(), loop.create_future()))
                self.out[request["key"]] = items[-1].reply
            if not items:  # killed after its replies were settled, before its end was written
                append_jsonl(self.path, [{"event": "ended", "seq": intent["seq"], "status": "settled"}])
                continue
            what = f"batch {created['batch_id']}" if created else f"batch {intent['tag']} (its creation unconfirmed)"
            self.say(f"following {what} of an earlier run: {len(items)} request(s) still open")
            self._spawn(self._follow(intent, created, items, resumed=True))
        self._resumed.clear()

    # -- the queue ---------------------------------------------------------------------------

    async def ask(self, unit: int, key: str, prompt: str, decoding: Decoding,
                  ordinary: Callable[[], Awaitable[Completion]]) -> Completion:
        """The reply to `prompt`, through a batch; `ordinary` sends it as a plain request (a
        retry by --batch_retry requests). BudgetExhausted as for any request."""
        completion = None
        if not self.enabled and key not in self.out:
            return await ordinary()
        for _ in range(BATCH_TRIES):
            reply = self.out.get(key) or self._park(unit, key, prompt, decoding)
            self.parked[unit] += 1
            self.notify()  # the run loop sees, once this task waits, whether the batch should go
            try:
                completion = await asyncio.shield(reply)
            finally:
                self.parked[unit] -= 1
            if not is_failed_in_batch(completion):
                return completion
            if self.retry == "requests" or not self.enabled:
                return await ordinary()
        return completion

    def _park(self, unit: int, key: str, prompt: str, decoding: Decoding) -> asyncio.Future:
        if self.failure is not None:
            raise self.failure
        rid = self.ledger.reserve(unit, prompt_bound(prompt), decoding.max_tokens, self.budget, self.price)
        reply = asyncio.get_running_loop().create_future()
        self.queue.append(Parked(f"r{rid}", rid, unit, key, prompt, decoding, reply))
        self.out[key] = reply
        return reply

    def flush(self) -> None:
        """Send what is queued: called by the engine when no unit can go on without a reply."""
        while self.queue:
            items, self.queue = self.queue[:self.size], self.queue[self.size:]
            self._spawn(self._submit(items))

    def _spawn(self, work) -> None:
        task = asyncio.ensure_future(work)
        self.tasks.add(task)
        task.add_done_callback(self.tasks.discard)

    async def stop(self) -> None:
        """The run ends: stop following. A batch still running stays recorded for the next run."""
        for task in list(self.tasks):
            task.cancel()
        await asyncio.gather(*self.tasks, return_exceptions=True)

    # -- a batch's life ----------------------------------------------------------------------

    async def _submit(self, items: list[Parked]) -> None:
        seq, self._seq = self._seq, self._seq + 1
        try:
            await self.ledger.sync()  # 1. the reservations are on disk
            lines = [self.client.request_line(p.custom_id, p.prompt, p.decoding) for p in items]
            intent = {"event": "intent", "seq": seq, "tag": f"{secrets.token_hex(8)}-{seq}", "t": round(time.time(), 3),
                      "requests": [{"custom_id": p.custom_id, "rid": p.rid, "unit": p.unit, "key": p.key} for p in items],
                      "lines": lines}
            await asyncio.to_thread(append_jsonl, self.path, [intent])  # 2.
        except BaseException as exc:
            self._give_up(items, exc)
            if isinstance(exc, asyncio.CancelledError):
                raise
            return  # the asks raise it
        await self._follow(intent, None, items)

    async def _follow(self, intent: dict, created: dict | None, items: list[Parked], resumed: bool = False) -> None:
        seq = intent["seq"]
        try:
            if created is None:
                try:
                    created = await self._create(intent, fresh=not resumed)  # 3.
                except BatchRefused as exc:
                    self._refused(seq, items, exc)  # no batch was made: nothing is paid
                    return
                await asyncio.to_thread(append_jsonl, self.path, [created])  # 4.
                self.say(f"batch {created['batch_id']}: {len(items)} request(s) sent; polled every {self.poll:g} s "
                         f"and up to every {self.poll_max:g} s until it ends (a killed run follows it again)")
            status = await self._wait(created["batch_id"])  # 5.
            replies = await self._read_replies(status, {p.custom_id: p.prompt for p in items})
        except BaseException as exc:
            # The batch may exist and be paid for: it stays recorded, and the next run follows it.
            self._give_up(items, exc)
            if isinstance(exc, asyncio.CancelledError):
                raise
            self.failure = exc
            return  # the asks raise it: the run stops (a TeacherError with its one line)
        # 6. every request settled and cached, durably, before the batch is marked ended
        answered = [(p, replies.get(p.custom_id) or failed_in_batch(f"the batch {status.status} without answering it",
                                                                    expired=status.status == "expired"))
                    for p in items]
        self.ledger.done_many([(p.rid, p.unit, p.key, c) for p, c in answered], self.price)
        failed = sum(not c.ok for _, c in answered)
        await asyncio.to_thread(append_jsonl, self.path, [{"event": "ended", "seq": seq, "status": status.status,
                                                            "answered": len(items) - failed, "failed": failed}])
        if failed or status.errors:
            why = f": {'; '.join(status.errors[:3])}" if status.errors else ""
            self.say(f"batch {created['batch_id']} {status.status}, {failed} of {len(items)} request(s) not answered"
                     f"{why}; they are asked again {'as ordinary requests' if self.retry == 'requests' else 'in the next batch'}")
        for p, completion in answered:
            if self.out.get(p.key) is p.reply:
                del self.out[p.key]
            if not p.reply.done():
                p.reply.set_result(completion)

    async def _create(self, intent: dict, fresh: bool) -> dict:
        """Upload and create, or adopt the batch an earlier try made: never two batches for one
        intent. `fresh`: no try was made before (its tag is new), so there is nothing to look for."""
        tag, since = intent["tag"], float(intent["t"]) - 60
        for attempt in range(1, CREATE_TRIES + 1):
            found = None if fresh else await self._find(tag, since)
            fresh = False  # a try follows: the next one looks first
            if found is None:
                file_id = await self.client.upload(intent["lines"])
                try:
                    batch_id = await self.client.create(file_id, tag)
                except CreateUnknown as exc:
                    if attempt == CREATE_TRIES:
                        raise TeacherError(f"could not create a batch at {self.client.where} ({exc}); rerun the "
                                           f"same command to go on") from None
                    await asyncio.sleep(min(self.poll * 2 ** (attempt - 1), self.poll_max))
                    continue
            else:
                batch_id, file_id = found, None
                self.say(f"batch {batch_id} was made by an earlier try: following it, not creating another")
            return {"event": "created", "seq": intent["seq"], "batch_id": batch_id, "file_id": file_id}
        raise AssertionError("unreachable")

    async def _find(self, tag: str, since: float) -> str | None:
        try:
            return await self.client.find(tag, since)
        except BatchRefused as exc:
            # No way to look: creating it is the one way on (the window in the module's docstring).
            self.say(f"cannot look for batch {tag} made by an earlier try ({exc}); creating it")
            return None

    async def _wait(self, batch_id: str):
        wait, said = self.poll, None
        while True:
            status = await self.client.poll(batch_id)
            if status.ended:
                return status
            if status.status != said:  # a line a change of state: a batch can take hours
                said = status.status
                counts = status.counts
                done = f" ({counts.get('completed', 0)} of {counts['total']} answered)" if counts.get("total") else ""
                self.say(f"batch {batch_id}: {said}{done}")
            await asyncio.sleep(wait)
            wait = min(2 * wait, self.poll_max)

    async def _read_replies(self, status, prompts: dict[str, str]) -> dict[str, Completion]:
        replies: dict[str, Completion] = {}
        for file_id in (status.error_file_id, status.output_file_id):  # a good reply wins over an error
            if file_id:
                for line in await self.client.download(file_id):
                    if line["custom_id"] in prompts:  # a line of no request of ours is no reply
                        replies[line["custom_id"]] = self.client.read_result(line, prompts[line["custom_id"]])
        return replies

    def _refused(self, seq: int, items: list[Parked], exc: BatchRefused) -> None:
        """The server refused the batch for good (no Batch API, a refused key): nothing was
        answered, so nothing is paid; the requests are settled as failed and the run stops."""
        self.failure = exc
        self.ledger.done_many([(p.rid, p.unit, p.key, failed_in_batch(str(exc))) for p in items], self.price)
        append_jsonl(self.path, [{"event": "ended", "seq": seq, "status": "refused", "answered": 0, "failed": len(items)}])
        self._give_up(items, exc)

    def _give_up(self, items: list[Parked], exc: BaseException) -> None:
        for p in items:
            if self.out.get(p.key) is p.reply:
                del self.out[p.key]
            if not p.reply.done():
                if isinstance(exc, asyncio.CancelledError):
                    p.reply.cancel()
                else:
                    p.reply.set_exception(exc)
                    p.reply.exception()  # no ask may be waiting: nothing to report unretrieved
