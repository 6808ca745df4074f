"""Attempts: send a request along a route plan, with retries, failover and circuit breakers.

For each deployment in the plan's order: skip it while its breaker is open; try it, retrying a
retryable failure with exponential backoff and full jitter (or the provider's retry-after when it
gives one), within a per-attempt timeout and the request's total deadline; then move on to the
next deployment. A context-length failure moves on only to deployments with a larger context
window. Errors caused by the tenant's own request are answered at once.
"""

from __future__ import annotations

import asyncio
import random
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field

from django.conf import settings

from kernel.errors import NoDeploymentAvailable, ProviderError
from providers.adapters import Adapter
from providers.http import adapter_for
from providers.selectors import Deployment
from routing.breakers import breaker_store
from routing.health import health_store
from routing.selection import RoutePlan
from routing.strategies import in_flight

BACKOFF_BASE_SECONDS = 0.25
BACKOFF_CAP_SECONDS = 8.0
# Breakers count failures that say the deployment is unwell, not the tenant's bad requests.
BREAKER_CLASSES = {"rate_limited", "upstream_server", "overloaded", "timeout", "connection"}

Send = Callable[[Adapter, Deployment], Awaitable]


@dataclass
class AttemptLog:
    """Every attempt and skip, as kept on the UsageRecord."""

    entries: list[dict] = field(default_factory=list)

    @property
    def attempts(self) -> int:
        return sum(1 for entry in self.entries if entry["status"] != "skipped")

    def add(self, deployment: Deployment, *, status: str, started: float | None = None,
            error: ProviderError | None = None, reason: str = "") -> None:
        self.entries.append({
            "provider": deployment.target.provider_name,
            "model": deployment.target.upstream_model,
            "deployment": deployment.key,
            "status": status,
            "latency_ms": int((time.perf_counter() - started) * 1000) if started else 0,
            "error_class": error.error_class if error else "",
            "upstream_status": error.upstream_status if error else None,
            "reason": reason,
        })


class _Deadline:
    def __init__(self, seconds: float) -> None:
        self.end = time.monotonic() + seconds

    def remaining(self) -> float:
        return self.end - time.monotonic()


async def attempts_run(
    plan: RoutePlan,
    send: Send,
    *,
    log: AttemptLog,
    on_deployment: Callable[[Deployment], None],
    stream: bool = False,
):
    """Return the first successful result of `send`, or raise the error that ended the attempts."""
    deadline = _Deadline(plan.group.total_timeout)
    last_error: ProviderError | None = None
    min_context: int | None = None
    breakers = breaker_store()
    retry_in: list[float] = []
    for deployment in plan.deployments:
        if min_context is not None and (deployment.context_window or 0) <= min_context:
            log.add(deployment, status="skipped", reason="context_window")
            continue
        if not await breakers.allow(deployment.key, policy=plan.group.policy):
            status = await breakers.status(deployment.key, policy=plan.group.policy)
            retry_in.append(status.retry_in)
            log.add(deployment, status="skipped", reason="breaker_open")
            continue
        on_deployment(deployment)
        try:
            return await _deployment_attempts(
                plan, deployment, send, log=log, deadline=deadline, stream=stream
            )
        except ProviderError as exc:
            last_error = exc
            if exc.error_class == "context_length_exceeded":
                min_context = deployment.context_window or 0
            elif not exc.retryable or deadline.remaining() <= 0:
                raise
    if last_error is not None:
        raise last_error
    raise _all_skipped(plan, retry_in)


async def _deployment_attempts(
    plan: RoutePlan, deployment: Deployment, send: Send, *, log: AttemptLog, deadline: _Deadline,
    stream: bool,
):
    adapter = adapter_for(deployment.target.wire_type)
    for attempt in range(plan.group.retries + 1):
        started = time.perf_counter()
        try:
            result = await _attempt_once(plan, deployment, adapter, send, deadline=deadline, stream=stream)
        except ProviderError as exc:
            log.add(deployment, status="error", started=started, error=exc)
            await _failure_note(plan, deployment, exc, started)
            wait = _retry_wait(exc, attempt=attempt, retries=plan.group.retries, deadline=deadline)
            if wait is None or exc.error_class == "context_length_exceeded":
                raise
            if not await breaker_store().allow(deployment.key, policy=plan.group.policy):
                raise  # this failure opened the breaker: fail over instead of retrying
            await asyncio.sleep(wait)
            continue
        log.add(deployment, status="success", started=started)
        await _success_note(plan, deployment, started, stream=stream)
        return result
    raise AssertionError("unreachable: the last attempt either returns or raises")


