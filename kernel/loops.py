"""Values that belong to one event loop (connection pools, clients, writers), made once per loop.

A pool's connections are tied to the loop that opened them: one loop per process under the ASGI
server, one per test under pytest, one per call under asgiref's `async_to_sync`. `PerLoop` keeps
one value per running loop and forgets the values of loops that have closed.

`Batches` is how one loop's requests share round trips: the money statements
(`accounting.statements.Batched`: budget holds, usage records) and the Redis script calls
(`kernel.redis_client.ScriptBatches`) each go out through one.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable, Coroutine, Hashable
from typing import Any, Generic, TypeVar

T = TypeVar("T")
I = TypeVar("I")  # noqa: E741 - an item of a batch

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

    def forget_closed(self) -> None:
        """Forget the values of loops that are closed."""
        for stale in [other for other in self._values if other.is_closed()]:
            del self._values[stale]

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


class Batches(Generic[I]):
    """Calls of one event loop that share round trips: a lone call goes out at once; the calls that
    come while a batch of the same key is on the wire wait, and go out together in the next one
    (at most `limit` per batch), when that one is answered. Under load one round trip serves many
    requests; a lone request waits for nobody.

    `send(key, items)` sends one batch and returns one outcome per item: an Exception is that
    item's own failure. If `send` raises, every call of the batch gets the exception; if the loop
    is shutting down (a cancellation), each is cancelled. A call whose caller has gone (its future
    cancelled) before its batch goes out is left out. A `deferred` call (bookkeeping nobody waits
    for) waits up to `defer_seconds` for another call of its key to go out with, unless a batch
    of its key is on the wire already; the calls of a key go out in the order they were made.
    """

    def __init__(
        self, send: Callable[[Hashable, list[I]], Awaitable[list[Any]]], *, limit: int,
        defer_seconds: float = 0.0,
    ) -> None:
        self._send, self._limit, self._defer_seconds = send, limit, defer_seconds
        self._waiting: dict[Hashable, list[tuple[I, asyncio.Future]]] = {}
        self._senders: dict[Hashable, asyncio.Task] = {}
        self._deadlines: dict[Hashable, asyncio.TimerHandle] = {}

    def submit(self, item: I, *, key: Hashable = None, deferred: bool = False) -> asyncio.Future:
        """Queue `item`; the future gets its outcome."""
        loop = asyncio.get_running_loop()
        answer = loop.create_future()
        self._waiting.setdefault(key, []).append((item, answer))
        if key not in self._senders:
            if not deferred:
                self._start(key)
            elif key not in self._deadlines:
                self._deadlines[key] = loop.call_later(self._defer_seconds, self._start, key)
        return answer

    def _start(self, key: Hashable) -> None:
        deadline = self._deadlines.pop(key, None)
        if deadline is not None:
            deadline.cancel()
        if key not in self._senders and self._waiting.get(key):
            self._senders[key] = asyncio.ensure_future(self._send_all(key))

    async def _send_all(self, key: Hashable) -> None:
        try:
            while waiting := self._waiting.pop(key, None):
                if len(waiting) > self._limit:
                    self._waiting[key] = waiting[self._limit:] + self._waiting.get(key, [])
                    waiting = waiting[:self._limit]
                batch = [(item, answer) for item, answer in waiting if not answer.done()]
                if not batch:
                    continue
                try:
                    outcomes = await self._send(key, [item for item, _ in batch])
                except Exception as exc:  # noqa: BLE001 - every call of the batch gets it
                    outcomes = [exc] * len(batch)
                except BaseException:  # this loop is shutting down
                    for _, answer in batch:
                        answer.cancel()
                    raise
                for (_, answer), outcome in zip(batch, outcomes):
                    if answer.done():
                        continue  # its caller went away
                    if isinstance(outcome, Exception):
                        answer.set_exception(outcome)
                    else:
                        answer.set_result(outcome)
        finally:
            del self._senders[key]
