"""Requests to an OpenAI-compatible fleet sent from Ray workers (``--executor ray``; ``pip install
'self_instruct[ray]'``), for a run whose engine, judge, ledger and pool stay in this process.

:class:`RayTeacher` is a Teacher like any other to the engine: the engine reserves each request in
its ledger and then calls ``complete``, which hands the prompt to the least busy of a few Ray
actors (:class:`Requester`), each holding an :class:`OpenAITeacher` against the same fleet, and
awaits its Completion. Only the HTTP traffic moves; everything the engine decides stays here.

The budget holds across the actor boundary. An OpenAITeacher asks its ``before_retry`` hook before
every request it sends again (a retry, a resend after a withdrawal or a refused stream option);
in an actor that hook asks the driver: the call is a Ray streaming generator that yields
``("retry",)``, the driver runs the engine's hook (which counts the request in the ledger, or
refuses it) and answers with ``admit``. So every request a server can see was counted first,
whichever worker sent it.

A worker that dies mid-request (its process killed, its node lost) is not retried by Ray
(``max_task_retries=0``): the driver sees the actor's death, asks ``before_retry`` (the request
may have reached the server: it is counted as another one), and sends the prompt to another actor;
Ray restarts the dead one (``max_restarts=-1``). ``max_attempts`` deaths for one prompt make it a
failed Completion, as spent retries do.

The API key never travels in Ray's arguments, which Ray keeps in its control store: each actor
reads ``OPENAI_API_KEY`` from its own environment. For a local Ray instance started by the run,
the driver's environment (the key set there first) is inherited by the workers; on an existing
cluster the key must be in the workers' environment (see docs/ray.md).
"""
from __future__ import annotations

import asyncio
import contextvars
import itertools
import os
from dataclasses import replace
from typing import Sequence
from urllib.parse import urlsplit

import ray

from ..errors import ConfigError, TeacherError
from ..types import Completion, Decoding
from .base import Teacher
from .choose import openai_settings
from .fleet import parse_base_urls
from .openai_compat import OpenAITeacher

# The call an actor's request belongs to, for its before_retry hook.
_CALL: contextvars.ContextVar[int | None] = contextvars.ContextVar("call", default=None)
# Faults that mean the worker, not the server, failed the request.
WORKER_DIED = "worker_died"


class Requester:
    """A Ray actor: an OpenAITeacher with its key from this process's environment, whose
    requests sent again are admitted by the driver."""

    def __init__(self, settings: dict):
        self.teacher = OpenAITeacher(**settings, api_key=os.environ.get("OPENAI_API_KEY") or None)
        self.teacher.before_retry = self._ask_driver
        self.events: dict[int, asyncio.Queue] = {}
        self.answers: dict[int, asyncio.Future] = {}

    async def complete(self, call: int, prompt: str, decoding: Decoding):
        """A streaming generator: ("retry",) each time the teacher would send the prompt again
        (answered by ``admit``), then ("done", completion, endpoint stats) or ("teacher_error", line)."""
        events: asyncio.Queue = asyncio.Queue()
        self.events[call] = events
        token = _CALL.set(call)
        try:
            work = asyncio.ensure_future(self.teacher.complete([prompt], decoding))  # copies _CALL
        finally:
            _CALL.reset(token)
        work.add_done_callback(lambda _: events.put_nowait("done"))
        try:
            while await events.get() == "retry":
                yield ("retry",)
            try:
                completion = work.result()[0]
            except TeacherError as exc:
                yield ("teacher_error", str(exc))
                return
            yield ("done", completion, self.teacher.endpoint_stats())
        finally:
            work.cancel()
            self.events.pop(call, None)
            self.answers.pop(call, None)

    async def _ask_driver(self) -> bool:
        call = _CALL.get()
        if call is None or call not in self.events:
            return False  # not a request of ours: send nothing uncounted
        self.answers[call] = answer = asyncio.get_running_loop().create_future()
        self.events[call].put_nowait("retry")
        return await answer

    def admit(self, call: int, ok: bool) -> None:
        answer = self.answers.pop(call, None)
        if answer is not None and not answer.done():
            answer.set_result(bool(ok))

    def pid(self) -> int:
        return os.getpid()

    async def close(self) -> None:
        await self.teacher.aclose()


