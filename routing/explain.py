"""A dry run of route selection, for operators: which deployments, in what order, and why."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timezone

from asgiref.sync import async_to_sync

from accounting.auth import ApiKeyContext
from accounting.models import Tenant, TenantApiKey
from kernel.errors import GatewayError
from routing.breakers import BreakerPolicy, BreakerStatus, breaker_store
from routing.health import DeploymentHealth, health_store
from routing.selection import RouteHints, RoutePlan, route_select
from routing.selectors import routing_table_build


@dataclass
class Explanation:
    plan: RoutePlan | None
    error: str
    breakers: dict[str, BreakerStatus]
    health: dict[str, DeploymentHealth]

    def lines(self) -> list[str]:
        if self.plan is None:
            return [f"No route: {self.error}"]
        plan = self.plan
        lines = [
            f"model {plan.model}: " + (f"rule '{plan.rule}' → group '{plan.group.name}'" if plan.rule
                                      else "no rule matched → every provider serving the alias"),
            f"strategy {plan.strategy}, retries {plan.group.retries}, total timeout "
            f"{plan.group.total_timeout:g}s, breaker opens after {plan.group.policy.failure_threshold} "
            f"failures for {plan.group.policy.cooldown_seconds:g}s",
        ]
        for index, deployment in enumerate(plan.deployments, start=1):
            breaker = self.breakers.get(deployment.key)
            health = self.health.get(deployment.key)
            state = breaker.state if breaker else "closed"
            note = " (skipped: breaker open)" if state == "open" else ""
            rate = f"{health.success_rate:.0%}" if health and health.success_rate is not None else "-"
            latency = f"{health.latency_ms:.0f}ms" if health and health.latency_ms is not None else "-"
            lines.append(
                f"{index}. {deployment.target.provider_name}:{deployment.target.upstream_model} "
                f"priority={deployment.priority} weight={deployment.weight} breaker={state} "
                f"success={rate} latency={latency} first-choice={plan.propensity(deployment):.0%}{note}"
            )
        if plan.draw is not None:
            lines += best_rated_lines(plan)
        return lines


def best_rated_lines(plan: RoutePlan) -> list[str]:
    """The best_rated draw behind the order: posteriors (mean, interval, n), samples, cost terms."""
    draw, settings = plan.draw, plan.group.best_rated
    age = "never computed" if draw.age_seconds is None else f"computed {draw.age_seconds:.0f}s ago"
    rolled = (
        f", feedback rolled up {datetime.fromtimestamp(draw.rollups_at, tz=timezone.utc):%Y-%m-%d %H:%M:%S} UTC"
        if draw.rollups_at else ""
    )
    if draw.scope == "cold start":
        return [f"best_rated: no ratings yet (posteriors {age}{rolled}): cold start, by priority"]
    lines = [
        f"best_rated: {draw.scope} posteriors, {age}{rolled}; lambda {settings.lam:g} per $, "
        f"min share {settings.min_share:.0%}; this draw "
        + ("explored (first choice drawn uniformly)" if draw.explored else "ranked by sampled score")
        + ("" if draw.cost_known else "; cost per request unknown until usage is rolled up (cost term 0)")
    ]
    for rank, arm in enumerate(draw.arms, start=1):
        low, high = arm.posterior.interval()
        lines.append(
            f"  {rank}. {arm.target}: posterior {arm.posterior.kind} mean={arm.posterior.mean:.3f} "
            f"95%=[{low:.3f}, {high:.3f}] n={arm.posterior.n}; sampled={arm.sampled:.3f} "
            f"cost=${arm.cost:.6f} cost_term={arm.cost_term:.4f} score={arm.score:.3f} share={arm.share:.0%}"
        )
    return lines


def route_explain(*, tenant: Tenant, model: str, task: str = "", tags: frozenset[str] = frozenset(),
                  api_key: TenantApiKey | None = None, mode: str = "chat") -> Explanation:
    """Select a route as a request would, without sending anything.

    Breakers are only read; a round-robin group does advance its turn, like a request.
    """
    auth = ApiKeyContext(
        key_id=api_key.pk if api_key else 0,
        tenant_id=tenant.pk,
        tenant_slug=tenant.slug,
        allowed_models=frozenset(api_key.allowed_models or ()) if api_key else frozenset(),
        expires_at=None,
        revoked=False,
        tenant_active=tenant.is_active,
    )
    try:
        plan = async_to_sync(route_select)(
            auth=auth, model=model, mode=mode, hints=RouteHints(task=task, tags=tags)
        )
    except GatewayError as exc:
        return Explanation(plan=None, error=exc.message, breakers={}, health={})
    keys = [d.key for d in plan.deployments]
    return Explanation(
        plan=plan,
        error="",
        breakers=breaker_store().statuses_sync(keys, policy=plan.group.policy),
        health=health_store().snapshots_sync(keys),
    )


def provider_health_rows() -> list[dict]:
    """Every distinct deployment the routing table knows, with its breaker and health."""
    table = routing_table_build()
    deployments = {d.key: d for d in table.catalog.models()}
    for rule in table.rules:
        deployments.update({d.key: d for d in rule.group.deployments})
    keys = sorted(deployments, key=lambda k: (deployments[k].target.provider_name, deployments[k].alias))
    policy = BreakerPolicy.default()
    breakers = breaker_store().statuses_sync(keys, policy=policy)
    health = health_store().snapshots_sync(keys)
    return [
        {"deployment": deployments[key], "key": key, "breaker": breakers.get(key), "health": health.get(key)}
        for key in keys
    ]
