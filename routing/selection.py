"""Route selection: which deployments may serve a request, in the order to try them.

A request naming `provider:model` goes to that provider. Otherwise the first matching routing
rule names a route group; without one, every provider serving the alias forms an implicit
priority-fallback group. The client's hints (strategy, preferred and excluded providers) act
only within that set: they can never reach a deployment the rules did not offer.

A key's allow-list names aliases. A rule's model name is what the operator published: a key that
allows that name reaches the rule's deployments, whatever their aliases (a key that does not, none
of them). Without a rule, every deployment the name resolves to (an alias, `provider:alias` or
`provider:upstream_name`) is checked on its own alias, and those the key may not use are dropped
before any strategy or hint sees them.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

from accounting.auth import ApiKeyContext, model_authorize
from kernel.errors import InvalidRequest, NoDeploymentAvailable, PermissionDenied
from providers.selectors import Deployment, mode_serves
from routing.models import Strategy
from routing.experiments import variant_pick
from routing.selectors import GroupConfig, Rule, routing_table_get
from routing.strategies import STRATEGIES, BestRatedDraw, Ranking

HINT_HEADERS = {
    "strategy": "x-gateway-strategy",
    "prefer": "x-gateway-prefer",
    "exclude": "x-gateway-exclude",
    "task": "x-gateway-task",
    "tags": "x-gateway-tags",
    "conversation": "x-gateway-conversation-id",
}
CONVERSATION_ID_MAX_LENGTH = 200


@dataclass(frozen=True)
class RouteHints:
    strategy: str = ""
    prefer: tuple[str, ...] = ()
    exclude: tuple[str, ...] = ()
    task: str = ""
    tags: frozenset[str] = frozenset()
    conversation: str = ""  # sticks a conversation to one experiment variant; ties feedback together


@dataclass
class RoutePlan:
    model: str
    rule: str
    group: GroupConfig
    strategy: str
    deployments: list[Deployment] = field(default_factory=list)
    experiment: str = ""
    variant: str = ""
    shares: dict[str, float] = field(default_factory=dict)  # deployment key -> P(put first)
    draw: BestRatedDraw | None = None  # how best_rated chose

    def propensity(self, deployment) -> float:
        """The probability with which the strategy chose `deployment` first (logged on its record)."""
        return self.shares.get(deployment.key, 0.0)


def route_hints(*, body: dict, headers) -> RouteHints:
    """Hints from the body's `routing` and `metadata` objects, or from X-Gateway-* headers."""
    routing = body.get("routing") or {}
    metadata = body.get("metadata") or {}
    strategy = routing.get("strategy") or headers.get(HINT_HEADERS["strategy"]) or ""
    if strategy and strategy not in Strategy.values:
        raise InvalidRequest(
            f"Unknown routing strategy '{strategy}'; use one of {', '.join(Strategy.values)}.",
            param="routing.strategy",
        )
    conversation = str(metadata.get("conversation_id") or headers.get(HINT_HEADERS["conversation"]) or "")
    if len(conversation) > CONVERSATION_ID_MAX_LENGTH:
        raise InvalidRequest(
            f"The conversation id is longer than {CONVERSATION_ID_MAX_LENGTH} characters.",
            param="metadata.conversation_id",
        )
    return RouteHints(
        strategy=strategy,
        conversation=conversation,
        prefer=tuple(routing.get("prefer") or _header_list(headers, "prefer")),
        exclude=tuple(routing.get("exclude") or _header_list(headers, "exclude")),
        task=str(metadata.get("task") or headers.get(HINT_HEADERS["task"]) or ""),
        tags=frozenset(_split(metadata.get("tags")) or _header_list(headers, "tags")),
    )


def _split(value: object) -> list[str]:
    return [item.strip() for item in str(value or "").split(",") if item.strip()]


def _header_list(headers, name: str) -> list[str]:
    return _split(headers.get(HINT_HEADERS[name]))


