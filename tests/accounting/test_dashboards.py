"""Dashboards read UsageRollup rows: the numbers on the page and in the CSV are the rollups', and a
tenant member sees their own tenant only."""

from __future__ import annotations

import csv
import io
import re
from datetime import datetime, timedelta
from datetime import timezone as dt_timezone
from decimal import Decimal

import pytest

from accounting import dashboards
from accounting.charts import Series, bar_chart, line_chart, nice_ticks
from accounting.dashboards import burn_exhaustion, burn_projection, window_for
from accounting.models import Budget, BudgetPeriod, TenantMembership, UsageRollup
from accounting.services import api_key_create, tenant_create
from accounting.sketches import sketch_add, sketch_key, sketch_quantiles
from tests.conftest import role_join

pytestmark = pytest.mark.django_db
UTC = dt_timezone.utc


def sketched(value: float) -> float:
    """What a sketch answers for a percentile whose exact value is `value` (within 1 %)."""
    return sketch_quantiles({sketch_key(value): 1})["p50"]


def rollup(tenant, bucket, *, granularity="day", dimension="total", value="", latencies=None, **fields):
    """A rollup row; `latencies` {latency: count} fills its sketch and percentiles."""
    if latencies:
        bins = {}
        for latency, count in latencies.items():
            sketch_add(bins, {sketch_key(latency): count})
        fields["latency_sketch"] = bins
        fields.update({f"latency_{name}_ms": p for name, p in sketch_quantiles(bins).items()})
    return UsageRollup.objects.create(
        tenant=tenant, granularity=granularity, bucket_start=bucket, dimension=dimension, value=value, **fields
    )


@pytest.fixture
def acme():
    return tenant_create(slug="acme", name="Acme Corp")


@pytest.fixture
def globex():
    return tenant_create(slug="globex", name="Globex")


def _user(django_user_model, name, *, tenant=None, staff=False):
    user = django_user_model.objects.create_user(username=name, password="pw-" + name, is_staff=staff)
    if tenant is not None:
        TenantMembership.objects.create(user=user, tenant=tenant)
    return user


@pytest.fixture
def member_a(django_user_model, acme):
    return _user(django_user_model, "alice", tenant=acme)


@pytest.fixture
def member_b(django_user_model, globex):
    return _user(django_user_model, "bob", tenant=globex)


@pytest.fixture
def staff(django_user_model):
    user = _user(django_user_model, "operator", staff=True)
    role_join(user, "Gateway viewers")  # staff status alone no longer shows every tenant
    return user


@pytest.fixture
def days():
    """The daily buckets of the 7-day range, oldest first (today last)."""
    return window_for(range_key="7d").buckets


def _csv(response) -> list[dict]:
    assert response["Content-Type"].startswith("text/csv")
    return list(csv.DictReader(io.StringIO(response.content.decode())))


def _svg(html: str, name: str) -> str:
    match = re.search(rf'<svg[^>]*data-chart="{re.escape(name)}".*?</svg>', html, re.S)
    assert match, f"no chart {name!r} on the page"
    return match.group(0)


# --- the numbers ----------------------------------------------------------------------------------
def test_tenant_totals_are_the_sum_of_the_ranges_rollups(client, acme, member_a, days):
    rollup(acme, days[-1], requests=30, errors=3, prompt_tokens=1000, completion_tokens=500,
           cost_usd=Decimal("1.25000000"), latencies={80: 27, 200: 3})
    rollup(acme, days[-3], requests=10, errors=1, prompt_tokens=400, completion_tokens=100,
           cost_usd=Decimal("0.50000000"), latencies={60: 8, 100: 2})
    # Outside the 7 days, and an hourly row of today: neither counts in the 7-day view.
    rollup(acme, days[0] - timedelta(days=5), requests=99, cost_usd=Decimal("9"))
    rollup(acme, days[-1], granularity="hour", requests=30, cost_usd=Decimal("1.25"))
    client.force_login(member_a)

    html = client.get("/dashboard/acme/?range=7d").content.decode()

    assert 'data-total="requests">40<' in html
    assert 'data-total="cost">$1.7500<' in html
    assert 'data-total="tokens">2,000<' in html
    assert 'data-total="error-rate">10.00%<' in html
    # p95 over several buckets, from their sketches merged: rank 37 of the 40 latencies is a 200.
    assert f'data-total="p95">{sketched(200):.0f} ms<' in html

    html_30d = client.get("/dashboard/acme/?range=30d").content.decode()
    assert 'data-total="requests">139<' in html_30d
    assert 'data-total="cost">$10.7500<' in html_30d


