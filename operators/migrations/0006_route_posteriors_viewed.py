"""`Gateway viewers` and `Gateway operators` may view the best_rated strategy's posteriors
(`routing.RoutePosteriors`), as every other gateway model; the beat writes them, so they stay
read-only for operators (docs/operator-api.md, "Roles")."""

from django.apps import apps as global_apps
from django.contrib.auth.management import create_permissions
from django.db import migrations

VIEWERS = "Gateway viewers"
OPERATORS = "Gateway operators"
VIEWED = {"routing": ["routeposteriors"]}


def roles_extend(apps, schema_editor) -> None:
    alias = schema_editor.connection.alias
    for label in VIEWED:  # permissions are made by post_migrate, after every migration: now, here
        create_permissions(global_apps.get_app_config(label), verbosity=0, using=alias, apps=apps)
    permissions = apps.get_model("auth", "Permission").objects.using(alias)
    viewed = [
        permissions.get(content_type__app_label=app, codename=f"view_{model}")
        for app, models in VIEWED.items() for model in models
    ]
    for group in apps.get_model("auth", "Group").objects.using(alias).filter(name__in=[VIEWERS, OPERATORS]):
        group.permissions.add(*viewed)


def roles_narrow(apps, schema_editor) -> None:
    permissions = apps.get_model("auth", "Permission").objects.using(schema_editor.connection.alias)
    viewed = [
        permission
        for app, models in VIEWED.items()
        for permission in permissions.filter(content_type__app_label=app, codename__in=[f"view_{m}" for m in models])
    ]
    for group in apps.get_model("auth", "Group").objects.using(schema_editor.connection.alias).filter(
        name__in=[VIEWERS, OPERATORS]
    ):
        group.permissions.remove(*viewed)


class Migration(migrations.Migration):

    dependencies = [
        ("operators", "0005_usage_record_changes_viewed"),
        ("routing", "0003_best_rated"),
    ]

    operations = [migrations.RunPython(roles_extend, roles_narrow)]
