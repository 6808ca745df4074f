"""The view permission on a later model, granted to the operator roles by a migration.

`operators/migrations/0002_operator_roles.py` makes `Gateway viewers` and `Gateway operators` with
the permissions of every model there was; a model added later is read-only for both, so the
migration that follows it grants its `view_` permission (and takes it back when reversed):

    GRANT = ViewGrant({"batches": ["batch", "batchfile"]})
    roles_extend, roles_narrow = GRANT.extend, GRANT.narrow
"""

from __future__ import annotations

from django.apps import apps as global_apps
from django.contrib.auth.management import create_permissions

VIEWERS = "Gateway viewers"
OPERATORS = "Gateway operators"


class ViewGrant:
    def __init__(self, viewed: dict[str, list[str]]) -> None:
        self.viewed = viewed  # app label -> model names (lower case)

    def _groups(self, apps, alias: str):
        return apps.get_model("auth", "Group").objects.using(alias).filter(name__in=[VIEWERS, OPERATORS])

    def extend(self, apps, schema_editor) -> None:
        alias = schema_editor.connection.alias
        for label in self.viewed:  # permissions are made by post_migrate, after every migration: now, here
            create_permissions(global_apps.get_app_config(label), verbosity=0, using=alias, apps=apps)
        permissions = apps.get_model("auth", "Permission").objects.using(alias)
        viewed = [
            permissions.get(content_type__app_label=app, codename=f"view_{model}")
            for app, models in self.viewed.items() for model in models
        ]
        for group in self._groups(apps, alias):
            group.permissions.add(*viewed)

    def narrow(self, apps, schema_editor) -> None:
        alias = schema_editor.connection.alias
        permissions = apps.get_model("auth", "Permission").objects.using(alias)
        viewed = [
            permission
            for app, models in self.viewed.items()
            for permission in permissions.filter(content_type__app_label=app, codename__in=[f"view_{m}" for m in models])
        ]
        for group in self._groups(apps, alias):
            group.permissions.remove(*viewed)
