"""Budgets: reserve before the call, settle after it, alert at thresholds.

A hard budget is enforced by reservation. Before a request goes upstream, the most it could cost
(prompt tokens plus its output cap, at the dearest deployment it may use) is reserved on the
budget's current period, under a row lock (`select_for_update`), and refused if spend plus
reservations plus this estimate would pass the amount. After the call the reservation is
released and the real cost added, in the same transaction that writes the UsageRecord. So
concurrent requests can overshoot a hard budget by no more than what was reserved and then cost
more than estimated (which a correct estimate makes nothing), and spend is always the sum of the
period's UsageRecords.

Soft budgets are not enforced; every budget raises its alerts once per period per threshold.
"""

from __future__ import annotations

import contextlib
import functools
import uuid
from dataclasses import dataclass
from datetime import datetime, timedelta
from datetime import timezone as dt_timezone
from decimal import Decimal

from django.db import DataError, connection, transaction
from django.db.models import F, Q, Sum, Value

from accounting.models import (
    Budget,
    BudgetAlert,
    BudgetPeriod,
    BudgetReservation,
    Period,
    UsageRecord,
)
from gateway_site import db_async
from gateway_site.config_cache import ConfigCache
from gateway_site.db_executor import db_call
from gateway_site.errors import GatewayError
from gateway_site.loops import Batches, PerLoop
from gateway_site.prepared import prepared_cursor

EPOCH = datetime(2000, 1, 1, tzinfo=dt_timezone.utc)


class BudgetExceeded(GatewayError):
    status = 429
    type = "insufficient_quota"
    code = "budget_exceeded"
    error_class = "budget_exceeded"

    def __init__(self, *, budget: BudgetLimit, spent: Decimal, resets_at: datetime | None) -> None:
        scope = "API key" if budget.api_key_id else "tenant"
        when = f"; it resets at {resets_at.isoformat()}" if resets_at else ""
        super().__init__(
            f"The {scope}'s {budget.period} budget is exhausted: ${spent:.6f} spent or reserved "
            f"of ${budget.amount_usd:.2f}{when}."
        )
        self.details = {
            "scope": "api_key" if budget.api_key_id else "tenant",
            "period": budget.period,
            "spent_usd": str(spent.quantize(Decimal("0.000001"))),
            "limit_usd": f"{budget.amount_usd:.2f}",
            "resets_at": resets_at.isoformat() if resets_at else None,
        }
        if resets_at:
            self.headers["retry-after"] = str(max(1, int((resets_at - _now()).total_seconds())))

    def as_body(self) -> dict:
        body = super().as_body()
        body["error"]["budget"] = self.details
        return body


@dataclass(frozen=True)
class BudgetLimit:
    """A budget's definition, as cached for the hot path."""

    budget_id: int
    api_key_id: int | None
    amount_usd: Decimal
    period: str
    hard: bool
    thresholds: tuple[int, ...]


@dataclass(frozen=True)
class Reservation:
    request_id: str
    amount: Decimal
    period_ids: tuple[int, ...]


def _now() -> datetime:
    return datetime.now(dt_timezone.utc)


def period_start(period: str, now: datetime) -> datetime:
    now = now.astimezone(dt_timezone.utc)
    day = now.replace(hour=0, minute=0, second=0, microsecond=0)
    if period == Period.DAILY:
        return day
    if period == Period.WEEKLY:
        return day - timedelta(days=day.weekday())
    if period == Period.MONTHLY:
        return day.replace(day=1)
    return EPOCH


def period_end(period: str, start: datetime) -> datetime | None:
    if period == Period.DAILY:
        return start + timedelta(days=1)
    if period == Period.WEEKLY:
        return start + timedelta(days=7)
    if period == Period.MONTHLY:
        return (start + timedelta(days=32)).replace(day=1)
    return None


# --- definitions, cached ------------------------------------------------------------------------
_cache: ConfigCache[tuple[BudgetLimit, ...]] = ConfigCache("budgets")


def budget_cache_clear() -> None:
    _cache.clear()


async def budgets_for(*, tenant_id: int, key_id: int) -> tuple[BudgetLimit, ...]:
    return await _cache.get((tenant_id, key_id), functools.partial(_budgets_load, tenant_id, key_id))


