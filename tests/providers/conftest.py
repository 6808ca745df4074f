"""The adapters' wire tests: a scripted provider over real sockets (`upstream.py`), and the
client production sends through (`providers.transport.UpstreamClient`)."""

from __future__ import annotations

import pytest

from providers.transport import Timeouts, UpstreamClient
from tests.providers.upstream import UPSTREAM, Upstream


@pytest.fixture
def upstream() -> Upstream:
    UPSTREAM.reset()
    yield UPSTREAM
    UPSTREAM.reset()


@pytest.fixture
async def client() -> UpstreamClient:
    client = UpstreamClient(timeouts=Timeouts(connect=2.0, read=5.0, pool=5.0))
    yield client
    await client.aclose()
