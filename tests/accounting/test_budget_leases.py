"""Budget leases (accounting/budget_leases.py): a busy loop's requests draw their estimates from a
reservation of its own, on the real PostgreSQL, and the accounting comes out as without them."""

from __future__ import annotations

import logging
import uuid
from concurrent.futures import ThreadPoolExecutor
from decimal import Decimal

import pytest
from django.db import OperationalError, connection, connections

from accounting.budget_leases import BudgetLeases
from accounting.models import BudgetPeriod, BudgetReservation
from accounting.services import RecordWrite, usage_records_commit_async
from gateway_site import db_async, db_executor
from gateway_site.loops import background_wait
from tests.accounting.test_ratelimits import Clock
from tests.gateway_site.test_db_async import budgeted, fields_now, reserve

pytestmark = pytest.mark.django_db(transaction=True)

CENT = Decimal("0.01")


@pytest.fixture(autouse=True)
async def in_the_loop(settings, monkeypatch):
    if connection.vendor != "postgresql":
        pytest.skip("leases are held on the loop's PostgreSQL connections")
    settings.GATEWAY_DB_THREADS = 1
    settings.GATEWAY_DB_ASYNC_CONNECTIONS = 2
    executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="gateway-db")
    monkeypatch.setattr(db_executor, "_executor", executor)
    yield
    await background_wait()
    await db_async.close()
    executor.submit(connections.close_all).result()
    executor.shutdown()


@pytest.fixture
def statements(monkeypatch) -> list[str]:
    """Every statement the loop sends from now on."""
    sent: list[str] = []
    run = db_async.statement

    async def counted(sql, params):
        sent.append(sql)
        return await run(sql, params)

    monkeypatch.setattr(db_async, "statement", counted)
    return sent


async def leased(amount: str = "1000.00", *, draws: int = 100, estimate: Decimal = CENT, held: str = "0.00"):
    """A budget whose period row is known (its first request reserved `held`), and leases on a
    clock of the test's after a second in which `draws` requests of `estimate` each reserved on it
    (the last one starts the lease's take). A lease lasts 60 s of that clock: the tests end it."""
    tenant, budgets = await budgeted(amount)
    await reserve(budgets, held)  # the period's row is found on a thread
    clock = Clock()
    leases = BudgetLeases(clock=clock, seconds=0.1, max_seconds=60)
    for _ in range(draws):
        assert leases.draw(budgets, estimate) is None  # no lease yet: each reserves on its own
    clock.advance(1.0)
    assert leases.draw(budgets, estimate) is None
    await background_wait()  # the lease's hold
    return tenant, budgets, leases, clock


async def no_alerts(ids: list[int]) -> None:
    assert not ids


async def period() -> tuple[Decimal, Decimal]:
    row = await BudgetPeriod.objects.aget()
    return row.spent_usd, row.reserved_usd


async def test_a_busy_loop_draws_from_its_lease_without_a_round_trip(statements):
    _, budgets, leases, _ = await leased()  # $1.00 a second: 0.1 s of it is $0.10
    assert await period() == (0, Decimal("0.10"))
    assert await BudgetReservation.objects.acount() == 2  # the first request's, and the lease's
    sent = len(statements)

    draws = [leases.draw(budgets, CENT) for _ in range(10)]

    assert all(draw is not None for draw in draws) and len({draw.lease_id for draw in draws}) == 1
    assert len(statements) == sent  # in process
    assert leases.draw(budgets, CENT) is None  # the lease is drawn out: this one reserves itself,
    await background_wait()  # and a fresh lease is taken for the next ones
    # The first lease's row still holds the estimates of its ten running requests.
    assert await period() == (0, Decimal("0.20"))