async def _attempt_once(
    plan: RoutePlan, deployment: Deployment, adapter: Adapter, send: Send, *, deadline: _Deadline,
    stream: bool,
):
    """One attempt, counted in flight; a stream that started stays counted until its relay ends."""
    limit = deadline.remaining()
    if plan.group.attempt_timeout:
        limit = min(limit, plan.group.attempt_timeout)
    if limit <= 0:
        raise _timeout(deployment, "the request's deadline passed")
    in_flight[deployment.key] += 1
    try:
        async with asyncio.timeout(limit):
            result = await send(adapter, deployment)
    except TimeoutError:
        in_flight[deployment.key] -= 1
        raise _timeout(deployment, f"no answer within {limit:.1f}s") from None
    except BaseException:
        in_flight[deployment.key] -= 1
        raise
    if not stream:
        in_flight[deployment.key] -= 1
    return result


def stream_finished(deployment: Deployment) -> None:
    """The relay of a started stream has ended (see `_attempt_once`)."""
    in_flight[deployment.key] -= 1


def _retry_wait(exc: ProviderError, *, attempt: int, retries: int, deadline: _Deadline) -> float | None:
    """Seconds to wait before retrying the same deployment, or None to move on."""
    if not exc.retryable or attempt >= retries:
        return None
    if exc.retry_after is not None:
        wait = exc.retry_after
        if wait > settings.GATEWAY_RETRY_AFTER_MAX_SECONDS:
            return None  # a long wait is better spent on another deployment
    else:
        wait = random.uniform(0, min(BACKOFF_CAP_SECONDS, BACKOFF_BASE_SECONDS * 2**attempt))
    return wait if wait < deadline.remaining() else None


async def _failure_note(plan: RoutePlan, deployment: Deployment, exc: ProviderError, started: float) -> None:
    latency = (time.perf_counter() - started) * 1000
    _health_note(deployment, ok=False, latency_ms=latency, error=f"{exc.error_class}: {exc.message}")
    if exc.error_class in BREAKER_CLASSES:
        await breaker_store().record_failure(deployment.key, policy=plan.group.policy)


async def _success_note(plan: RoutePlan, deployment: Deployment, started: float, *, stream: bool) -> None:
    """For a stream, success is its first chunk: the latency measured is the time to first token."""
    latency = (time.perf_counter() - started) * 1000
    await breaker_store().record_success(deployment.key, policy=plan.group.policy)
    _health_note(deployment, ok=True, latency_ms=latency, ttft_ms=latency if stream else None)


def _health_note(deployment: Deployment, **sample) -> None:
    """Health is statistics: counted in the background, never waited for by the request (the
    breaker's bookkeeping, which decides where the next request goes, is waited for)."""
    health_store().note(deployment.key, **sample)


async def stream_failure_note(plan: RoutePlan, deployment: Deployment, exc: ProviderError) -> None:
    """A stream that broke after its first chunk counts against its deployment too."""
    await _failure_note(plan, deployment, exc, time.perf_counter())


def _timeout(deployment: Deployment, why: str) -> ProviderError:
    return ProviderError(
        f"Provider '{deployment.target.provider_name}' timed out: {why}.",
        error_class="timeout",
        provider=deployment.target.provider_name,
    )


def _all_skipped(plan: RoutePlan, retry_in: list[float]) -> NoDeploymentAvailable:
    wait = min(retry_in) if retry_in else None
    error = NoDeploymentAvailable(
        f"Every deployment for '{plan.model}' is unavailable (circuit breakers open)."
    )
    if wait:
        error.headers["retry-after"] = str(max(1, int(wait + 0.999)))
    return error
