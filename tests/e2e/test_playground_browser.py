"""The chat playground in a real headless Chromium, against the gateway under uvicorn.

The deployment is real end to end: the fake provider and the gateway run as processes on a
database of their own, configured with `import_config` (the e2e CONFIG: an OpenAI-format and an
Anthropic-format provider on the fake), and a member of tenant "acme" created with
`manage.py shell -c`. The browser logs in, picks a model, and chats over the WebSocket protocol;
the test watches the reply grow in the DOM before it is done, reads the cost and latency shown,
rates the reply (and checks the Feedback row in PostgreSQL), and cancels a long reply (and checks
its UsageRecord says `cancelled`).
"""

from __future__ import annotations

import base64
import itertools
import re
import time
from pathlib import Path

import pytest

from tests.conftest import stop_process
from tests.e2e.conftest import (
    CONFIG,
    PROVIDER_SECRETS,
    Stack,
    database_create,
    database_drop,
    deployment_env,
    fake_start,
    gateway_start,
    manage,
)

pytestmark = pytest.mark.e2e

BROWSER_WINDOW = "1280,900"  # the `browser` fixture of tests/e2e/conftest.py
PASSWORD = "alice-playground-pw-1"
SEED = f"""
from django.contrib.auth import get_user_model
from accounting.models import Tenant, TenantMembership
user = get_user_model().objects.create_user(username="alice", password={PASSWORD!r})
TenantMembership.objects.create(user=user, tenant=Tenant.objects.get(slug="acme"))
"""
# The newest assistant reply as the page shows it.
REPLY_JS = """
const replies = document.querySelectorAll('#pg-transcript .pg-msg.assistant');
const node = replies[replies.length - 1];
if (!node) return null;
const field = name => { const el = node.querySelector(`[data-field="${name}"]`); return el ? el.textContent : null; };
return {
  state: node.dataset.state, text: node.querySelector('.text').textContent,
  responseId: node.dataset.responseId || null, label: node.querySelector('.pg-meta').textContent,
  cost: field('cost'), latency: field('latency'), ttft: field('ttft'), tokens: field('tokens'),
  served: field('served'),
};
"""


@pytest.fixture(scope="module")
def deployment(tmp_path_factory):
    database_url, name = database_create()
    env = deployment_env(database_url, name, E2E_FAKE_PROVIDER_KEY=PROVIDER_SECRETS[0])
    processes = []
    try:
        fake, fake_port = fake_start(env)
        processes.append(fake)
        manage(env, "migrate", "--noinput")
        config = tmp_path_factory.mktemp("playground") / "gateway.yaml"
        config.write_text(CONFIG.format(fake_port=fake_port))
        manage(env, "import_config", str(config))
        manage(env, "shell", "-c", SEED)
        log_path = tmp_path_factory.mktemp("playground-logs") / "gateway.log"
        gateway, base_url = gateway_start(env, log_path)
        processes.append(gateway)
        yield Stack(base_url=base_url, api_key="", database_url=database_url, log_path=log_path)
    finally:
        for process in processes:
            stop_process(process)
        database_drop(name)


def _open_playground(driver, base_url: str) -> None:
    """Log in from the playground's own redirect, and wait until its socket is signed in."""
    from selenium.webdriver.common.by import By

    driver.get(f"{base_url}/playground/")
    assert "/accounts/login/?next=/playground/" in driver.current_url
    driver.find_element(By.NAME, "username").send_keys("alice")
    driver.find_element(By.NAME, "password").send_keys(PASSWORD)
    driver.find_element(By.CSS_SELECTOR, "form button[type=submit]").click()
    _wait(lambda: driver.current_url == f"{base_url}/playground/", "the playground after logging in")
    _wait_ready(driver)
    assert driver.find_element(By.ID, "pg-status").text == "Connected · tenant acme"


def _wait_ready(driver) -> None:
    from selenium.webdriver.common.by import By

    _wait(lambda: driver.find_element(By.ID, "pg-status").get_attribute("data-state") == "ready", "socket ready")


def _wait(condition, what: str, timeout: float = 15.0, interval: float = 0.05):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = condition()
        if value:
            return value
        time.sleep(interval)
    raise AssertionError(f"timed out waiting for {what}")