class RayTeacher(Teacher):
    """The engine's teacher whose requests go out from ``workers`` Ray actors.

    ``local`` is the same teacher in this process: it checks the fleet before the run (a refused
    key, no server) and describes the run in run.json, so both read as a local run's. ``settings``
    are its keywords without the key (``teachers.choose.openai_settings``). Ray must be initialized
    (``executors.open_executor("ray")``)."""

    def __init__(self, local: OpenAITeacher, settings: dict, workers: int = 2):
        if not ray.is_initialized():
            raise ConfigError("RayTeacher needs Ray initialized first (open_executor('ray'))")
        urls = parse_base_urls(settings.get("base_url"))  # a file of URLs is read here, not on the workers
        if any(url and urlsplit(url).password for url in urls):
            raise ConfigError("--executor ray: a --base_url with a password would be kept in Ray's control store; "
                              "give the key in OPENAI_API_KEY instead")
        self.local = local
        self.model_id, self.api = local.model_id, local.api
        self.max_attempts = local.max_attempts
        settings = dict(settings, base_url=list(urls) if urls != [None] else None)
        for name in ("requests_per_minute", "tokens_per_minute"):  # the workers share the client's rates
            if settings.get(name):
                settings[name] = settings[name] / workers
        cpus = ray.cluster_resources().get("CPU", 1)
        remote = ray.remote(Requester).options(max_restarts=-1, max_task_retries=0,
                                               num_cpus=min(1.0, cpus / workers))
        self.actors = [remote.remote(settings) for _ in range(workers)]
        self.load = [0] * workers
        self.stats: list[dict] = [{} for _ in range(workers)]
        self.calls = itertools.count()
        self.deaths = 0  # requests whose worker died under them
        self.down: set[int] = set()  # workers being restarted
        self.watching: set[asyncio.Future] = set()  # each waiting for one to answer again

    async def check(self) -> None:
        """The fleet checked from here, and every worker started (a cluster whose workers cannot
        import this package fails here, before anything is written)."""
        await self.local.check()
        try:
            await asyncio.gather(*(actor.pid.remote() for actor in self.actors))
        except ray.exceptions.RayError as exc:
            raise ConfigError(f"--executor ray: the Ray workers did not start ({type(exc).__name__}: "
                              f"{str(exc).splitlines()[0][:200]})") from None

    def describe(self) -> dict:
        return self.local.describe()

    def endpoint_stats(self) -> dict[str, dict]:
        """Each endpoint's counts summed over the workers (their latest reports); concurrency summed too."""
        merged: dict[str, dict] = {}
        for stats in self.stats:
            for name, counts in stats.items():
                into = merged.setdefault(name, {})
                for key, value in counts.items():
                    if isinstance(value, (int, float)) and not isinstance(value, bool):
                        into[key] = into.get(key, 0) + value
                    else:
                        into.setdefault(key, value)
        return merged

    async def complete(self, prompts: Sequence[str], decoding: Decoding) -> list[Completion]:
        return list(await asyncio.gather(*(self._complete_one(p, decoding) for p in prompts)))

    async def _complete_one(self, prompt: str, decoding: Decoding) -> Completion:
        deaths: list[str] = []
        avoid = None
        while True:
            k = min(range(len(self.actors)), key=lambda i: (i in self.down or i == avoid, self.load[i]))
            self.load[k] += 1
            try:
                return await self._on(k, prompt, decoding, tuple(deaths))
            except (ray.exceptions.RayActorError, ray.exceptions.ActorUnavailableError) as exc:
                self.deaths += 1
                deaths.append(WORKER_DIED)
                avoid = k
                if k not in self.down:  # the others take its requests until Ray has started it again
                    self.down.add(k)
                    self.watching.add(watch := asyncio.ensure_future(self._until_back(k)))
                    watch.add_done_callback(self.watching.discard)
                if len(deaths) >= self.max_attempts:
                    error = f"{WORKER_DIED}: {len(deaths)} workers died under this request ({type(exc).__name__})"
                    return Completion("", finish_reason="error", error=error, faults=tuple(deaths))
                # it may have reached the server: sending it again is one more request
                if self.before_retry and not await self.before_retry():
                    return Completion("", finish_reason="error", faults=tuple(deaths),
                                      error=f"budget: no request left to retry this prompt (after {', '.join(deaths)})")
            finally:
                self.load[k] -= 1

    async def _until_back(self, k: int) -> None:
        while True:
            try:
                await self.actors[k].pid.remote()
                break
            except (ray.exceptions.RayActorError, ray.exceptions.ActorUnavailableError):
                await asyncio.sleep(0.2)
        self.down.discard(k)

    async def _on(self, k: int, prompt: str, decoding: Decoding, deaths: tuple) -> Completion:
        actor, call = self.actors[k], next(self.calls)
        replies = actor.complete.options(num_returns="streaming").remote(call, prompt, decoding)
        try:
            async for ref in replies:
                message = await ref
                if message[0] == "retry":
                    ok = await self.before_retry() if self.before_retry else True
                    actor.admit.remote(call, ok)
                elif message[0] == "teacher_error":
                    raise TeacherError(message[1])
                else:
                    _, completion, self.stats[k] = message
                    return replace(completion, faults=deaths + completion.faults) if deaths else completion
        except asyncio.CancelledError:
            try:
                ray.cancel(replies)
            except Exception:  # noqa: BLE001 - the call is gone already
                pass
            raise
        raise ray.exceptions.RayActorError()  # the stream ended with no reply: the worker went

    async def aclose(self) -> None:
        for watch in list(self.watching):
            watch.cancel()
        await asyncio.gather(*(actor.close.remote() for actor in self.actors), return_exceptions=True)
        for actor in self.actors:
            ray.kill(actor)
        await self.local.aclose()


def on_ray(options) -> RayTeacher:
    """The OpenAI-compatible teacher of a command's options (TeacherOptions and RateOptions), its
    requests sent from one Ray worker per CPU of the cluster; the key (``--api_key``, else
    ``OPENAI_API_KEY``) serves the check from this process only."""
    settings = openai_settings(options, options.base_url or os.environ.get("OPENAI_BASE_URL"))
    local = OpenAITeacher(**settings, api_key=options.api_key or os.environ.get("OPENAI_API_KEY"))
    return RayTeacher(local, settings, workers=max(1, int(ray.cluster_resources().get("CPU", 1))))
