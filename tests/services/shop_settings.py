"""The ``shop`` project: publishes orders; its group ``emails`` consumes them.

``SHOP_VERSION=2`` in the environment is the next release of the same project: ``emails``
also handles ``order.cancelled``, and a new group ``loyalty`` handles ``order.placed``.
"""

import os

from .base_settings import *  # noqa: F403
from .base_settings import events_settings

INSTALLED_APPS = ["django_events", "tests.services.effects", "tests.services.shop"]
SHOP_VERSION = int(os.environ.get("SHOP_VERSION", "1"))
DJANGO_EVENTS = events_settings("shop")
