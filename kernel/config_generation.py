"""The configuration generation: how every process learns that the configuration changed.

One counter (`kernel.models.ConfigGeneration`, one row) is raised by one receiver of
`post_save`, `post_delete` and `m2m_changed` for every model in `CONFIGURATION_MODELS`, inside
the transaction that makes the change: the new data and the new generation commit together,
whatever wrote them (the admin, the operator API, `manage.py import_config`, a service, a
future self-service page). Nobody has to know which caches a change touches.

Each process keeps a `Generation`, shared by all its `ConfigCache`s, which tag every value with
the generation it was loaded under and load again when it changed:

- a change made in this process raises the local generation at once (and again on commit), so
  the process's next request sees it without reading anything;
- changes made elsewhere are read from the counter: at most once per
  `GATEWAY_CONFIG_CACHE_SECONDS` a request waits for that one-row read; past half of it, the read
  runs in the background while requests go on, so a busy process never waits for it.

A write that bypasses the model signals (`QuerySet.update()`, raw SQL) does not raise it;
`ConfigCache` refreshes its values every `REFRESH_SECONDS` for those.
"""

from __future__ import annotations

import asyncio
import logging
import math
import threading
import time
from collections.abc import Callable

from django.apps import apps
from django.conf import settings
from django.contrib.auth import SESSION_KEY
from django.contrib.auth.signals import user_logged_out
from django.db import DatabaseError, InterfaceError, transaction
from django.db.models import F
from django.db.models.signals import m2m_changed, post_delete, post_save

from kernel.db_executor import db_call
from kernel.loops import PerLoop, background

logger = logging.getLogger(__name__)

# Every model a `ConfigCache` loads from (tests/gateway_site/test_config_generation.py checks the
# queries of every cache's load against it). Their many-to-many tables count too.
CONFIGURATION_MODELS = (
    "accounting.Tenant",
    "accounting.TenantApiKey",
    "accounting.TenantMembership",
    "accounting.Budget",
    "accounting.RateLimit",
    "providers.Provider",
    "providers.ProviderModel",
    "providers.ProviderKey",
    "providers.ModelPrice",
    "routing.RouteGroup",
    "routing.Deployment",
    "routing.RoutingRule",
    "routing.Experiment",
    "routing.ExperimentVariant",
    "guardrails.GuardrailPolicy",
    "guardrails.GuardrailRule",
    "caching.CachePolicy",
    settings.AUTH_USER_MODEL,  # a member deactivated or given a new password
    "sessions.Session",  # a member's session ended (deletes only, see `_session_ended`)
)
# Saves that change only these fields change nothing a cache holds (a login touches last_login).
BOOKKEEPING_FIELDS = frozenset({"last_login", "last_used_at"})


def _counter_model():
    return apps.get_model("kernel", "ConfigGeneration")


def counter_read() -> int | None:
    model = _counter_model()
    return model.objects.filter(pk=model.ROW).values_list("value", flat=True).first()


class Generation:
    """What one process knows of the configuration generation, shared by its caches.

    The generation a cache tags its values with is a local number, raised each time the process
    learns of a change (its own, or a new value of the counter): comparing it is all a cache hit
    costs.
    """

    def __init__(
        self, *, read: Callable[[], int | None] | None = None, clock: Callable[[], float] = time.monotonic
    ) -> None:
        self.read = read or counter_read  # the counter's value: the database's, or a test's
        self.clock = clock
        self._version = 0
        self._lock = threading.Lock()
        self._counter: int | None = None  # the counter's value at the last read
        self._checked_at = -math.inf  # time.monotonic() when that read started
        self._failing = False
        self._reads: PerLoop[dict] = PerLoop(dict)

    def changed(self) -> None:
        """A change in this process: every value loaded before now is stale."""
        with self._lock:
            self._version += 1

    def seen(self) -> int:
        """The generation as this process last learned it, without reading anything."""
        return self._version

    def known(self) -> int | None:
        """The generation, if what the process knows is recent enough to serve; None when the
        caller must wait for a read (`current`). Past half the interval it starts one."""
        interval = settings.GATEWAY_CONFIG_CACHE_SECONDS
        age = self.clock() - self._checked_at
        if age >= interval / 2:
            if age >= interval and not self._failing:
                return None
            self._read_start()
        return self._version

    async def current(self) -> int:
        known = self.known()
        if known is None:
            await asyncio.shield(self._read_start())
        return self._version

    def _read_start(self) -> asyncio.Future:
        """The running loop's read of the counter, started unless one is running."""
        reads = self._reads.get()
        task = reads.get("task")
        if task is None or task.done():
            task = reads["task"] = background(self._read(), what="reading the configuration generation")
        return task

    async def _read(self) -> None:
        started = self.clock()
        try:
            counter = await db_call(self.read)
        except (DatabaseError, InterfaceError):
            # An outage: keep serving what is cached (as a failed refresh does), try again past
            # half the interval, and make no request wait for a read until one succeeds.
            if not self._failing:
                logger.warning("reading the configuration generation failed; serving cached configuration")
            self._failing = True
            counter = self._counter
        else:
            self._failing = False
        with self._lock:
            if counter != self._counter:
                self._counter = counter
                self._version += 1
            self._checked_at = max(self._checked_at, started)


generation = Generation()  # this process's, shared by every ConfigCache


def config_generation_bump(*, using: str = "default") -> None:
    """Raise the counter in the current transaction, and this process's generation now and once
    the transaction commits (a request served between the two may have loaded the old data)."""
    model = _counter_model()
    generation.changed()
    transaction.on_commit(generation.changed, using=using)
    if not model.objects.using(using).filter(pk=model.ROW).update(value=F("value") + 1):
        # The row is gone (a test's flush empties every table): start again.
        model.objects.using(using).get_or_create(pk=model.ROW, defaults={"value": 1})


def _saved(sender, *, using: str, update_fields=None, raw: bool = False, **kwargs) -> None:
    if raw or (update_fields is not None and set(update_fields) <= BOOKKEEPING_FIELDS):
        return
    config_generation_bump(using=using)


def _deleted(sender, *, using: str, **kwargs) -> None:
    config_generation_bump(using=using)


def _session_ended(sender, *, instance, using: str, **kwargs) -> None:
    """A session that logged nobody in (the one a login replaces) is in no member's cache."""
    if SESSION_KEY in instance.get_decoded():
        config_generation_bump(using=using)


def _relations_changed(sender, *, action: str, using: str, **kwargs) -> None:
    if action in ("post_add", "post_remove", "post_clear"):
        config_generation_bump(using=using)


def _logged_out(sender, **kwargs) -> None:
    """Whatever the session engine, a logout ends the member's sessions in every cache."""
    config_generation_bump()


def configuration_models() -> list:
    return [apps.get_model(label) for label in CONFIGURATION_MODELS]


def config_signals_connect() -> None:
    """Connect the receivers (once, from `GatewaySiteConfig.ready`)."""
    session = apps.get_model("sessions.Session")
    for model in configuration_models():
        name = model._meta.label
        if model is session:
            post_delete.connect(_session_ended, sender=model, dispatch_uid=f"config-generation-del-{name}")
            continue
        post_save.connect(_saved, sender=model, dispatch_uid=f"config-generation-{name}")
        post_delete.connect(_deleted, sender=model, dispatch_uid=f"config-generation-del-{name}")
        for field in model._meta.many_to_many:
            through = field.remote_field.through
            m2m_changed.connect(
                _relations_changed, sender=through, dispatch_uid=f"config-generation-m2m-{through._meta.label}"
            )
    user_logged_out.connect(_logged_out, dispatch_uid="config-generation-logout")
