"""Prometheus metrics of the gateway (`/metrics`, where Prometheus reads them, is
`gateway_site.metrics_scrape`).

Several worker processes: with `PROMETHEUS_MULTIPROC_DIR` set, `prometheus_client` runs in its
multiprocess mode. Each process writes its counters and histograms to memory-mapped files in that
folder (a few microseconds per update, no network), and a scrape of any process merges every
process's files, so `/metrics` on one worker reports the sum of all workers on the machine. The
folder must be emptied before the workers start (`manage.py metrics_reset`), never while they
run. Counters aggregated in Redis were the alternative; they would cost a Redis round trip per
request and lose counts exactly when Redis is down, which is when metrics matter. Without the
variable (the embedded `make run`), the metrics live in the one process's memory.

Gauges that describe shared state (circuit breakers, budgets) are computed at scrape time from
that state, not kept per process, so two workers never report two different breaker states.

Label values come from the operator's configuration (tenant slugs, provider names, model aliases)
or from small fixed sets (status, error class); a model name a client made up is reported as
`-`, so clients cannot grow the number of series.
"""

from __future__ import annotations

import atexit
import functools
import hmac
import ipaddress
import os
from decimal import Decimal
from pathlib import Path

from django.conf import settings
from django.http import HttpRequest
from prometheus_client import Counter, Gauge, Histogram, multiprocess

MULTIPROC_DIR = os.environ.get("PROMETHEUS_MULTIPROC_DIR", "")
UNKNOWN = "-"

# Seconds; LLM requests run from tens of milliseconds (a cache hit) to minutes (long answers).
LATENCY_BUCKETS = (0.05, 0.1, 0.25, 0.5, 1, 2, 5, 10, 20, 30, 60, 120, 300)
TTFT_BUCKETS = (0.05, 0.1, 0.25, 0.5, 0.75, 1, 1.5, 2, 3, 5, 10, 30)

REQUESTS = Counter(
    "gateway_requests_total",
    "Gateway requests with a UsageRecord, by tenant, endpoint, requested model, serving provider and status.",
    ["tenant", "endpoint", "model", "provider", "status"],
)
ERRORS = Counter(
    "gateway_request_errors_total",
    "Gateway requests that ended in an error, by error class.",
    ["tenant", "endpoint", "model", "provider", "error_class"],
)
# Histograms leave the tenant out: buckets x tenants x models would make too many series.
LATENCY = Histogram(
    "gateway_request_duration_seconds",
    "Time from a request's arrival to its last byte, by endpoint, requested model and provider.",
    ["endpoint", "model", "provider", "stream"],
    buckets=LATENCY_BUCKETS,
)
TTFT = Histogram(
    "gateway_time_to_first_token_seconds",
    "Streams: time from the request's arrival to its first chunk.",
    ["model", "provider"],
    buckets=TTFT_BUCKETS,
)
TOKENS = Counter(
    "gateway_tokens_total",
    "Tokens billed, by kind: prompt, completion, cached (the cached part of the prompt).",
    ["tenant", "model", "provider", "kind"],
)
COST = Counter(
    "gateway_cost_usd_total",
    "Cost of the requests in USD, as recorded on the UsageRecords.",
    ["tenant", "model", "provider"],
)
ATTEMPTS = Counter(
    "gateway_provider_attempts_total",
    "Attempts sent to providers (retries and failovers included), by outcome and error class.",
    ["provider", "model", "status", "error_class"],
)
CACHE_LOOKUPS = Counter(
    "gateway_cache_lookups_total",
    "Response cache lookups, by tenant, cache kind (exact, semantic) and result (hit, miss).",
    ["tenant", "kind", "result"],
)
CACHE_SAVED = Counter(
    "gateway_cache_saved_cost_usd_total",
    "What cache hits saved, in USD (the cost the request would have had).",
    ["tenant"],
)
HTTP_RESPONSES = Counter(
    "gateway_http_responses_total",
    "HTTP responses of every endpoint (including failed authentication), by route and status code.",
    ["method", "route", "status"],
)
AUTH_FAILURES = Counter(
    "gateway_auth_failures_total",
    "Keys refused (tenant API keys, staff tokens), by door: api (HTTP), websocket, operator.",
    ["door"],
)
AUTH_THROTTLED = Counter(
    "gateway_auth_throttled_total",
    "Requests refused with a 429 because their address failed to authenticate too often, by door.",
    ["door"],
)
IN_FLIGHT = Gauge(
    "gateway_http_requests_in_flight",
    "HTTP requests being handled (until their response headers), summed over live processes.",
    multiprocess_mode="livesum",
)


