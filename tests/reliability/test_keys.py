"""Keys: hashed and compared without timing leaks; no secret in logs, errors, admin pages, exports,
metrics, audit rows or usage rows; the admin behind Django's session, CSRF and secure cookies in
production. (Rotation of provider keys under traffic: test_keys_rotation.py.)"""

from __future__ import annotations

import ast
import hashlib
import io
import json
import logging
import re
import sys
from pathlib import Path

import httpx
import pytest
from django.core.management import call_command
from django.test import Client

from tests.asgi_client import SyncApiClient
from tests.conftest import ROOT, free_port, start_process, stop_process

pytestmark = pytest.mark.django_db(transaction=True)

PRODUCT_APPS = ("accounting", "audit", "caching", "feedback", "gateway_site", "guardrails", "operators",
                "providers", "routing")
# A name that holds a secret (a token, a key's plaintext or hash, a password, a signature).
SECRET_NAME = re.compile(r"(^|_)(token|secret|password|api_key|raw_key|raw|hashed_key|digest|signature|plaintext)$")


# --- constant time ----------------------------------------------------------------------------------
def _secret_comparisons(path: Path) -> list[str]:
    found = []
    for node in ast.walk(ast.parse(path.read_text())):
        if not isinstance(node, ast.Compare) or not any(isinstance(op, (ast.Eq, ast.NotEq)) for op in node.ops):
            continue
        sides = [node.left, *node.comparators]
        if any(isinstance(side, ast.Constant) for side in sides):
            continue  # `token == ""`, `key is None`-like checks compare no secret
        names = [side.id if isinstance(side, ast.Name) else side.attr if isinstance(side, ast.Attribute) else ""
                 for side in sides]
        if any(SECRET_NAME.search(name or "") for name in names):
            found.append(f"{path}:{node.lineno}: {ast.unparse(node)}")
    return found


def test_no_secret_is_compared_with_equality():
    """Secrets are either looked up by their SHA-256 hash (tenant keys, staff tokens) or compared
    with `hmac.compare_digest` (the metrics token). `==` on a secret leaks, through its timing, how
    long a prefix of a guess is right. The fake provider (a test upstream) is not product code."""
    found = [
        hit for app in PRODUCT_APPS for path in sorted((ROOT / app).rglob("*.py"))
        if "migrations" not in path.parts and "fake" not in path.parts for hit in _secret_comparisons(path)
    ]
    assert not found, "secrets compared with == (use hmac.compare_digest or a hash lookup):\n" + "\n".join(found)


def test_the_scan_finds_an_equality_on_a_secret(tmp_path):
    sample = tmp_path / "sample.py"
    sample.write_text("def check(offered, token):\n    return offered == token\n")
    assert _secret_comparisons(sample)


def test_tenant_keys_and_staff_tokens_are_stored_as_sha256_only(gateway, django_user_model):
    from django.db import connection

    from accounting.models import TenantApiKey
    from operators.models import StaffToken
    from operators.services import staff_token_create

    staff = django_user_model.objects.create_user("ops", password="x", is_staff=True)
    token, raw_token = staff_token_create(user=staff)
    for model, raw, pk in ((TenantApiKey, gateway.raw_key, gateway.key.pk), (StaffToken, raw_token, token.pk)):
        with connection.cursor() as cursor:
            cursor.execute(f"SELECT * FROM {model._meta.db_table} WHERE id = %s", [pk])
            row = [str(value) for value in cursor.fetchone()]
        assert hashlib.sha256(raw.encode()).hexdigest() in row
        assert not any(raw in value for value in row), f"{model.__name__} stores its plaintext"
        assert not any(raw[len("sk-gw-"):][6:] in value for value in row), "more than the visible prefix is stored"


# --- secrets nowhere --------------------------------------------------------------------------------
STRICT_SECRET = "strict-provider-secret-wrong-7c41e2"  # the upstream refuses it and quotes part of it
OPERATOR_SECRETS = ("sk-live-operator-created-5d9a11", "sk-live-operator-rotated-8e0b22")


