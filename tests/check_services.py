"""Stop early, with a message that says what to do, when PostgreSQL or Redis is not reachable."""

import os
import sys

import psycopg
import redis

database_url = os.environ["DATABASE_URL"]
redis_url = os.environ["REDIS_URL"]
problems = []
try:
    psycopg.connect(database_url.replace("postgres://", "postgresql://", 1), connect_timeout=5).close()
except psycopg.Error as exc:
    problems.append(
        f"PostgreSQL is not reachable at {database_url}: {exc}\n"
        "  Start it (Debian): pg_ctlcluster --skip-systemctl-redirect $(ls /etc/postgresql) main start\n"
        "  or point TEST_DATABASE_URL at a server where the user may create databases."
    )
try:
    redis.Redis.from_url(redis_url, socket_connect_timeout=5).ping()
except redis.RedisError as exc:
    problems.append(
        f"Redis is not reachable at {redis_url}: {exc}\n"
        "  Start it: redis-server --daemonize yes --bind 127.0.0.1 --port 6379 --save ''\n"
        "  or point TEST_REDIS_URL at a running Redis."
    )
if problems:
    print("make test needs PostgreSQL and Redis:\n" + "\n".join(problems), file=sys.stderr)
    sys.exit(1)
print("PostgreSQL and Redis are reachable.")
