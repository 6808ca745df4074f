"""The money statements, in PostgreSQL's dialect and in SQLite's.

Two operations, each with one meaning in both dialects (`accounting.budgets` and
`accounting.services` hold the logic above them, once):

- `reserve`: on the period rows of a request's hard budgets (found by budget and period start),
  under their row locks, hold the estimate on every one of them if it fits on every one, and write
  the request's reservation rows; or hold nothing. It reports, per budget, its period row (None:
  there is none, a first request of the period or a row deleted) and what was spent or reserved
  on it before (a refusal's figures).
- `write`: insert the UsageRecords (and the UsageContent of those that keep it), release their
  requests' reservations, add their costs to their budgets' period rows (the row is created if it
  is missing: spend is never lost with a deleted row) and insert the alerts whose lines that spend
  crossed. It returns the records' ids and the new alerts' ids.

PostgreSQL runs each as one statement (data-modifying CTEs) in autocommit on the loop's
connections (`kernel.db_async.statement`): one round trip, atomic. SQLite runs the same
steps as statements in one transaction on a database thread (`kernel.db_async.steps`).

Each statement's text is fixed whatever the number of records, so psycopg parses it once (its
query cache takes statements under 4096 characters and 50 parameters) and prepares it once per
connection. On PostgreSQL the records (and the kept contents) go as one JSON array each, which the
server turns into rows of the table's own type (`json_populate_recordset`), each value parsed by
its column's type: the values are prepared by each model field's public `get_prep_value` and
encoded by orjson. Binding every value of every row as a parameter instead made the text grow
with the group and cost psycopg a parse of it per write: about 190 us of CPU per record in a group
of 32, against 60 with the JSON array (a loaded 2-core machine). Lists go as
PostgreSQL array text (`_array`). On SQLite each row is a statement of its own, with values
prepared by the field's public `get_db_prep_save` (the ORM's own route for that database).
"""

from __future__ import annotations

import asyncio
import functools
import logging
import uuid
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from datetime import datetime
from decimal import Decimal
from typing import Generic, TypeVar

import orjson
from django.db import InterfaceError, OperationalError, connections, transaction

from accounting.models import Budget, BudgetAlert, BudgetPeriod, BudgetReservation, UsageContent, UsageRecord
from kernel import db_async
from kernel.loops import Batches, PerLoop

logger = logging.getLogger(__name__)

# (budget id, period start, budget amount)
Want = tuple[int, datetime, Decimal]
# (budget id, period row id or None, spent + reserved on it before, of which reserved)
Found = tuple[int, int | None, Decimal | None, Decimal | None]


@dataclass(frozen=True)
class Hold:
    """One request's reservation: its estimate on each of its hard budgets' current period rows
    (`want`, in budget order)."""

    request_id: str
    estimate: Decimal
    want: tuple[Want, ...]


@functools.cache
def _database():
    """A database wrapper for value preparation only (it never connects): Django's `connection`
    is one per context in the event loop, made on first use."""
    return connections.create_connection("default")


def prep(field, value):
    return field.get_db_prep_save(value, _database())


@functools.cache
def insert_fields() -> tuple:
    return tuple(
        field for field in UsageRecord._meta.concrete_fields
        if not field.primary_key and not getattr(field, "generated", False)
    )


def _q(name: str) -> str:
    return _database().ops.quote_name(name)


def _tables() -> dict[str, str]:
    return {
        "periods": _q(BudgetPeriod._meta.db_table), "reservations": _q(BudgetReservation._meta.db_table),
        "alerts": _q(BudgetAlert._meta.db_table), "records": _q(UsageRecord._meta.db_table),
        "contents": _q(UsageContent._meta.db_table), "budgets": _q(Budget._meta.db_table),
    }


def _array(values) -> str:
    """PostgreSQL's array text (`{"1","2.5"}`) of numbers, uuids, timestamps: no quote inside."""
    return "{" + ",".join(f'"{value}"' for value in values) + "}"


def _decimal(value) -> Decimal | None:
    """A DecimalField read by a raw cursor: a Decimal from PostgreSQL, a number from SQLite."""
    if value is None or isinstance(value, Decimal):
        return value
    return Decimal(str(value)).quantize(Decimal("0.00000001"))  # the fields' places


