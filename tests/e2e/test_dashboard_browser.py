"""The dashboards in a real headless Chromium, against the gateway under uvicorn.

The deployment has its own database: migrated, then seeded with two tenants, a member of each,
rollups and budgets through `manage.py shell -c` (the rollup task is not needed: the pages only
read rollups). Chromium (Debian's `chromium` and `chromium-driver`, installed by `make test`) is
driven through Selenium: log in, open the tenant page, check every chart is really drawn, save a
screenshot, and check that a member cannot reach the other tenant's page or export.
"""

from __future__ import annotations

import base64
from pathlib import Path

import pytest

from tests.conftest import stop_process
from tests.e2e.conftest import (
    database_create,
    database_drop,
    deployment_env,
    gateway_start,
    manage,
)

pytestmark = pytest.mark.e2e

BROWSER_WINDOW = "1400,1000"  # the `browser` fixture of tests/e2e/conftest.py
PASSWORDS = {"alice": "alice-dashboard-pw-1", "bob": "bob-dashboard-pw-2", "olga": "olga-operator-pw-3"}

# Run inside `manage.py shell -c` against the deployment's database. Daily rollups for the last
# seven days and hourly ones for the last 24 hours, per model, key, task and end user; budgets.
SEED = """
import math
from datetime import datetime, timedelta, timezone
from decimal import Decimal
from django.contrib.auth import get_user_model
from django.contrib.auth.models import Group
from accounting.budgets import period_start
from accounting.dashboards import window_for
from accounting.models import Budget, BudgetPeriod, TenantMembership, UsageRollup
from accounting.services import api_key_create, tenant_create
from accounting.sketches import sketch_add, sketch_key, sketch_quantiles

acme = tenant_create(slug="acme", name="Acme Corp")
globex = tenant_create(slug="globex", name="Globex")
for name, tenant in (("alice", acme), ("bob", globex)):
    user = get_user_model().objects.create_user(username=name, password=PASSWORDS[name])
    TenantMembership.objects.create(user=user, tenant=tenant)
olga = get_user_model().objects.create_user(username="olga", password=PASSWORDS["olga"], is_staff=True)
olga.groups.add(Group.objects.get(name="Gateway viewers"))  # made by operators' migration 0002
web, _ = api_key_create(tenant=acme, name="web")
batch, _ = api_key_create(tenant=acme, name="batch")

def put(tenant, granularity, bucket, dimension, value, scale, cost):
    requests = max(1, int(40 * scale))
    UsageRollup.objects.create(
        tenant=tenant, granularity=granularity, bucket_start=bucket, dimension=dimension, value=value,
        requests=requests, errors=int(requests * 0.06 * (1 + math.sin(scale * 7))),
        prompt_tokens=int(1800 * requests * scale), completion_tokens=int(500 * requests),
        cost_usd=Decimal(str(round(cost, 6))), **sketched(
            "latency", {int(300 + 80 * scale): requests - requests // 10, int(900 + 400 * scale): requests // 10 + 1}
        ), **sketched("ttft", {120: requests - 2, 380: 2}),
    )

def sketched(prefix, latencies):
    bins = {}
    for latency, count in latencies.items():
        sketch_add(bins, {sketch_key(latency): count})
    quantiles = {f"{prefix}_{name}_ms": value for name, value in sketch_quantiles(bins).items()}
    return {f"{prefix}_sketch": bins, **quantiles}

# The hourly window as the page may draw it: this hour's, or the next one's if the clock turns
# the hour between this seed and the page (it did: 23 bars of 24).
seed_time = datetime.now(timezone.utc)
hourly = sorted(set(window_for(range_key="24h", now=seed_time).buckets)
                | set(window_for(range_key="24h", now=seed_time + timedelta(hours=1)).buckets))
for range_key, granularity, buckets in (("7d", "day", window_for(range_key="7d").buckets), ("24h", "hour", hourly)):
    for i, bucket in enumerate(buckets):
        scale = 1.2 + math.sin(i / 2.0)
        base = 1.5 * scale if granularity == "day" else 0.06 * scale
        put(acme, granularity, bucket, "total", "", scale, base)
        put(acme, granularity, bucket, "model", "gpt-4o-mini", scale * 0.7, base * 0.25)
        put(acme, granularity, bucket, "model", "claude-haiku-4-5", scale * 0.3, base * 0.75)
        put(acme, granularity, bucket, "api_key", str(web.pk), scale * 0.8, base * 0.6)
        put(acme, granularity, bucket, "api_key", str(batch.pk), scale * 0.2, base * 0.4)
        put(acme, granularity, bucket, "task", "summarise", scale * 0.5, base * 0.5)
        put(acme, granularity, bucket, "task", "classify", scale * 0.5, base * 0.5)
        put(acme, granularity, bucket, "end_user", "user-42", scale * 0.4, base * 0.4)
        put(globex, granularity, bucket, "total", "", 0.5, 0.9)
        put(globex, granularity, bucket, "model", "globex-private-model", 0.5, 0.9)

now = datetime.now(timezone.utc)
monthly = Budget.objects.create(tenant=acme, amount_usd=Decimal("25"), period="monthly")
spent = sum(r.cost_usd for r in UsageRollup.objects.filter(
    tenant=acme, granularity="day", dimension="total", bucket_start__gte=period_start("monthly", now)))
BudgetPeriod.objects.create(budget=monthly, period_start=period_start("monthly", now), spent_usd=spent)
Budget.objects.create(tenant=acme, api_key=batch, amount_usd=Decimal("2"), period="daily", hard=False)
""".replace("PASSWORDS", repr(PASSWORDS))

