"""`Gateway viewers` and `Gateway operators` may view batches, their files and lines (`batches.Batch`,
`batches.BatchFile`, `batches.BatchLine`), as every other gateway model; tenants make them through the API and the
workers run them, so they stay read-only for operators (docs/batches.md, "Dashboards and admin")."""

from django.db import migrations

from operators.role_grants import ViewGrant

GRANT = ViewGrant({"batches": ["batch", "batchfile", "batchline"]})
roles_extend, roles_narrow = GRANT.extend, GRANT.narrow


class Migration(migrations.Migration):

    dependencies = [
        ("operators", "0003_stored_responses_viewed"),
        ("batches", "0001_initial"),
    ]

    operations = [migrations.RunPython(roles_extend, roles_narrow)]
