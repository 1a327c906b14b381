"""Transports, configured like ``CACHES``: ``transports["default"]`` is the configured one."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from asgiref.local import Local
from django.core.signals import setting_changed
from django.dispatch import receiver
from django.utils.connection import BaseConnectionHandler
from django.utils.module_loading import import_string

from ..exceptions import EventsConfigurationError
from .base import Transport, default_context

if TYPE_CHECKING:
    _Handler = BaseConnectionHandler[Transport]
else:
    _Handler = BaseConnectionHandler


class TransportHandler(_Handler):
    """The engine's side of the boundary: it reads ``TRANSPORTS`` and hands each transport
    its ``TransportContext`` (docs/internals.md); the transport modules read neither."""

    settings_name = "DJANGO_EVENTS['TRANSPORTS']"
    exception_class = EventsConfigurationError

    def configure_settings(self, settings: Any) -> dict[str, Any]:
        from ..conf import get_settings

        return get_settings().transports

    def create_connection(self, alias: str) -> Transport:
        conf = self.settings[alias]
        try:
            backend = import_string(conf["BACKEND"])
        except ImportError as exc:
            raise EventsConfigurationError(
                f"DJANGO_EVENTS['TRANSPORTS'][{alias!r}]['BACKEND']: cannot import "
                f"{conf['BACKEND']!r} ({exc})."
            ) from exc
        if not (isinstance(backend, type) and issubclass(backend, Transport)):
            raise EventsConfigurationError(
                f"DJANGO_EVENTS['TRANSPORTS'][{alias!r}]['BACKEND']: {conf['BACKEND']!r} "
                "is not a django_events Transport subclass."
            )
        return backend(alias, dict(conf.get("OPTIONS", {})), default_context())

    def reset(self) -> None:
        """Forget every transport; settings are read again on next use, not now."""
        if "settings" in self.__dict__:  # otherwise no transport was ever created
            for transport in self.all(initialized_only=True):
                transport.close()
        self._connections = Local(self.thread_critical)
        self.__dict__.pop("settings", None)


transports = TransportHandler()


@receiver(setting_changed)
def _reset(*, setting: str, **kwargs: Any) -> None:
    """A changed ``DJANGO_EVENTS`` builds new transports, with a new context."""
    if setting == "DJANGO_EVENTS":
        transports.reset()
