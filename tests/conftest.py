"""Shared fixtures: real processes (the fake provider), and a configured gateway in the test DB."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import uuid
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlsplit

import pytest

ROOT = Path(__file__).resolve().parent.parent


def _redis_database_per_worker() -> None:
    """`make test` runs the suite in pytest-xdist workers (gw0, gw1...); each gets the Redis
    database after the last one's (the given one, then the next), as pytest-django gives each its
    own test database. Keys that are not per test (the response cache's, the channel layer's)
    then never meet another worker's, whose tenants have the same ids in their own database.
    Run at import, before pytest-django reads the settings; the servers the tests start inherit it."""
    worker, url = os.environ.get("PYTEST_XDIST_WORKER", ""), os.environ.get("REDIS_URL", "")
    if not (worker.startswith("gw") and url):
        return
    parts = urlsplit(url)
    database = int(parts.path.strip("/") or 0) + int(worker[2:])
    os.environ["REDIS_URL"] = parts._replace(path=f"/{database}").geturl()


_redis_database_per_worker()


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def start_process(args: list[str], *, ready: str, env: dict | None = None) -> subprocess.Popen:
    """Start a process and return once it prints a line containing `ready` on stdout."""
    process = subprocess.Popen(
        args, cwd=ROOT, env=env or os.environ.copy(), stdout=subprocess.PIPE, text=True
    )
    for line in process.stdout:
        if ready in line:
            return process
    process.kill()
    raise RuntimeError(f"{args!r} exited before printing {ready!r}")


def stop_process(process: subprocess.Popen) -> None:
    if process.poll() is None:
        process.terminate()
        try:
            process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


@pytest.fixture(scope="session")
def fake_provider_url():
    """A real fake-provider server for the whole session; its base URL (no path)."""
    port = free_port()
    process = start_process(
        [sys.executable, "manage.py", "fake_provider", "--port", str(port)], ready="listening"
    )
    yield f"http://127.0.0.1:{port}"
    stop_process(process)


@dataclass
class GatewaySetup:
    tenant: object
    key: object
    raw_key: str
    provider: object
    anthropic_provider: object

    @property
    def auth(self) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.raw_key}"}


@pytest.fixture
def gateway(transactional_db, fake_provider_url) -> GatewaySetup:
    """A tenant with a key, and OpenAI- and Anthropic-format providers on the fake provider.

    Committed (`transactional_db`): the hot path's money statements run on the event loop's own
    connections (kernel/db_async.py), which see only committed data."""
    from accounting.services import api_key_create, tenant_create
    from providers.models import Provider, ProviderModel
    from providers.services import provider_key_upsert

    provider = Provider.objects.create(name="fake", type="openai", api_base=f"{fake_provider_url}/v1")
    provider_key_upsert(provider=provider, name="default", secret="sk-fake-provider-secret-0001")
    ProviderModel.objects.create(
        provider=provider, alias="gpt-4o-mini", upstream_model="gpt-4o-mini-2024-07-18",
        input_price_per_million="0.15", output_price_per_million="0.60", context_window=128000,
    )
    ProviderModel.objects.create(
        provider=provider, alias="gpt-4o", upstream_model="gpt-4o",
        input_price_per_million="2.50", output_price_per_million="10.00",
    )
    ProviderModel.objects.create(
        provider=provider, alias="text-embedding-3-small", upstream_model="text-embedding-3-small",
        mode="embedding", input_price_per_million="0.02",
    )
    anthropic = Provider.objects.create(name="fake-anthropic", type="anthropic", api_base=fake_provider_url)
    provider_key_upsert(provider=anthropic, name="default", secret="sk-ant-fake-provider-secret-0002")
    ProviderModel.objects.create(
        provider=anthropic, alias="claude-haiku-4-5", upstream_model="claude-haiku-4-5",
        input_price_per_million="1.00", output_price_per_million="5.00", max_output_tokens=8192,
    )
    tenant = tenant_create(slug="acme", name="Acme")
    key, raw_key = api_key_create(tenant=tenant, name="default")
    return GatewaySetup(tenant=tenant, key=key, raw_key=raw_key, provider=provider, anthropic_provider=anthropic)


def role_join(user, group: str) -> None:
    """Put a user in one of the operator roles' groups (`Gateway viewers`, `Gateway operators`).

    The groups come from data migrations. A transactional test's flush empties every table and
    post_migrate brings back the permissions, not the groups: the migrations' own functions make
    them again, in order (each is idempotent)."""
    from importlib import import_module

    from django.apps import apps
    from django.contrib.auth.models import Group
    from django.db import connection

    if not Group.objects.filter(name=group).exists():
        with connection.schema_editor() as editor:
            import_module("operators.migrations.0002_operator_roles").roles_create(apps, editor)
            import_module("operators.migrations.0003_stored_responses_viewed").roles_extend(apps, editor)
            import_module("operators.migrations.0004_batches_viewed").roles_extend(apps, editor)
            import_module("operators.migrations.0005_usage_record_changes_viewed").roles_extend(apps, editor)
            import_module("operators.migrations.0006_route_posteriors_viewed").roles_extend(apps, editor)
    user.groups.add(Group.objects.get(name=group))


def logged_in_client(name: str, *, staff: bool = False, group: str | None = None, tenant=None):
    """A Django test client logged in as a new user: staff or not, in a role's group, a tenant's member."""
    from django.contrib.auth.models import User
    from django.test import Client

    from accounting.models import TenantMembership

    user = User.objects.create_user(name, password="pw", is_staff=staff)
    if group:
        role_join(user, group)
    if tenant is not None:
        TenantMembership.objects.create(user=user, tenant=tenant)
    client = Client()
    client.force_login(user)
    return client


@pytest.fixture(autouse=True)
def _configuration_replaced():
    """Each test starts on a database that changed under the process without a model signal (the
    last test's flush or rollback), as raw SQL would: tell this process's configuration caches, as
    every model change does (`kernel.config_generation`), so they load again."""
    from kernel.config_generation import generation

    generation.changed()


@pytest.fixture(autouse=True)
def _own_redis_namespace(settings):
    """Each test gets its own Redis key prefix: breakers, health and counters start empty."""
    settings.GATEWAY_REDIS_PREFIX = f"gwtest:{uuid.uuid4().hex[:12]}"


@pytest.fixture(autouse=True)
async def _close_async_db_connections():
    """Close the connections a test left after it, so the test database can be dropped at the end
    of the session: asgiref's worker thread's (async ORM calls), the database threads'
    (`db_call`) and the event loops' (the money statements, kernel/db_async.py)."""
    yield
    from asgiref.sync import sync_to_async
    from django.db import connections

    from kernel import db_async, db_executor

    await db_async.close()
    db_async.forget_closed_loops()
    await sync_to_async(connections.close_all)()
    await db_executor.close_all()


@pytest.fixture
def httpserver_url():
    """A real local HTTP server recording the JSON bodies POSTed to it: (url, received list)."""
    import json
    import threading
    from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

    received: list = []

    class Handler(BaseHTTPRequestHandler):
        def do_POST(self):
            length = int(self.headers.get("content-length") or 0)
            received.append(json.loads(self.rfile.read(length) or b"null"))
            self.send_response(200)
            self.send_header("content-length", "0")
            self.end_headers()

        def log_message(self, *args):
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}/hook", received
    server.shutdown()
    server.server_close()


def pytest_collection_modifyitems(items):
    """schemathesis' items (tests/reliability/test_fuzz_schema.py, one per API operation) share
    one node id under pytest 9 (built from the function's name, without the operation in their
    own name); pytest-xdist tells items apart by node id and ran only the first of them. Each
    gets the id of its name, operation included, as pytest 8 gave it; and they are put in the
    order of their ids, the same in every worker (schemathesis lists a path's methods in an order
    that changes from one process to the next, and xdist requires one collection)."""
    places = [index for index, item in enumerate(items) if getattr(item, "operation_label", None)]
    for index in places:
        if not items[index].nodeid.endswith("]"):
            items[index]._id = items[index].parent.id.child(items[index].name)
    for index, item in zip(places, sorted((items[index] for index in places), key=lambda item: item.nodeid)):
        items[index] = item