async def route_select(
    *,
    auth: ApiKeyContext,
    model: str,
    mode: str,
    hints: RouteHints = RouteHints(),
    estimate: Callable[[], tuple[int, int]] = lambda: (0, 0),
) -> RoutePlan:
    """Resolve the requested model for this key into an ordered plan of deployments."""
    table = await routing_table_get()
    rule = _rule(table, auth=auth, model=model, hints=hints)
    if rule is not None and rule.experiment is not None and rule.experiment.variants:
        model_authorize(context=auth, alias=model)
        variant = variant_pick(rule.experiment, conversation=hints.conversation)
        if variant.group is not None:
            group = variant.group
            candidates = _fitting(list(group.deployments), model=model, mode=mode)
        else:
            candidates = table.catalog.resolve(variant.model, mode=mode)
            group = GroupConfig.implicit(candidates)
        plan = RoutePlan(
            model=model, rule=rule.name, group=group, strategy=group.strategy,
            experiment=rule.experiment.name, variant=variant.name,
        )
    elif rule is not None:
        model_authorize(context=auth, alias=model)
        plan = RoutePlan(model=model, rule=rule.name, group=rule.group, strategy=rule.group.strategy)
        candidates = _fitting(list(rule.group.deployments), model=model, mode=mode)
    else:
        candidates = _allowed(table.catalog.resolve(model, mode=mode), auth=auth, model=model)
        group = GroupConfig.implicit(candidates)
        plan = RoutePlan(model=model, rule="", group=group, strategy=group.strategy)
    candidates = _excluded(candidates, hints.exclude)
    plan.strategy = hints.strategy or plan.strategy
    ranking = await _order(plan, candidates, tenant_id=auth.tenant_id, estimate=estimate)
    plan.deployments, plan.draw = _preferred(ranking.deployments, hints.prefer), ranking.draw
    plan.shares = ranking.shares if plan.deployments[:1] == ranking.deployments[:1] else {
        plan.deployments[0].key: 1.0  # the client's preference chose
    }
    return plan


def _rule(table, *, auth: ApiKeyContext, model: str, hints: RouteHints) -> Rule | None:
    provider, sep, _ = model.partition(":")
    if sep and provider in table.catalog.provider_names:
        return None  # an explicit provider:model bypasses the rules
    return table.rule_for(
        model=model, tenant_id=auth.tenant_id, key_id=auth.key_id, task=hints.task, tags=hints.tags
    )


def _allowed(deployments: list[Deployment], *, auth: ApiKeyContext, model: str) -> list[Deployment]:
    """The deployments whose alias the key allows: `provider:name` matches aliases and upstream
    names alike, so one name can resolve to deployments of several aliases."""
    allowed = [d for d in deployments if auth.allows(d.alias)]
    if not allowed:
        raise PermissionDenied(f"This API key is not allowed to use the model '{model}'.", param="model")
    return allowed


def _fitting(deployments: list[Deployment], *, model: str, mode: str) -> list[Deployment]:
    if not deployments:
        raise NoDeploymentAvailable(f"The route for '{model}' has no enabled deployment.")
    fitting = [d for d in deployments if mode_serves(d.mode, mode)]
    if not fitting:
        raise InvalidRequest(
            f"The model '{model}' is routed to {deployments[0].mode} models only.",
            param="model",
            code="model_not_supported",
        )
    return fitting


def _excluded(deployments: list[Deployment], exclude: tuple[str, ...]) -> list[Deployment]:
    if not exclude:
        return deployments
    left = [d for d in deployments if d.target.provider_name not in exclude]
    if not left:
        raise InvalidRequest(
            "The routing hints exclude every provider that can serve this model.",
            param="routing.exclude",
        )
    return left


async def _order(plan: RoutePlan, deployments: list[Deployment], *, tenant_id: int, estimate) -> Ranking:
    kwargs = {"group": plan.group.name or plan.model, "tenant_id": tenant_id, "settings": plan.group.best_rated}
    if plan.strategy == Strategy.LOWEST_COST:
        prompt, completion = estimate()
        kwargs.update(prompt_tokens=prompt, completion_tokens=completion)
    return await STRATEGIES[plan.strategy](deployments, **kwargs)


def _preferred(deployments: list[Deployment], prefer: tuple[str, ...]) -> list[Deployment]:
    if not prefer:
        return deployments
    rank = {name: index for index, name in enumerate(prefer)}
    return sorted(deployments, key=lambda d: rank.get(d.target.provider_name, len(rank)))


async def models_visible(*, auth: ApiKeyContext) -> list[tuple[str, str, int]]:
    """The model names this key may use, for `GET /v1/models`: (name, owner, created)."""
    table = await routing_table_get()
    seen: dict[str, tuple[str, str, int]] = {}
    for rule in table.rules:
        admitted = rule.admits(tenant_id=auth.tenant_id, key_id=auth.key_id)
        if rule.group.deployments and admitted and auth.allows(rule.model):
            seen.setdefault(rule.model, (rule.model, "gateway", rule.group.deployments[0].created))
    for deployment in table.catalog.models():
        if auth.allows(deployment.alias):
            owner = deployment.target.provider_name
            seen.setdefault(deployment.alias, (deployment.alias, owner, deployment.created))
    return list(seen.values())
