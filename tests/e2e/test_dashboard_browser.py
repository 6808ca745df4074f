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

# Request logs: 60 of acme's requests over the last hour (two pages), one failed over, one failed;
# one of globex's.
from accounting.models import UsageContent, UsageRecord
from feedback.models import Feedback
acme.keep_content = True
acme.save()
ATTEMPT = {"deployment": "d", "upstream_status": None, "reason": "", "error_class": ""}
for i in range(60):
    failed_over, failed = i == 42, i == 17
    attempts = [{**ATTEMPT, "provider": "fake-b", "model": "gpt-4o-mini", "status": "success", "latency_ms": 300 + i}]
    if failed_over:
        attempts.insert(0, {**ATTEMPT, "provider": "fake-a", "model": "gpt-4o-mini", "status": "error",
                            "error_class": "upstream_server", "upstream_status": 500, "latency_ms": 120})
    if failed:
        attempts = [{**ATTEMPT, "provider": "fake-b", "model": "gpt-4o", "status": "error",
                     "error_class": "timeout", "latency_ms": 30000}]
    record = UsageRecord.objects.create(
        tenant=acme, api_key=web if i % 2 else batch, created_at=now - timedelta(minutes=60 - i),
        endpoint="chat.completions", requested_model="smart" if failed_over else "gpt-4o-mini",
        served_model="gpt-4o" if failed else "gpt-4o-mini", provider_name="fake-b",
        status="error" if failed else "success", http_status=504 if failed else 200,
        error_class="timeout" if failed else "", prompt_tokens=40 + i, completion_tokens=10,
        cost_usd=Decimal("0.0001") * (i + 1), reserved_usd=Decimal("0.01"), latency_ms=420 + i,
        ttft_ms=150, attempts=attempts, tags=["billing"] if i % 3 == 0 else [],
    )
    if failed_over:
        UsageContent.objects.create(usage_record=record, tenant=acme,
                                    messages=[{"role": "user", "content": "Which route served me?"}],
                                    completion="The second deployment did.")
        Feedback.objects.create(tenant=acme, usage_record=record, response_id="r-42", rating=1)
        print("FAILED_OVER", record.request_id)
UsageRecord.objects.create(tenant=globex, endpoint="chat.completions", requested_model="globex-private-model",
                           status="success")
# Feedback rollups for the feedback page: ratings by model over the week, tags sent with feedback.
from feedback.models import FeedbackRollup
for i, bucket in enumerate(window_for(range_key="7d").buckets):
    for dimension, value, up, down in (("total", "", 6, 2), ("model", "gpt-4o-mini", 4, 1), ("model", "claude-haiku-4-5", 2, 1)):
        FeedbackRollup.objects.create(
            tenant=acme, granularity="day", bucket_start=bucket, dimension=dimension, value=value,
            feedback=up + down, ratings=up + down, rating_sum=float(up), rating_sumsq=float(up),
            thumbs_up=up, thumbs_down=down,
            feedback_tags={"too-long": 3, "wrong": 1 + i % 2} if dimension == "total" else {},
            metrics={"helpful": {"count": up + down, "sum": up - 0.5 * (i % 2), "sumsq": float(up)}} if dimension == "total" else {},
        )
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


class Deployment(str):
    """The gateway's base URL, with the request id of the seeded failed-over request."""

    def __new__(cls, url: str, failed_over: str):
        value = super().__new__(cls, url)
        value.failed_over = failed_over
        return value


@pytest.fixture(scope="module")
def gateway_url(tmp_path_factory):
    database_url, name = database_create()
    env = deployment_env(database_url, name)
    gateway = None
    try:
        manage(env, "migrate", "--noinput")
        seeded = manage(env, "shell", "-c", SEED)
        failed_over = seeded.split("FAILED_OVER ")[1].split()[0]
        gateway, base_url = gateway_start(env, tmp_path_factory.mktemp("dashboard-logs") / "gateway.log")
        yield Deployment(base_url, failed_over)
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


