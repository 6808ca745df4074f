"""What a process took lately, per key, and the lease it takes ahead on that: how the rate limits'
leases (`accounting.ratelimits`) size themselves."""

from __future__ import annotations

from collections.abc import Hashable
from dataclasses import dataclass

# A lease is at most this share of what it is taken from, and takes draws for at most this long.
LEASE_MAX_SHARE = 0.01
LEASE_MAX_SECONDS = 1.0


@dataclass
class _Window:
    started: float
    now: float = 0.0  # noted since `started`
    before: float = 0.0  # noted in the second before it (0 if that second is older)


class RecentAmounts:
    """Per key, the amounts noted in the current second of a clock and in the one before it."""

    def __init__(self, *, max_keys: int = 10_000) -> None:
        self._windows: dict[Hashable, _Window] = {}
        self._max_keys = max_keys

    def note(self, key: Hashable, amount: float, now: float) -> None:
        window = self._windows.get(key)
        if window is None:
            if len(self._windows) >= self._max_keys:
                self._windows.clear()
            window = self._windows[key] = _Window(started=now)
        elif now - window.started >= 1.0:
            window.before = window.now if now - window.started < 2.0 else 0.0
            window.now, window.started = 0.0, now
        window.now += amount

    def last_second(self, key: Hashable) -> float:
        """What was noted in the last whole second: 0 for a key not seen then."""
        window = self._windows.get(key)
        return 0.0 if window is None else window.before

    def ahead(self, key: Hashable, *, seconds: float, capacity: float, amount: float) -> float:
        """A lease's size: `seconds` of what was noted in the last whole second, at most
        `LEASE_MAX_SHARE` of `capacity`; 0 if that would not serve two more of `amount`."""
        wanted = min(self.last_second(key) * seconds, capacity * LEASE_MAX_SHARE)
        return wanted if wanted >= 2 * amount else 0.0
