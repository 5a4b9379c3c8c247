"""The ``ray`` executor: actors and tasks on a Ray cluster (``pip install 'self_instruct[ray]'``).

With an address (``--ray_address``, else ``RAY_ADDRESS``) it joins that cluster; in a process
that already joined one (``ray.init`` before the call, as the tests do) it uses that; otherwise it
starts a local instance for the run, without the dashboard, and stops it after. Workers import
this package as the driver has it: a local instance gets the driver's copy on its PYTHONPATH, a
remote cluster gets it shipped as a ``py_modules`` runtime environment.

Actors are restarted when their process dies (``max_restarts=-1``) and their pending calls retried
(``max_task_retries=-1``); tasks are retried when their worker dies (``max_retries``). What a
restart loses is the actor's state, which is why the callers' actors check it (see
``self_instruct.dedup.Replica``).
"""
from __future__ import annotations

import logging
import os
import signal
import socket
import sys
import threading
from collections import deque
from pathlib import Path
from typing import Any, Callable, Iterable, Iterator, Sequence

os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")  # nothing leaves the machine


def use_saved_token() -> None:
    """Join a cluster with Ray's token authentication (on by default for clusters Ray starts) when
    a token is at hand: ``RAY_AUTH_TOKEN``, ``RAY_AUTH_TOKEN_PATH`` or the ``~/.ray/auth_token``
    that ``ray start`` saves. Ray asks for ``RAY_AUTH_MODE=token`` to send it, read when Ray is
    imported, so this runs first; a mode set already wins (a local instance is token-authenticated
    by default anyway)."""
    if "RAY_AUTH_MODE" in os.environ or "ray" in sys.modules:  # too late once Ray is loaded: it would disagree with itself
        return
    if os.environ.get("RAY_AUTH_TOKEN") or os.environ.get("RAY_AUTH_TOKEN_PATH") or \
            (Path.home() / ".ray" / "auth_token").is_file():
        os.environ["RAY_AUTH_MODE"] = "token"


use_saved_token()
import ray  # noqa: E402

from ..errors import ConfigError  # noqa: E402

PACKAGE = Path(__file__).resolve().parent.parent
# A task is run again this many times when its worker dies.
TASK_RETRIES = 5


def runtime_env(local: bool) -> dict:
    """How Ray's workers find this package: on PYTHONPATH for a local instance, shipped to a cluster."""
    if local:
        path = os.pathsep.join(p for p in (str(PACKAGE.parent), os.environ.get("PYTHONPATH", "")) if p)
        return {"env_vars": {"PYTHONPATH": path, "RAY_USAGE_STATS_ENABLED": "0"}}
    return {"py_modules": [str(PACKAGE)], "env_vars": {"RAY_USAGE_STATS_ENABLED": "0"}}


def start_local(num_cpus: int | None = None) -> None:
    """Start a quiet local Ray instance in this process (no dashboard, workers' logs kept to them)."""
    _init(address="local", num_cpus=num_cpus, include_dashboard=False, runtime_env=runtime_env(local=True))


def _init(**options) -> None:
    """ray.init, quiet, leaving this process's SIGTERM handler as it was: Ray's own would exit at
    once, where the commands stop on SIGTERM as on Ctrl-C (units back are committed first)."""
    main = threading.current_thread() is threading.main_thread()
    previous = signal.getsignal(signal.SIGTERM) if main else None
    try:
        ray.init(log_to_driver=False, logging_level=logging.ERROR, **options)
    finally:
        if main and previous is not None:
            signal.signal(signal.SIGTERM, previous)


def check_reachable(address: str, timeout: float = 5.0) -> None:
    """Fail in one line when nothing listens at a ``HOST:PORT`` (or ``ray://HOST:PORT``) address:
    Ray itself would retry for minutes, logging as it goes. Other forms (``auto``) go to Ray."""
    where = address.split("://", 1)[-1].rsplit("@", 1)[-1].split("/", 1)[0]
    host, _, port = where.rpartition(":")
    if not host or not port.isdigit():
        return
    try:
        socket.create_connection((host.strip("[]"), int(port)), timeout=timeout).close()
    except OSError as exc:
        raise ConfigError(f"--ray_address: no Ray cluster answers at {host}:{port} ({exc.strerror or exc}); "
                          "start one with `ray start --head` or leave the address out for a local instance") from None


class RayExecutor:
    name = "ray"

    def __init__(self, address: str | None = None):
        address = address or os.environ.get("RAY_ADDRESS") or None
        self.started = False
        if ray.is_initialized():
            return
        if address is None or address == "local":
            start_local()
        else:
            check_reachable(address)
            _init(address=address, runtime_env=runtime_env(local=False))
        self.started = True

    def actors(self, cls, count: int, *args) -> list[Any]:
        cpus = ray.cluster_resources().get("CPU", 1)
        remote = ray.remote(cls).options(max_restarts=-1, max_task_retries=-1, num_cpus=min(1.0, cpus / count))
        return [remote.remote(*args) for _ in range(count)]

    def call(self, actor, method: str, *args) -> Any:
        return getattr(actor, method).remote(*args)

    def get(self, handles: Sequence[Any]) -> list[Any]:
        return ray.get(list(handles))

    def map(self, function: Callable, items: Iterable, window: int | None = None) -> Iterator:
        """``function(item)`` as Ray tasks, at most ``window`` at once (twice the cluster's CPUs),
        results yielded in the items' order."""
        task = ray.remote(max_retries=TASK_RETRIES)(function)
        window = window or max(2, 2 * int(ray.cluster_resources().get("CPU", 1)))
        pending: deque = deque()
        for item in items:
            pending.append(task.remote(item))
            if len(pending) >= window:
                yield ray.get(pending.popleft())
        while pending:
            yield ray.get(pending.popleft())

    def close(self) -> None:
        if self.started:
            ray.shutdown()
            self.started = False
