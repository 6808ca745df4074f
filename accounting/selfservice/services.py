"""Writes of the tenant self-service pages, each in one transaction with its audit entries.

Every change goes through the model's `save()` or `delete()`, so the configuration generation is
raised in the same transaction (`kernel.config_generation`): a revoked or rotated key, a changed
budget or rate limit, a removed member is seen by every process's caches as the admin's and the
operator API's changes are.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime
from decimal import Decimal

from django.contrib.auth import get_user_model
from django.contrib.auth.tokens import default_token_generator
from django.core.exceptions import ValidationError
from django.core.mail import send_mail
from django.db import transaction
from django.urls import reverse
from django.utils.encoding import force_bytes
from django.utils.http import urlsafe_base64_encode

from accounting.configuration import DEFAULT_THRESHOLDS
from accounting.models import Budget, Period, RateLimit, Tenant, TenantApiKey, TenantMembership
from accounting.services import api_key_create, api_key_revoke, api_key_rotate
from audit.models import AuditEntry
from audit.services import audit_record

VIA = AuditEntry.Via.DASHBOARD


@dataclass(frozen=True)
class KeyLimits:
    """A key's own budgets (amount per period, None for none) and rate limits (None for none)."""

    budgets: dict[str, Decimal | None] = field(default_factory=dict)
    rpm: int | None = None
    tpm: int | None = None


def _audit(action: str, obj, user, fields=()) -> None:
    audit_record(action=action, obj=obj, via=VIA, user=user, changed_fields=fields)


# --- keys -----------------------------------------------------------------------------------------
@transaction.atomic
def tenant_key_create(
    *, tenant: Tenant, user, name: str, allowed_models: list[str], expires_at: datetime | None,
    limits: KeyLimits,
) -> tuple[TenantApiKey, str]:
    """A new key of `tenant` with its budgets and rate limits; returns it with its plaintext."""
    key, raw_key = api_key_create(tenant=tenant, name=name, allowed_models=allowed_models, expires_at=expires_at)
    _audit("created", key, user, ["name", "allowed_models", "expires_at"])
    tenant_key_limits_set(key=key, user=user, limits=limits)
    return key, raw_key


@transaction.atomic
def tenant_key_limits_set(*, key: TenantApiKey, user, limits: KeyLimits) -> list[str]:
    """Make the key's own budgets and rate limits those of `limits`; returns what changed.

    A budget given an amount is created (hard, alerting at 50, 80 and 100 %) or has its amount
    changed (an operator's hard/soft choice and alert channels are kept); a budget left empty is
    disabled, not deleted, so that its periods' history stays and requests in flight settle on it.
    """
    changed = [_budget_set(key, user, period, limits.budgets.get(period)) for period in Period.values]
    changed.append(_rate_limit_set(key, user, limits.rpm, limits.tpm))
    return [item for item in changed if item]


def _budget_set(key: TenantApiKey, user, period: str, amount: Decimal | None) -> str:
    budget = Budget.objects.select_for_update().filter(tenant_id=key.tenant_id, api_key=key, period=period).first()
    if budget is None:
        if amount is None:
            return ""
        budget = Budget.objects.create(
            tenant_id=key.tenant_id, api_key=key, period=period, amount_usd=amount, hard=True,
            alert_thresholds=list(DEFAULT_THRESHOLDS),
        )
        _audit("created", budget, user, ["amount_usd", "period", "hard"])
        return f"{period} budget"
    wanted = (amount, True) if amount is not None else (budget.amount_usd, False)
    fields = [name for name, value in zip(("amount_usd", "enabled"), wanted) if getattr(budget, name) != value]
    if not fields:
        return ""
    budget.amount_usd, budget.enabled = wanted
    budget.save(update_fields=[*fields, "updated_at"])
    _audit("changed", budget, user, fields)
    return f"{period} budget"


def _rate_limit_set(key: TenantApiKey, user, rpm: int | None, tpm: int | None) -> str:
    limit = RateLimit.objects.select_for_update().filter(tenant_id=key.tenant_id, api_key=key).first()
    if limit is None and rpm is None and tpm is None:
        return ""
    if limit is None:
        limit = RateLimit.objects.create(tenant_id=key.tenant_id, api_key=key, rpm=rpm, tpm=tpm)
        _audit("created", limit, user, ["rpm", "tpm"])
        return "rate limits"
    if rpm is None and tpm is None:
        _audit("deleted", limit, user)
        limit.delete()
        return "rate limits"
    fields = [name for name, value in (("rpm", rpm), ("tpm", tpm)) if getattr(limit, name) != value]
    if fields:
        limit.rpm, limit.tpm = rpm, tpm
        limit.save(update_fields=fields)
        _audit("changed", limit, user, fields)
        return "rate limits"
    return ""