# Every chart on the page, with its drawn marks: size of the SVG and the largest path or bar.
CHARTS_JS = """
return Array.from(document.querySelectorAll('svg[data-chart]')).map(svg => {
  const box = svg.getBoundingClientRect();
  const marks = Array.from(svg.querySelectorAll('path.series, rect.bar')).map(el => el.getBoundingClientRect());
  return {
    name: svg.dataset.chart, width: box.width, height: box.height, marks: marks.length,
    markWidth: Math.max(0, ...marks.map(m => m.width)), markHeight: Math.max(0, ...marks.map(m => m.height)),
  };
});
"""
FETCH_STATUS_JS = """
const done = arguments[arguments.length - 1];
fetch(arguments[0], {credentials: 'same-origin', redirect: 'manual'})
  .then(r => r.text().then(body => done([r.status, body.slice(0, 200)])))
  .catch(e => done([0, String(e)]));
"""


@pytest.fixture(scope="module")
def gateway_url(tmp_path_factory):
    database_url, name = database_create()
    env = deployment_env(database_url, name)
    gateway = None
    try:
        manage(env, "migrate", "--noinput")
        manage(env, "shell", "-c", SEED)
        gateway, base_url = gateway_start(env, tmp_path_factory.mktemp("dashboard-logs") / "gateway.log")
        yield base_url
    finally:
        if gateway is not None:
            stop_process(gateway)
        database_drop(name)


def _log_in(driver, base_url: str, username: str) -> None:
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import WebDriverWait

    driver.get(f"{base_url}/dashboard/")
    assert "/accounts/login/?next=/dashboard/" in driver.current_url
    driver.find_element(By.NAME, "username").send_keys(username)
    driver.find_element(By.NAME, "password").send_keys(PASSWORDS[username])
    driver.find_element(By.CSS_SELECTOR, "form button[type=submit]").click()
    # The click only starts the form post: wait until the browser has left the login page.
    WebDriverWait(driver, 10).until(lambda d: "/accounts/login/" not in d.current_url)


def _fetch(driver, url: str) -> tuple[int, str]:
    status, body = driver.execute_async_script(FETCH_STATUS_JS, url)
    return status, body


def _screenshot(driver, path: Path) -> Path:
    """The whole page, not only the viewport, through the DevTools protocol."""
    size = driver.execute_cdp_cmd("Page.getLayoutMetrics", {})["cssContentSize"]
    shot = driver.execute_cdp_cmd("Page.captureScreenshot", {
        "format": "png", "captureBeyondViewport": True,
        "clip": {"x": 0, "y": 0, "width": size["width"], "height": size["height"], "scale": 1},
    })
    path.write_bytes(base64.b64decode(shot["data"]))
    return path


