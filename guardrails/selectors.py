"""The guardrail rules of each tenant, compiled and cached in process for the hot path.

Built in one sync step (every enabled policy with its enabled rules, regexes compiled once) and
kept while the configuration generation stays the same (`kernel.config_generation`): a
change is seen at once in the process that made it, within `GATEWAY_CONFIG_CACHE_SECONDS` in others.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from kernel.config_cache import ConfigCache
from guardrails.models import Action, Direction, GuardrailPolicy

SEVERITY = {Action.FLAG: 0, Action.REDACT: 1, Action.BLOCK: 2}


@dataclass(frozen=True)
class CompiledRule:
    id: int
    kind: str
    direction: str
    action: str
    label: str
    regex: re.Pattern | None = None
    limit: int | None = None

    @property
    def severity(self) -> int:
        return SEVERITY[self.action]

    @property
    def name(self) -> str:
        return self.label or self.kind


@dataclass(frozen=True)
class RuleSet:
    """A tenant's rules, split by the direction they check."""

    input: tuple[CompiledRule, ...] = ()
    output: tuple[CompiledRule, ...] = ()

    @classmethod
    def of(cls, rules: list[CompiledRule]) -> RuleSet:
        return cls(
            input=tuple(r for r in rules if r.direction in (Direction.INPUT, Direction.BOTH)),
            output=tuple(r for r in rules if r.direction in (Direction.OUTPUT, Direction.BOTH)),
        )


EMPTY = RuleSet()


@dataclass(frozen=True)
class GuardrailTable:
    default: RuleSet
    by_tenant: dict[int, RuleSet]

    def for_tenant(self, tenant_id: int) -> RuleSet:
        return self.by_tenant.get(tenant_id, self.default)


_tables: ConfigCache[GuardrailTable] = ConfigCache("guardrail rules")


async def guardrail_rules_get(*, tenant_id: int) -> RuleSet:
    """The rules that apply to a tenant: no database query while the cached table is fresh."""
    return (await _tables.get("table", guardrail_table_build)).for_tenant(tenant_id)


def guardrail_table_build() -> GuardrailTable:
    policies = GuardrailPolicy.objects.filter(enabled=True).prefetch_related("rules")
    compiled = {policy.tenant_id: (policy, _rules(policy)) for policy in policies}
    default_rules = compiled.pop(None, (None, []))[1]
    by_tenant = {
        tenant_id: RuleSet.of(rules + (default_rules if policy.inherit_default else []))
        for tenant_id, (policy, rules) in compiled.items()
    }
    return GuardrailTable(default=RuleSet.of(default_rules), by_tenant=by_tenant)


def _rules(policy: GuardrailPolicy) -> list[CompiledRule]:
    return [
        CompiledRule(
            id=rule.pk,
            kind=rule.kind,
            direction=rule.direction,
            action=rule.action,
            label=rule.label,
            regex=re.compile(rule.pattern) if rule.pattern else None,
            limit=rule.limit,
        )
        for rule in policy.rules.all()
        if rule.enabled
    ]
