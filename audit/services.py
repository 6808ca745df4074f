"""Writes of the audit log: one `audit_record` call per configuration change."""

from __future__ import annotations

from collections.abc import Iterable

from django.db import models

from audit.models import AuditEntry

# Stored forms of secrets: not even their names are listed (a changed hash is a rotation).
HIDDEN_FIELDS = frozenset({"hashed_key", "encrypted_secret"})


def audit_actor(user) -> str:
    if user is None or not getattr(user, "is_authenticated", False):
        return ""
    return user.get_username()


def audit_record(
    *,
    action: str,
    obj: models.Model,
    via: str,
    user=None,
    actor: str = "",
    changed_fields: Iterable[str] = (),
    object_id: object = None,
) -> AuditEntry:
    """Record one change of `obj`. `changed_fields` are field names; values are never taken.

    `object_id` is for deletions, where the instance has already lost its primary key.
    """
    user = user if getattr(user, "is_authenticated", False) else None
    return AuditEntry.objects.create(
        user=user,
        actor=(actor or audit_actor(user) or via)[:200],
        via=via,
        action=action,
        object_type=obj._meta.label_lower,
        object_id=str(obj.pk if object_id is None else object_id),
        object_repr=str(obj)[:200],
        changed_fields=sorted({str(name) for name in changed_fields} - HIDDEN_FIELDS),
    )


def audit_update_action(*, obj: models.Model, changed_fields: Iterable[str]) -> str:
    """The action a change amounts to: a new secret is a rotation, setting `revoked` a revocation."""
    changed = set(changed_fields)
    if "secret" in changed:
        return AuditEntry.Action.ROTATED
    if "revoked" in changed and getattr(obj, "revoked", False):
        return AuditEntry.Action.REVOKED
    return AuditEntry.Action.CHANGED
