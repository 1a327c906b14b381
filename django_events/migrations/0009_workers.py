"""The worker registry: one row per consume_events process (see django_events/workers.py)."""

import django.db.models.functions.datetime
from django.db import migrations, models


class Migration(migrations.Migration):
    dependencies = [
        ("django_events", "0008_pause"),
    ]

    operations = [
        migrations.CreateModel(
            name="WorkerRecord",
            fields=[
                ("id", models.BigAutoField(primary_key=True, serialize=False)),
                ("name", models.CharField(max_length=200, unique=True)),
                ("host", models.CharField(max_length=255)),
                ("pid", models.PositiveIntegerField()),
                ("service", models.CharField(max_length=100)),
                ("version", models.CharField(max_length=50)),
                ("groups", models.JSONField(default=list)),
                ("transport", models.CharField(max_length=100)),
                (
                    "started_at",
                    models.DateTimeField(db_default=django.db.models.functions.datetime.Now()),
                ),
                (
                    "last_seen_at",
                    models.DateTimeField(
                        db_default=django.db.models.functions.datetime.Now(), db_index=True
                    ),
                ),
                ("stopped_at", models.DateTimeField(blank=True, null=True)),
                ("event_id", models.UUIDField(blank=True, null=True)),
                ("event_type", models.CharField(blank=True, default="", max_length=200)),
                ("event_group", models.CharField(blank=True, default="", max_length=100)),
                (
                    "event_since",
                    models.DateTimeField(
                        blank=True,
                        help_text="When the handler of the current event started.",
                        null=True,
                    ),
                ),
            ],
            options={
                "verbose_name": "worker",
                "db_table": "django_events_worker",
                "default_permissions": ("view",),
            },
        ),
    ]
