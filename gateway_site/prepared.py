"""The hot path's few fixed statements, prepared on the PostgreSQL server.

Django binds parameters on the client (psycopg's `ClientCursor`), so PostgreSQL parses and plans
every statement it is sent, and the hot path's statements are CTEs that cost more to plan than to
run: the record with its budget settlement took about 0.3 ms of the server's time to plan and
0.1 ms to run, on the request's path (a request is answered once its record has committed). A
statement prepared once per connection is planned for its first five runs and then, for these
statements, with PostgreSQL's generic plan: no planning at all.

`prepared_cursor()` is Django's own cursor wrapper (error translation, query logging and the
tests' query counting all apply) around a psycopg cursor that binds on the server and prepares
each statement it runs. The statements it is used for are fixed texts with a fixed number of
parameters (a group of records is one JSON parameter, `accounting.services._records_insert`), so
each connection holds a handful of them.

`GATEWAY_DB_PREPARED_STATEMENTS = False` turns it off (the statements are then sent as Django
sends everything else): for a connection pooler in transaction mode that cannot keep prepared
statements across its server connections (PgBouncer before 1.21, or without
`max_prepared_statements`). SQLite has no server to prepare on; its cursor is Django's own.
"""

from __future__ import annotations

from django.conf import settings
from django.db import connection

try:
    import psycopg
    from django.db.backends.postgresql.base import ServerBindingCursor
    from django.db.backends.postgresql.psycopg_any import register_tzloader
except ImportError:  # psycopg 2 or no PostgreSQL driver: nothing is prepared
    ServerBindingCursor = None


if ServerBindingCursor is not None:

    class _PreparingCursor(ServerBindingCursor):
        """psycopg's server-binding cursor, with every statement prepared."""

        def execute(self, query, params=None, *, prepare=None, binary=None):
            return super().execute(query, params, prepare=True if prepare is None else prepare, binary=binary)

    _TIMESTAMPTZ_OID = psycopg.adapters.types["timestamptz"].oid

# A `prepare_threshold` that no statement's count of runs reaches: psycopg prepares only the
# statements it is asked to (`execute(..., prepare=True)`); also the loop's connections' (db_async).
PREPARE_WHEN_ASKED = 2**62


def prepared_cursor():
    """A cursor on the current thread's default connection for a hot-path statement; use it as
    `connection.cursor()` is used (`with prepared_cursor() as cursor:`)."""
    if connection.vendor != "postgresql" or ServerBindingCursor is None or not settings.GATEWAY_DB_PREPARED_STATEMENTS:
        return connection.cursor()
    connection.close_if_health_check_failed()
    connection.ensure_connection()
    with connection.wrap_database_errors:
        raw = connection.connection
        if raw.prepare_threshold is None:
            # Django connects with `prepare_threshold=None` (OPTIONS may say otherwise), which
            # turns off psycopg's preparation altogether, asked for or not. A threshold no
            # statement reaches lets asked-for preparation through and nothing else: Django's own
            # cursors bind on the client and never prepare anyway.
            raw.prepare_threshold = PREPARE_WHEN_ASKED
        cursor = _PreparingCursor(raw)
        # What Django's `create_cursor` does for its own cursors: timestamps read in the
        # connection's time zone when the adapters' disagree.
        loader = raw.adapters.get_loader(_TIMESTAMPTZ_OID, psycopg.pq.Format.TEXT)
        if connection.timezone != loader.timezone:
            register_tzloader(connection.timezone, cursor)
        return connection._prepare_cursor(cursor)
