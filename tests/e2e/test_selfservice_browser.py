"""Tenant self-service in a real headless Chromium, against the gateway under uvicorn.

The deployment is real end to end: the fake provider and the gateway run as processes on a
database of their own, configured with `import_config` (the e2e CONFIG, tenant `acme`), with a
viewer and an admin of `acme` made through `manage.py shell -c`. A viewer finds no form to create
a key, and a post made with its own session's CSRF token is refused (403); an admin fills in the
form, gets the new key shown once with a copy button, and the key answers a chat completion sent
with the official openai SDK; the key's page then draws its budgets' burn-down.
"""

from __future__ import annotations

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
    wait_for,
)

pytestmark = pytest.mark.e2e

BROWSER_WINDOW = "1280,1000"  # the `browser` fixture of tests/e2e/conftest.py
PASSWORDS = {"vic": "vic-viewer-pw-1", "ada": "ada-admin-pw-2"}
SEED = f"""
from django.contrib.auth import get_user_model
from accounting.models import Tenant, TenantMembership
acme = Tenant.objects.get(slug="acme")
for name, role in (("vic", "viewer"), ("ada", "admin")):
    user = get_user_model().objects.create_user(username=name, password={PASSWORDS!r}[name])
    TenantMembership.objects.create(user=user, tenant=acme, role=role)
"""
# A form post as the page would make it, with the CSRF token of the page's own forms.
POST_JS = """
const [url, fields, done] = [arguments[0], arguments[1], arguments[arguments.length - 1]];
const body = new URLSearchParams(fields);
body.set('csrfmiddlewaretoken', document.querySelector('input[name=csrfmiddlewaretoken]').value);
fetch(url, {method: 'POST', body, credentials: 'same-origin', redirect: 'manual'})
  .then(r => done(r.status)).catch(e => done(String(e)));
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
        config = tmp_path_factory.mktemp("selfservice") / "gateway.yaml"
        config.write_text(CONFIG.format(fake_port=fake_port))
        manage(env, "import_config", str(config))
        manage(env, "shell", "-c", SEED)
        log_path = tmp_path_factory.mktemp("selfservice-logs") / "gateway.log"
        gateway, base_url = gateway_start(env, log_path)
        processes.append(gateway)
        yield Stack(base_url=base_url, api_key="", database_url=database_url, log_path=log_path)
    finally:
        for process in processes:
            stop_process(process)
        database_drop(name)


def _log_in(driver, base_url: str, username: str, path: str) -> None:
    from selenium.webdriver.common.by import By

    driver.delete_all_cookies()
    driver.get(f"{base_url}{path}")
    assert f"/accounts/login/?next={path}" in driver.current_url
    driver.find_element(By.NAME, "username").send_keys(username)
    driver.find_element(By.NAME, "password").send_keys(PASSWORDS[username])
    driver.find_element(By.CSS_SELECTOR, "form button[type=submit]").click()
    wait_for(lambda: driver.current_url == f"{base_url}{path}", what=f"{path} after logging in")


def test_a_viewer_cannot_create_a_key_and_an_admin_can_and_it_answers(browser, deployment, tmp_path):
    from openai import OpenAI
    from selenium.webdriver.common.by import By

    base_url = deployment.base_url
    keys_path = "/dashboard/acme/keys/"

    _log_in(browser, base_url, "vic", keys_path)
    assert not browser.find_elements(By.ID, "key-create")
    assert browser.find_element(By.ID, "admins-only").is_displayed()
    fields = {"name": "sneaky", "allowed_models": "", "daily_usd": "1"}
    assert browser.execute_async_script(POST_JS, f"{base_url}{keys_path}", fields) == 403
    assert deployment.query("SELECT count(*) FROM accounting_tenantapikey")[0][0] == 0

    _log_in(browser, base_url, "ada", keys_path)
    form = browser.find_element(By.ID, "key-create")
    form.find_element(By.NAME, "name").send_keys("browser")
    form.find_element(By.NAME, "allowed_models").send_keys("gpt-4o-mini")
    form.find_element(By.NAME, "daily_usd").send_keys("0.5")
    form.find_element(By.NAME, "monthly_usd").send_keys("3")
    form.find_element(By.CSS_SELECTOR, "button[type=submit]").click()
    secret = wait_for(lambda: browser.find_elements(By.ID, "new-key"), what="the new key")[0].text
    assert secret.startswith("sk-gw-")
    browser.save_screenshot(str(tmp_path / "new-key.png"))
    copy = browser.find_element(By.CSS_SELECTOR, "button[data-copy=new-key]")
    copy.click()
    # Copied to the clipboard where the browser lets the page, else selected for Ctrl+C.
    wait_for(lambda: copy.text in ("Copied", "Selected: press Ctrl+C"), what="the copy button's answer")
    assert browser.execute_script("return window.getSelection().toString()") == secret

    client = OpenAI(base_url=f"{base_url}/v1", api_key=secret, max_retries=0)
    answer = client.chat.completions.create(
        model="gpt-4o-mini", messages=[{"role": "user", "content": "Hello from the key page"}], max_tokens=16,
    )
    assert answer.choices[0].message.content and answer.usage.total_tokens > 0

    browser.find_element(By.LINK_TEXT, "Open the key's page →").click()
    wait_for(lambda: browser.find_elements(By.CSS_SELECTOR, "svg[data-chart^=budget-]"), what="the key's page")
    captions = [c.text for c in browser.find_elements(By.CSS_SELECTOR, ".budget figcaption")]
    assert captions == ["Daily budget · key browser · hard", "Monthly budget · key browser · hard"]
    browser.save_screenshot(str(tmp_path / "key-page.png"))
    print(f"screenshots: {tmp_path}")
    browser.get(f"{base_url}{keys_path}")
    assert secret not in browser.page_source  # shown once
    [(action, via, actor)] = deployment.query(
        "SELECT action, via, actor FROM audit_auditentry WHERE object_type = 'accounting.tenantapikey'")
    assert (action, via, actor) == ("created", "dashboard", "ada")