def request_observe(*, tenant: str, routed: bool, fields: dict) -> None:
    """Count one finished request from the fields of its UsageRecord (the record step calls this).

    `routed` says the requested model is one the gateway knows; otherwise the model label is `-`.
    """
    model = str(fields["requested_model"])[:100] if routed else UNKNOWN
    provider = fields["provider_name"] or UNKNOWN
    endpoint, status = fields["endpoint"], fields["status"]
    REQUESTS.labels(tenant, endpoint, model, provider, status).inc()
    if fields.get("error_class"):
        ERRORS.labels(tenant, endpoint, model, provider, fields["error_class"]).inc()
    LATENCY.labels(endpoint, model, provider, "true" if fields["stream"] else "false").observe(
        fields["latency_ms"] / 1000
    )
    if fields.get("ttft_ms") is not None:
        TTFT.labels(model, provider).observe(fields["ttft_ms"] / 1000)
    _tokens_observe(tenant, model, provider, fields)
    if fields.get("saved_cost_usd"):
        CACHE_SAVED.labels(tenant).inc(float(fields["saved_cost_usd"]))
    for attempt in fields.get("attempts") or ():
        if attempt["status"] != "skipped":
            ATTEMPTS.labels(
                attempt["provider"], attempt["model"], attempt["status"], attempt["error_class"] or UNKNOWN
            ).inc()


def _tokens_observe(tenant: str, model: str, provider: str, fields: dict) -> None:
    for kind, name in (("prompt", "prompt_tokens"), ("completion", "completion_tokens"),
                       ("cached", "cached_tokens")):
        if fields.get(name):
            TOKENS.labels(tenant, model, provider, kind).inc(fields[name])
    cost: Decimal = fields.get("cost_usd") or Decimal("0")
    if cost:
        COST.labels(tenant, model, provider).inc(float(cost))


def cache_lookup(tenant: str, kind: str, hit: bool) -> None:
    """Count one response-cache lookup: `kind` is "exact" or "semantic"; for the caching app."""
    CACHE_LOOKUPS.labels(tenant, kind, "hit" if hit else "miss").inc()


def http_response_observe(*, method: str, route: str, status: int) -> None:
    HTTP_RESPONSES.labels(method if method in _METHODS else "other", route, str(status)).inc()


_METHODS = frozenset({"GET", "POST", "PUT", "PATCH", "DELETE", "HEAD", "OPTIONS"})


FORWARDING_HEADERS = (
    "HTTP_X_FORWARDED_FOR", "HTTP_FORWARDED", "HTTP_X_REAL_IP", "HTTP_X_FORWARDED_PROTO", "HTTP_X_FORWARDED_HOST",
)


def operator_allowed(request: HttpRequest) -> bool:
    """Metrics (and the provider summary of `/ready`) are for operators: the right bearer token
    (`GATEWAY_METRICS_TOKEN`), or a peer address in `GATEWAY_METRICS_ALLOW_IPS`.

    A request that came through a proxy (it has forwarding headers) is not judged by its address:
    the address is the proxy's, and trusting it would open `/metrics` to everyone the proxy serves.
    """
    token = settings.GATEWAY_METRICS_TOKEN
    authorization = request.headers.get("Authorization", "")
    if token and authorization.startswith("Bearer "):
        offered = authorization[len("Bearer "):].strip().encode()
        if hmac.compare_digest(offered, token.encode()):
            return True
    if any(name in request.META for name in FORWARDING_HEADERS):
        return False
    try:
        address = ipaddress.ip_address(request.META.get("REMOTE_ADDR") or "")
    except ValueError:
        return False
    return any(address in network for network in _networks(tuple(settings.GATEWAY_METRICS_ALLOW_IPS)))


@functools.cache
def _networks(entries: tuple[str, ...]) -> tuple:
    return tuple(ipaddress.ip_network(entry, strict=False) for entry in entries)


def multiproc_dir_reset() -> int:
    """Empty `PROMETHEUS_MULTIPROC_DIR` (creating it if needed); returns the files removed.

    Run it once before the workers start (a supervisor, `manage.py metrics_reset`, or a systemd
    `ExecStartPre`), never while they run: their counts would be lost and their open files orphaned.
    """
    if not MULTIPROC_DIR:
        return 0
    folder = Path(MULTIPROC_DIR)
    folder.mkdir(parents=True, exist_ok=True)
    removed = 0
    for path in folder.glob("*.db"):
        path.unlink(missing_ok=True)
        removed += 1
    return removed


def _process_exit() -> None:
    """Drop this process's live gauges (in-flight requests) from the shared folder on exit."""
    multiprocess.mark_process_dead(os.getpid())


if MULTIPROC_DIR:
    atexit.register(_process_exit)

__all__ = [
    "MULTIPROC_DIR", "cache_lookup", "http_response_observe", "multiproc_dir_reset",
    "operator_allowed", "request_observe",
]
