"""Budget leases: money a busy process reserves on a hard budget ahead of its requests.

Every request on a hard budget reserves its most possible cost before it goes upstream
(`accounting.budgets`): one round trip to PostgreSQL that a lone request waits for. A process
that reserves on a budget's period row often instead takes a lease: one reservation row of its
own (`BudgetReservation`, under a request id of its own) holding `GATEWAY_BUDGET_LEASE_SECONDS` of
what its requests reserved there in the last second, at most 1 % of the budget
(`gateway_site.rates.LEASE_MAX_SHARE`), and only while the budget keeps `LEASE_HEADROOM` times the lease free. Its next requests draw
their estimates from the lease in process, without a round trip; a request that does not fit in
what is left reserves as before.

What a lease changes in the accounting, and what it does not:

- A drawn request has no reservation row of its own: its record adds its cost to the period's
  spend and releases nothing. Its estimate stays held by the lease's row until the lease is
  released, so spend + reservations never counts less than before; until then the costs of drawn
  requests that have finished are counted twice (spent, and still held), which only refuses
  earlier, by at most the lease.
- A lease takes no draws after `LEASE_MAX_SECONDS` (or once a draw does not fit); once the records
  of all its drawn requests are written (or handed to their retries), its row is deleted and its
  amount taken off the period's reservations, in one statement in the background. A worker that
  drains releases its leases; one that dies leaves its lease's row to the stale-reservation sweep
  (`reservations_release_stale`), as it leaves the rows of its requests in flight.
- Near the budget's end there are no leases (the headroom rule), so each request's reservation is
  decided by PostgreSQL, as before; the documented overshoot of a hard budget is unchanged.
"""

from __future__ import annotations

import asyncio
import logging
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from decimal import Decimal

from django.conf import settings
from django.db import InterfaceError, OperationalError

from accounting.budgets import BudgetLimit, _holds_statement, _now, _period_id_known, _statement
from gateway_site import db_async
from gateway_site.graceful import at_drain
from gateway_site.loops import PerLoop, background
from gateway_site.rates import LEASE_MAX_SECONDS, RecentAmounts

logger = logging.getLogger(__name__)

# A lease is taken only while the budget keeps this many times it free (spend and every
# reservation counted); its size and life are the rate limits' (`gateway_site.rates`).
LEASE_HEADROOM = 10
_UNIT = Decimal("0.00000001")  # BudgetReservation.amount_usd's places

_RELEASE = _statement(
    "WITH released AS (DELETE FROM {reservations} WHERE request_id = %s::uuid"
    " RETURNING budget_period_id, amount_usd)"
    " UPDATE {periods} SET reserved_usd = reserved_usd - released.amount_usd"
    " FROM released WHERE {periods}.id = released.budget_period_id"
)


@dataclass(eq=False)
class _Lease:
    lease_id: str  # its reservation row's request id
    period_id: int
    amount: Decimal  # held by its row
    left: Decimal  # not drawn yet
    expires: float  # clock(): no draws from then on
    drawn: int = 0  # drawn requests whose records are not written yet
    open: bool = True  # takes draws


class LeaseDraw:
    """One request's estimate drawn from a lease; `settled()` once its record is written."""

    __slots__ = ("_leases", "_lease", "_settled")

    def __init__(self, leases: BudgetLeases, lease: _Lease) -> None:
        self._leases, self._lease, self._settled = leases, lease, False

    @property
    def lease_id(self) -> str:
        return self._lease.lease_id

    def settled(self) -> None:
        if not self._settled:
            self._settled = True
            self._leases._draw_settled(self._lease)


