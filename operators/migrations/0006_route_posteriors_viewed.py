"""`Gateway viewers` and `Gateway operators` may view the best_rated strategy's posteriors
(`routing.RoutePosteriors`), as every other gateway model; the beat writes them, so they stay
read-only for operators (docs/operator-api.md, "Roles")."""

from django.db import migrations

from operators.role_grants import ViewGrant

GRANT = ViewGrant({"routing": ["routeposteriors"]})
roles_extend, roles_narrow = GRANT.extend, GRANT.narrow


class Migration(migrations.Migration):

    dependencies = [
        ("operators", "0005_usage_record_changes_viewed"),
        ("routing", "0003_best_rated"),
    ]

    operations = [migrations.RunPython(roles_extend, roles_narrow)]
