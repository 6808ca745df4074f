"""The best_rated strategy on the real pipeline: a scripted rater through /v1/feedback, the rollups,
the posteriors, then where traffic goes; the logged propensities and the offline replay.

Deterministic: the rater draws from its own seeded generator, and the gateway's random choices
(weighted, best_rated) come from the process's `random`, seeded here; the in-process ASGI client
runs the gateway on this test's event loop, so nothing else draws from it in between.
"""

from __future__ import annotations

import json
import random
from collections import Counter
from io import StringIO

import pytest
from asgiref.sync import sync_to_async
from django.core.management import call_command

from accounting.models import UsageRecord
from accounting.rollups import rollup_recent
from feedback.rollups import feedback_rollup_recent
from providers.models import Provider, ProviderModel
from providers.services import provider_key_upsert
from routing.breakers import BreakerPolicy, breaker_store
from routing.explain import route_explain
from routing.models import Deployment, RouteGroup, RoutePosteriors, RoutingRule, Strategy
from feedback.models import FeedbackRollup
from routing.posteriors import Posterior, QualityStats, first_choice_shares, posterior_make, posteriors_refresh
from routing.replay import ReplayError, ips_estimate, route_group_find, routing_replay, snips_estimate
from routing.strategies import STRATEGIES
from routing.selectors import routing_table_get
from tests.asgi_client import ApiClient

pytestmark = pytest.mark.django_db(transaction=True)

QUALITY = {"fake": 0.8, "fake-b": 0.3}  # the chance each deployment's answer is rated up
LOGGED = 160  # requests under uniform-random routing, each rated


@pytest.fixture
def route(gateway):
    """Route `chat`: the same model at two providers, chosen uniformly at random (weighted 1:1)."""
    other = Provider.objects.create(name="fake-b", type="openai", api_base=gateway.provider.api_base)
    provider_key_upsert(provider=other, name="default", secret="sk-fake-provider-secret-0003")
    ProviderModel.objects.create(
        provider=other, alias="gpt-4o-mini", upstream_model="gpt-4o-mini-2024-07-18",
        input_price_per_million="0.15", output_price_per_million="0.60",
    )
    group = RouteGroup.objects.create(
        name="chat", strategy=Strategy.WEIGHTED, breaker_failure_threshold=1, breaker_cooldown_seconds=3600,
    )
    for model in ProviderModel.objects.filter(upstream_model="gpt-4o-mini-2024-07-18").order_by("pk"):
        Deployment.objects.create(group=group, provider_model=model, weight=1)
    RoutingRule.objects.create(name="chat", model="chat", group=group)
    return group


async def ask(gateway) -> str:
    """One chat request to the route; the provider that served it."""
    response = await ApiClient().post(
        "/v1/chat/completions",
        json.dumps({"model": "chat", "messages": [{"role": "user", "content": "Say hi"}], "max_tokens": 20}),
        content_type="application/json", headers=gateway.auth,
    )
    assert response.status_code == 200, response.content
    return response.headers["x-gateway-provider"], response.json()["id"]


async def rate(gateway, rater: random.Random, provider: str, response_id: str) -> None:
    thumb = 1 if rater.random() < QUALITY[provider] else -1
    response = await ApiClient().post(
        "/v1/feedback", json.dumps({"response_id": response_id, "rating": thumb}),
        content_type="application/json", headers=gateway.auth,
    )
    assert response.status_code in (200, 201), response.content


async def served(gateway, n: int) -> Counter:
    return Counter([(await ask(gateway))[0] for _ in range(n)])


@sync_to_async
def rollups_run() -> None:
    feedback_rollup_recent()
    rollup_recent()
    posteriors_refresh()


@sync_to_async
def group_update(group: RouteGroup, **fields) -> None:
    RouteGroup.objects.filter(pk=group.pk).update(**fields)
    RouteGroup.objects.get(pk=group.pk).save()  # through save(): the routing table reloads