def _send(driver, model: str, text: str) -> None:
    """Pick the model, type, click Send, and wait until the reply's bubble is there.

    If the socket was being replaced at that moment (see the idle test below), the page keeps the
    text and refuses to send; click again once it is signed in again.
    """
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import Select

    replies = len(driver.find_elements(By.CSS_SELECTOR, "#pg-transcript .pg-msg.assistant"))
    _wait_ready(driver)
    Select(driver.find_element(By.ID, "pg-model")).select_by_value(model)
    box = driver.find_element(By.ID, "pg-input")
    box.send_keys(text)
    send = driver.find_element(By.ID, "pg-send")
    send.click()

    def started() -> bool:
        if len(driver.find_elements(By.CSS_SELECTOR, "#pg-transcript .pg-msg.assistant")) > replies:
            return True
        if box.get_attribute("value") and send.is_enabled():
            send.click()
        return False

    _wait(started, "the request to start")


def _reply(driver) -> dict | None:
    return driver.execute_script(REPLY_JS)


def _watch_until_finished(driver, timeout: float = 20.0) -> list[dict]:
    """Snapshots of the newest reply, polled until it leaves the waiting/streaming states."""
    snapshots = []
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        snapshot = _reply(driver)
        snapshots.append(snapshot)
        if snapshot and snapshot["state"] not in ("waiting", "streaming"):
            return snapshots
        time.sleep(0.03)
    raise AssertionError(f"the reply did not finish: {snapshots[-1]}")


def _ms(text: str) -> int:
    return int(re.search(r"([\d,]+) ms", text).group(1).replace(",", ""))


def _screenshot(driver, path: Path) -> Path:
    size = driver.execute_cdp_cmd("Page.getLayoutMetrics", {})["cssContentSize"]
    shot = driver.execute_cdp_cmd("Page.captureScreenshot", {
        "format": "png", "captureBeyondViewport": True,
        "clip": {"x": 0, "y": 0, "width": size["width"], "height": size["height"], "scale": 1},
    })
    path.write_bytes(base64.b64decode(shot["data"]))
    return path


def test_member_chats_sees_the_reply_stream_and_rates_it(browser, deployment, tmp_path):
    from selenium.webdriver.common.by import By

    _open_playground(browser, deployment.base_url)
    options = [o.get_attribute("value") for o in browser.find_elements(By.CSS_SELECTOR, "#pg-model option")]
    assert options == ["claude-haiku-4-5", "gpt-4o-mini"]  # the embedding model is not offered

    _send(browser, "gpt-4o-mini", "Tell me about rivers [[fake chunks=60 chunk_delay_ms=40]]")
    snapshots = _watch_until_finished(browser)

    streaming = [s["text"] for s in snapshots if s and s["state"] == "streaming"]
    assert len(streaming) > 10, "the reply was never seen while streaming"
    assert 0 < len(streaming[0]) < len(streaming[-1]), "the reply did not grow while streaming"
    assert len(set(streaming)) > 5 and all(b.startswith(a) for a, b in itertools.pairwise(streaming))
    final = snapshots[-1]
    assert final["state"] == "done", final
    assert final["text"].startswith(streaming[-1])
    assert len(final["text"]) > len(streaming[0])
    assert final["served"] == "gpt-4o-mini via fake" and final["tokens"].endswith("+ 60 tokens")
    assert re.fullmatch(r"Cost \$0\.\d+", final["cost"]) and final["cost"] != "Cost $0"
    assert _ms(final["latency"]) >= 2000 and 0 < _ms(final["ttft"]) < _ms(final["latency"])

    [(status, cost, latency, completion)] = deployment.query(
        "SELECT status, cost_usd, latency_ms, completion_tokens FROM accounting_usagerecord"
        " WHERE response_id = %s", (final["responseId"],),
    )
    assert status == "success" and completion == 60
    assert final["cost"] == "Cost $" + format(cost.normalize(), "f")
    assert abs(_ms(final["latency"]) - latency) < 200

    # Thumbs up, then change our mind: one Feedback row, updated.
    feedback_sql = (
        "SELECT f.rating, f.source, t.slug FROM feedback_feedback f JOIN accounting_tenant t"
        " ON t.id = f.tenant_id WHERE f.response_id = %s"
    )
    reply = browser.find_elements(By.CSS_SELECTOR, "#pg-transcript .pg-msg.assistant")[-1]
    reply.find_element(By.CSS_SELECTOR, "button.thumb.up").click()
    _wait(lambda: reply.find_element(By.CSS_SELECTOR, ".pg-feedback .note").text == "Saved: good reply", "saved up")
    assert reply.find_element(By.CSS_SELECTOR, "button.thumb.up").get_attribute("aria-pressed") == "true"
    assert deployment.query(feedback_sql, (final["responseId"],)) == [(1, "playground", "acme")]
    reply.find_element(By.CSS_SELECTOR, "button.thumb.down").click()
    _wait(lambda: reply.find_element(By.CSS_SELECTOR, ".pg-feedback .note").text == "Saved: bad reply", "saved down")
    assert reply.find_element(By.CSS_SELECTOR, "button.thumb.up").get_attribute("aria-pressed") == "false"
    assert deployment.query(feedback_sql, (final["responseId"],)) == [(-1, "playground", "acme")]
    reply.find_element(By.CSS_SELECTOR, "button.thumb.up").click()
    _wait(lambda: reply.find_element(By.CSS_SELECTOR, ".pg-feedback .note").text == "Saved: good reply", "saved up")

    # The conversation goes on with another model; the first exchange is sent along.
    _send(browser, "claude-haiku-4-5", "And about lakes?")
    second = _watch_until_finished(browser)[-1]
    assert second["state"] == "done", second
    assert second["served"] == "claude-haiku-4-5 via fake-anthropic"
    [(prompt_tokens,)] = deployment.query(
        "SELECT prompt_tokens FROM accounting_usagerecord WHERE response_id = %s", (second["responseId"],)
    )
    assert prompt_tokens > 30  # both user turns and the first reply, not just "And about lakes?"

    shot = _screenshot(browser, tmp_path / "playground.png")
    assert shot.stat().st_size > 20_000
    print(f"screenshot: {shot}")