def test_member_sees_their_dashboard_drawn(browser, gateway_url, tmp_path):
    from selenium.webdriver.common.by import By

    _log_in(browser, gateway_url, "alice")

    assert browser.current_url == f"{gateway_url}/dashboard/acme/"
    assert browser.find_element(By.TAG_NAME, "h1").text.startswith("Acme Corp")
    charts = {chart["name"]: chart for chart in browser.execute_script(CHARTS_JS)}
    expected = {"cost", "tokens", "cost-by-model", "latency", "error-rate"}
    assert expected <= set(charts) and sum(name.startswith("budget-") for name in charts) == 2
    for chart in charts.values():
        assert chart["width"] > 300 and chart["height"] > 100, chart
        assert chart["marks"] > 0 and chart["markWidth"] > 0 and chart["markHeight"] > 0, chart
    # The stylesheet is served by the gateway itself (nothing comes from the internet).
    topbar = browser.find_element(By.CSS_SELECTOR, ".topbar").value_of_css_property("background-color")
    assert topbar in ("rgba(15, 23, 42, 1)", "rgb(15, 23, 42)")
    assert "globex" not in browser.page_source.lower()
    rows = browser.find_elements(By.CSS_SELECTOR, 'table[data-table="models"] tbody tr')
    assert [row.find_element(By.TAG_NAME, "td").text for row in rows] == ["claude-haiku-4-5", "gpt-4o-mini"]
    shot = _screenshot(browser, tmp_path / "dashboard-acme-7d.png")
    assert shot.stat().st_size > 20_000
    print(f"screenshot: {shot}")

    browser.find_element(By.LINK_TEXT, "Last 24 hours").click()
    assert browser.current_url.endswith("/dashboard/acme/?range=24h")
    hourly = {chart["name"]: chart for chart in browser.execute_script(CHARTS_JS)}
    assert hourly["cost"]["marks"] == 24 and hourly["latency"]["markWidth"] > 300
    status, body = _fetch(browser, f"{gateway_url}/dashboard/acme/export.csv?table=timeline&range=24h")
    assert status == 200 and body.startswith("bucket_start,requests,errors,error_rate")


def test_member_cannot_open_another_tenant_in_the_browser(browser, gateway_url):
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import WebDriverWait

    _log_in(browser, gateway_url, "alice")
    assert browser.current_url.endswith("/dashboard/acme/")

    browser.get(f"{gateway_url}/dashboard/globex/")
    body = browser.find_element(By.TAG_NAME, "body").text
    assert "Not Found" in body and "Globex" not in body and not browser.find_elements(By.CSS_SELECTOR, "svg")
    for url in ("/dashboard/globex/", "/dashboard/globex/export.csv?table=models",
                "/dashboard/globex/export.csv?table=timeline", "/dashboard/no-such-tenant/"):
        status, body = _fetch(browser, gateway_url + url)
        assert status == 404 and "globex" not in body.lower(), url
    assert _fetch(browser, f"{gateway_url}/dashboard/export.csv")[0] == 403

    # Logged out, the same browser is sent to the login page.
    browser.get(f"{gateway_url}/dashboard/acme/")
    browser.find_element(By.CSS_SELECTOR, ".logout button").click()
    WebDriverWait(browser, 10).until(lambda d: d.current_url.endswith("/accounts/login/"))
    browser.get(f"{gateway_url}/dashboard/acme/")
    assert "/accounts/login/?next=/dashboard/acme/" in browser.current_url


def test_operator_compares_every_tenant(browser, gateway_url, tmp_path):
    from selenium.webdriver.common.by import By

    _log_in(browser, gateway_url, "olga")

    assert browser.current_url == f"{gateway_url}/dashboard/"
    rows = browser.find_elements(By.CSS_SELECTOR, 'table[data-table="tenants"] tbody tr')
    assert [row.find_element(By.TAG_NAME, "a").text for row in rows] == ["acme", "globex"]
    [chart] = browser.execute_script(CHARTS_JS)
    assert chart["name"] == "cost-per-tenant" and chart["marks"] == 2 and chart["markWidth"] > 300
    print(f"screenshot: {_screenshot(browser, tmp_path / 'dashboard-operator.png')}")
    for slug in ("acme", "globex"):
        assert _fetch(browser, f"{gateway_url}/dashboard/{slug}/")[0] == 200
        assert _fetch(browser, f"{gateway_url}/dashboard/{slug}/export.csv?table=models")[0] == 200