@pytest.fixture
def strict_upstream():
    """A fake OpenAI-format upstream that accepts only one key, and answers others with a 401."""
    port = free_port()
    process = start_process([sys.executable, "manage.py", "fake_provider", "--port", str(port),
                             "--api-key", "the-only-accepted-key"], ready="listening")
    yield f"http://127.0.0.1:{port}"
    stop_process(process)


def _body(response) -> str:
    if not response.streaming:
        return response.content.decode()
    return b"".join(response.streaming_content).decode()  # the corrections export


def _surfaces(responses: list, caplog, staff_client: Client, tenant_slug: str) -> dict[str, str]:
    from accounting.models import UsageRecord
    from audit.models import AuditEntry
    from providers.models import ProviderKey

    texts = {f"answer {i} ({what})": body for i, (what, body) in enumerate(responses)}
    texts["logs"] = "\n".join(
        record.getMessage() + json.dumps(record.__dict__, default=str) for record in caplog.records
    )
    for url in ["/admin/providers/providerkey/", "/admin/accounting/tenantapikey/", "/admin/operators/stafftoken/",
                "/admin/audit/auditentry/", "/admin/accounting/usagerecord/", "/admin/accounting/tenant/",
                *(f"/admin/providers/providerkey/{pk}/change/" for pk in ProviderKey.objects.values_list("pk", flat=True)),
                *(f"/admin/audit/auditentry/{pk}/change/" for pk in AuditEntry.objects.values_list("pk", flat=True)[:20]),
                "/dashboard/export.csv", f"/dashboard/{tenant_slug}/export.csv?table=keys",
                f"/dashboard/{tenant_slug}/export.csv?table=models", "/dashboard/feedback/corrections.jsonl",
                f"/dashboard/{tenant_slug}/", "/metrics"]:
        page = staff_client.get(url)
        assert page.status_code == 200, (url, page.status_code)
        texts[url] = _body(page)
    from accounting.models import TenantApiKey
    from operators.models import StaffToken

    for key in TenantApiKey.objects.all():
        texts[f"tenant key page {key.pk}"] = staff_client.get(f"/admin/accounting/tenantapikey/{key.pk}/change/").content.decode()
    for token in StaffToken.objects.all():
        texts[f"staff token page {token.pk}"] = staff_client.get(f"/admin/operators/stafftoken/{token.pk}/change/").content.decode()
    out = io.StringIO()
    call_command("export_config", stdout=out)
    texts["export_config"] = out.getvalue()
    texts["audit rows"] = json.dumps(list(AuditEntry.objects.values()), default=str)
    texts["usage rows"] = json.dumps(list(UsageRecord.objects.values()), default=str)
    return texts