# --- PostgreSQL -------------------------------------------------------------------------------------
# The holds of one or more requests: each (request, budget) is a `want` row. The estimates are held
# only if every wanted period row exists and the sum of the estimates on each fits it (`verdict`),
# on the rows as locked (`FOR UPDATE` waits for a concurrent change and reads the row after it).
_PG_RESERVE = """
WITH want AS (
    SELECT * FROM UNNEST(%(requests)s::uuid[], %(estimates)s::numeric[], %(budgets)s::bigint[],
        %(starts)s::timestamptz[], %(amounts)s::numeric[])
        AS w(request_id, estimate, budget_id, period_start, amount_usd)
), wanted AS (
    SELECT budget_id, period_start, MAX(amount_usd) AS amount_usd, SUM(estimate) AS estimate
    FROM want GROUP BY budget_id, period_start
), locked AS (
    SELECT p.id, p.budget_id, p.period_start, p.spent_usd + p.reserved_usd AS taken, p.reserved_usd AS reserved
    FROM {periods} p JOIN wanted w ON p.budget_id = w.budget_id AND p.period_start = w.period_start
    ORDER BY p.budget_id, p.period_start FOR UPDATE OF p
), verdict AS (
    SELECT (SELECT COUNT(*) FROM locked) = (SELECT COUNT(*) FROM wanted) AND NOT EXISTS (
        SELECT 1 FROM locked l JOIN wanted w USING (budget_id, period_start) WHERE l.taken + w.estimate > w.amount_usd
    ) AS held
), hold AS (
    UPDATE {periods} p SET reserved_usd = p.reserved_usd + w.estimate
    FROM locked l JOIN wanted w USING (budget_id, period_start) CROSS JOIN verdict
    WHERE verdict.held AND p.id = l.id RETURNING p.id, p.budget_id, p.period_start
), kept AS (
    INSERT INTO {reservations} (budget_period_id, request_id, amount_usd, created_at)
    SELECT hold.id, w.request_id, w.estimate, %(now)s::timestamptz FROM hold JOIN want w USING (budget_id, period_start)
)
SELECT verdict.held, w.request_id, w.budget_id, l.id, l.taken, l.reserved
FROM want w CROSS JOIN verdict LEFT JOIN locked l USING (budget_id, period_start)
"""

# A period row starts with what its budget's tenant (or key) has spent since the period began, so a
# budget's spend is its period's whenever the budget was created (or re-enabled, or its row
# deleted). Records being written in the same statement are not in its snapshot: they add once.
# On PostgreSQL a settlement that finds the row made meanwhile by another (its INSERT conflicts)
# adds its cost alone, never its seed: the seed counts once, in the row's first INSERT.
_PERIOD_SEED = """COALESCE((SELECT SUM(r.cost_usd) FROM {records} r JOIN {budgets} b ON b.id = {row}.budget_id
    WHERE r.tenant_id = b.tenant_id AND (b.api_key_id IS NULL OR r.api_key_id = b.api_key_id)
    AND r.created_at >= {row}.period_start), 0)"""

_PG_PERIODS_CREATE = """
INSERT INTO {periods} (budget_id, period_start, spent_usd, reserved_usd)
SELECT n.budget_id, n.period_start, %s, 0
FROM UNNEST(%%(budgets)s::bigint[], %%(starts)s::timestamptz[]) AS n(budget_id, period_start)
ON CONFLICT (budget_id, period_start) DO NOTHING
""" % _PERIOD_SEED.replace("{row}", "n")

# The settlement after the records' INSERT (`inserted`, `contents` before it). Each row's change is
# the released reservations on it and the spend added to it, summed; a missing row is created with
# its spend. Rows change in (budget, period start) order, as `_PG_RESERVE` locks them.
_PG_SETTLE = """
released AS (
    DELETE FROM {reservations} WHERE request_id = ANY(%(releases)s::uuid[])
    RETURNING budget_period_id, amount_usd
), changes AS (
    SELECT budget_id, period_start, SUM(cost) AS cost, SUM(amount) AS released FROM (
        SELECT p.budget_id, p.period_start, 0 AS cost, r.amount_usd AS amount
        FROM released r JOIN {periods} p ON p.id = r.budget_period_id
        UNION ALL
        SELECT budget_id, period_start, cost, 0
        FROM UNNEST(%(budgets)s::bigint[], %(starts)s::timestamptz[], %(costs)s::numeric[])
            AS s(budget_id, period_start, cost)
    ) AS c GROUP BY budget_id, period_start
), period AS (
    INSERT INTO {periods} AS p (budget_id, period_start, spent_usd, reserved_usd)
    SELECT budget_id, period_start, cost + CASE WHEN EXISTS (SELECT 1 FROM {periods} x
        WHERE x.budget_id = c.budget_id AND x.period_start = c.period_start) THEN 0 ELSE SEED END,
        -released FROM changes c ORDER BY budget_id, period_start
    ON CONFLICT (budget_id, period_start) DO UPDATE SET
        spent_usd = p.spent_usd + (SELECT u.cost FROM changes u
            WHERE u.budget_id = EXCLUDED.budget_id AND u.period_start = EXCLUDED.period_start),
        reserved_usd = p.reserved_usd + EXCLUDED.reserved_usd
    RETURNING p.budget_id, p.period_start, p.spent_usd
), raised AS (
    INSERT INTO {alerts} (budget_id, period_start, threshold, spent_usd, created_at, webhook_status, email_status)
    SELECT period.budget_id, period.period_start, line.threshold, period.spent_usd, %(now)s::timestamptz, '', ''
    FROM period JOIN changes USING (budget_id, period_start)
    JOIN UNNEST(%(line_budgets)s::bigint[], %(thresholds)s::integer[], %(lines)s::numeric[])
        AS line(budget_id, threshold, amount) USING (budget_id)
    WHERE period.spent_usd - changes.cost < line.amount AND line.amount <= period.spent_usd
    ON CONFLICT (budget_id, period_start, threshold) DO NOTHING RETURNING id
)
SELECT inserted.id, inserted.request_id, ARRAY(SELECT id FROM raised) FROM inserted
"""


