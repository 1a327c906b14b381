import os

from .settings_base import *  # noqa: F403
from .settings_base import TEST_DB_NAME

DATABASES = {
    "default": {
        "ENGINE": "django.db.backends.postgresql",
        "NAME": TEST_DB_NAME or os.environ.get("PGDATABASE", "postgres"),
        "USER": os.environ.get("PGUSER", "postgres"),
        "HOST": os.environ.get("PGHOST", "127.0.0.1"),
        "PORT": os.environ.get("PGPORT", "5432"),
        # Parallel runs (helpers, tox) each set their own name.
        "TEST": {"NAME": os.environ.get("DJANGO_EVENTS_TEST_PG_NAME", "test_django_events")},
    }
}