def test_member_cancels_a_long_reply(browser, deployment, tmp_path):
    from selenium.webdriver.common.by import By

    _open_playground(browser, deployment.base_url)
    before = deployment.query("SELECT count(*) FROM accounting_usagerecord WHERE status = 'cancelled'")[0][0]
    _send(browser, "gpt-4o-mini", "Write a very long poem [[fake chunks=400 chunk_delay_ms=50]]")

    def streaming() -> bool:
        reply = _reply(browser) or {}
        return reply.get("state") == "streaming" and len(reply["text"]) > 10

    _wait(streaming, "the reply streaming")
    cancel = browser.find_element(By.ID, "pg-cancel")
    assert cancel.is_displayed() and not browser.find_element(By.ID, "pg-send").is_enabled()
    cancel.click()

    final = _watch_until_finished(browser)[-1]
    assert final["state"] == "cancelled" and final["label"] == "Cancelled"
    assert 0 < len(final["text"].split()) < 400
    assert not browser.find_elements(By.CSS_SELECTOR, ".pg-msg.assistant .pg-feedback")
    time.sleep(0.3)  # nothing more arrives for a cancelled reply
    assert _reply(browser)["text"] == final["text"]
    rows = deployment.wait_for_rows(
        "SELECT status, requested_model, completion_tokens FROM accounting_usagerecord"
        " WHERE status = 'cancelled'", (), before + 1,
    )
    assert len(rows) == before + 1
    assert [(s, m) for s, m, _ in rows] == [("cancelled", "gpt-4o-mini")] * len(rows)
    assert 0 < rows[-1][2] < 400

    # The page is ready for the next message.
    assert not cancel.is_displayed() and browser.find_element(By.ID, "pg-send").get_attribute("disabled") is None
    print(f"screenshot: {_screenshot(browser, tmp_path / 'playground-cancelled.png')}")


def test_socket_stays_signed_in_while_idle(browser, deployment):
    """The page's socket must survive a pause longer than the channel layer's 5 s poll.

    With REDIS_URL set, the consumer also listens on the channels-redis layer, whose BZPOPMIN
    waits 5 s; with redis-py 8's default 5 s socket timeout that read timed out, the consumer
    crashed and daphne closed the socket (settings now turn the layer's socket timeout off).
    The idle pause is the condition under test, not a wait for something to happen.
    """
    from selenium.webdriver.common.by import By

    _open_playground(browser, deployment.base_url)
    status = browser.find_element(By.ID, "pg-status")
    assert status.get_attribute("data-connections") == "1"
    time.sleep(7)
    assert status.get_attribute("data-connections") == "1", "the playground's socket was closed while idle"
    assert status.get_attribute("data-state") == "ready"
