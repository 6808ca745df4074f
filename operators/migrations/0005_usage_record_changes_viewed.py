"""`Gateway viewers` and `Gateway operators` may view the corrections of usage records
(`accounting.UsageRecordChange`), as every other gateway model; they are written with the
correction itself (`accounting.services.usage_record_correct`), so they stay read-only."""

from django.db import migrations

from operators.role_grants import ViewGrant

GRANT = ViewGrant({"accounting": ["usagerecordchange"]})
roles_extend, roles_narrow = GRANT.extend, GRANT.narrow


class Migration(migrations.Migration):

    dependencies = [
        ("operators", "0004_batches_viewed"),
        ("accounting", "0010_incremental_rollups"),
    ]

    operations = [migrations.RunPython(roles_extend, roles_narrow)]
