"""A worker that starts serving has loaded what requests need and frozen that heap out of the
cyclic garbage collector's scans (gateway_site.supervisor.worker_ready)."""

from __future__ import annotations

import gc

from accounting import tokens
from gateway_site.supervisor import worker_ready


def test_a_worker_that_serves_has_its_loaded_heap_frozen(monkeypatch):
    monkeypatch.delenv("GATEWAY_READY_FD", raising=False)
    gc.unfreeze()
    tokens._encoding.cache_clear()
    try:
        assert gc.get_freeze_count() == 0
        worker_ready()
        assert tokens._encoding.cache_info().currsize == 1  # the token tables loaded before the freeze
        assert gc.get_freeze_count() > 10_000  # modules, settings, URLconf: out of every collection
    finally:
        gc.unfreeze()
