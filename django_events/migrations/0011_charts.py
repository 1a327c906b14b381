"""Per-minute counts behind the admin's charts (see django_events/rollup.py)."""

from django.db import migrations, models


class Migration(migrations.Migration):
    dependencies = [
        ("django_events", "0010_attempts"),
    ]

    operations = [
        migrations.CreateModel(
            name="MinuteStat",
            fields=[
                ("id", models.BigAutoField(primary_key=True, serialize=False)),
                ("minute", models.BigIntegerField(help_text="Minutes since 1970-01-01 00:00 UTC.")),
                ("group", models.CharField(max_length=100)),
                ("handled", models.PositiveBigIntegerField(default=0)),
                (
                    "failed",
                    models.PositiveBigIntegerField(
                        default=0,
                        help_text="Attempts whose handler raised (retried or dead-lettered).",
                    ),
                ),
                ("dead", models.PositiveBigIntegerField(default=0)),
                ("pending", models.BigIntegerField(blank=True, null=True)),
                ("oldest_pending_age_s", models.FloatField(blank=True, null=True)),
            ],
            options={
                "verbose_name": "chart",
                "verbose_name_plural": "charts",
                "db_table": "django_events_minute_stat",
                "default_permissions": ("view",),
                "constraints": [
                    models.UniqueConstraint(
                        fields=("minute", "group"), name="django_events_minute_once"
                    )
                ],
            },
        ),
    ]
