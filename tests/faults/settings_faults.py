"""Settings for the suite's subprocesses: the PostgreSQL test settings plus connection options.

``DJANGO_EVENTS_FAULTS_DB_OPTIONS`` (JSON) is merged into ``DATABASES["default"]["OPTIONS"]``,
so a test can give its workers ``connect_timeout``, TCP keepalives or a statement timeout.
"""

import json
import os

from tests.settings_postgres import *  # noqa: F403
from tests.settings_postgres import DATABASES

DATABASES["default"]["OPTIONS"] = {
    **DATABASES["default"].get("OPTIONS", {}),
    **json.loads(os.environ.get("DJANGO_EVENTS_FAULTS_DB_OPTIONS", "{}")),
}