def test_no_secret_in_logs_errors_admin_exports_metrics_or_audit(gateway, strict_upstream, caplog, django_user_model):
    from providers.models import Provider, ProviderModel
    from providers.services import provider_key_upsert
    from operators.services import staff_token_create

    caplog.set_level(logging.DEBUG)
    strict = Provider.objects.create(name="strict", type="openai", api_base=f"{strict_upstream}/v1")
    provider_key_upsert(provider=strict, name="default", secret=STRICT_SECRET)
    ProviderModel.objects.create(provider=strict, alias="strict-mini", upstream_model="gpt-4o-mini",
                                 input_price_per_million="1", output_price_per_million="1")
    staff = django_user_model.objects.create_superuser("root", "root@example.com", "pw-root-123")
    _, staff_token = staff_token_create(user=staff)
    operator = {"Authorization": f"Bearer {staff_token}"}
    client = Client()
    responses: list[tuple[str, str]] = []
    secrets = {"tenant key": gateway.raw_key, "staff token": staff_token, "strict provider key": STRICT_SECRET,
               "provider key": "sk-fake-provider-secret-0001", "anthropic key": "sk-ant-fake-provider-secret-0002",
               **{f"operator provider key {i}": s for i, s in enumerate(OPERATOR_SECRETS)}}

    api = SyncApiClient()

    def chat(model: str, content: str = "hello", **extra) -> None:
        answer = api.post("/v1/chat/completions", json.dumps(
            {"model": model, "messages": [{"role": "user", "content": content}], **extra}),
            content_type="application/json", headers=gateway.auth)
        responses.append((f"chat {model} {extra}", answer.text))

    chat("gpt-4o-mini")
    chat("gpt-4o-mini", stream=True)
    chat("gpt-4o-mini", content="[[fake disconnect_after=2 chunks=8]] cut", stream=True)
    chat("gpt-4o-mini", content="[[fake status=401]] refused")
    chat("strict-mini")  # the upstream 401 quotes part of the key it was sent
    chat("strict-mini", stream=True)
    assert any('"error"' in body for what, body in responses if "strict" in what)
    wrong = api.post("/v1/chat/completions", "{}", content_type="application/json",
                     headers={"Authorization": f"Bearer {gateway.raw_key}x"})
    responses.append(("wrong tenant key", wrong.content.decode()))
    bad_staff = client.get("/v1/providers", headers={"Authorization": f"Bearer {staff_token}x"})
    responses.append(("wrong staff token", bad_staff.content.decode()))

    created = client.post("/v1/provider-keys", json.dumps(
        {"provider": gateway.provider.pk, "name": "second", "secret": OPERATOR_SECRETS[0]}),
        content_type="application/json", headers=operator)
    assert created.status_code == 201, created.content
    responses.append(("provider key created", created.content.decode()))
    rotated = client.patch(f"/v1/provider-keys/{created.json()['id']}", json.dumps({"secret": OPERATOR_SECRETS[1]}),
                           content_type="application/json", headers=operator)
    responses.append(("provider key rotated", rotated.content.decode()))
    new_key = client.post("/v1/tenant-keys", json.dumps({"tenant": gateway.tenant.pk, "name": "second"}),
                          content_type="application/json", headers=operator)
    assert new_key.status_code == 201
    secrets["created tenant key"] = new_key.json()["key"]  # shown in that one answer, nowhere else
    again = client.post(f"/v1/tenant-keys/{new_key.json()['id']}/rotate", headers=operator)
    secrets["rotated tenant key"] = again.json()["key"]
    for path in ("/v1/provider-keys", "/v1/tenant-keys", f"/v1/provider-keys/{created.json()['id']}"):
        responses.append((f"operator GET {path}", client.get(path, headers=operator).content.decode()))
    rotation = io.StringIO()
    call_command("rotate_provider_keys", stdout=rotation)
    responses.append(("rotate_provider_keys", rotation.getvalue()))

    staff_client = Client()
    staff_client.force_login(staff)
    surfaces = _surfaces(responses, caplog, staff_client, gateway.tenant.slug)
    leaks = [f"{name} in {where}" for where, text in surfaces.items() for name, secret in secrets.items()
             if secret in text]
    assert not leaks, leaks
    # Not even the tail of a secret past its visible prefix: the upstream's "sk-***yz" style is all.
    for name, secret in secrets.items():
        middle = secret[12:28]
        assert not [where for where, text in surfaces.items() if middle in text], f"part of the {name} leaks"
    assert len(surfaces) > 25
    print(f"secrets: {len(secrets)} secrets, {len(surfaces)} surfaces, {sum(map(len, surfaces.values()))} characters scanned")


# --- production admin -------------------------------------------------------------------------------
def _cookie(response: httpx.Response, name: str) -> str:
    """The raw Set-Cookie header of one cookie (httpx keeps Secure cookies off plain HTTP, so by hand)."""
    for header in response.headers.get_list("set-cookie"):
        if header.startswith(f"{name}="):
            return header
    raise AssertionError(f"no {name} cookie in {response.headers.get_list('set-cookie')}")