def test_last_24_hours_reads_hourly_rollups(client, acme, member_a):
    hours = window_for(range_key="24h").buckets
    assert len(hours) == 24 and hours[1] - hours[0] == timedelta(hours=1)
    rollup(acme, hours[-1], granularity="hour", requests=7, cost_usd=Decimal("0.07"))
    rollup(acme, hours[0], granularity="hour", requests=3, cost_usd=Decimal("0.03"))
    rollup(acme, hours[0] - timedelta(hours=1), granularity="hour", requests=100)
    rollup(acme, hours[-1].replace(hour=0), requests=500)  # the daily row is not read
    client.force_login(member_a)

    response = client.get("/dashboard/acme/?range=24h")

    assert 'data-total="requests">10<' in response.content.decode()
    rows = _csv(client.get("/dashboard/acme/export.csv?table=timeline&range=24h"))
    assert len(rows) == 24
    assert rows[0]["bucket_start"] == hours[0].isoformat() and rows[0]["requests"] == "3"
    assert rows[-1]["requests"] == "7" and rows[-1]["cost_usd"] == "0.07000000"
    assert sum(int(row["requests"]) for row in rows) == 10


def test_model_table_and_csv_equal_the_rollups(client, acme, globex, member_a, days):
    for day, cost in ((days[-1], "0.40"), (days[-2], "0.60")):
        rollup(acme, day, dimension="model", value="gpt-4o", requests=5, errors=1, prompt_tokens=100,
               completion_tokens=50, cost_usd=Decimal(cost), latencies={90: 3, 300: 2})
    rollup(acme, days[-1], dimension="model", value="claude-haiku-4-5", requests=20, prompt_tokens=2000,
           completion_tokens=10, cost_usd=Decimal("0.25"), latencies={50: 19, 120: 1})
    rollup(globex, days[-1], dimension="model", value="globex-secret-model", requests=1, cost_usd=Decimal("5"))
    client.force_login(member_a)

    html = client.get("/dashboard/acme/").content.decode()
    rows = _csv(client.get("/dashboard/acme/export.csv?table=models"))

    assert [row["model"] for row in rows] == ["gpt-4o", "claude-haiku-4-5"]  # dearest first
    assert rows[0] == {
        "model": "gpt-4o", "requests": "10", "errors": "2", "error_rate": "0.200000",
        "prompt_tokens": "200", "completion_tokens": "100", "cost_usd": "1.00000000",
        "latency_p50_ms": f"{sketched(90):.1f}", "latency_p95_ms": f"{sketched(300):.1f}",
    }
    assert rows[1]["requests"] == "20" and rows[1]["cost_usd"] == "0.25000000"
    table = re.search(r'data-table="models".*?</table>', html, re.S).group(0)
    assert "<td>gpt-4o</td><td>10</td><td>2</td><td>20.00%</td><td>200</td><td>100</td><td>$1.0000</td>" in table
    assert "globex-secret-model" not in html
    assert "claude-haiku-4-5" in _svg(html, "cost-by-model")