@transaction.atomic
def tenant_key_revoke(*, key: TenantApiKey, user) -> bool:
    """Revoke the key (at once, in every process, as the admin's revocation); False if it was."""
    if key.revoked:
        return False
    api_key_revoke(key=key)
    _audit("revoked", key, user, ["revoked"])
    return True


@transaction.atomic
def tenant_key_rotate(*, key: TenantApiKey, user) -> str:
    """A new secret for the key (the old one stops working at once); returns its plaintext."""
    if key.revoked:
        raise ValidationError("A revoked key cannot be rotated; create a new key.")
    raw_key = api_key_rotate(key=key)
    _audit("rotated", key, user, ["secret"])
    return raw_key


# --- members --------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Invitation:
    membership: TenantMembership
    new_user: bool  # an account was made for the address: it needs a password (the email's link)


@transaction.atomic
def member_invite(*, tenant: Tenant, user, email: str, role: str) -> Invitation:
    """Make the account with this address (or username) a member of `tenant`, creating the
    account, without a usable password, when there is none."""
    User = get_user_model()
    email = email.strip()
    account = (User.objects.select_for_update().filter(email__iexact=email).order_by("pk").first()
               or User.objects.select_for_update().filter(username__iexact=email).order_by("pk").first())
    new_user = account is None
    if new_user:
        account = User.objects.create_user(username=email.lower(), email=email.lower())  # no password
        _audit("created", account, user, ["username", "email"])
    elif account.is_staff or TenantMembership.objects.filter(user=account).exists():
        # The same words whether it is this tenant, another, or an operator's account: the page
        # never tells which. Operators' accounts are given to tenants by operators only.
        raise ValidationError(f"{email} cannot be added here; an operator can add them.")
    membership = TenantMembership.objects.create(user=account, tenant=tenant, role=role)
    _audit("created", membership, user, ["user", "tenant", "role"])
    return Invitation(membership=membership, new_user=new_user)


def member_invitation_send(*, invitation: Invitation, tenant: Tenant, base_url: str) -> None:
    """Email the new member: a link to choose a password (Django's password reset confirmation,
    valid for `PASSWORD_RESET_TIMEOUT`) for a new account, the dashboard's address otherwise."""
    account = invitation.membership.user
    if not account.email:
        return
    lines = [f"You were added to the tenant {tenant.name or tenant.slug} on the LLM gateway."]
    if invitation.new_user:
        token = default_token_generator.make_token(account)
        uid = urlsafe_base64_encode(force_bytes(account.pk))
        link = base_url + reverse("password_reset_confirm", kwargs={"uidb64": uid, "token": token})
        lines.append(f"Choose your password here: {link}")
        lines.append(f"Your username is {account.get_username()}.")
    lines.append(f"Then sign in: {base_url}{reverse('dashboard:tenant', kwargs={'slug': tenant.slug})}")
    send_mail(f"Your access to {tenant.slug} on the LLM gateway", "\n\n".join(lines), None, [account.email])


def _not_yourself(membership: TenantMembership, user) -> None:
    if membership.user_id == user.pk:
        raise ValidationError("You cannot change your own membership; ask another admin of the tenant.")


@transaction.atomic
def member_role_set(*, membership: TenantMembership, user, role: str) -> bool:
    _not_yourself(membership, user)
    if membership.role == role:
        return False
    membership.role = role
    membership.save(update_fields=["role"])
    _audit("changed", membership, user, ["role"])
    return True


@transaction.atomic
def member_remove(*, membership: TenantMembership, user) -> None:
    """End the membership: the account stays, and sees no tenant any more (its open playground
    sockets are refused at their next request, `accounting.members`)."""
    _not_yourself(membership, user)
    _audit("deleted", membership, user)
    membership.delete()


# --- the tenant -----------------------------------------------------------------------------------
@transaction.atomic
def tenant_retention_set(*, tenant: Tenant, user, keep_content: bool, content_retention_days: int) -> list[str]:
    fields = [name for name, value in (("keep_content", keep_content),
                                       ("content_retention_days", content_retention_days))
              if getattr(tenant, name) != value]
    if fields:
        tenant.keep_content, tenant.content_retention_days = keep_content, content_retention_days
        tenant.save(update_fields=fields)
        _audit("changed", tenant, user, fields)
    return fields