def test_a_member_finds_a_request_by_id_and_by_filter_and_opens_its_timeline(browser, gateway_url, tmp_path):
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import Select, WebDriverWait

    _log_in(browser, gateway_url, "alice")
    browser.find_element(By.LINK_TEXT, "Requests").click()
    WebDriverWait(browser, 10).until(lambda d: d.current_url.endswith("/dashboard/acme/requests/"))
    rows = browser.find_elements(By.CSS_SELECTOR, "tr[data-request-id]")
    assert len(rows) == 50 and "globex" not in browser.page_source.lower()
    browser.find_element(By.CSS_SELECTOR, "a[data-page=older]").click()
    WebDriverWait(browser, 10).until(lambda d: "after=" in d.current_url)
    assert len(browser.find_elements(By.CSS_SELECTOR, "tr[data-request-id]")) == 10

    # By id: paste it into the request id field.
    browser.get(f"{gateway_url}/dashboard/acme/requests/")
    field = browser.find_element(By.NAME, "request_id")
    field.send_keys(gateway_url.failed_over)
    field.submit()
    WebDriverWait(browser, 10).until(lambda d: "request_id=" in d.current_url)
    [row] = browser.find_elements(By.CSS_SELECTOR, "tr[data-request-id]")
    assert row.get_attribute("data-request-id") == gateway_url.failed_over and "smart" in row.text

    # By filter: the status select and the tag field; the one failed request.
    browser.find_element(By.LINK_TEXT, "Clear").click()
    Select(browser.find_element(By.NAME, "status")).select_by_value("timeout")
    browser.find_element(By.CSS_SELECTOR, "form[data-form=filters] button[type=submit]").click()
    WebDriverWait(browser, 10).until(lambda d: "status=timeout" in d.current_url)
    [row] = browser.find_elements(By.CSS_SELECTOR, "tr[data-request-id]")
    assert "timeout" in row.text and "504" in row.text
    browser.get(f"{gateway_url}/dashboard/acme/requests/?tag=billing&model=smart")
    [row] = browser.find_elements(By.CSS_SELECTOR, "tr[data-request-id]")

    # Its timeline: two attempts, the failed one first, each drawn as a bar.
    row.find_element(By.CSS_SELECTOR, "td.id a").click()
    WebDriverWait(browser, 10).until(lambda d: d.current_url.endswith(f"/requests/{gateway_url.failed_over}/"))
    attempts = browser.find_elements(By.CSS_SELECTOR, "[data-attempt]")
    assert [a.get_attribute("data-attempt-status") for a in attempts] == ["error", "success"]
    assert "fake-a" in attempts[0].text and "upstream_server" in attempts[0].text
    bars = browser.execute_script(
        "return Array.from(document.querySelectorAll('.timeline .bar')).map(b => b.getBoundingClientRect().width)")
    assert len(bars) == 2 and 0 < bars[0] < bars[1]
    page = browser.find_element(By.TAG_NAME, "main").text
    assert "$0.01000000 held" in page and "$0.00430000" in page
    assert "Which route served me?" in page and "The second deployment did." in page and "up" in page
    print(f"screenshot: {_screenshot(browser, tmp_path / 'request-detail.png')}")
    # Another tenant's request logs stay out of reach.
    assert _fetch(browser, f"{gateway_url}/dashboard/globex/requests/")[0] == 404
    assert _fetch(browser, f"{gateway_url}/dashboard/globex/requests/export.csv")[0] == 404
    status, body = _fetch(browser, f"{gateway_url}/dashboard/acme/requests/export.csv?status=timeout")
    assert status == 200 and body.startswith("created_at,request_id,tenant")


LINKS_JS = "return Array.from(document.querySelectorAll('main a[href]')).map(a => a.getAttribute('href'));"


def _links_answer(browser, base_url: str, links: list[str]) -> None:
    for href in links:
        status, body = _fetch(browser, base_url + href)
        assert status == 200, (href, status, body)


