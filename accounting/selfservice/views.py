"""The self-service pages: `/dashboard/<slug>/keys/`, a key's page, `members/` and `settings/`.

Who may do what: every member of the tenant (and an operator who sees every tenant) may open the
pages; only the tenant's `admin` members may post to them, anyone else gets 403. Another tenant,
or another tenant's key or member, is a 404, exactly as on the dashboards, so that a page never
tells whether it exists. Every form carries Django's CSRF token, and no page is cached: a new
key's secret is in the answer to the post that made it, shown once.
"""

from __future__ import annotations

from django.contrib import messages
from django.contrib.auth.decorators import login_required
from django.core.exceptions import PermissionDenied, ValidationError
from django.http import HttpRequest, HttpResponse
from django.shortcuts import get_object_or_404, redirect, render
from django.views.decorators.cache import never_cache
from django.views.decorators.http import require_http_methods, require_POST

from accounting import dashboards
from accounting.models import Tenant, TenantApiKey, TenantMembership
from accounting.quotas import rate_limit_states
from accounting.selfservice import services
from accounting.selfservice.forms import InviteForm, KeyCreateForm, KeyLimitsForm, RetentionForm, RoleForm
from accounting.views import budget_view, tenant_for
from providers.models import ProviderModel

ADMINS_ONLY = "Only the tenant's admins may change this."


def _manages(request: HttpRequest, tenant: Tenant) -> bool:
    return TenantMembership.objects.filter(
        user=request.user, tenant=tenant, role=TenantMembership.Role.ADMIN,
    ).exists()


def tenant_admin_for(request: HttpRequest, slug: str) -> Tenant:
    """The tenant `slug` when the user is one of its admins; 404 for a tenant they cannot see,
    403 for one they only view."""
    tenant = tenant_for(request, slug)
    if not _manages(request, tenant):
        raise PermissionDenied(ADMINS_ONLY)
    return tenant


def _page(request: HttpRequest, template: str, tenant: Tenant, context: dict, *, status: int = 200) -> HttpResponse:
    return render(request, template, {
        "tenant": tenant, "can_manage": _manages(request, tenant), **context,
    }, status=status)


# --- keys -----------------------------------------------------------------------------------------
def _keys_page(request: HttpRequest, tenant: Tenant, form: KeyCreateForm, *, new_key=None, status=200) -> HttpResponse:
    keys = tenant.api_keys.order_by("revoked", "-created_at").prefetch_related("budgets", "rate_limits")
    models = sorted(set(ProviderModel.objects.values_list("alias", flat=True)))
    return _page(request, "dashboard/keys.html", tenant, {
        "keys": keys, "form": form, "new_key": new_key, "known_models": models,
    }, status=status)


@never_cache
@login_required
@require_http_methods(["GET", "POST"])
def keys(request: HttpRequest, slug: str) -> HttpResponse:
    if request.method == "GET":
        return _keys_page(request, tenant_for(request, slug), KeyCreateForm())
    tenant = tenant_admin_for(request, slug)
    form = KeyCreateForm(request.POST)
    if not form.is_valid():
        return _keys_page(request, tenant, form, status=400)
    key, raw_key = services.tenant_key_create(
        tenant=tenant, user=request.user, name=form.cleaned_data["name"],
        allowed_models=form.cleaned_data["allowed_models"], expires_at=form.cleaned_data["expires_at"],
        limits=form.limits(),
    )
    return _keys_page(request, tenant, KeyCreateForm(), new_key={"key": key, "secret": raw_key}, status=201)


def _tenant_key(tenant: Tenant, key_id: int) -> TenantApiKey:
    return get_object_or_404(TenantApiKey, tenant=tenant, pk=key_id)


def _key_page(request: HttpRequest, tenant: Tenant, key: TenantApiKey, form: KeyLimitsForm, *,
              new_secret: str = "", status: int = 200) -> HttpResponse:
    burns = dashboards.budget_burndowns(tenant=tenant, api_key=key)
    hard = [burn for burn in burns if burn.budget.hard]
    return _page(request, "dashboard/key.html", tenant, {
        "key": key, "form": form, "new_secret": new_secret,
        "budgets": [budget_view(burn) for burn in burns],
        "headroom": min((burn.left - burn.reserved for burn in hard), default=None),
        "rate_limits": rate_limit_states(tenant_id=tenant.pk, key_id=key.pk),
    }, status=status)


@never_cache
@login_required
@require_http_methods(["GET", "POST"])
def key_detail(request: HttpRequest, slug: str, key_id: int) -> HttpResponse:
    """The key, every budget that applies to it with its burn-down, and its limits' form."""
    if request.method == "GET":
        tenant = tenant_for(request, slug)
        key = _tenant_key(tenant, key_id)
        return _key_page(request, tenant, key, KeyLimitsForm(initial=KeyLimitsForm.initial_for(key)))
    tenant = tenant_admin_for(request, slug)
    key = _tenant_key(tenant, key_id)
    form = KeyLimitsForm(request.POST)
    if not form.is_valid():
        return _key_page(request, tenant, key, form, status=400)
    changed = services.tenant_key_limits_set(key=key, user=request.user, limits=form.limits())
    messages.success(request, f"Saved: {', '.join(changed)}." if changed else "Nothing changed.")
    return redirect("dashboard:key", slug=tenant.slug, key_id=key.pk)