@functools.cache
def _pg_write_sql() -> str:
    """The records' INSERT, their contents' and the settlement, as one statement."""
    columns = ", ".join(_q(field.column) for field in insert_fields())
    tables = _tables()
    sql = (
        f"WITH inserted AS (INSERT INTO {tables['records']} ({columns}) SELECT {columns}"
        f" FROM json_populate_recordset(NULL::{tables['records']}, %(records)s) RETURNING id, request_id),"
        f" contents AS (INSERT INTO {tables['contents']} (usage_record_id, tenant_id, created_at, messages, completion)"
        " SELECT inserted.id, c.tenant_id, c.created_at, c.messages, c.completion FROM json_to_recordset(%(contents)s)"
        " AS c(request_id uuid, tenant_id bigint, created_at timestamptz, messages jsonb, completion text)"
        " JOIN inserted USING (request_id)), "
    )
    settle = _PG_SETTLE.replace("SEED", _PERIOD_SEED.replace("{row}", "c"))
    return " ".join((sql + settle.format(**tables)).split())


def _json(rows: list) -> str:
    return orjson.dumps(rows, default=_json_default, option=orjson.OPT_NON_STR_KEYS).decode()


def _json_default(value: object) -> str:
    """What orjson does not encode itself: a Decimal, as its exact text."""
    if isinstance(value, Decimal):
        return str(value)
    raise TypeError(f"a usage record value of type {type(value).__name__} has no JSON form")


@functools.cache
def _pg(sql: str) -> str:
    """A statement's text with the tables' names, on one line."""
    return " ".join(sql.format(**_tables()).split())


class Postgres:
    async def reserve(self, holds: Sequence[Hold], now: datetime) -> list[tuple[bool, list[Found]]]:
        rows = [(hold.request_id, hold.estimate, *want) for hold in holds for want in hold.want]
        found = await db_async.statement(_pg(_PG_RESERVE), {
            "requests": _array(row[0] for row in rows), "estimates": _array(row[1] for row in rows),
            "budgets": _array(row[2] for row in rows), "starts": _array(row[3] for row in rows),
            "amounts": _array(row[4] for row in rows), "now": now,
        })
        held = bool(found[0][0])
        by_request: dict[str, list[Found]] = {}
        for _, request_id, budget_id, period_id, taken, reserved in found:
            by_request.setdefault(str(request_id), []).append((budget_id, period_id, taken, reserved))
        return [(held, sorted(by_request[str(uuid.UUID(hold.request_id))])) for hold in holds]

    async def periods_create(self, keys: Sequence[tuple[int, datetime]]) -> None:
        await db_async.statement(_pg(_PG_PERIODS_CREATE), {
            "budgets": _array(b for b, _ in keys), "starts": _array(s for _, s in keys),
        })

    async def write(self, records, contents, releases, spend, lines, now) -> tuple[dict, list[int]]:
        """`records`: each record's fields by attname, every insert field given; `contents`:
        (request id, tenant id, created at, messages, completion) of those that keep it;
        `releases`: the request ids whose reservations go; `spend`: (budget id, period start,
        cost), one per row; `lines`: (budget id, threshold, amount) the spend may cross. Returns
        the new records' ids by request id (a UUID), and the new alerts' ids."""
        rows = [{field.column: field.get_prep_value(record[field.attname]) for field in insert_fields()}
                for record in records]
        kept = [dict(zip(("request_id", "tenant_id", "created_at", "messages", "completion"), content))
                for content in contents]
        found = await db_async.statement(_pg_write_sql(), {
            "records": _json(rows), "contents": _json(kept), "releases": _array(releases),
            "budgets": _array(b for b, _, _ in spend), "starts": _array(s for _, s, _ in spend),
            "costs": _array(c for _, _, c in spend), "line_budgets": _array(b for b, _, _ in lines),
            "thresholds": _array(t for _, t, _ in lines), "lines": _array(a for _, _, a in lines), "now": now,
        })
        return {request_id: pk for pk, request_id, _ in found}, list(found[0][2]) if found else []