async def test_best_rated_learns_from_ratings_and_replay_agrees(route, gateway, admin_client):
    random.seed(27)
    rater = random.Random(2027)
    for _ in range(LOGGED):
        provider, response_id = await ask(gateway)
        await rate(gateway, rater, provider, response_id)
    logged = [r async for r in UsageRecord.objects.filter(route_group="chat")]
    assert {(r.routing_strategy, r.routing_propensity) for r in logged} == {("weighted", 0.5)}
    assert set(Counter(r.provider_name for r in logged)) == {"fake", "fake-b"}

    # The replay of a policy that always sends to `fake`, from the uniform-random log, against
    # the true mean of its rater.
    await rollups_run()
    replay = await sync_to_async(routing_replay)(group=route, strategy="fallback")
    assert replay.logged == LOGGED and replay.policy["fake:gpt-4o-mini-2024-07-18"] == 1.0
    for estimate in (replay.rating_ips, replay.rating_snips):
        assert estimate.low <= QUALITY["fake"] <= estimate.high, replay.lines()
    assert 60 < replay.rating_snips.ess <= 100  # about half the log is worth anything to it

    # Handed to best_rated: the better deployment gets most requests, the worse one still some.
    await group_update(route, strategy=Strategy.BEST_RATED)
    await rollups_run()
    counts = await served(gateway, 200)
    assert counts["fake"] >= 160 and counts["fake-b"] >= 1, counts
    recent = [r async for r in UsageRecord.objects.filter(routing_strategy="best_rated")]
    propensity = {r.provider_name: round(r.routing_propensity, 2) for r in recent}
    assert propensity["fake"] >= 0.9 and 0.05 <= propensity["fake-b"] < 0.1, propensity

    # The replay of best_rated (its current posteriors) on the uniform log agrees with the truth.
    replay = await sync_to_async(routing_replay)(group=await RouteGroup.objects.aget(pk=route.pk), days=1)
    assert replay.strategy == "best_rated" and replay.logged == LOGGED + 200, replay.lines()
    share = replay.policy["fake:gpt-4o-mini-2024-07-18"]
    assert share == pytest.approx(0.95, abs=0.01)
    truth = share * QUALITY["fake"] + (1 - share) * QUALITY["fake-b"]
    assert replay.rating_snips.low <= truth <= replay.rating_snips.high, replay.lines()
    out = StringIO()
    await sync_to_async(call_command)("routing_replay", "--route", "chat", "--days", "1", stdout=out)
    assert "mean rating, self-normalised IPS: 0." in out.getvalue() and "effective" in out.getvalue()
    page = await sync_to_async(admin_client.get)(f"/admin/routing/routegroup/{route.pk}/change/")
    assert page.status_code == 200 and "replay of best_rated (lambda 0)" in page.content.decode()
    explained = await sync_to_async(route_explain)(tenant=gateway.tenant, model="chat")
    assert "best_rated: tenant posteriors" in "\n".join(explained.lines())  # acme: 160 ratings

    # The better one's breaker open: traffic goes to the other.
    fake = await Deployment.objects.select_related("provider_model__provider").aget(
        group=route, provider_model__provider__name="fake"
    )
    key = await _deployment_key("fake")
    await breaker_store().record_failure(key, policy=BreakerPolicy(failure_threshold=1, cooldown_seconds=3600))
    assert await served(gateway, 20) == Counter({"fake-b": 20})
    await breaker_store().reset(key)

    # Lambda high and the better one ten times dearer: traffic moves to the cheaper one.
    await sync_to_async(ProviderModel.objects.filter(pk=fake.provider_model_id).update)(
        input_price_per_million="1.50", output_price_per_million="6.00"
    )
    await sync_to_async(lambda: ProviderModel.objects.get(pk=fake.provider_model_id).save())()
    await rollups_run()
    costs = (await RoutePosteriors.objects.aget(group=route)).data["costs"]
    dear, cheap = costs["fake:gpt-4o-mini-2024-07-18"], costs["fake-b:gpt-4o-mini-2024-07-18"]
    assert dear == pytest.approx(10 * cheap, rel=0.05)
    await group_update(route, best_rated_lambda=2.0 / (dear - cheap))  # the cost gap: 2 rating points
    await rollups_run()
    counts = await served(gateway, 50)
    assert counts["fake-b"] >= 44, counts


async def _deployment_key(provider: str) -> str:
    table = await routing_table_get()
    rule = next(rule for rule in table.rules if rule.name == "chat")
    return next(d.key for d in rule.group.deployments if d.target.provider_name == provider)


# --- pieces, without requests ------------------------------------------------------------------------
def test_first_choice_shares_keep_the_floor_and_sum_to_one():
    good, bad = Posterior("beta", 81, 21, 100), Posterior("beta", 31, 71, 100)
    shares = first_choice_shares([("a", good, 0.0), ("b", bad, 0.0)], lam=0.0, min_share=0.05)
    assert shares == pytest.approx({"a": 0.95, "b": 0.05}, abs=1e-9)
    # The same posteriors give the same shares (seeded), and cost moves them.
    assert first_choice_shares([("a", good, 0.0), ("b", bad, 0.0)], lam=0.0, min_share=0.05) == shares
    dear = first_choice_shares([("a", good, 0.01), ("b", bad, 0.001)], lam=100.0, min_share=0.05)
    assert dear["b"] == pytest.approx(0.95, abs=1e-9)
    # A floor larger than an equal split is an equal split.
    assert first_choice_shares([("a", good, 0.0), ("b", bad, 0.0)], lam=0.0, min_share=0.9) == {"a": 0.5, "b": 0.5}


def test_first_choice_shares_are_the_chances_that_each_draw_wins():
    arms = [("a", Posterior("beta", 12, 10, 20), 0.0), ("b", Posterior("beta", 10, 10, 18), 0.0),
            ("c", Posterior("normal", 0.55, 0.08, 20), 0.002)]
    exact = first_choice_shares(arms, lam=20.0, min_share=0.0)
    rng, wins = random.Random(5), Counter()
    for _ in range(20_000):  # seeded: the same draws every run
        wins[max(arms, key=lambda arm: arm[1].sample(rng) - 20.0 * arm[2])[0]] += 1
    assert sum(exact.values()) == pytest.approx(1.0)
    for key, share in exact.items():
        assert share == pytest.approx(wins[key] / 20_000, abs=0.01)