@pytest.mark.e2e
def test_production_admin_has_secure_session_and_csrf(tmp_path):
    from tests.e2e.conftest import database_create, database_drop, gateway_start, manage
    from tests.e2e.test_deployment import production_env

    database_url, name = database_create()
    env = production_env(DATABASE_URL=database_url, REDIS_URL="redis://127.0.0.1:6379/10",
                         GATEWAY_REDIS_PREFIX=f"gwtest:{name}", GATEWAY_STATIC_ROOT=str(tmp_path / "static"))
    process = None
    try:
        manage(env, "migrate", "--noinput")
        manage(env, "collectstatic", "--noinput")  # the admin's pages name their hashed static files
        manage(env, "shell", "-c", "from django.contrib.auth.models import User; "
                                   "User.objects.create_superuser('root', 'r@example.com', 'pw-root-prod-9')")
        process, url = gateway_start(env, tmp_path / "prod.log")
        host = url.removeprefix("http://")
        https = {"X-Forwarded-Proto": "https"}
        with httpx.Client(base_url=url, follow_redirects=False, timeout=10) as http:
            assert http.get("/admin/").status_code == 301  # plain HTTP goes to HTTPS first
            anonymous = http.get("/admin/", headers=https)
            assert anonymous.status_code == 302 and anonymous.headers["location"].startswith("/admin/login/")
            assert "max-age=" in anonymous.headers["strict-transport-security"]
            login_page = http.get("/admin/login/", headers=https)
            csrf_cookie = _cookie(login_page, "csrftoken")
            assert "Secure" in csrf_cookie and "SameSite=Lax" in csrf_cookie
            csrf = csrf_cookie.split(";")[0].split("=", 1)[1]
            form = {"username": "root", "password": "pw-root-prod-9", "next": "/admin/"}
            origin = {**https, "Origin": f"https://{host}", "Referer": f"https://{host}/admin/login/"}
            # No token: refused. A token but a foreign origin: refused.
            assert http.post("/admin/login/", data=form, headers={**origin, "Cookie": f"csrftoken={csrf}"}).status_code == 403
            foreign = {**https, "Origin": "https://evil.example", "Cookie": f"csrftoken={csrf}"}
            assert http.post("/admin/login/", data={**form, "csrfmiddlewaretoken": csrf}, headers=foreign).status_code == 403
            logged_in = http.post("/admin/login/", data={**form, "csrfmiddlewaretoken": csrf},
                                  headers={**origin, "Cookie": f"csrftoken={csrf}"})
            assert logged_in.status_code == 302, logged_in.text[:500]
            session_cookie = _cookie(logged_in, "sessionid")
            assert all(flag in session_cookie for flag in ("Secure", "HttpOnly", "SameSite=Lax")), session_cookie
            session = session_cookie.split(";")[0]
            cookies = {"Cookie": f"{session}; csrftoken={csrf}"}
            assert http.get("/admin/", headers={**https, **cookies}).status_code == 200
            # A logged-in admin's POST without the CSRF token is refused and changes nothing.
            add = {"slug": "csrf-victim", "name": "x"}
            refused = http.post("/admin/accounting/tenant/add/", data=add, headers={**origin, **cookies})
            assert refused.status_code == 403
            # The session cookie alone, over plain HTTP, is not accepted as a way in either.
            assert http.get("/admin/", headers={"Cookie": session}).status_code == 301
        assert manage(env, "shell", "-c", "from accounting.models import Tenant; "
                                          "print(Tenant.objects.filter(slug='csrf-victim').count())").split()[-1] == "0"
    finally:
        if process is not None:
            stop_process(process)
        database_drop(name)


def test_rotation_without_the_old_key_changes_nothing_and_says_why(gateway, settings):
    from cryptography.fernet import Fernet
    from django.core.management.base import CommandError

    from providers import crypto
    from providers.models import ProviderKey

    before = dict(ProviderKey.objects.values_list("pk", "encrypted_secret"))
    settings.GATEWAY_ENCRYPTION_KEYS = [Fernet.generate_key().decode()]  # the old key forgotten
    crypto.reset()
    try:
        with pytest.raises(CommandError, match="Keep the old key in the list"):
            call_command("rotate_provider_keys", stdout=io.StringIO())
    finally:
        crypto.reset()
    assert dict(ProviderKey.objects.values_list("pk", "encrypted_secret")) == before