def _budgets_load(tenant_id: int, key_id: int) -> tuple[BudgetLimit, ...]:
    rows = Budget.objects.filter(enabled=True, tenant_id=tenant_id).filter(
        Q(api_key__isnull=True) | Q(api_key_id=key_id)
    ).order_by("pk")
    return tuple(
        BudgetLimit(
            budget_id=row.pk,
            api_key_id=row.api_key_id,
            amount_usd=row.amount_usd,
            period=row.period,
            hard=row.hard,
            thresholds=tuple(sorted(int(t) for t in row.alert_thresholds or ())),
        )
        for row in rows
    )


# --- reserve and settle ---------------------------------------------------------------------------
# A period row is where concurrent requests of a tenant meet, so its row lock is held as briefly
# as possible: each change is one conditional UPDATE (the check and the change in one statement,
# in period-id order so that two requests never wait on each other crosswise), issued last in
# its transaction. The ids of current period rows are kept in process; a row is created once
# per period.
_period_ids: dict[tuple[int, datetime], int] = {}
_MAX_PERIOD_IDS = 10_000


def _period_id(budget: BudgetLimit, now: datetime, *, fresh: bool = False) -> int:
    key = _period_key(budget, now)
    if fresh or key not in _period_ids:
        if len(_period_ids) >= _MAX_PERIOD_IDS:
            _period_ids.clear()
        period, _ = BudgetPeriod.objects.get_or_create(budget_id=budget.budget_id, period_start=key[1])
        _period_ids[key] = period.pk
    return _period_ids[key]


def _period_id_known(budget: BudgetLimit, now: datetime) -> int | None:
    """The id of the budget's period row at `now` if this process knows it (no query: the loop)."""
    return _period_ids.get(_period_key(budget, now))


def _period_key(budget: BudgetLimit, now: datetime) -> tuple[int, datetime]:
    return budget.budget_id, period_start(budget.period, now)


def _hold(budget: BudgetLimit, period_id: int, estimate: Decimal) -> bool:
    """Add `estimate` to the period's reserved amount if spent + reserved + estimate fits."""
    return bool(
        BudgetPeriod.objects.filter(
            pk=period_id, spent_usd__lte=Value(budget.amount_usd - estimate) - F("reserved_usd")
        ).update(reserved_usd=F("reserved_usd") + estimate)
    )


def budget_reserve(
    *, budgets: tuple[BudgetLimit, ...], request_id: str, estimate: Decimal, now: datetime | None = None
) -> Reservation | None:
    """Hold `estimate` on every hard budget, or raise BudgetExceeded without holding anything."""
    hard = tuple(budget for budget in budgets if budget.hard)
    if not hard:
        return None
    now = now or _now()
    if len(hard) == 1 and connection.vendor == "postgresql":
        period_id = _period_id(hard[0], now)
        if _reserve_in_one_statement(hard[0], period_id, request_id=request_id, estimate=estimate, now=now):
            return Reservation(request_id=request_id, amount=estimate, period_ids=(period_id,))
    # Several hard budgets, another database, or a hold that did not fit (the error needs the
    # figures) or met no row (its period row was deleted): the general path.
    return _reserve(hard, request_id=request_id, estimate=estimate, now=now)


def _reserve_in_one_statement(
    budget: BudgetLimit, period_id: int, *, request_id: str, estimate: Decimal, now: datetime
) -> bool:
    """PostgreSQL, one hard budget (the common case): the conditional hold and its reservation row
    in one statement, so one round trip in autocommit instead of a four-statement transaction;
    the period row is locked for that statement only. False if nothing was held."""
    return _execute(*_holds_statement(period_id, budget.amount_usd, [(request_id, estimate)], now=now)) == 1


def _holds_statement(
    period_id: int, amount_usd: Decimal, holds: list[tuple[str, Decimal]], *, now: datetime
) -> tuple[str, list]:
    """One statement that holds the sum of `holds` (request id, estimate) on a period row, if the
    whole sum fits, and writes each one's reservation row; it changes `len(holds)` rows or none."""
    total = sum((estimate for _, estimate in holds), Decimal("0"))
    return _statement(
        "WITH hold AS (UPDATE {periods} SET reserved_usd = reserved_usd + %s"
        " WHERE id = %s AND spent_usd <= %s - reserved_usd RETURNING id)"
        " INSERT INTO {reservations} (budget_period_id, request_id, amount_usd, created_at)"
        " SELECT hold.id, held.request_id, held.amount_usd, %s"
        " FROM hold, UNNEST(%s::uuid[], %s::numeric[]) AS held(request_id, amount_usd)"
    ), [total, period_id, amount_usd - total, now,
        _array_text(str(uuid.UUID(request_id)) for request_id, _ in holds), _array_text(estimate for _, estimate in holds)]


