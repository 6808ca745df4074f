"""The operator API against the gateway under uvicorn: a staff token from the command, a tenant
and its key made over HTTP, the key used by the official `openai` SDK, rotated and revoked with
immediate effect; the schema served and valid; the Swagger UI page drawn offline in Chromium."""

from __future__ import annotations

import os
import shutil

import httpx
import openai
import pytest
from openapi_spec_validator import validate

from tests.e2e.conftest import manage, wait_for

pytestmark = pytest.mark.e2e

CHROMIUM, CHROMEDRIVER = "/usr/bin/chromium", "/usr/bin/chromedriver"


@pytest.fixture(scope="module")
def ops(stack) -> httpx.Client:
    env = {**os.environ, "DATABASE_URL": stack.database_url, "DJANGO_SUPERUSER_PASSWORD": "ops-e2e-pw-1234"}
    manage(env, "createsuperuser", "--noinput", "--username", "ops-e2e", "--email", "ops@example.com")
    token = manage(env, "create_staff_token", "ops-e2e", "--name", "e2e").strip().splitlines()[-1]
    with httpx.Client(base_url=stack.base_url, headers={"Authorization": f"Bearer {token}"}, timeout=30) as client:
        yield client


def chat(stack, key: str) -> str:
    client = openai.OpenAI(base_url=f"{stack.base_url}/v1", api_key=key, max_retries=0)
    answer = client.chat.completions.create(model="gpt-4o-mini", messages=[{"role": "user", "content": "hi"}])
    return answer.choices[0].message.content


def test_tenant_and_key_made_over_the_api_serve_the_sdk(stack, ops):
    tenant = ops.post("/v1/tenants", json={"slug": "ops-e2e", "name": "Ops E2E"})
    assert tenant.status_code == 201, tenant.text
    created = ops.post("/v1/tenant-keys", json={"tenant": tenant.json()["id"], "name": "sdk"}).json()
    assert chat(stack, created["key"])

    rotated = ops.post(f"/v1/tenant-keys/{created['id']}/rotate").json()
    with pytest.raises(openai.AuthenticationError):  # this process's cache was cleared at once
        chat(stack, created["key"])
    assert chat(stack, rotated["key"])
    ops.post(f"/v1/tenant-keys/{created['id']}/revoke").raise_for_status()
    with pytest.raises(openai.AuthenticationError):
        chat(stack, rotated["key"])

    # A tenant key is refused on the operator API, in the gateway's error shape.
    refused = httpx.get(f"{stack.base_url}/v1/providers", headers={"Authorization": f"Bearer {stack.api_key}"})
    assert refused.status_code == 401 and refused.json()["error"]["code"] == "invalid_api_key"
    audit = stack.query(
        "SELECT action, via, actor FROM audit_auditentry WHERE object_type = 'accounting.tenantapikey' "
        "AND object_id = %s ORDER BY id", (str(created["id"]),),
    )
    assert [row[:2] for row in audit] == [("created", "api"), ("rotated", "api"), ("revoked", "api")]
    assert all(row[2].startswith("ops-e2e (token sk-op-") for row in audit)


def test_provider_health_counts_the_requests_it_served(stack, ops):
    providers = ops.get("/v1/providers").json()["results"]
    fake = next(p for p in providers if p["name"] == "fake")
    assert chat(stack, stack.api_key)

    def counted():
        # Health samples reach Redis in the background, at most 50 ms after the answer
        # (docs/routing.md): read until this request's is there.
        health = ops.get(f"/v1/providers/{fake['id']}/health").json()
        by_alias = {d["alias"]: d for d in health["deployments"]}
        return health if by_alias["gpt-4o-mini"]["health"]["requests"] >= 1 else None

    health = wait_for(counted, what="the request in the provider's health", timeout=5)
    assert health["status"] == "healthy"
    assert "secret" not in httpx.get(f"{stack.base_url}/v1/provider-keys", headers=ops.headers).text


def test_schema_and_docs_page_are_served(stack):
    schema = httpx.get(f"{stack.base_url}/api/schema/", params={"format": "json"}).json()
    validate(schema)
    assert "/v1/providers/{id}/health" in schema["paths"] and "/v1/chat/completions" in schema["paths"]
    page = httpx.get(f"{stack.base_url}/api/docs/")
    assert page.status_code == 200
    bundle = httpx.get(f"{stack.base_url}/static/drf_spectacular_sidecar/swagger-ui-dist/swagger-ui-bundle.js")
    assert bundle.status_code == 200 and len(bundle.content) > 100_000


@pytest.mark.skipif(not (shutil.which(CHROMIUM) and shutil.which(CHROMEDRIVER)), reason="needs chromium")
def test_swagger_ui_draws_every_operation_offline(stack):
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import WebDriverWait

    schema = httpx.get(f"{stack.base_url}/api/schema/", params={"format": "json"}).json()
    operations = sum(len(methods) for methods in schema["paths"].values())
    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for flag in ("--headless", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage"):
        options.add_argument(flag)
    driver = webdriver.Chrome(service=Service(CHROMEDRIVER), options=options)
    try:
        driver.get(f"{stack.base_url}/api/docs/")
        WebDriverWait(driver, 30).until(lambda d: len(d.find_elements(By.CSS_SELECTOR, ".opblock")) >= operations)
        assert "LLM gateway API" in driver.find_element(By.CSS_SELECTOR, ".info .title").text
    finally:
        driver.quit()
