"""Experiments: weighted, sticky variant choice on the real pipeline; the read-out; pause, promote."""

from __future__ import annotations

import json
import random
import re
from collections import Counter
from datetime import timedelta

import pytest
from tests.asgi_client import ApiClient
from django.utils import timezone

from accounting.models import UsageRecord
from feedback.models import Feedback
from feedback.services import rating_value
from providers.models import ProviderModel
from routing.experiments import experiment_results, interval, variant_pick, welch_p_value
from routing.models import Deployment, Experiment, ExperimentVariant, RouteGroup, RoutingRule
from routing.selectors import ExperimentConfig, VariantConfig

pytestmark = pytest.mark.django_db(transaction=True)


@pytest.fixture
def experiment(gateway):
    mini = RouteGroup.objects.create(name="mini")
    Deployment.objects.create(group=mini, provider_model=ProviderModel.objects.get(alias="gpt-4o-mini"))
    base = RouteGroup.objects.create(name="base")
    Deployment.objects.create(group=base, provider_model=ProviderModel.objects.get(alias="claude-haiku-4-5"))
    rule = RoutingRule.objects.create(name="smart-rule", model="smart", group=base)
    experiment = Experiment.objects.create(name="mini-vs-4o", rule=rule)
    ExperimentVariant.objects.create(experiment=experiment, name="mini", group=mini, weight=1)
    ExperimentVariant.objects.create(experiment=experiment, name="big", model="gpt-4o", weight=1)
    return experiment


async def chat(gateway, conversation: str = ""):
    headers = {**gateway.auth}
    if conversation:
        headers["X-Gateway-Conversation-Id"] = conversation
    response = await ApiClient().post(
        "/v1/chat/completions",
        json.dumps({"model": "smart", "messages": [{"role": "user", "content": "Hi"}]}),
        content_type="application/json", headers=headers,
    )
    assert response.status_code == 200, response.content
    return response


def test_sticky_choice_depends_only_on_the_conversation_and_weights_hold():
    config = ExperimentConfig(name="e", sticky=True, variants=(
        VariantConfig("a", 3, None, "m1"), VariantConfig("b", 1, None, "m2"),
    ))
    for conversation in ("c1", "c2", "c3", "long-" * 30):
        assert len({variant_pick(config, conversation=conversation).name for _ in range(20)}) == 1
    by_conversation = Counter(variant_pick(config, conversation=f"c{n}").name for n in range(4000))
    assert 0.72 < by_conversation["a"] / 4000 < 0.78
    random.seed(7)
    unsticky = Counter(variant_pick(config).name for _ in range(4000))
    assert 0.72 < unsticky["a"] / 4000 < 0.78


async def test_variants_serve_the_rule_and_are_recorded_sticky_per_conversation(experiment, gateway):
    served = {}
    for n in range(12):
        response = await chat(gateway, conversation=f"conv-{n % 4}")
        served.setdefault(f"conv-{n % 4}", set()).add(response.headers["x-gateway-variant"])
    assert all(len(variants) == 1 for variants in served.values())
    records = [r async for r in UsageRecord.objects.order_by("created_at")]
    assert len(records) == 12
    assert {(r.route, r.experiment) for r in records} == {("smart-rule", "mini-vs-4o")}
    for record in records:
        expected_model = {"mini": "gpt-4o-mini-2024-07-18", "big": "gpt-4o"}[record.variant]
        assert record.served_model == expected_model
        assert record.route_group == ("mini" if record.variant == "mini" else "")
    # Without a conversation both variants get traffic.
    variants = {(await chat(gateway)).headers["x-gateway-variant"] for _ in range(30)}
    assert variants == {"mini-vs-4o/mini", "mini-vs-4o/big"}


async def test_paused_experiment_serves_the_rules_own_group(experiment, gateway):
    experiment.status = Experiment.Status.PAUSED
    await experiment.asave()
    response = await chat(gateway, conversation="c")
    assert "x-gateway-variant" not in response.headers
    record = await UsageRecord.objects.aget()
    assert (record.experiment, record.variant, record.route_group) == ("", "", "base")
    assert record.provider_name == "fake-anthropic"


def _seed_ratings(experiment: Experiment, *, per_variant: int, good: float, bad: float) -> None:
    rng = random.Random(42)
    for variant, share in (("mini", good), ("big", bad)):
        for n in range(per_variant):
            record = UsageRecord.objects.create(
                tenant=_tenant(), endpoint="chat.completions",
                status="success", experiment=experiment.name, variant=variant, response_id=f"r-{variant}-{n}",
                cost_usd="0.001" if variant == "mini" else "0.01", latency_ms=100 if variant == "mini" else 300,
                created_at=timezone.now() + timedelta(seconds=1),
            )
            rating = 1 if rng.random() < share else -1
            Feedback.objects.create(
                tenant_id=record.tenant_id, usage_record=record, response_id=record.response_id, source="api",
                rating=rating, rating_value=rating_value(rating=rating, score=None),
            )


