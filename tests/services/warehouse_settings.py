"""The ``warehouse`` project: its group ``picking`` consumes the shop's ``order.placed``."""

from .base_settings import *  # noqa: F403
from .base_settings import events_settings

INSTALLED_APPS = ["django_events", "tests.services.effects", "tests.services.warehouse"]
DJANGO_EVENTS = events_settings("warehouse")