# --- SQLite -------------------------------------------------------------------------------------
class Sqlite:
    async def reserve(self, holds: Sequence[Hold], now: datetime) -> list[tuple[bool, list[Found]]]:
        return await db_async.steps(_sqlite_reserve, holds, now)

    async def periods_create(self, keys) -> None:
        await db_async.steps(_sqlite_periods_create, keys)

    async def write(self, records, contents, releases, spend, lines, now) -> tuple[dict, list[int]]:
        values = [[prep(field, record[field.attname]) for field in insert_fields()] for record in records]
        contents = [
            (prep(_RECORD_REQUEST, request_id), tenant_id, _start(created_at), prep(_CONTENT_MESSAGES, messages), completion)
            for request_id, tenant_id, created_at, messages, completion in contents
        ]
        releases = [prep(_RESERVATION_REQUEST, request_id) for request_id in releases]
        return await db_async.steps(_sqlite_write, values, contents, releases, spend, lines, now)


_RECORD_REQUEST = UsageRecord._meta.get_field("request_id")
_RESERVATION_REQUEST = BudgetReservation._meta.get_field("request_id")
_CONTENT_MESSAGES = UsageContent._meta.get_field("messages")


def _start(value: datetime):
    return prep(BudgetPeriod._meta.get_field("period_start"), value)


def _sqlite_reserve(cursor, holds, now):
    """Each request's holds in turn, in one transaction (which holds SQLite's write lock: IMMEDIATE);
    all of them held, or none (the transaction rolled back), as on PostgreSQL."""
    t = _tables()
    outcomes = []
    for hold in holds:
        found = []
        for budget_id, start, _ in hold.want:
            cursor.execute(
                f"SELECT id, spent_usd + reserved_usd, reserved_usd FROM {t['periods']}"
                " WHERE budget_id = %s AND period_start = %s",
                [budget_id, _start(start)],
            )
            row = cursor.fetchone()
            found.append((budget_id, *((row[0], _decimal(row[1]), _decimal(row[2])) if row else (None, None, None))))
        held = all(period_id is not None and taken + hold.estimate <= amount
                   for (_, period_id, taken, _), (_, _, amount) in zip(found, hold.want))
        if held:
            for _, period_id, _, _ in found:
                cursor.execute(f"UPDATE {t['periods']} SET reserved_usd = reserved_usd + %s WHERE id = %s",
                               [str(hold.estimate), period_id])
                cursor.execute(
                    f"INSERT INTO {t['reservations']} (budget_period_id, request_id, amount_usd, created_at)"
                    " VALUES (%s, %s, %s, %s)",
                    [period_id, prep(_RESERVATION_REQUEST, hold.request_id), str(hold.estimate), _start(now)],
                )
        outcomes.append((held, found))
    if all(held for held, _ in outcomes):
        return outcomes
    transaction.set_rollback(True)
    return [(False, found) for _, found in outcomes]


def _sqlite_periods_create(cursor, keys):
    t = _tables()
    for budget_id, start in keys:
        cursor.execute(
            f"INSERT INTO {t['periods']} (budget_id, period_start, spent_usd, reserved_usd)"
            f" SELECT n.budget_id, n.period_start, {_sqlite_seed('n')}, 0 FROM (SELECT %s AS budget_id,"
            " %s AS period_start) n WHERE true ON CONFLICT (budget_id, period_start) DO NOTHING",
            [budget_id, _start(start)],
        )


def _sqlite_seed(row: str, written: str = "") -> str:
    """`_PERIOD_SEED` for SQLite, where the records of this write (ids `written`) are already in
    the table: they are left out of the sum (their cost is added on its own)."""
    seed = _PERIOD_SEED.replace("{row}", row).format(**_tables())
    return seed.replace("AND r.created_at", f"AND r.id NOT IN ({written}) AND r.created_at") if written else seed


