"""Two groups for the operator roles (docs/operator-api.md, "Roles"): `Gateway viewers` may view every
gateway model, `Gateway operators` may also change the configuration. Superusers hold everything.

The model lists are frozen here, as a migration's must be: a later model gets its permissions in
its own migration. Running this again resets both groups to these lists; reversing removes them.
"""

from django.apps import apps as global_apps
from django.contrib.auth.management import create_permissions
from django.db import migrations

VIEWERS = "Gateway viewers"
OPERATORS = "Gateway operators"

# Every model of the gateway's apps but the staff tokens: a token may be made for any staff user,
# a superuser included, so tokens stay with superusers.
VIEWED = {
    "providers": ["provider", "providermodel", "providerkey", "modelprice"],
    "accounting": [
        "tenant", "tenantapikey", "usagerecord", "usagecontent", "tenantmembership", "budget", "budgetperiod",
        "budgetreservation", "budgetalert", "ratelimit", "usagerollup", "rollupcursor",
    ],
    "routing": ["routegroup", "deployment", "routingrule", "experiment", "experimentvariant"],
    "caching": ["cachepolicy"],
    "guardrails": ["guardrailpolicy", "guardrailrule", "guardrailevent"],
    "feedback": ["feedback", "feedbackmetric", "metricvalue", "feedbackrollup", "feedbackrollupcursor"],
    "audit": ["auditentry"],
}
# The configuration. What the gateway writes itself (usage, rollups, feedback, events, the audit
# log) stays read-only for operators too.
CONFIGURED = {
    "providers": ["provider", "providermodel", "providerkey", "modelprice"],
    "accounting": ["tenant", "tenantapikey", "tenantmembership", "budget", "ratelimit"],
    "routing": ["routegroup", "deployment", "routingrule", "experiment", "experimentvariant"],
    "caching": ["cachepolicy"],
    "guardrails": ["guardrailpolicy", "guardrailrule"],
    "feedback": ["feedbackmetric"],
}


def _codenames(models: dict[str, list[str]], verbs: tuple[str, ...]) -> list[tuple[str, str]]:
    return [(app, f"{verb}_{model}") for app, names in models.items() for model in names for verb in verbs]


def _permissions(apps, alias: str, pairs: list[tuple[str, str]]) -> list:
    """One by one, so that a name missing from the database fails the migration rather than the role."""
    permissions = apps.get_model("auth", "Permission").objects.using(alias)
    return [permissions.get(content_type__app_label=app, codename=codename) for app, codename in pairs]


def roles_create(apps, schema_editor) -> None:
    alias = schema_editor.connection.alias
    # Permissions are created by post_migrate, after every migration; this one needs them now.
    # The global app config passes create_permissions' check; the models come from `apps`.
    for label in VIEWED:
        create_permissions(global_apps.get_app_config(label), verbosity=0, using=alias, apps=apps)
    Group = apps.get_model("auth", "Group")
    viewed = _codenames(VIEWED, ("view",))
    roles = {VIEWERS: viewed, OPERATORS: viewed + _codenames(CONFIGURED, ("add", "change", "delete"))}
    for name, pairs in roles.items():
        group, _ = Group.objects.using(alias).get_or_create(name=name)
        group.permissions.set(_permissions(apps, alias, pairs))


def roles_remove(apps, schema_editor) -> None:
    Group = apps.get_model("auth", "Group")
    Group.objects.using(schema_editor.connection.alias).filter(name__in=[VIEWERS, OPERATORS]).delete()


class Migration(migrations.Migration):

    dependencies = [
        ("operators", "0001_initial"),
        ("auth", "0012_alter_user_first_name_max_length"),
        ("contenttypes", "0002_remove_content_type_name"),
        ("accounting", "0004_shared_fields_for_feedback_cache_content"),
        ("audit", "0001_initial"),
        ("caching", "0001_initial"),
        ("feedback", "0002_ratings_corrections_metrics_rollups"),
        ("guardrails", "0001_initial"),
        ("providers", "0004_unsupported_params"),
        ("routing", "0002_experiments"),
    ]

    operations = [migrations.RunPython(roles_create, roles_remove)]
