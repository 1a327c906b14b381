"""Failure-group counters kept by triggers (see django_events/failure_counts.py)."""

from django.db import migrations, models


def install(apps, schema_editor):
    from django_events import failure_counts

    failure_counts.install(schema_editor)


def uninstall(apps, schema_editor):
    from django_events import failure_counts

    failure_counts.uninstall(schema_editor)


class Migration(migrations.Migration):
    dependencies = [
        ("django_events", "0006_services"),
    ]

    operations = [
        migrations.CreateModel(
            name="FailureCount",
            fields=[
                ("id", models.BigAutoField(primary_key=True, serialize=False)),
                ("group", models.CharField(max_length=100)),
                ("fingerprint", models.CharField(max_length=16)),
                ("open_count", models.BigIntegerField(default=0)),
                ("error_class", models.CharField(blank=True, default="", max_length=300)),
                ("handler", models.CharField(blank=True, default="", max_length=300)),
                ("first_seen", models.DateTimeField()),
                ("last_seen", models.DateTimeField()),
                ("latest_id", models.BigIntegerField(default=0)),
            ],
            options={
                "db_table": "django_events_failure_count",
                "default_permissions": (),
                "constraints": [
                    models.UniqueConstraint(
                        fields=("group", "fingerprint"), name="django_events_failure_count_once"
                    )
                ],
            },
        ),
        migrations.AlterModelOptions(
            name="deadletter",
            options={
                "permissions": [
                    ("retry_deadletter", "Can retry a dead letter (re-runs its handler)"),
                    ("discard_deadletter", "Can discard a dead letter"),
                    ("view_payload", "Can view event payloads and tracebacks"),
                    (
                        "edit_deadletter",
                        "Can edit a dead letter's payload and retry it as a new event",
                    ),
                    ("redirect_deadletter", "Can redirect a dead letter to another group"),
                ]
            },
        ),
        migrations.RunPython(install, uninstall),
    ]