def test_key_task_and_user_tables(client, acme, member_a, days):
    key, _ = api_key_create(tenant=acme, name="ci")
    rollup(acme, days[-1], dimension="api_key", value=str(key.pk), requests=4, cost_usd=Decimal("0.04"))
    rollup(acme, days[-1], dimension="task", value="summarise", requests=3, cost_usd=Decimal("0.03"))
    rollup(acme, days[-1], dimension="task", value="", requests=1, cost_usd=Decimal("0.01"))
    rollup(acme, days[-1], dimension="end_user", value="=HYPERLINK(\"x\")", requests=2, cost_usd=Decimal("0.02"))
    client.force_login(member_a)

    keys = _csv(client.get("/dashboard/acme/export.csv?table=keys"))
    tasks = _csv(client.get("/dashboard/acme/export.csv?table=tasks"))
    users = _csv(client.get("/dashboard/acme/export.csv?table=users"))

    assert keys == [{**keys[0], "api_key": f"ci ({key.prefix}…)", "requests": "4", "cost_usd": "0.04000000"}]
    assert [(row["task"], row["requests"]) for row in tasks] == [("summarise", "3"), ("(none)", "1")]
    # A client-chosen end-user id is not run as a spreadsheet formula.
    assert users[0]["end_user"] == "'=HYPERLINK(\"x\")"


def test_export_rejects_an_unknown_table(client, acme, member_a):
    client.force_login(member_a)
    response = client.get("/dashboard/acme/export.csv?table=secrets")
    assert response.status_code == 400
    assert b"models, endpoints, keys, tasks, users, timeline" in response.content


def test_page_draws_every_chart(client, acme, member_a, days):
    for day in days[-3:]:
        rollup(acme, day, requests=10, errors=1, prompt_tokens=100, completion_tokens=40,
               cost_usd=Decimal("0.1"), latencies={100: 9, 250: 1})
        rollup(acme, day, dimension="model", value="gpt-4o", requests=10, cost_usd=Decimal("0.1"))
    budget = Budget.objects.create(tenant=acme, amount_usd=Decimal("10"), period="monthly")
    client.force_login(member_a)

    html = client.get("/dashboard/acme/").content.decode()

    for name in ("cost", "tokens", "cost-by-model"):
        assert "<rect" in _svg(html, name), name
    for name in ("latency", "error-rate", f"budget-{budget.pk}"):
        assert re.search(r'<path class="series"[^>]* d="M[\d.]+ [\d.]+ L', _svg(html, name)), name
    assert 'href="http' not in html and "<script" not in html  # nothing loaded from elsewhere


# --- who sees what --------------------------------------------------------------------------------
def test_member_of_one_tenant_gets_404_for_another(client, acme, globex, member_a):
    client.force_login(member_a)
    assert client.get("/dashboard/acme/").status_code == 200
    assert client.get("/dashboard/acme/export.csv?table=models").status_code == 200
    other = client.get("/dashboard/globex/")
    missing = client.get("/dashboard/no-such-tenant/")
    assert other.status_code == missing.status_code == 404
    assert other.content == missing.content  # no hint that globex exists
    for table in ("models", "keys", "tasks", "users", "timeline"):
        assert client.get(f"/dashboard/globex/export.csv?table={table}").status_code == 404
    assert client.get("/dashboard/export.csv").status_code == 403


def test_anonymous_users_are_sent_to_the_login_page(client, acme):
    for url in ("/dashboard/", "/dashboard/acme/", "/dashboard/acme/export.csv?table=models", "/dashboard/nope/"):
        response = client.get(url)
        assert response.status_code == 302
        assert response["Location"].startswith("/accounts/login/?next=")


