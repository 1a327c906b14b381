"""Moves between transports (see django_events/moving.py, docs/moving.md)."""

import django.db.models.functions.datetime
from django.db import migrations, models


class Migration(migrations.Migration):
    dependencies = [
        ("django_events", "0011_charts"),
    ]

    operations = [
        migrations.CreateModel(
            name="Move",
            fields=[
                ("id", models.BigAutoField(primary_key=True, serialize=False)),
                ("from_alias", models.CharField(max_length=100)),
                ("to_alias", models.CharField(max_length=100)),
                (
                    "started_at",
                    models.DateTimeField(db_default=django.db.models.functions.datetime.Now()),
                ),
                ("cutover_position", models.BigIntegerField(blank=True, null=True)),
                ("finished_at", models.DateTimeField(blank=True, null=True)),
            ],
            options={
                "db_table": "django_events_move",
                "default_permissions": ("view",),
            },
        ),
    ]
