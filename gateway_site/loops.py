"""Values that belong to one event loop (connection pools, clients, writers), made once per loop.

A pool's connections are tied to the loop that opened them: one loop per process under the ASGI
server, one per test under pytest, one per call under asgiref's `async_to_sync`. `PerLoop` keeps
one value per running loop and forgets the values of loops that have closed.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable, Coroutine
from typing import Any, Generic, TypeVar

T = TypeVar("T")

logger = logging.getLogger(__name__)

# Tasks started by `background`: the loop keeps only weak references to its tasks.
_tasks: set[asyncio.Task] = set()


class PerLoop(Generic[T]):
    def __init__(self, make: Callable[[], T]) -> None:
        self._make = make
        self._values: dict[asyncio.AbstractEventLoop, T] = {}

    def get(self) -> T:
        """The running loop's value, made on its first use."""
        loop = asyncio.get_running_loop()
        if loop not in self._values:
            for stale in [other for other in self._values if other.is_closed()]:
                del self._values[stale]
            self._values[loop] = self._make()
        return self._values[loop]

    def pop(self) -> T | None:
        """Forget the running loop's value (the caller closes it), if it has one."""
        return self._values.pop(asyncio.get_running_loop(), None)


def background(work: Coroutine[Any, Any, Any], *, what: str) -> asyncio.Task:
    """Run `work` in a task of its own that the caller does not wait for, and that a caller going
    away (a cancelled request) cannot cancel. A failure is logged as "`what` failed"."""
    task = asyncio.ensure_future(work)
    _tasks.add(task)
    task.add_done_callback(lambda done: _finished(done, what))
    return task


def _finished(task: asyncio.Task, what: str) -> None:
    _tasks.discard(task)
    if not task.cancelled() and task.exception() is not None:
        logger.error("%s failed", what, exc_info=task.exception())


async def background_wait() -> None:
    """Wait for the running loop's `background` tasks that have started so far (tests that read
    what they write; a worker's drain waits for every task anyway)."""
    loop = asyncio.get_running_loop()
    mine = [task for task in _tasks if task.get_loop() is loop]
    if mine:
        await asyncio.wait(mine)