def test_index_redirects_members_compares_for_staff_and_refuses_others(
    client, django_user_model, acme, globex, member_a, staff, days
):
    rollup(acme, days[-1], requests=12, errors=3, prompt_tokens=10, completion_tokens=5,
           cost_usd=Decimal("2.5"), latencies={400: 12})
    rollup(globex, days[-1], requests=8, cost_usd=Decimal("0.75"), latencies={90: 8})

    client.force_login(member_a)
    response = client.get("/dashboard/?range=30d")
    assert response.status_code == 302 and response["Location"] == "/dashboard/acme/?range=30d"

    client.force_login(_user(django_user_model, "drifter"))
    assert client.get("/dashboard/").status_code == 403

    client.force_login(staff)
    html = client.get("/dashboard/").content.decode()
    tenants_table = html.split('data-table="tenants"', 1)[1].split("</table>", 1)[0]
    assert [row.split("/")[2] for row in re.findall(r'href="(/dashboard/[\w-]+/)\?', tenants_table)] == ["acme", "globex"]
    assert f"<td>12</td><td>$2.5000</td><td>15</td><td>25.00%</td><td>{sketched(400):.0f} ms</td>" in html
    assert f"<td>8</td><td>$0.7500</td><td>0</td><td>0.00%</td><td>{sketched(90):.0f} ms</td>" in html
    assert "<path" in _svg(html, "cost-per-tenant")
    rows = _csv(client.get("/dashboard/export.csv"))
    assert [(row["tenant"], row["cost_usd"]) for row in rows] == [("acme", "2.50000000"), ("globex", "0.75000000")]
    for slug in ("acme", "globex"):
        assert client.get(f"/dashboard/{slug}/").status_code == 200
        assert client.get(f"/dashboard/{slug}/export.csv?table=timeline").status_code == 200
    assert client.get("/dashboard/no-such-tenant/").status_code == 404


def test_login_page_logs_a_member_in(client, acme, member_a):
    page = client.get("/accounts/login/?next=/dashboard/")
    assert page.status_code == 200 and b'name="password"' in page.content
    response = client.post("/accounts/login/", {"username": "alice", "password": "pw-alice", "next": "/dashboard/"})
    assert response.status_code == 302 and response["Location"] == "/dashboard/"
    assert client.get("/dashboard/", follow=True).redirect_chain[-1][0] == "/dashboard/acme/"


# --- budgets and the projection -------------------------------------------------------------------
def test_projection_is_linear_from_the_spend_so_far():
    start = datetime(2025, 4, 1, tzinfo=UTC)
    end = datetime(2025, 5, 1, tzinfo=UTC)  # 30 days
    now = start + timedelta(days=10)
    assert burn_projection(spent=Decimal("30"), start=start, end=end, now=now) == Decimal("90")
    assert burn_projection(spent=Decimal("30"), start=start, end=None, now=now) is None
    assert burn_projection(spent=Decimal("0"), start=start, end=end, now=start) == Decimal("0")
    # $60 at $3/day runs out on day 20; $100 lasts past the period; $20 is already gone.
    assert burn_exhaustion(spent=Decimal("30"), amount=Decimal("60"), start=start, end=end, now=now) == (
        start + timedelta(days=20)
    )
    assert burn_exhaustion(spent=Decimal("30"), amount=Decimal("100"), start=start, end=end, now=now) is None
    assert burn_exhaustion(spent=Decimal("30"), amount=Decimal("20"), start=start, end=end, now=now) == now
    # A first request's millionth of the amount: no date past datetime's range is computed.
    assert burn_exhaustion(spent=Decimal("0.000003"), amount=Decimal("5"), start=start, end=end, now=now) is None


def test_burn_down_of_a_monthly_budget(acme):
    now = datetime(2025, 4, 11, 0, 0, tzinfo=UTC)
    budget = Budget.objects.create(tenant=acme, amount_usd=Decimal("60"), period="monthly")
    BudgetPeriod.objects.create(budget=budget, period_start=datetime(2025, 4, 1, tzinfo=UTC),
                                spent_usd=Decimal("30"), reserved_usd=Decimal("1.5"))
    for day in range(1, 11):
        rollup(acme, datetime(2025, 4, day, tzinfo=UTC), cost_usd=Decimal("3"))
    rollup(acme, datetime(2025, 3, 31, tzinfo=UTC), cost_usd=Decimal("50"))  # last period

    [burn] = dashboards.budget_burndowns(tenant=acme, now=now)

    assert (burn.start, burn.end) == (datetime(2025, 4, 1, tzinfo=UTC), datetime(2025, 5, 1, tzinfo=UTC))
    assert (burn.spent, burn.reserved, burn.left) == (Decimal("30"), Decimal("1.5"), Decimal("30"))
    assert burn.projected == Decimal("90") and burn.over_budget
    assert burn.exhausted_at == datetime(2025, 4, 21, tzinfo=UTC)
    assert len(burn.points) == 31  # 1 April ... 1 May
    assert burn.remaining[:3] == [60.0, 57.0, 54.0] and burn.remaining[10] == 30.0
    assert burn.remaining[11:] == [None] * 20
    assert burn.projection[:10] == [None] * 10
    assert burn.projection[10] == pytest.approx(30.0) and burn.projection[-1] == pytest.approx(60 - 90)