async def budget_reserve_async(
    *, budgets: tuple[BudgetLimit, ...], request_id: str, estimate: Decimal
) -> Reservation | None:
    """`budget_reserve` from the event loop: the one-statement hold on the loop's own connections
    (`gateway_site.db_async`), grouped with the holds of other requests on the same period row
    (`_HoldGroups`), when it can be (one hard budget whose period row is known); else, or when the
    group did not fit, `budget_reserve` on a database thread (which also finds a refusal's figures)."""
    hard = [budget for budget in budgets if budget.hard]
    if not hard:
        return None
    if len(hard) == 1 and db_async.in_loop():
        period_id = _period_id_known(hard[0], _now())
        if period_id is not None and await _hold_groups.get().hold(hard[0], period_id, request_id, estimate):
            return Reservation(request_id=request_id, amount=estimate, period_ids=(period_id,))
    return await db_call(budget_reserve, budgets=budgets, request_id=request_id, estimate=estimate)


# At most this many holds in one statement.
HOLD_GROUP_MAX = 128


class _HoldGroups:
    """The budget holds of one event loop, grouped per period row (`gateway_site.loops.Batches`,
    as `routing.record.GroupCommit` groups records): a lone request's hold goes out at once; the
    holds that arrive while one on the same row is on the wire go out together next, as one
    statement (one UPDATE of the row, one INSERT of their reservations), all or nothing. Under
    load a row is updated once for several requests instead of once each. A group whose sum does
    not fit answers False to each of its requests, which then go one by one through the general
    path (the ones that fit are held)."""

    def __init__(self) -> None:
        self._batches: Batches[tuple[BudgetLimit, str, Decimal]] = Batches(self._send, limit=HOLD_GROUP_MAX)

    async def hold(self, budget: BudgetLimit, period_id: int, request_id: str, estimate: Decimal) -> bool:
        return await self._batches.submit((budget, request_id, estimate), key=period_id)

    @staticmethod
    async def _send(period_id: int, group: list[tuple[BudgetLimit, str, Decimal]]) -> list[bool]:
        holds = [(request_id, estimate) for _, request_id, estimate in group]
        held, _ = await db_async.statement(*_holds_statement(period_id, group[0][0].amount_usd, holds, now=_now()))
        return [held == len(group)] * len(group)


_hold_groups: PerLoop[_HoldGroups] = PerLoop(_HoldGroups)


def _statement(sql: str) -> str:
    """`sql` with the budget tables' names in place of `{periods}`, `{reservations}`, `{alerts}`."""
    return sql.format(
        periods=BudgetPeriod._meta.db_table, reservations=BudgetReservation._meta.db_table,
        alerts=BudgetAlert._meta.db_table,
    )


def _execute(sql: str, params: list) -> int:
    """Run one raw statement, prepared on the server (`gateway_site.prepared`); returns the
    number of rows it changed."""
    with prepared_cursor() as cursor:
        cursor.execute(sql, params)
        return cursor.rowcount


def _spend_on_fresh_period(budget: BudgetLimit, cost: Decimal, now: datetime) -> int:
    """The cached period row was deleted: spend goes to the period's row, found or created again."""
    period_id = _period_id(budget, now, fresh=True)
    BudgetPeriod.objects.filter(pk=period_id).update(spent_usd=F("spent_usd") + cost)
    return period_id


@transaction.atomic
def _reserve(hard: tuple[BudgetLimit, ...], *, request_id: str, estimate: Decimal, now: datetime) -> Reservation:
    ids = {budget.budget_id: _period_id(budget, now) for budget in hard}
    BudgetReservation.objects.bulk_create(  # before any row lock is taken
        BudgetReservation(budget_period_id=period_id, request_id=request_id, amount_usd=estimate)
        for period_id in ids.values()
    )
    for budget in sorted(hard, key=lambda b: ids[b.budget_id]):
        if _hold(budget, ids[budget.budget_id], estimate):
            continue
        period = BudgetPeriod.objects.filter(pk=ids[budget.budget_id]).first()
        if period is None:  # the cached row was deleted: find or create the period's row again
            ids[budget.budget_id] = _period_id(budget, now, fresh=True)
            BudgetReservation.objects.filter(request_id=request_id).update(budget_period_id=ids[budget.budget_id])
            if _hold(budget, ids[budget.budget_id], estimate):
                continue
            period = BudgetPeriod.objects.get(pk=ids[budget.budget_id])
        raise BudgetExceeded(  # the transaction's rollback takes back the other holds
            budget=budget, spent=period.spent_usd + period.reserved_usd,
            resets_at=period_end(budget.period, period.period_start),
        )
    return Reservation(request_id=request_id, amount=estimate, period_ids=tuple(sorted(ids.values())))