def _sqlite_write(cursor, records, contents, releases, spend, lines, now):
    t = _tables()
    columns = ", ".join(_q(field.column) for field in insert_fields())
    request_column = [field.attname for field in insert_fields()].index("request_id")
    ids = {}  # prepared request id -> record id
    for values in records:
        cursor.execute(
            f"INSERT INTO {t['records']} ({columns}) VALUES ({', '.join(['%s'] * len(values))}) RETURNING id", values,
        )
        ids[values[request_column]] = cursor.fetchone()[0]
    for request_id, tenant_id, created_at, messages, completion in contents:
        cursor.execute(
            f"INSERT INTO {t['contents']} (usage_record_id, tenant_id, created_at, messages, completion)"
            " VALUES (%s, %s, %s, %s, %s)", [ids[request_id], tenant_id, created_at, messages, completion],
        )
    if releases:
        marks = ", ".join(["%s"] * len(releases))
        cursor.execute(
            f"UPDATE {t['periods']} SET reserved_usd = reserved_usd - (SELECT SUM(amount_usd)"
            f" FROM {t['reservations']} r WHERE r.budget_period_id = {t['periods']}.id AND r.request_id IN ({marks}))"
            f" WHERE id IN (SELECT budget_period_id FROM {t['reservations']} WHERE request_id IN ({marks}))",
            [*releases, *releases],
        )
        cursor.execute(f"DELETE FROM {t['reservations']} WHERE request_id IN ({marks})", releases)
    alert_ids = []
    written = ", ".join(str(int(pk)) for pk in ids.values())  # not in the seed's sum: added as cost
    for budget_id, start, cost in spend:
        cursor.execute(
            f"INSERT INTO {t['periods']} AS p (budget_id, period_start, spent_usd, reserved_usd)"
            f" SELECT n.budget_id, n.period_start, n.cost + CASE WHEN EXISTS (SELECT 1 FROM {t['periods']} x"
            " WHERE x.budget_id = n.budget_id AND x.period_start = n.period_start) THEN 0 ELSE"
            f" {_sqlite_seed('n', written)} END, 0 FROM (SELECT %s AS budget_id, %s AS period_start, %s AS cost) n"
            " WHERE true ON CONFLICT (budget_id, period_start) DO UPDATE SET spent_usd = p.spent_usd + excluded.spent_usd",
            [budget_id, _start(start), str(cost)],
        )
        for line_budget, threshold, amount in lines:
            if line_budget != budget_id:
                continue
            cursor.execute(
                f"INSERT INTO {t['alerts']} (budget_id, period_start, threshold, spent_usd, created_at,"
                " webhook_status, email_status) SELECT budget_id, period_start, %s, spent_usd, %s, '', ''"
                f" FROM {t['periods']} WHERE budget_id = %s AND period_start = %s"
                " AND spent_usd - %s < %s AND %s <= spent_usd"
                " ON CONFLICT (budget_id, period_start, threshold) DO NOTHING RETURNING id",
                [threshold, _start(now), budget_id, _start(start), str(cost), str(amount), str(amount)],
            )
            alert_ids += [row[0] for row in cursor.fetchall()]
    return {uuid.UUID(str(request_id)): pk for request_id, pk in ids.items()}, alert_ids


@functools.cache
def dialect() -> Postgres | Sqlite:
    return Postgres() if db_async.postgresql() else Sqlite()


I = TypeVar("I")
O = TypeVar("O")


class Batched(Generic[I, O]):
    """The money statements' one batching: the calls of an event loop that arrive while one batch
    is on the wire wait, and go out together in the next (`kernel.loops.Batches`): one
    statement for all of them. A lone call waits for nobody; under load one round trip serves
    many requests. `run(items)` returns one outcome per item. A batch that fails for a reason other
    than an unreachable database (one record written already by an earlier try, say) is run again
    item by item, so one bad item never costs the others theirs; a caller that goes away cannot
    cancel its item (its money must still move)."""

    def __init__(self, run: Callable[[list[I]], Awaitable[list[O]]], *, limit: int = 128) -> None:
        self._run = run
        self._batches: PerLoop[Batches[I]] = PerLoop(lambda: Batches(self._send, limit=limit))

    async def __call__(self, item: I) -> O:
        return await asyncio.shield(self._batches.get().submit(item))

    async def _send(self, _key, items: list[I]) -> list[O | Exception]:
        try:
            return await self._run(items)
        except (OperationalError, InterfaceError) as exc:
            return [exc] * len(items)  # each caller's own retry decides
        except Exception as exc:  # noqa: BLE001 - told apart below, item by item
            if len(items) == 1:
                return [exc]
            logger.warning("a batch of %d money statements' items failed; running them one by one", len(items))
            return [outcome for item in items for outcome in await self._send(None, [item])]
