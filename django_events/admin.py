"""Read-only admin for the event log and dead letters (triage actions are planned).

Nobody adds or edits events or dead letters by hand. Payloads and tracebacks may hold
personal data, so they are shown only to users with ``django_events.view_payload``.
"""

from __future__ import annotations

import json
from typing import Any

from django.contrib import admin
from django.http import HttpRequest
from django.utils.html import format_html
from django.utils.safestring import SafeString

from .models import DeadLetter, EventRecord

MASKED = "hidden: needs the “Can view event payloads and tracebacks” permission"


class ReadOnlyAdmin(admin.ModelAdmin):
    private_fields: tuple[str, ...] = ()
    """Fields shown only with the view_payload permission; others see ``masked``."""

    def has_add_permission(self, request: HttpRequest) -> bool:
        return False

    def has_change_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return False

    def has_delete_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return False

    def get_fields(self, request: HttpRequest, obj: Any = None) -> Any:
        fields = list(super().get_fields(request, obj))
        if request.user.has_perm("django_events.view_payload"):
            return fields
        return [name for name in fields if name not in self.private_fields] + ["masked"]

    def get_readonly_fields(self, request: HttpRequest, obj: Any = None) -> Any:
        return self.get_fields(request, obj)

    @admin.display(description="payload")
    def masked(self, obj: Any) -> str:
        return MASKED


@admin.register(EventRecord)
class EventRecordAdmin(ReadOnlyAdmin):
    list_display = ("type", "key", "occurred_at", "id", "version")
    list_filter = ("type",)
    search_fields = ("=id", "=key", "=correlation_id")
    ordering = ("-position",)
    show_full_result_count = False
    fields = (
        "id",
        "type",
        "version",
        "key",
        "occurred_at",
        "recorded_at",
        "source",
        "correlation_id",
        "causation_id",
        "metadata",
        "payload",
    )
    private_fields = ("payload", "metadata")

    @admin.display(description="data")
    def payload(self, obj: EventRecord) -> SafeString:
        return format_html("<pre>{}</pre>", json.dumps(obj.data, indent=2, sort_keys=True))


@admin.register(DeadLetter)
class DeadLetterAdmin(ReadOnlyAdmin):
    list_display = (
        "event_type",
        "group",
        "handler",
        "error_class",
        "short_message",
        "attempts",
        "last_failed_at",
        "state",
    )
    list_filter = ("state", "group", "error_class")
    search_fields = ("=event__id", "=event__key", "error_message")
    list_select_related = ("event",)
    ordering = ("-last_failed_at",)
    fields = (
        "event",
        "group",
        "handler",
        "attempts",
        "state",
        "error_class",
        "error_message",
        "first_failed_at",
        "last_failed_at",
        "resolved_at",
        "resolved_by",
        "reason",
        "traceback_shown",
    )
    private_fields = ("traceback_shown",)

    @admin.display(description="event type", ordering="event__type")
    def event_type(self, obj: DeadLetter) -> str:
        return obj.event.type

    @admin.display(description="message")
    def short_message(self, obj: DeadLetter) -> str:
        return obj.error_message[:120]

    @admin.display(description="traceback")
    def traceback_shown(self, obj: DeadLetter) -> SafeString:
        return format_html("<pre>{}</pre>", obj.traceback)
