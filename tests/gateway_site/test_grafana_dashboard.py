"""docs/grafana-dashboard.json queries only metrics that /metrics exposes."""

from __future__ import annotations

import json
import re

import pytest
from django.test import AsyncClient

from tests.conftest import ROOT

pytestmark = pytest.mark.django_db(transaction=True)


async def test_every_metric_the_dashboard_queries_is_exposed(gateway):
    dashboard = json.loads((ROOT / "docs" / "grafana-dashboard.json").read_text())
    text = (await AsyncClient().get("/metrics")).content.decode()
    types = dict(re.findall(r"^# TYPE (\S+) (\w+)$", text, flags=re.M))
    queried = set()
    for panel in dashboard["panels"]:
        assert panel["targets"], panel["title"]
        for target in panel["targets"]:
            queried |= set(re.findall(r"\bgateway_[a-z_]+", target["expr"]))
    assert len(queried) >= 14
    for name in sorted(queried):
        family = re.sub(r"_(bucket|count|sum)$", "", name)
        assert name in types or types.get(family) == "histogram", f"{name} is not exposed"
