"""Where a command's parallel work runs: in this process (``local``) or on a Ray cluster (``ray``).

A command that fans work out asks an :class:`Executor` for two things only:

* ``actors(cls, count, *args)``: ``count`` workers, each an instance of ``cls`` built with ``args``,
  that keep state between calls; ``call(actor, method, *args)`` sends one call and returns a
  handle, ``get(handles)`` waits for them and returns their results in order. An actor whose
  process dies is restarted with ``cls(*args)`` again (its state lost) and the call retried, so a
  worker's methods check that the state they were sent matches theirs (see ``self_instruct.dedup``).
* ``map(function, items)``: ``function(item)`` for each item, results in the items' order, as
  they come (a task whose worker dies is run again).

``LocalExecutor`` runs everything here, one call after another, which is what the tests compare
the cluster's results with; ``RayExecutor`` (``self_instruct.executors.ray_executor``) runs them
as Ray actors and tasks. :func:`open_executor` picks one from the flags.
"""
from __future__ import annotations

import os
from contextlib import contextmanager
from typing import Any, Callable, Iterable, Iterator, Sequence

from ..errors import ConfigError

EXECUTORS = ("local", "ray")
INSTALL_RAY = "--executor ray needs Ray: pip install 'self_instruct[ray]'"


class LocalExecutor:
    """Every actor and task in this process, run when called."""

    name = "local"

    def actors(self, cls, count: int, *args) -> list[Any]:
        return [cls(*args) for _ in range(count)]

    def call(self, actor, method: str, *args) -> Any:
        return getattr(actor, method)(*args)

    def get(self, handles: Sequence[Any]) -> list[Any]:
        return list(handles)

    def map(self, function: Callable, items: Iterable) -> Iterator:
        return map(function, items)

    def close(self) -> None:
        pass


def share_env(name: str, value: str | None) -> None:
    """Put a value (a key) in this process's environment, where the workers of a Ray instance this
    process starts inherit it: never in Ray's arguments, which Ray keeps in its control store. Call
    it before the executor opens; on an existing cluster the workers' own environment holds it."""
    if value and os.environ.get(name) != value:
        os.environ[name] = value


@contextmanager
def open_executor(name: str = "local", address: str | None = None) -> Iterator[LocalExecutor]:
    """The executor ``--executor NAME`` asks for, closed after the block.

    ``ray`` joins the cluster at ``address`` (``--ray_address``, else ``RAY_ADDRESS``), reuses the
    Ray this process already joined, or starts a local instance for the run and stops it after.
    """
    if name not in EXECUTORS:
        raise ConfigError(f"--executor must be one of {', '.join(EXECUTORS)} (got {name!r})")
    if name == "local":
        if address:
            raise ConfigError("--ray_address goes with --executor ray")
        executor = LocalExecutor()
    else:
        try:
            from .ray_executor import RayExecutor
        except ImportError:
            raise ConfigError(INSTALL_RAY) from None
        executor = RayExecutor(address)
    try:
        yield executor
    finally:
        executor.close()
