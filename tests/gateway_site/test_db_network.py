"""GATEWAY_DB_NETWORK_TIMEOUT: a PostgreSQL connection whose packets stop arriving (a network
partition, a host that vanished) fails within seconds instead of waiting on TCP for many minutes.

The black hole is real: iptables drops every packet of one connection (its client port), in both
directions, as a partition would; the other connections to the same server go on."""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import threading
import time
import uuid

import psycopg
import pytest
from django.conf import settings
from django.db import connection

from kernel import db_async
from gateway_site.settings import database_network_options

pytestmark = pytest.mark.django_db

NETWORK_OPTIONS = ("tcp_user_timeout", "keepalives", "keepalives_idle", "keepalives_interval", "keepalives_count")


@pytest.fixture(autouse=True)
def postgresql():
    if connection.vendor != "postgresql":
        pytest.skip("libpq's options: PostgreSQL only")


def _iptables() -> bool:
    return (
        os.geteuid() == 0 and shutil.which("iptables") is not None
        and subprocess.run(["iptables", "-S", "INPUT"], capture_output=True).returncode == 0
    )


needs_iptables = pytest.mark.skipif(not _iptables(), reason="the black hole needs root and iptables")


class BlackHole:
    """Drops every packet to and from one connection's client port while it is `closed`. Both
    rules are on INPUT, which loopback traffic crosses, so the sender sees no error: its packets
    just never arrive."""

    def __init__(self, client_port: int):
        self.rules = [
            ["INPUT", "-p", "tcp", "--sport", str(client_port), "-j", "DROP"],
            ["INPUT", "-p", "tcp", "--dport", str(client_port), "-j", "DROP"],
        ]
        self.closed = False

    def close(self) -> None:
        for rule in self.rules:
            subprocess.run(["iptables", "-I", *rule], check=True)
        self.closed = True

    def open(self) -> None:
        if self.closed:
            for rule in self.rules:
                subprocess.run(["iptables", "-D", *rule], check=True)
            self.closed = False


def _client_port(conn: psycopg.Connection) -> int:
    with socket.socket(fileno=os.dup(conn.pgconn.socket)) as sock:
        return sock.getsockname()[1]


def _connect(**options) -> psycopg.Connection:
    """A connection with the parameters Django's have, `options` overriding them."""
    params = {**connection.get_connection_params(), **options}
    params.pop("cursor_factory", None)
    return psycopg.connect(**params, autocommit=True)


def _options(conn) -> dict:
    wanted = {name.encode() for name in NETWORK_OPTIONS}
    return {
        option.keyword.decode(): (option.val or b"").decode()
        for option in conn.pgconn.info if option.keyword in wanted
    }


EXPECTED = {"tcp_user_timeout": "10000", "keepalives": "1", "keepalives_idle": "10", "keepalives_interval": "3",
            "keepalives_count": "3"}


def test_the_default_reaches_djangos_connections():
    assert settings.GATEWAY_DB_NETWORK_TIMEOUT == 10
    connection.ensure_connection()
    assert _options(connection.connection) == EXPECTED


async def test_the_default_reaches_the_event_loops_connections():
    conn = await db_async._connect()
    try:
        assert _options(conn) == EXPECTED
    finally:
        await conn.close()


def test_zero_leaves_the_systems_defaults():
    assert database_network_options(0) == {}
    assert database_network_options(1)["keepalives_interval"] == 1


class Waiting(threading.Thread):
    """A statement run on `conn` in a thread: what it raised, and when."""

    def __init__(self, conn: psycopg.Connection, sql: str):
        super().__init__(daemon=True)
        self.conn, self.sql = conn, sql
        self.error: Exception | None = None
        self.ended: float | None = None

    def run(self) -> None:
        try:
            self.conn.execute(self.sql)
        except Exception as exc:  # noqa: BLE001 - what the test looks at
            self.error = exc
        self.ended = time.monotonic()


@needs_iptables
@pytest.mark.parametrize("statement, when", [
    # The statement is sent into the hole: nobody acknowledges it (tcp_user_timeout).
    ("SELECT 1", "before"),
    # The statement arrived and the server works on it; its answer goes into the hole, and the
    # client, which has nothing unacknowledged, waits in silence (the keepalive probes).
    ("SELECT pg_sleep(60)", "after"),
])
def test_a_black_holed_connection_fails_within_the_timeout_where_one_without_it_waits(statement, when):
    sql = f"{statement} -- {uuid.uuid4().hex}"
    bounded = _connect(**database_network_options(2))
    unbounded = _connect(tcp_user_timeout=0, keepalives=0)  # the kernel's TCP timeouts alone
    holes = [BlackHole(_client_port(conn)) for conn in (bounded, unbounded)]
    waiting = [Waiting(bounded, sql), Waiting(unbounded, sql)]
    try:
        try:
            if when == "before":
                for hole in holes:
                    hole.close()
            started = time.monotonic()
            for thread in waiting:
                thread.start()
            if when == "after":
                deadline = time.monotonic() + 10
                while len(_running(sql)) < 2:  # both statements are running on the server
                    assert time.monotonic() < deadline, "the statements did not reach the server"
                    time.sleep(0.02)
                for hole in holes:
                    hole.close()
            waiting[0].join(timeout=30)
            assert waiting[0].ended is not None, "the bounded connection was still waiting after 30 s"
            assert isinstance(waiting[0].error, psycopg.OperationalError), waiting[0].error
            # About 2 s (unacknowledged) or 2 s and the probes (silence); TCP alone takes minutes.
            assert waiting[0].ended - started < 15
            assert waiting[1].is_alive(), "the connection without the options gave up as fast"
        finally:
            for hole in holes:
                hole.open()
            for pid in _running(sql):
                with _connect() as conn:
                    conn.execute("SELECT pg_cancel_backend(%s)", (pid,))
        waiting[1].join(timeout=60)  # the hole opened: the unbounded one gets its answer at last
        assert not waiting[1].is_alive()
    finally:
        bounded.close()
        unbounded.close()


def _running(sql: str) -> list[int]:
    with _connect() as conn:
        rows = conn.execute(
            "SELECT pid FROM pg_stat_activity WHERE query = %s AND state = 'active'", (sql,)
        ).fetchall()
    return [pid for (pid,) in rows]