def test_the_front_door_opens_every_door(browser, gateway_url):
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import WebDriverWait

    browser.get(f"{gateway_url}/")  # anonymous: the sign-in link and the API base URL
    assert browser.find_element(By.CSS_SELECTOR, '[data-figure="api-base"]').text == f"{gateway_url}/v1"
    _links_answer(browser, gateway_url, browser.execute_script(LINKS_JS))
    browser.find_element(By.CSS_SELECTOR, 'a[data-door="sign-in"]').click()
    browser.find_element(By.NAME, "username").send_keys("alice")
    browser.find_element(By.NAME, "password").send_keys(PASSWORDS["alice"])
    browser.find_element(By.CSS_SELECTOR, "form button[type=submit]").click()
    WebDriverWait(browser, 10).until(lambda d: d.current_url == f"{gateway_url}/")

    links = browser.execute_script(LINKS_JS)
    assert {"/dashboard/acme/", "/dashboard/acme/requests/", "/dashboard/acme/feedback/", "/playground/",
            "/api/docs/"} <= set(links) and "/admin/" not in links and not any("globex" in link for link in links)
    _links_answer(browser, gateway_url, links)
    browser.find_element(By.CSS_SELECTOR, 'a[data-door="dashboard"]').click()
    assert browser.current_url == f"{gateway_url}/dashboard/acme/"
    browser.find_element(By.CSS_SELECTOR, ".topbar a.brand").click()  # every page leads back
    assert browser.current_url == f"{gateway_url}/"


def test_an_operator_finds_every_tenant_from_the_front_door(browser, gateway_url):
    from selenium.webdriver.common.by import By

    _log_in(browser, gateway_url, "olga")
    browser.get(f"{gateway_url}/")
    tenants = [row.get_attribute("data-tenant") for row in browser.find_elements(By.CSS_SELECTOR, "tr[data-tenant]")]
    assert tenants == ["acme", "globex"]
    links = browser.execute_script(LINKS_JS)
    assert {"/dashboard/", "/dashboard/requests/", "/admin/"} <= set(links)
    _links_answer(browser, gateway_url, links)


def test_the_feedback_page_titles_its_charts_and_breaks_tags_down(browser, gateway_url, tmp_path):
    from selenium.webdriver.common.by import By

    _log_in(browser, gateway_url, "alice")
    browser.get(f"{gateway_url}/dashboard/acme/feedback/")
    titles = browser.execute_script(
        "return Array.from(document.querySelectorAll('svg[data-chart]')).map(svg => {"
        " const t = svg.querySelector('text.chart-title').getBoundingClientRect();"
        " return [svg.dataset.chart, svg.querySelector('text.chart-title').textContent, t.width, t.height,"
        " svg.querySelectorAll('text.axis-title').length, svg.querySelectorAll('.legend-item').length]; });"
    )
    assert [title[:2] for title in titles] == [
        ["rating-by-model", "Mean rating by model"], ["rating-by-route", "Mean rating by route"],
        ["metrics", "Metrics (mean per bucket)"], ["feedback-tags", "Feedback tags"],
    ]
    for name, _, width, height, axis_titles, legend in titles:
        assert width > 50 and height > 8, name  # drawn where one can read it
        # The seed has no routes: that chart says so under its title; the others have both axes' titles.
        assert axis_titles == (0 if name == "rating-by-route" else 2), name
    drawn = {title[0]: title[5] for title in titles}
    assert drawn["rating-by-model"] == 2 and drawn["feedback-tags"] == 1
    empty = browser.find_element(By.CSS_SELECTOR, 'svg[data-chart="rating-by-route"]').text
    assert "Mean rating by route" in empty and "No data in this range" in empty
    rows = browser.find_elements(By.CSS_SELECTOR, 'table[data-table="feedback-tags"] tbody tr')
    assert [row.get_attribute("data-value") for row in rows] == ["too-long", "wrong"]
    # The thumbs in the tables' heads are drawn shapes, whatever fonts the machine has.
    thumbs = browser.execute_script(
        "return Array.from(document.querySelectorAll('th.rating-icon svg')).map(svg => {"
        " const box = svg.getBoundingClientRect(); return [svg.getAttribute('aria-label'), box.width, box.height]; });"
    )
    assert {label for label, _, _ in thumbs} == {"Thumbs up", "Thumbs down"}
    assert all(width >= 12 and height >= 12 for _, width, height in thumbs)
    print(f"screenshot: {_screenshot(browser, tmp_path / 'feedback-acme.png')}")
