"""`Gateway viewers` and `Gateway operators` may view the stored Responses API answers
(`accounting.StoredResponse`), as every other gateway model; the gateway writes them itself, so
they stay read-only for operators (docs/operator-api.md, "Roles")."""

from django.db import migrations

from operators.role_grants import ViewGrant

GRANT = ViewGrant({"accounting": ["storedresponse"]})
roles_extend, roles_narrow = GRANT.extend, GRANT.narrow


class Migration(migrations.Migration):

    dependencies = [
        ("operators", "0002_operator_roles"),
        ("accounting", "0007_stored_responses"),
    ]

    operations = [migrations.RunPython(roles_extend, roles_narrow)]
