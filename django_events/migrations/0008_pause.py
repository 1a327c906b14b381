"""Paused consumer groups and event types (see django_events/pauses.py)."""

import django.db.models.functions.datetime
from django.db import migrations, models


class Migration(migrations.Migration):
    dependencies = [
        ("django_events", "0007_console"),
    ]

    operations = [
        migrations.CreateModel(
            name="Pause",
            fields=[
                ("id", models.BigAutoField(primary_key=True, serialize=False)),
                ("group", models.CharField(max_length=100)),
                (
                    "event_type",
                    models.CharField(
                        blank=True,
                        default="",
                        help_text="Empty: the whole group is paused; otherwise only this "
                        "event type of it.",
                        max_length=200,
                    ),
                ),
                ("paused_by", models.CharField(blank=True, default="", max_length=150)),
                (
                    "paused_at",
                    models.DateTimeField(db_default=django.db.models.functions.datetime.Now()),
                ),
                ("reason", models.TextField()),
            ],
            options={
                "db_table": "django_events_pause",
                "default_permissions": ("view",),
                "permissions": [
                    ("pause_group", "Can pause and resume a consumer group's consumption")
                ],
                "constraints": [
                    models.UniqueConstraint(
                        fields=("group", "event_type"), name="django_events_pause_once"
                    )
                ],
            },
        ),
    ]
