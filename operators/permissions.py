"""Who may call which operator route: an active staff user with the Django model permission the
action needs (docs/operator-api.md, "Permissions"). Superusers hold every permission.

DRF's `DjangoModelPermissions` lets any authenticated user read and maps a POST action to `add`;
here every read needs `view_<model>`, and a custom action (`@action`) must declare its verb in its
viewset's `action_verbs`, or nobody but a superuser may call it.
"""

from __future__ import annotations

from rest_framework import permissions

CRUD_VERBS = {
    "list": "view",
    "retrieve": "view",
    "create": "add",
    "update": "change",
    "partial_update": "change",
    "destroy": "delete",
}
# A method the viewset does not route has no action: the permission of the method, so that the
# caller who holds it learns the method is not allowed (405) rather than a 403.
METHOD_VERBS = {"GET": "view", "HEAD": "view", "POST": "add", "PUT": "change", "PATCH": "change", "DELETE": "delete"}
UNDECLARED = "operators.undeclared_action"  # a codename no one holds: a forgotten action stays closed


def model_permission(*, model, verb: str) -> str:
    return f"{model._meta.app_label}.{verb}_{model._meta.model_name}"


def permission_needed(*, view, method: str) -> str:
    """The permission (`app_label.verb_model`) the view's current action needs."""
    if view.action is None:
        verb = METHOD_VERBS.get(method)
    else:
        verb = CRUD_VERBS.get(view.action) or getattr(view, "action_verbs", {}).get(view.action)
    if verb is None:
        return UNDECLARED
    return model_permission(model=view.get_queryset().model, verb=verb)


def permission_denied_message(permission: str) -> str:
    return f"This action needs the permission '{permission}'."


class OperatorPermission(permissions.BasePermission):
    """Staff, and the model permission of the action (staff alone no longer suffices)."""

    message = "The operator API is for staff users."

    def has_permission(self, request, view) -> bool:
        user = request.user
        if not (user and user.is_authenticated):
            return False  # DRF answers 401 for a request without credentials
        if not user.is_staff:
            return False
        needed = permission_needed(view=view, method=request.method)
        if user.has_perm(needed):
            return True
        self.message = permission_denied_message(needed)
        return False
