import os

from .settings_base import *  # noqa: F403
from .settings_base import ROOT, TEST_DB_NAME

DATABASES = {
    "default": {
        "ENGINE": "django.db.backends.sqlite3",
        "NAME": TEST_DB_NAME or str(ROOT / ".tests.sqlite3"),
        # A file, not memory: worker subprocesses must see the same database.
        "TEST": {
            "NAME": os.environ.get("DJANGO_EVENTS_TEST_SQLITE_NAME", str(ROOT / ".test-db.sqlite3"))
        },
        "OPTIONS": {"timeout": 30, "transaction_mode": "IMMEDIATE"},
    }
}