def test_burn_down_puts_now_between_the_grid_points(acme):
    now = datetime(2025, 4, 10, 12, 0, tzinfo=UTC)  # 9.5 days into a 30-day month
    budget = Budget.objects.create(tenant=acme, amount_usd=Decimal("60"), period="monthly")
    BudgetPeriod.objects.create(budget=budget, period_start=datetime(2025, 4, 1, tzinfo=UTC), spent_usd=Decimal("19"))
    rollup(acme, datetime(2025, 4, 2, tzinfo=UTC), cost_usd=Decimal("10"))  # rollups lag the spend

    [burn] = dashboards.budget_burndowns(tenant=acme, now=now)

    assert len(burn.points) == 32 and burn.points[10] == now
    assert burn.positions[10] == pytest.approx(9.5 / 30)
    assert burn.remaining[9:12] == [50.0, 41.0, None]  # 10 April from rollups, now from the period row
    assert burn.projected == Decimal("60") and not burn.over_budget
    assert burn.projection[10] == pytest.approx(41.0) and burn.projection[-1] == pytest.approx(0.0)
    assert burn.exhausted_at is None  # exactly at the end: not within the period


def test_budget_figures_on_the_page(client, acme, member_a):
    key, _ = api_key_create(tenant=acme, name="batch")
    Budget.objects.create(tenant=acme, amount_usd=Decimal("5"), period="daily")
    key_budget = Budget.objects.create(tenant=acme, api_key=key, amount_usd=Decimal("2"), period="total", hard=False)
    BudgetPeriod.objects.create(budget=key_budget, period_start=dashboards.period_start("total", datetime.now(UTC)),
                                spent_usd=Decimal("2.5"))
    client.force_login(member_a)

    html = client.get("/dashboard/acme/").content.decode()

    section = re.search(rf'data-budget="{key_budget.pk}".*?</section>', html, re.S).group(0)
    assert "Total budget · key batch · soft" in section
    assert 'data-figure="spent">$2.5000<' in section and 'data-figure="status">exhausted<' in section
    assert 'data-figure="projected"' not in section  # a total budget has no period end


# --- the charts themselves ------------------------------------------------------------------------
def test_charts_escape_labels_and_handle_empty_data():
    svg = bar_chart(name="x", title="t", labels=["<a>"], series=[Series("<script>alert(1)</script>", [1.0])])
    assert "<script>" not in svg and "&lt;script&gt;" in svg and 'data-chart="x"' in svg
    empty = line_chart(name="e", title="t", labels=["a", "b"], series=[Series("s", [None, None])])
    assert 'data-chart="e"' in empty and "No data" in empty and "<path" not in empty


def test_bar_heights_are_proportional_and_stacked():
    svg = bar_chart(name="b", title="t", labels=["d1", "d2"], series=[Series("p", [10, 20]), Series("c", [10, 0])])
    heights = [float(h) for h in re.findall(r'<rect class="bar"[^>]* height="([\d.]+)"', svg)]
    assert len(heights) == 3  # zero values draw nothing
    assert heights[0] == pytest.approx(heights[1]) and heights[2] == pytest.approx(2 * heights[0])


def test_nice_ticks_cover_the_range():
    assert nice_ticks(0, 0.037) == [0, 0.01, 0.02, 0.03, 0.04]
    assert nice_ticks(-30, 60)[0] <= -30 and nice_ticks(-30, 60)[-1] >= 60 and 0 in nice_ticks(-30, 60)
