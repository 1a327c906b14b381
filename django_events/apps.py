from __future__ import annotations

from django.apps import AppConfig
from django.core import checks
from django.db.models.signals import post_migrate


class DjangoEventsConfig(AppConfig):
    name = "django_events"
    verbose_name = "Events"
    default_auto_field = "django.db.models.BigAutoField"

    def ready(self) -> None:
        from django.utils.module_loading import autodiscover_modules

        from .boundary import transport_context
        from .checks import RUNTIME_TAG, check_events, check_runtime, check_subscriptions
        from .conf import get_settings
        from .exceptions import EventsConfigurationError
        from .subscriptions import declare_on_migrate
        from .transports.base import use_context

        use_context(transport_context)  # what every transport is handed (docs/internals.md)

        checks.register(check_events, "django_events")
        checks.register(check_subscriptions, "django_events", checks.Tags.database)
        post_migrate.connect(declare_on_migrate, sender=self)
        checks.register(check_runtime, RUNTIME_TAG, deploy=True)
        try:
            modules = get_settings().autodiscover_modules
        except EventsConfigurationError:
            modules = ("events", "handlers")  # the E001 check reports the problem
        autodiscover_modules(*modules)