class BudgetLeases:
    """One event loop's leases, one per period row (its statements run on the loop's connections)."""

    def __init__(
        self, *, clock: Callable[[], float] = time.monotonic, seconds: float | None = None,
        max_seconds: float = LEASE_MAX_SECONDS,
    ) -> None:
        self._clock = clock
        self._seconds, self._max_seconds = seconds, max_seconds
        self._retired = False  # drained: no more leases
        self._leases: dict[int, _Lease] = {}
        self._taking: set[int] = set()
        self._quiet_until: dict[int, float] = {}  # period row -> no lease taken before then
        self._traffic = RecentAmounts()

    @property
    def seconds(self) -> float:
        return settings.GATEWAY_BUDGET_LEASE_SECONDS if self._seconds is None else self._seconds

    def draw(self, budgets: tuple[BudgetLimit, ...], estimate: Decimal) -> LeaseDraw | None:
        """`estimate` drawn from the lease of the request's one hard budget, or None: then the
        request reserves as before (and, if this loop reserves there often, a lease is taken in
        the background for the next ones). Nothing here awaits."""
        if self._retired or self.seconds <= 0 or not db_async.in_loop():
            return None
        hard = [budget for budget in budgets if budget.hard]
        if len(hard) != 1:
            return None
        period_id = _period_id_known(hard[0], _now())
        if period_id is None:
            return None
        now = self._clock()
        self._traffic.note(period_id, float(estimate), now)
        lease = self._leases.get(period_id)
        if lease is not None:
            if now < lease.expires and lease.left >= estimate:
                lease.left -= estimate
                lease.drawn += 1
                return LeaseDraw(self, lease)
            self._retire(lease)
        self._take_maybe(hard[0], period_id, estimate)
        return None

    def retire_all(self) -> None:
        """No more leases; each is released once its drawn requests are recorded (a drain)."""
        self._retired = True
        for lease in list(self._leases.values()):
            self._retire(lease)

    def _take_maybe(self, budget: BudgetLimit, period_id: int, estimate: Decimal) -> None:
        if period_id in self._taking or self._clock() < self._quiet_until.get(period_id, -1.0):
            return
        wanted = self._traffic.ahead(
            period_id, seconds=self.seconds, capacity=float(budget.amount_usd), amount=float(estimate))
        if not wanted:
            return  # it would not serve two requests: not worth a row
        self._taking.add(period_id)
        amount = Decimal(repr(wanted)).quantize(_UNIT)
        background(self._take(budget, period_id, amount), what="budget lease")

    async def _take(self, budget: BudgetLimit, period_id: int, amount: Decimal) -> None:
        lease_id = str(uuid.uuid4())
        try:
            # The hold of `amount` where the budget minus the headroom is the limit: the lease fits
            # only if spend, every reservation and LEASE_HEADROOM times the lease fit the budget.
            kept_free = amount * (LEASE_HEADROOM - 1)
            held, _ = await db_async.statement(
                *_holds_statement(period_id, budget.amount_usd - kept_free, [(lease_id, amount)], now=_now())
            )
        except (OperationalError, InterfaceError) as exc:
            # The database is unreachable: the requests' own holds say so (a 503 each); no lease
            # is tried again on this row for a while, rather than once per request.
            self._quiet_until[period_id] = self._clock() + self._max_seconds
            logger.info("budget lease on period %s not taken: %s", period_id, exc)
            return
        finally:
            self._taking.discard(period_id)
        if held != 1:
            return
        lease = _Lease(lease_id, period_id, amount, amount, self._clock() + self._max_seconds)
        if (old := self._leases.get(period_id)) is not None:
            self._retire(old)
        self._leases[period_id] = lease
        if self._retired:  # drained while it was being taken
            self._retire(lease)
            return
        asyncio.get_running_loop().call_later(self._max_seconds, self._retire, lease)

    def _retire(self, lease: _Lease) -> None:
        if not lease.open:
            return
        lease.open = False
        if self._leases.get(lease.period_id) is lease:
            del self._leases[lease.period_id]
        if lease.drawn == 0:
            self._release(lease)

    def _draw_settled(self, lease: _Lease) -> None:
        lease.drawn -= 1
        if not lease.open and lease.drawn == 0:
            self._release(lease)

    def _release(self, lease: _Lease) -> None:
        background(db_async.statement(_RELEASE, [lease.lease_id]), what=f"budget lease {lease.lease_id} release")


_leases: PerLoop[BudgetLeases] = PerLoop(BudgetLeases)


def budget_lease_draw(budgets: tuple[BudgetLimit, ...], estimate: Decimal) -> LeaseDraw | None:
    """The running loop's `BudgetLeases.draw`."""
    return _leases.get().draw(budgets, estimate)


@at_drain
def budget_leases_retire() -> None:
    """The running loop's leases take no more draws and are released once their requests are
    recorded: a worker's drain, before it waits for its last tasks."""
    _leases.get().retire_all()
