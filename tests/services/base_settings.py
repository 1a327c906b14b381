"""What both service projects share: the test database (given by the test through the
environment) and django_events; each project's settings add its own app and SERVICE."""

import json
import os

SECRET_KEY = "django-events-services-tests"  # noqa: S105 - test-only
DEBUG = False
USE_TZ = True
DEFAULT_AUTO_FIELD = "django.db.models.BigAutoField"
_ENGINE = os.environ.get("DJANGO_EVENTS_TEST_DB_ENGINE", "postgresql")
_NAME = os.environ.get("DJANGO_EVENTS_TEST_DB_NAME", "")
if _ENGINE == "sqlite3":
    DATABASES = {
        "default": {
            "ENGINE": "django.db.backends.sqlite3",
            "NAME": _NAME,
            "OPTIONS": {"timeout": 30, "transaction_mode": "IMMEDIATE"},
        }
    }
else:
    DATABASES = {
        "default": {
            "ENGINE": "django.db.backends.postgresql",
            "NAME": _NAME,
            "USER": os.environ.get("PGUSER", "postgres"),
            "HOST": os.environ.get("PGHOST", "127.0.0.1"),
            "PORT": os.environ.get("PGPORT", "5432"),
        }
    }
LOGGING = {
    "version": 1,
    "disable_existing_loggers": False,
    "handlers": {"console": {"class": "logging.StreamHandler"}},
    "loggers": {"django_events": {"handlers": ["console"], "level": "WARNING"}},
}


def events_settings(service: str) -> dict:
    return {
        "SERVICE": service,
        "BACKOFF_BASE": 0,
        "POLL_INTERVAL": 0.1,
        "AUTODISCOVER_MODULES": ["handlers"],
        **json.loads(os.environ.get("DJANGO_EVENTS_TEST_OVERRIDES", "{}")),
    }
