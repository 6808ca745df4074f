"""Django's middleware guards the pages and the operator API (the tenant API's own app:
test_api_app.py). A page or an operator route that finds the database gone answers 503, not 500."""

from __future__ import annotations

import pytest
from django.db import connection, connections
from django.test import AsyncClient

pytestmark = pytest.mark.django_db(transaction=True)


async def test_csrf_still_guards_pages_and_operator_routes(gateway):
    client = AsyncClient(enforce_csrf_checks=True)
    assert (await client.post("/accounts/login/", {"username": "x", "password": "y"})).status_code == 403


def _connection_cut() -> None:
    """The server ends this thread's database connection, as a database restart does."""
    with connection.cursor() as cursor:
        cursor.execute("SELECT pg_backend_pid()")
        (pid,) = cursor.fetchone()
    other = connections.create_connection("default")
    try:
        with other.cursor() as cursor:
            cursor.execute("SELECT pg_terminate_backend(%s)", [pid])
    finally:
        other.close()


@pytest.fixture
def signed_in(client, admin_user):
    if connection.vendor != "postgresql":
        pytest.skip("cuts a PostgreSQL connection")
    client.force_login(admin_user)
    yield client
    connection.close()  # the cut one: the test database is flushed on a new connection


@pytest.mark.parametrize("path", ["/admin/", "/v1/tenants"])
def test_a_page_or_operator_route_that_finds_the_database_gone_answers_503(signed_in, path, caplog):
    _connection_cut()

    response = signed_in.get(path)

    assert response.status_code == 503 and response["Retry-After"] == "1"
    if path.startswith("/v1/"):  # the operator API: the API's error shape
        assert response.json()["error"]["code"] == "database_unavailable"
    else:
        assert b"Database unavailable" in response.content and response["Content-Type"].startswith("text/html")
    assert f"database unavailable for GET {path}" in caplog.text


def test_a_session_that_cannot_be_saved_after_the_view_answers_503(signed_in, rf, settings, caplog):
    """The session is saved after the view (its middleware's response step): a database gone by
    then is a 503 as well."""
    from django.http import HttpResponse

    from gateway_site.middleware import SessionMiddleware

    def view(request):
        request.session["seen"] = True  # read before the cut, saved after the view
        _connection_cut()
        return HttpResponse("ok")

    request = rf.get("/dashboard/")
    request.COOKIES[settings.SESSION_COOKIE_NAME] = signed_in.session.session_key

    response = SessionMiddleware(view)(request)

    assert response.status_code == 503 and response["Retry-After"] == "1"
    assert "database unavailable for GET /dashboard/" in caplog.text


def test_a_session_deleted_meanwhile_is_still_djangos_own_error(signed_in, rf, settings):
    """Only a database that is gone is a 503: a session another request deleted stays Django's
    `SessionInterrupted` (a 400)."""
    from django.contrib.sessions.exceptions import SessionInterrupted
    from django.contrib.sessions.models import Session
    from django.http import HttpResponse

    from gateway_site.middleware import SessionMiddleware

    def view(request):
        request.session["seen"] = True
        Session.objects.filter(session_key=request.session.session_key).delete()  # a logout elsewhere
        return HttpResponse("ok")

    request = rf.get("/dashboard/")
    request.COOKIES[settings.SESSION_COOKIE_NAME] = signed_in.session.session_key
    with pytest.raises(SessionInterrupted):
        SessionMiddleware(view)(request)
