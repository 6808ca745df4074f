"""A worker that starts serving has loaded what requests need and frozen that heap out of the
cyclic garbage collector's scans (gateway_site.supervisor.worker_ready)."""

from __future__ import annotations

import gc
import os
import subprocess
import sys

from accounting import tokens
from gateway_site.supervisor import worker_ready
from tests.conftest import ROOT


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


WORKER_LOAD = """
import sys
from gateway_site.supervisor import worker_imports_skip, worker_ready
worker_imports_skip()
import gateway_site.asgi
worker_ready()
loaded = sorted(name for name in ("requests", "rich", "urllib3") if name in sys.modules)
import requests  # allowed again once the worker serves
print("loaded:", ",".join(loaded), "requests:", requests.__name__)
"""


def test_a_worker_loads_without_the_optional_imports_it_never_uses():
    """DRF's `requests` and httpx's command-line client (rich) stay out of a worker's heap (several MB),
    and importing them still works once the worker serves."""
    env = {**os.environ, "GATEWAY_READY_FD": ""}
    done = subprocess.run([sys.executable, "-c", WORKER_LOAD], cwd=ROOT, env=env, capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip().splitlines()[-1] == "loaded:  requests: requests"