@dataclass(frozen=True)
class Settlement:
    """One request's part of a settlement: its budgets, its reservation, its real cost, its time."""

    budgets: tuple[BudgetLimit, ...]
    reservation: Reservation | None
    cost: Decimal
    now: datetime


def budget_settle(
    *, budgets: tuple[BudgetLimit, ...], reservation: Reservation | None, cost: Decimal, now: datetime
) -> list[int]:
    """Release the reservation and add the real cost; returns ids of alerts newly raised."""
    return budgets_settle([Settlement(budgets=budgets, reservation=reservation, cost=cost, now=now)])


def budgets_settle(settlements: list[Settlement]) -> list[int]:
    """Release the reservations and add the real costs of one or more requests (a group commit of
    their records); returns ids of alerts newly raised.

    Runs inside the caller's transaction (the one writing the UsageRecords), as its last writes.
    The requests' changes are summed per period row and each row gets one UPDATE, in period-id
    order, so that two transactions never wait on each other crosswise; on PostgreSQL, when only
    one row is concerned (one budget, the common case), the release and the spend are one
    statement.
    """
    spend, owners, reservations, rows = _changes(settlements)
    after: dict[int, tuple[datetime, Decimal]] = {}  # period row -> (its start, its spend now)
    if len(rows) == 1 and connection.vendor == "postgresql":
        (period_id,) = rows
        row = _settle_in_one_statement(period_id, reservations, spend.get(period_id))
        if row is not None:
            after[period_id] = row
        missing = set() if row is not None else rows
    else:
        missing = _settle(reservations, spend)
    for period_id in missing & spend.keys():  # its row was deleted (with its reservations)
        budget, now = owners.pop(period_id)
        amount = spend.pop(period_id)
        period_id = _spend_on_fresh_period(budget, amount, now)
        spend[period_id], owners[period_id] = amount, (budget, now)
    alerting = sorted(period_id for period_id in spend if owners[period_id][0].thresholds)
    if not alerting:
        return []
    # Our UPDATEs hold these rows until commit, so the spend read back is exactly ours; the one
    # statement returned it already.
    if unread := [period_id for period_id in alerting if period_id not in after]:
        after.update(
            (pk, (start, spent))
            for pk, start, spent in BudgetPeriod.objects.filter(pk__in=unread).values_list("pk", "period_start", "spent_usd")
        )
    return _alerts_raise([(owners[period_id][0], *after[period_id], spend[period_id]) for period_id in alerting])


def _changes(
    settlements: list[Settlement], *, known_only: bool = False
) -> tuple[dict[int, Decimal], dict[int, tuple[BudgetLimit, datetime]], list[Reservation], set[int]] | None:
    """What a settlement changes, per period row: the spend added to each (a request's cost goes
    to each of its own budgets' rows), each spend row's budget and time (what its alerts and its
    repair need), the reservations to release, and every row concerned. With `known_only` (the
    event loop, which must not query), None when a period row's id is not known in process."""
    spend: dict[int, Decimal] = {}
    owners: dict[int, tuple[BudgetLimit, datetime]] = {}
    for item in settlements:
        if not item.cost:
            continue
        for budget in item.budgets:
            period_id = _period_id_known(budget, item.now) if known_only else _period_id(budget, item.now)
            if period_id is None:
                return None
            spend[period_id] = spend.get(period_id, Decimal("0")) + item.cost
            owners[period_id] = (budget, item.now)
    reservations = [item.reservation for item in settlements if item.reservation is not None]
    rows = set(spend).union(*(reservation.period_ids for reservation in reservations))
    return spend, owners, reservations, rows


@dataclass(frozen=True)
class RecordsStatement:
    """The records' INSERT with their settlement and alerts as one statement (`records_statement`)."""

    sql: str
    params: list
    settles: bool  # whether it touches a period row (and so returns raised alerts)

    def written(self, found: list[tuple]) -> tuple[list[int], list[int]]:
        """The new records' ids in order, and the ids of alerts newly raised, from its rows."""
        return [row[0] for row in found], (list(found[0][2]) if self.settles and found else [])


