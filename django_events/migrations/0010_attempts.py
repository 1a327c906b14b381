"""Attempt history (see django_events/attempts.py)."""

import django.db.models.functions.datetime
from django.db import migrations, models


class Migration(migrations.Migration):
    dependencies = [
        ("django_events", "0009_workers"),
    ]

    operations = [
        migrations.CreateModel(
            name="Attempt",
            fields=[
                ("id", models.BigAutoField(primary_key=True, serialize=False)),
                ("event_id", models.UUIDField()),
                ("group", models.CharField(max_length=100)),
                (
                    "number",
                    models.PositiveIntegerField(
                        help_text="The attempt's number, counted at its claim."
                    ),
                ),
                (
                    "at",
                    models.DateTimeField(
                        db_default=django.db.models.functions.datetime.Now(),
                        help_text="When the attempt ended.",
                    ),
                ),
                ("worker", models.CharField(blank=True, default="", max_length=200)),
                (
                    "duration",
                    models.FloatField(blank=True, help_text="Seconds, if it was timed.", null=True),
                ),
                (
                    "outcome",
                    models.CharField(
                        choices=[
                            ("handled", "handled"),
                            ("failed", "failed"),
                            ("dead-lettered", "dead-lettered"),
                        ],
                        max_length=16,
                    ),
                ),
                ("error_class", models.CharField(blank=True, default="", max_length=300)),
                ("error_message", models.TextField(blank=True, default="")),
            ],
            options={
                "db_table": "django_events_attempt",
                "default_permissions": (),
                "indexes": [
                    models.Index(
                        fields=["event_id", "group", "id"], name="django_events_attempt_of"
                    )
                ],
            },
        ),
    ]
