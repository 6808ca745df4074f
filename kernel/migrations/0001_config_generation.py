from django.db import migrations, models


def row_create(apps, schema_editor):
    apps.get_model("kernel", "ConfigGeneration").objects.using(schema_editor.connection.alias).get_or_create(
        id=1, defaults={"value": 0}
    )


class Migration(migrations.Migration):
    initial = True
    dependencies = []

    operations = [
        migrations.CreateModel(
            name="ConfigGeneration",
            fields=[
                ("id", models.PositiveSmallIntegerField(default=1, primary_key=True, serialize=False)),
                ("value", models.BigIntegerField(default=0)),
            ],
            options={"verbose_name": "configuration generation"},
        ),
        migrations.RunPython(row_create, migrations.RunPython.noop),
    ]