def records_statement(
    insert: tuple[str, list], settlements: list[Settlement], *, known_only: bool = False
) -> RecordsStatement | None:
    """PostgreSQL: the records' INSERT (`insert`: a statement ending in `RETURNING id`, and its
    values), their settlement and the alerts it raises as one statement, to run in autocommit,
    when every change falls on one period row (or none). One round trip instead of a
    transaction's four (BEGIN, INSERT, settle, COMMIT); a statement is atomic, so the records, the
    spend they justify and its alerts commit together, as on the general path. If the period row
    is gone, the statement fails as a whole with a division by zero (SQLSTATE 22012, on purpose)
    and nothing is written.

    None when the general path is needed (`budgets_settle` in a transaction): changes on several
    period rows, or with `known_only` (see `_changes`) a period row not known in process.

    Reservations are released by request id alone: every change is on one period row and a
    request's reservations are all among its rows, so each one found is on that row. Naming the
    row too (`AND budget_period_id = ...`) let PostgreSQL's generic plan AND in the period-id
    index, whose entries for the current period are every reservation made since the last vacuum
    (each request adds and deletes one): 0.19 ms of a 0.41 ms settlement on the bench database."""
    changes = _changes(settlements, known_only=known_only)
    if changes is None:
        return None
    spend, owners, reservations, rows = changes
    if len(rows) > 1:
        return None
    sql, params = insert
    if rows:
        (period_id,) = rows
        cost = spend.get(period_id, Decimal("0"))
        # The alert lines this spend may cross, as `_alerts_raise` draws them.
        owner = owners[period_id][0] if period_id in owners else None
        thresholds = list(owner.thresholds) if owner is not None else []
        lines = [owner.amount_usd * threshold / 100 for threshold in thresholds]
        sql = f"WITH inserted AS ({sql}), " + _statement(
            _RELEASE_AND_SPEND + ","
            " raised AS (INSERT INTO {alerts}"
            " (budget_id, period_start, threshold, spent_usd, created_at, webhook_status, email_status)"
            " SELECT period.budget_id, period.period_start, line.threshold, period.spent_usd, NOW(), '', ''"
            " FROM period, UNNEST(%s::integer[], %s::numeric[]) AS line(threshold, amount)"
            " WHERE period.spent_usd - %s < line.amount AND line.amount <= period.spent_usd"
            " ON CONFLICT (budget_id, period_start, threshold) DO NOTHING RETURNING id)"
            # No period row: fail the whole statement, so that nothing is written without its spend.
            " SELECT inserted.id, 1 / (SELECT COUNT(*) FROM period), ARRAY(SELECT id FROM raised) FROM inserted"
        )
        # The arrays as PostgreSQL's array text: psycopg's array dumpers are Python loops.
        params = [*params, *_release_and_spend_params(reservations, cost, period_id),
                  _array_text(thresholds), _array_text(lines), cost]
    return RecordsStatement(sql=sql, params=params, settles=bool(rows))


def _array_text(values) -> str:
    """An array's text form (`{1,2.5}`) for values whose text needs no quoting: numbers, uuids."""
    return "{" + ",".join(map(str, values)) + "}"


# The release of some requests' reservations and the addition of their cost to one period row, as
# CTEs named `released` and `period` (the row's budget, start and spend after it): the one-statement
# settlement and the records' statement both use it, with `_release_and_spend_params`. Every
# reservation of these requests is on this row (see `records_statement`).
_RELEASE_AND_SPEND = (
    "released AS (DELETE FROM {reservations}"
    " WHERE request_id = ANY(%s::uuid[]) RETURNING amount_usd),"
    " period AS (UPDATE {periods} SET reserved_usd = reserved_usd"
    " - COALESCE((SELECT SUM(amount_usd) FROM released), 0), spent_usd = spent_usd + %s"
    " WHERE id = %s RETURNING budget_id, period_start, spent_usd)"
)


def _release_and_spend_params(reservations: list[Reservation], cost: Decimal, period_id: int) -> list:
    return [_array_text(str(uuid.UUID(reservation.request_id)) for reservation in reservations), cost, period_id]


def period_row_gone(exc: DataError) -> bool:
    """Whether a `RecordsStatement` failed because its period row was deleted meanwhile."""
    return getattr(exc.__cause__, "sqlstate", None) == "22012"  # division_by_zero


