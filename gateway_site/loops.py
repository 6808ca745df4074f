"""Values that belong to one event loop (connection pools, clients, writers), made once per loop.

A pool's connections are tied to the loop that opened them: one loop per process under the ASGI
server, one per test under pytest, one per call under asgiref's `async_to_sync`. `PerLoop` keeps
one value per running loop and forgets the values of loops that have closed.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Generic, TypeVar

T = TypeVar("T")


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
