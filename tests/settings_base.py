"""Settings shared by the SQLite and PostgreSQL test runs."""

import json
import os
from pathlib import Path

ROOT = Path(__file__).resolve().parent
SECRET_KEY = "django-events-tests"  # noqa: S105 - test-only
DEBUG = False
USE_TZ = True
INSTALLED_APPS = [
    "django.contrib.contenttypes",
    "django.contrib.auth",
    "django.contrib.admin",
    "django.contrib.sessions",
    "django.contrib.messages",
    "django.contrib.staticfiles",  # the admin's CSS in the browser test (live_server)
    "django_events",
    "tests.testapp",
]
MIDDLEWARE = [
    "django.contrib.sessions.middleware.SessionMiddleware",
    "django.contrib.auth.middleware.AuthenticationMiddleware",
    "django.contrib.messages.middleware.MessageMiddleware",
]
ROOT_URLCONF = "tests.urls"
TEMPLATES = [
    {
        "BACKEND": "django.template.backends.django.DjangoTemplates",
        "APP_DIRS": True,
        "OPTIONS": {
            "context_processors": [
                "django.template.context_processors.request",
                "django.contrib.auth.context_processors.auth",
                "django.contrib.messages.context_processors.messages",
            ]
        },
    }
]
DEFAULT_AUTO_FIELD = "django.db.models.BigAutoField"
STATIC_URL = "static/"
DJANGO_EVENTS = {
    "BACKOFF_BASE": 0,
    "LEASE": 30,
    "POLL_INTERVAL": 0.2,
    # Worker subprocesses started by a test get that test's overrides through this.
    **json.loads(os.environ.get("DJANGO_EVENTS_TEST_OVERRIDES", "{}")),
}
# Named, as every project should (check W007); another class for the default database
# transport runs the suites on it, e.g.
# ``DJANGO_EVENTS_TEST_BACKEND=django_events.transports.log.LogTransport``.
DJANGO_EVENTS.setdefault(
    "TRANSPORTS",
    {
        "default": {
            "BACKEND": os.environ.get(
                "DJANGO_EVENTS_TEST_BACKEND",
                "django_events.transports.database.DatabaseTransport",
            )
        }
    },
)
LOGGING = {
    "version": 1,
    "disable_existing_loggers": False,
    "handlers": {"console": {"class": "logging.StreamHandler"}},
    "loggers": {"django_events": {"handlers": ["console"], "level": "WARNING"}},
}
# Subprocess workers started by the tests point at the test database through this.
TEST_DB_NAME = os.environ.get("DJANGO_EVENTS_TEST_DB_NAME")
# Worker subprocesses on a transport without ordering silence E008 (tests.testapp has an
# ordered handler, which those tests do not consume).
SILENCED_SYSTEM_CHECKS = json.loads(os.environ.get("DJANGO_EVENTS_TEST_SILENCED", "[]"))