def _tenant():
    from accounting.models import Tenant

    return Tenant.objects.get(slug="acme")


@pytest.mark.parametrize("per_variant, decided", [(60, True), (4, False)])
def test_readout_names_the_better_variant_only_with_enough_data(experiment, admin_client, per_variant, decided):
    _seed_ratings(experiment, per_variant=per_variant, good=0.85, bad=0.3)
    results, verdict = experiment_results(experiment)
    assert verdict.decided is decided
    assert verdict.better == ("mini" if decided else "")
    by_name = {r.name: r for r in results}
    assert by_name["mini"].rating.n == by_name["big"].rating.n == per_variant
    assert by_name["mini"].cost_per_request == pytest.approx(0.001)
    assert by_name["big"].latency_ms.mean == pytest.approx(300)

    page = admin_client.get(f"/admin/routing/experiment/{experiment.pk}/results/")
    html = page.content.decode()
    assert page.status_code == 200
    verdict_tag = re.search(r'id="experiment-verdict" class="(\w+)"\s+data-better="(\w*)"', html)
    if decided:
        assert verdict_tag.groups() == ("decided", "mini") and "is rated better" in html
    else:
        assert verdict_tag.groups() == ("undecided", "") and "not yet significant" in html


def test_statistics_match_known_values():
    assert interval([]).mean is None
    result = interval([1.0, 0.0, 1.0, 1.0])
    assert result.mean == 0.75 and result.n == 4
    assert result.low == pytest.approx(0.75 - 3.182 * 0.25) and result.high == pytest.approx(0.75 + 3.182 * 0.25)
    assert welch_p_value([1.0, 1.0], [1.0, 1.0]) == 1.0
    # Two samples 1.96 standard errors apart: p = 0.05.
    a, b = [0.0, 2.0] * 50, [0.0, 2.0] * 50
    shifted = [v + 1.96 * (2 * (1.0050251 / 100)) ** 0.5 for v in b]
    assert welch_p_value(a, shifted) == pytest.approx(0.05, abs=0.002)


def test_admin_pause_resume_stop_and_promote(experiment, admin_client):
    url = f"/admin/routing/experiment/{experiment.pk}/results/"
    admin_client.post(url, {"action": "pause"})
    experiment.refresh_from_db()
    assert experiment.status == "paused"
    admin_client.post(url, {"action": "resume"})
    experiment.refresh_from_db()
    assert experiment.status == "running"

    big = experiment.variants.get(name="big")
    admin_client.post(url, {"action": "promote", "variant": big.pk})
    experiment.refresh_from_db()
    rule = RoutingRule.objects.get(pk=experiment.rule_id)
    assert experiment.status == "promoted" and experiment.winner == big
    assert rule.group.name == "mini-vs-4o-big"
    assert [d.provider_model.alias for d in rule.group.deployments.all()] == ["gpt-4o"]
    # Over: no further action changes it.
    admin_client.post(url, {"action": "resume"})
    experiment.refresh_from_db()
    assert experiment.status == "promoted"

    other = Experiment.objects.create(name="second", rule=rule, status="stopped")
    mini = ExperimentVariant.objects.create(experiment=other, name="mini", group=RouteGroup.objects.get(name="mini"))
    response = admin_client.post(f"/admin/routing/experiment/{other.pk}/results/", {"action": "promote", "variant": mini.pk})
    assert response.status_code == 302
    rule.refresh_from_db()
    assert rule.group.name == "mini"


def test_a_variant_of_another_experiment_cannot_be_promoted(experiment, admin_client):
    rule = experiment.rule
    other = Experiment.objects.create(name="other", rule=rule, status="paused")
    foreign = ExperimentVariant.objects.create(experiment=other, name="x", model="gpt-4o")
    admin_client.post(f"/admin/routing/experiment/{experiment.pk}/results/", {"action": "promote", "variant": foreign.pk})
    experiment.refresh_from_db()
    assert experiment.status == "running"
    assert RoutingRule.objects.get(pk=rule.pk).group.name == "base"


def test_admin_hands_the_route_to_best_rated(experiment, admin_client):
    url = f"/admin/routing/experiment/{experiment.pk}/results/"
    page = admin_client.get(url).content.decode()
    assert "Adopt the winner" in page and "Hand the route to best_rated" in page
    admin_client.post(url, {"action": "hand_over"})
    experiment.refresh_from_db()
    rule = RoutingRule.objects.get(pk=experiment.rule_id)
    assert experiment.status == "handed_over" and experiment.winner is None
    assert (rule.group.name, rule.group.strategy) == ("mini-vs-4o-best-rated", "best_rated")
    # Every variant's deployments: the mini group's, and those serving the model variant.
    assert [d.provider_model.alias for d in rule.group.deployments.order_by("priority")] == ["gpt-4o-mini", "gpt-4o"]
    # Over: no further action changes it.
    admin_client.post(url, {"action": "resume"})
    experiment.refresh_from_db()
    assert experiment.status == "handed_over"