def records_insert_settle(
    insert: tuple[str, list], settlements: list[Settlement]
) -> tuple[list[int], list[int]] | None:
    """Run `records_statement` on this thread's connection: the new records' ids in order and the
    ids of alerts newly raised, or None when the general path is needed (nothing was written)."""
    statement = records_statement(insert, settlements)
    if statement is None:
        return None
    try:
        # Inside a transaction (a caller's, or a test's), a savepoint keeps it usable if the
        # statement fails; in autocommit the statement is its own transaction.
        with transaction.atomic() if connection.in_atomic_block else contextlib.nullcontext():
            with prepared_cursor() as cursor:
                cursor.execute(statement.sql, statement.params)
                found = cursor.fetchall()
    except DataError as exc:
        if period_row_gone(exc):
            return None
        raise
    return statement.written(found)


def _settle_in_one_statement(
    period_id: int, reservations: list[Reservation], cost: Decimal | None
) -> tuple[datetime, Decimal] | None:
    """PostgreSQL, every change on one period row: the reservations' release and the spend in one
    statement instead of a DELETE and an UPDATE. Returns the row's period start and spend after
    it (what alerts need, without reading the row again), None if the row is gone."""
    with prepared_cursor() as cursor:
        cursor.execute(
            _statement("WITH " + _RELEASE_AND_SPEND + " SELECT period_start, spent_usd FROM period"),
            _release_and_spend_params(reservations, cost or Decimal("0"), period_id),
        )
        row = cursor.fetchone()
    return None if row is None else (row[0], row[1])


def _settle(reservations: list[Reservation], spend: dict[int, Decimal]) -> set[int]:
    """Release and spend, one UPDATE per period row; returns the rows found missing."""
    release: dict[int, Decimal] = {}
    if reservations:
        # Locked, then deleted: a reservation the stale sweep released meanwhile is not released twice.
        held = list(
            BudgetReservation.objects.select_for_update()
            .filter(request_id__in=[reservation.request_id for reservation in reservations])
            .values_list("pk", "budget_period_id", "amount_usd")
        )
        BudgetReservation.objects.filter(pk__in=[pk for pk, _, _ in held]).delete()
        for _, period_id, amount in held:
            release[period_id] = release.get(period_id, Decimal("0")) + amount
    missing = set()
    for period_id in sorted(set(release) | set(spend)):
        changes = {}
        if period_id in release:
            changes["reserved_usd"] = F("reserved_usd") - release[period_id]
        if period_id in spend:
            changes["spent_usd"] = F("spent_usd") + spend[period_id]
        if not BudgetPeriod.objects.filter(pk=period_id).update(**changes):
            missing.add(period_id)
    return missing


def _alerts_raise(spent: list[tuple[BudgetLimit, datetime, Decimal, Decimal]]) -> list[int]:
    """For each budget: its period's start, the period's spend after this settlement (row-locked
    by it), and what this settlement spent on it."""
    raised = []
    for budget, period_start, after, cost in spent:
        before = after - cost
        for threshold in budget.thresholds:
            line = budget.amount_usd * threshold / 100
            if before < line <= after:
                alert, created = BudgetAlert.objects.get_or_create(
                    budget_id=budget.budget_id, period_start=period_start, threshold=threshold,
                    defaults={"spent_usd": after},
                )
                if created:
                    raised.append(alert.pk)
    return raised


@transaction.atomic
def budget_recompute(*, budget: Budget, now: datetime | None = None) -> BudgetPeriod:
    """Set the current period's spend to the sum of its UsageRecords (repair, audits)."""
    now = now or _now()
    start = period_start(budget.period, now)
    records = UsageRecord.objects.filter(tenant_id=budget.tenant_id, created_at__gte=start)
    if budget.api_key_id:
        records = records.filter(api_key_id=budget.api_key_id)
    spent = records.aggregate(total=Sum("cost_usd"))["total"] or Decimal("0")
    period, _ = BudgetPeriod.objects.select_for_update().get_or_create(budget=budget, period_start=start)
    period.spent_usd = spent
    period.save(update_fields=["spent_usd"])
    return period


@transaction.atomic
def reservations_release_stale(*, older_than: timedelta = timedelta(minutes=15)) -> int:
    """Release reservations of requests that never settled (a process died mid-request)."""
    stale = BudgetReservation.objects.select_for_update().filter(created_at__lt=_now() - older_than)
    count = 0
    for reservation in stale:
        BudgetPeriod.objects.filter(pk=reservation.budget_period_id).update(
            reserved_usd=F("reserved_usd") - reservation.amount_usd
        )
        reservation.delete()
        count += 1
    return count