async def test_drawn_requests_spend_and_the_lease_is_released_after_their_records(statements):
    tenant, budgets, leases, _ = await leased()
    draws = [leases.draw(budgets, CENT) for _ in range(3)]
    writes = [RecordWrite(fields=fields_now(tenant, uuid.uuid4(), "0.004"), budgets=budgets) for _ in draws]
    assert await usage_records_commit_async(writes[:2], on_alert=no_alerts) is not None
    for draw in draws[:2]:
        draw.settled()
    leases.retire_all()  # a drain: no more draws; one drawn request is still running

    assert leases.draw(budgets, CENT) is None
    await background_wait()
    # Its row still holds the lease: the running request's estimate is in it.
    assert await period() == (Decimal("0.008"), Decimal("0.10"))

    assert await usage_records_commit_async(writes[2:], on_alert=no_alerts) is not None
    draws[2].settled()
    await background_wait()

    assert await period() == (Decimal("0.012"), 0)  # the records' costs; nothing held
    assert await BudgetReservation.objects.filter(amount_usd=Decimal("0.10")).aexists() is False


async def test_a_lease_takes_no_draws_after_its_time_and_is_released(statements):
    _, budgets, leases, clock = await leased()
    drawn = leases.draw(budgets, CENT)
    assert drawn is not None
    clock.advance(60.0)

    draw = leases.draw(budgets, CENT)  # over: it is retired; the traffic a minute ago is no reason for another
    await background_wait()

    assert draw is None and leases.draw(budgets, CENT) is None
    assert await period() == (0, Decimal("0.10"))  # its row waits for its drawn request
    drawn.settled()
    await background_wait()
    assert await period() == (0, 0) and await BudgetReservation.objects.acount() == 1


async def test_no_lease_unless_the_budget_keeps_ten_times_it_free(statements):
    # A lease of $0.10 on a $10 budget needs $1.00 free; $9.50 is held.
    _, budgets, leases, _ = await leased("10.00", held="9.50")

    assert leases.draw(budgets, CENT) is None
    assert len(statements) == 1  # the lease's hold was sent, and did not fit
    assert await period() == (0, Decimal("9.50"))
    assert await BudgetReservation.objects.acount() == 1


async def test_a_quiet_loop_takes_no_lease(statements):
    _, budgets, leases, _ = await leased(draws=1)  # $0.01 a second: 0.1 s of it is not two requests

    assert leases.draw(budgets, CENT) is None
    assert await BudgetReservation.objects.acount() == 1 and not [s for s in statements if "INSERT" in s]


async def test_leases_are_off_at_zero_seconds(settings, statements):
    settings.GATEWAY_BUDGET_LEASE_SECONDS = 0
    _, budgets = await budgeted()
    await reserve(budgets, "0.00")
    clock = Clock()
    leases = BudgetLeases(clock=clock)
    assert all(leases.draw(budgets, CENT) is None for _ in range(100))
    clock.advance(1.0)
    assert leases.draw(budgets, CENT) is None
    await background_wait()
    assert statements == [] and await BudgetReservation.objects.acount() == 1


async def test_a_drained_loop_takes_no_more_leases(statements):
    _, budgets, leases, clock = await leased()
    leases.retire_all()
    await background_wait()
    assert await period() == (0, 0)  # the lease had no drawn request: released at once
    for _ in range(100):
        assert leases.draw(budgets, CENT) is None
    clock.advance(1.0)
    assert leases.draw(budgets, CENT) is None
    await background_wait()
    assert await BudgetReservation.objects.acount() == 1


async def test_a_database_gone_costs_one_try_per_second_not_one_per_request(monkeypatch, caplog):
    _, budgets, leases, clock = await leased(draws=100)  # the lease is taken
    clock.advance(60.0)  # and over; its drawn requests: none
    for _ in range(100):
        assert leases.draw(budgets, CENT) is None  # a busy second without a lease
    clock.advance(1.0)
    tries = []

    async def unreachable(sql, params):
        tries.append(sql)
        raise OperationalError("connection refused")

    monkeypatch.setattr(db_async, "statement", unreachable)
    with caplog.at_level(logging.INFO, logger="accounting.budget_leases"):
        for _ in range(50):
            assert leases.draw(budgets, CENT) is None
            await background_wait()

    assert len(tries) == 1  # one try at a lease for the row, then quiet
    assert "not taken: connection refused" in caplog.text
    assert not [record for record in caplog.records if record.levelno >= logging.ERROR]
