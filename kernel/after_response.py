"""Bookkeeping that follows a tenant API response instead of preceding it.

A request's log lines and metrics (the record step's request line, the access line) describe work
that is done by the time they are taken, and nobody waits for them; before the response they
added their CPU (about a tenth of a millisecond) to every request's latency. Inside a tenant API
request (`gateway_site.api_app.ApiApplication`), `after_response` keeps them until the response
has been handed to the server, in the same task, and runs them then: a lone request's answer
leaves before them, and they still run before the request is done (a client that goes away
included). Anywhere else (WebSocket messages, Celery, tests calling a step directly) they run at
once, as before.

What must hold when the client has its answer stays before it: the UsageRecord commits first.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from contextvars import ContextVar

logger = logging.getLogger(__name__)


class _Pending(list):
    """A request's work waiting for its response; once run, later work runs at once (a task that
    copied the request's context, a stream closed late, may still call `after_response`)."""

    ran = False


_pending: ContextVar[_Pending | None] = ContextVar("gateway_after_response", default=None)


def after_response(work: Callable[[], None]) -> None:
    """Run `work` once the current tenant API response has gone to the server, or now outside one."""
    pending = _pending.get()
    if pending is None or pending.ran:
        work()
    else:
        pending.append(work)


def after_response_begin() -> _Pending:
    """Collect this task's `after_response` work from here on (the tenant API's answering task)."""
    pending = _Pending()
    _pending.set(pending)
    return pending


def after_response_run(pending: _Pending) -> None:
    """Run the collected work, each on its own: one that fails is logged and the rest still run."""
    pending.ran = True  # anything after this runs at once, in whichever context it comes
    while pending:
        work = pending.pop(0)
        try:
            work()
        except Exception:  # noqa: BLE001 - a log line or a metric must not cost the others
            logger.exception("after-response work %r failed", work)