def test_normal_posterior_of_scores():
    stats = QualityStats(n=4, total=3.0, sumsq=2.5)  # values 1, 0.75, 0.75, 0.5
    posterior = posterior_make(stats, beta=False, prior=(0.5, 0.25))
    assert posterior.kind == "normal" and posterior.n == 4
    assert posterior.mean == pytest.approx(3.5 / 5)
    low, high = posterior.interval()
    assert low < posterior.mean < high
    assert posterior_make(QualityStats(), beta=False, prior=(0.5, 0.25)).sd == pytest.approx(0.5)


def test_ips_estimates_known_values():
    pairs = [(2.0, 1.0), (2.0, 0.0), (0.0, 1.0), (0.0, 0.0)]
    ips, snips = ips_estimate(pairs), snips_estimate(pairs)
    assert ips.mean == pytest.approx(0.5) and snips.mean == pytest.approx(0.5)
    assert snips.ess == pytest.approx(2.0) and ips.n == 4
    assert snips.low < 0.5 < snips.high
    assert ips_estimate([]).mean is None and snips_estimate([(0.0, 1.0)]).mean is None


async def test_every_strategy_says_how_likely_its_first_choice_was():
    from tests.routing.test_strategies import deployment

    three = [deployment("a", model_id=1, weight=3), deployment("b", model_id=2, weight=1),
             deployment("c", model_id=3, weight=0)]
    assert (await STRATEGIES["fallback"](three, group="g")).shares == {"1:1": 1.0}
    assert (await STRATEGIES["round_robin"](three, group="g")).shares == pytest.approx(
        {"1:1": 1 / 3, "2:2": 1 / 3, "3:3": 1 / 3})
    assert (await STRATEGIES["weighted"](three, group="g")).shares == {"1:1": 0.75, "2:2": 0.25, "3:3": 0.0}
    ranking = await STRATEGIES["lowest_cost"](three, group="g", prompt_tokens=10, completion_tokens=10)
    assert ranking.shares == {ranking.deployments[0].key: 1.0}


def _rollup_rows(group: str, tenant, *, target: str, up: int, down: int) -> None:
    from django.utils import timezone

    FeedbackRollup.objects.create(
        granularity="day", bucket_start=timezone.now().replace(hour=0, minute=0, second=0, microsecond=0),
        tenant=tenant, dimension="deployment", value=f"{group}/{target}", feedback=up + down, ratings=up + down,
        rating_sum=float(up), rating_sumsq=float(up), thumbs_up=up, thumbs_down=down,
    )


def test_tenant_posteriors_need_min_ratings_and_stale_ones_stay_in_use(route, gateway):
    from datetime import timedelta

    from accounting.services import tenant_create
    from django.utils import timezone

    RouteGroup.objects.filter(pk=route.pk).update(strategy=Strategy.BEST_RATED, best_rated_min_ratings=30)
    other = tenant_create(slug="globex", name="Globex")
    a, b = "fake:gpt-4o-mini-2024-07-18", "fake-b:gpt-4o-mini-2024-07-18"
    _rollup_rows("chat", gateway.tenant, target=a, up=40, down=10)
    _rollup_rows("chat", gateway.tenant, target=b, up=5, down=45)
    _rollup_rows("chat", other, target=a, up=2, down=8)  # 20 ratings: below min_ratings
    _rollup_rows("chat", other, target=b, up=8, down=2)
    posteriors_refresh(now=timezone.now() - timedelta(minutes=15))  # and the beat stops
    data = RoutePosteriors.objects.get(group=route).data
    assert set(data["scopes"]) == {"", str(gateway.tenant.pk)}
    assert data["scopes"][""][a][:4] == ["beta", 43.0, 19.0, 60]  # every tenant's ratings together
    assert data["scopes"][str(gateway.tenant.pk)][a][:4] == ["beta", 41.0, 11.0, 50]

    for tenant, scope in ((gateway.tenant, "tenant"), (other, "global")):
        lines = route_explain(tenant=tenant, model="chat").lines()
        text = "\n".join(lines)
        assert f"best_rated: {scope} posteriors, computed" in text, text
        assert "s ago" in text and "mean=" in text and "95%=[" in text and "sampled=" in text
        assert "cost_term=" in text and "share=" in text


def test_replay_refuses_what_it_cannot_replay(route):
    with pytest.raises(ReplayError, match="cannot be replayed"):
        routing_replay(group=route, strategy="lowest_latency")
    with pytest.raises(ReplayError, match="No route named"):
        route_group_find("nope")
    assert route_group_find("chat") == route
    from django.core.management import CommandError

    with pytest.raises(CommandError, match="cannot be replayed"):
        call_command("routing_replay", "--route", "chat", "--strategy", "least_busy", stdout=StringIO())