@never_cache
@login_required
@require_POST
def key_revoke(request: HttpRequest, slug: str, key_id: int) -> HttpResponse:
    tenant = tenant_admin_for(request, slug)
    key = _tenant_key(tenant, key_id)
    if services.tenant_key_revoke(key=key, user=request.user):
        messages.success(request, f"Revoked {key.name} ({key.prefix}…): it is refused from now on.")
    return redirect("dashboard:key", slug=tenant.slug, key_id=key.pk)


@never_cache
@login_required
@require_POST
def key_rotate(request: HttpRequest, slug: str, key_id: int) -> HttpResponse:
    tenant = tenant_admin_for(request, slug)
    key = _tenant_key(tenant, key_id)
    form = KeyLimitsForm(initial=KeyLimitsForm.initial_for(key))
    try:
        secret = services.tenant_key_rotate(key=key, user=request.user)
    except ValidationError as error:
        messages.error(request, " ".join(error.messages))
        return _key_page(request, tenant, key, form, status=400)
    return _key_page(request, tenant, key, form, new_secret=secret)


# --- members --------------------------------------------------------------------------------------
def _members_page(request: HttpRequest, tenant: Tenant, form: InviteForm, *, status: int = 200) -> HttpResponse:
    members = tenant.members.select_related("user").order_by("user__username")
    return _page(request, "dashboard/members.html", tenant, {
        "members": members, "form": form, "roles": TenantMembership.Role.choices,
    }, status=status)


@never_cache
@login_required
@require_http_methods(["GET", "POST"])
def members(request: HttpRequest, slug: str) -> HttpResponse:
    if request.method == "GET":
        return _members_page(request, tenant_for(request, slug), InviteForm())
    tenant = tenant_admin_for(request, slug)
    form = InviteForm(request.POST)
    if form.is_valid():
        try:
            invitation = services.member_invite(tenant=tenant, user=request.user, **form.cleaned_data)
        except ValidationError as error:
            form.add_error("email", error)
        else:
            _invitation_send(request, tenant, invitation)
            return redirect("dashboard:members", slug=tenant.slug)
    return _members_page(request, tenant, form, status=400)


def _invitation_send(request: HttpRequest, tenant: Tenant, invitation: services.Invitation) -> None:
    who = invitation.membership.user.get_username()
    try:
        services.member_invitation_send(
            invitation=invitation, tenant=tenant, base_url=request.build_absolute_uri("/").rstrip("/"),
        )
    except OSError as error:  # smtplib's errors are OSErrors: the membership stands, say so
        messages.warning(request, f"Added {who}, but the invitation email could not be sent ({error}).")
    else:
        messages.success(request, f"Added {who} as {invitation.membership.role}; an invitation email was sent.")


def _tenant_member(tenant: Tenant, member_id: int) -> TenantMembership:
    return get_object_or_404(TenantMembership.objects.select_related("user"), tenant=tenant, pk=member_id)


@never_cache
@login_required
@require_POST
def member_role(request: HttpRequest, slug: str, member_id: int) -> HttpResponse:
    tenant = tenant_admin_for(request, slug)
    membership = _tenant_member(tenant, member_id)
    form = RoleForm(request.POST)
    if not form.is_valid():
        messages.error(request, "Choose a role: viewer or admin.")
    else:
        _member_change(request, lambda: services.member_role_set(
            membership=membership, user=request.user, role=form.cleaned_data["role"]),
            f"{membership.user.get_username()} is now {form.cleaned_data['role']}.")
    return redirect("dashboard:members", slug=tenant.slug)


@never_cache
@login_required
@require_POST
def member_remove(request: HttpRequest, slug: str, member_id: int) -> HttpResponse:
    tenant = tenant_admin_for(request, slug)
    membership = _tenant_member(tenant, member_id)
    _member_change(request, lambda: services.member_remove(membership=membership, user=request.user),
                   f"Removed {membership.user.get_username()} from {tenant.slug}.")
    return redirect("dashboard:members", slug=tenant.slug)


def _member_change(request: HttpRequest, change, done: str) -> None:
    try:
        change()
    except ValidationError as error:
        messages.error(request, " ".join(error.messages))
    else:
        messages.success(request, done)


# --- the tenant's settings ------------------------------------------------------------------------
@never_cache
@login_required
@require_http_methods(["GET", "POST"])
def tenant_settings(request: HttpRequest, slug: str) -> HttpResponse:
    if request.method == "GET":
        tenant = tenant_for(request, slug)
        form = RetentionForm(initial={"keep_content": tenant.keep_content,
                                      "content_retention_days": tenant.content_retention_days})
        return _page(request, "dashboard/settings.html", tenant, {"form": form})
    tenant = tenant_admin_for(request, slug)
    form = RetentionForm(request.POST)
    if not form.is_valid():
        return _page(request, "dashboard/settings.html", tenant, {"form": form}, status=400)
    changed = services.tenant_retention_set(tenant=tenant, user=request.user, **form.cleaned_data)
    messages.success(request, "Saved." if changed else "Nothing changed.")
    return redirect("dashboard:settings", slug=tenant.slug)
