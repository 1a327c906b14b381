"""The operator's admin: the event log, dead-letter triage, failure groups, queue status.

Nobody adds or edits events or dead letters by hand. The only writes are retry, discard
and redirect (:mod:`django_events.triage`) and edit and retry
(:mod:`django_events.edit_retry`, off unless ``ADMIN_EDIT_RETRY``), each a
CSRF-protected POST behind its own permission and recorded in the admin log. Exports
stream a changelist's filter as CSV or JSON (:mod:`django_events.export`). Payloads, metadata,
tracebacks, error messages and a delivery's last error may hold personal data (an error
message often echoes a payload value), so they are shown only to users with
``django_events.view_payload``; others see the envelope, the error class and a masked
body. No side door either: changelist URLs accept only the parameters of the declared
filters (:class:`DeclaredLookupsOnly`), and search reads error messages only for users
who may see them.

Changelists issue a fixed number of queries whatever the page size, and their counts are
capped (:class:`CappedPaginator`) so that a million-row log pages as fast as an empty one.
Failure groups are read from trigger-kept counters (:mod:`django_events.failure_counts`),
never by grouping the dead letters.
"""

from __future__ import annotations

import json
import threading
import uuid
from collections.abc import Sequence
from datetime import datetime
from functools import cached_property
from typing import Any

from django import forms
from django.contrib import admin, messages
from django.contrib.admin.helpers import ACTION_CHECKBOX_NAME
from django.contrib.admin.models import DELETION
from django.contrib.admin.options import IncorrectLookupParameters
from django.contrib.admin.utils import flatten_fieldsets, get_fields_from_path
from django.core.exceptions import PermissionDenied
from django.core.paginator import Paginator
from django.db.models import Q, QuerySet
from django.http import (
    Http404,
    HttpRequest,
    HttpResponse,
    HttpResponseBadRequest,
    HttpResponseRedirect,
    StreamingHttpResponse,
)
from django.http.response import HttpResponseBase
from django.shortcuts import get_object_or_404
from django.template.response import TemplateResponse
from django.urls import URLPattern, path, reverse
from django.utils import timezone
from django.utils.html import format_html, format_html_join
from django.utils.http import urlencode
from django.utils.safestring import SafeString
from django.utils.timesince import timesince

from . import attempts as history
from . import charts, edit_retry, export, failure_counts, pauses, subscriptions, triage, workers
from .conf import get_settings
from .exceptions import InvalidEvent
from .models import (
    DeadLetter,
    Delivery,
    EventRecord,
    FailureGroup,
    InboxRecord,
    MinuteStat,
    Pause,
    QueueStatus,
    Subscription,
    WorkerRecord,
)
from .registry import registry
from .status import collect
from .transports import transports

MASKED = "hidden: needs the “Can view event payloads and tracebacks” permission"
COUNT_CAP = 10_000
GONE = "(not in the event log)"


def can_view_payload(request: HttpRequest) -> bool:
    return triage.may_view_payload(request.user)


def _pretty(value: Any) -> SafeString:
    return format_html("<pre>{}</pre>", json.dumps(value, indent=2, sort_keys=True))


def _url(name: str, *args: Any, query: dict[str, Any] | None = None) -> str:
    url = reverse(f"admin:django_events_{name}", args=args)
    return f"{url}?{urlencode(query)}" if query else url


class CappedPaginator(Paginator):
    """Counts at most ``COUNT_CAP + 1`` rows: a bounded cost however large the table.

    Past the cap the changelist says "more than 10,000" and the last pages are reached
    by filtering, not paging.
    """

    @cached_property
    def count(self) -> int:
        return int(self.object_list[: COUNT_CAP + 1].count())  # type: ignore[attr-defined]


class KnownValuesFilter(admin.SimpleListFilter):
    """Choices from what this process knows (``known``), never a scan for distinct values;
    the current value stays listed even if unknown here."""

    field = ""

    def known(self, request: HttpRequest) -> set[str]:
        raise NotImplementedError

    def lookups(self, request: HttpRequest, model_admin: Any) -> list[tuple[str, str]]:
        values = self.known(request)
        if self.value():
            values.add(str(self.value()))
        return [(v, v) for v in sorted(values)]

    def queryset(self, request: HttpRequest, queryset: QuerySet[Any]) -> QuerySet[Any]:
        return queryset.filter(**{self.field: self.value()}) if self.value() else queryset


class EventTypeFilter(KnownValuesFilter):
    """Types with a handler here; listing distinct types of a huge log would scan it."""

    title = "event type"
    parameter_name = "type"
    field = "type"

    def known(self, request: HttpRequest) -> set[str]:
        return {h.event_type for h in registry}


class DeadLetterTypeFilter(EventTypeFilter):
    field = "event__type"


class GroupFilter(KnownValuesFilter):
    """The groups known here (handlers and settings)."""

    title = "group"
    parameter_name = "group"
    field = "group"

    def known(self, request: HttpRequest) -> set[str]:
        return {*registry.groups(), *get_settings().groups}


class ErrorClassFilter(KnownValuesFilter):
    """Error classes of the open failure groups (read once per request, with them)."""

    title = "error class"
    parameter_name = "error_class"
    field = "error_class"

    def known(self, request: HttpRequest) -> set[str]:
        return {g["error_class"] for g in _request_failure_groups(request)}


class InputFilter(admin.SimpleListFilter):
    """A text box instead of a list of choices (keys are unbounded)."""

    template = "admin/django_events/input_filter.html"

    def lookups(self, request: HttpRequest, model_admin: Any) -> list[tuple[str, str]]:
        return [("", "")]  # one dummy choice, so that the filter is shown

    def choices(self, changelist: Any) -> Any:
        others = {
            k: v for k, v in changelist.get_filters_params().items() if k != self.parameter_name
        }
        yield {"value": self.value() or "", "others": others, "name": self.parameter_name}


class KeyFilter(InputFilter):
    title = "key"
    parameter_name = "key"

    def queryset(self, request: HttpRequest, queryset: QuerySet[Any]) -> QuerySet[Any]:
        return queryset.filter(key=self.value()) if self.value() else queryset


class FailureGroupFilter(admin.SimpleListFilter):
    """The most common open failure groups; any other by its fingerprint in the URL."""

    title = "failure group"
    parameter_name = "fingerprint"
    shown = 15

    def lookups(self, request: HttpRequest, model_admin: Any) -> list[tuple[str, str]]:
        groups = _request_failure_groups(request)[: self.shown]
        choices = [(g["fingerprint"], _group_label(g)) for g in groups]
        if self.value() and self.value() not in {c[0] for c in choices}:
            choices.append((str(self.value()), str(self.value())))
        return choices

    def queryset(self, request: HttpRequest, queryset: QuerySet[Any]) -> QuerySet[Any]:
        return queryset.filter(fingerprint=self.value()) if self.value() else queryset


def _failure_groups(limit: int | None = None) -> QuerySet[Any]:
    """The open failure groups from the trigger-kept counters: no scan of dead letters."""
    queryset = failure_counts.failure_groups(DeadLetter.objects.db)
    return queryset[:limit] if limit else queryset


def _request_failure_groups(request: HttpRequest) -> list[dict[str, Any]]:
    """The open failure groups, read once per request for the sidebar filters."""
    cached = getattr(request, "_django_events_failure_groups", None)
    if cached is None:
        cached = list(_failure_groups())
        request._django_events_failure_groups = cached  # type: ignore[attr-defined]
    return cached


def _group_label(group: dict[str, Any]) -> str:
    error = group["error_class"].rsplit(".", 1)[-1]
    handler = group["handler"].rsplit(".", 1)[-1] or "no handler"
    return f"{error} in {handler} ({group['count']})"


def declared_filter_parameters(model_admin: Any, request: HttpRequest | None) -> set[str]:
    """The query parameters that ``model_admin``'s declared list filters read.

    A :class:`~django.contrib.admin.SimpleListFilter` reads its ``parameter_name``; a
    field filter (``"state"``, or ``("state", SomeFieldListFilter)``) reads what its
    ``expected_parameters()`` says (``state__exact``, ``last_failed_at__gte``, ...).
    """
    params: set[str] = set()
    filters = model_admin.get_list_filter(request) if request else model_admin.list_filter
    for item in filters:
        if isinstance(item, type) and issubclass(item, admin.SimpleListFilter):
            params.add(str(item.parameter_name))
            continue
        field_path, cls = item if isinstance(item, (list, tuple)) else (item, None)
        field = get_fields_from_path(model_admin.model, field_path)[-1]
        make: Any = cls or admin.FieldListFilter.create  # (request may be None: no request yet)
        spec = make(field, request, {}, model_admin.model, model_admin, field_path=field_path)
        params.update(p for p in spec.expected_parameters() if p)
    return params


class DeclaredLookupsOnly(admin.ModelAdmin):
    """Changelist URLs accept the declared filters' parameters and nothing else.

    Django's default lets a URL filter on any lookup of a local field:
    ``?data__ssn=123-45-6789`` answers yes or no with one row or none,
    ``?traceback__startswith=`` leaks a value a character at a time, and ``__regex`` does
    both faster. That is a side door round ``view_payload``, and on a large log an
    unindexed scan per request. Every user, superusers included, gets the same rule: the
    sidebar's filters and search are the changelist's whole query language; anything
    else is Django's ``DisallowedModelAdminLookup`` (a 400).
    """

    def lookup_allowed(self, lookup: str, value: str, request: HttpRequest | None = None) -> bool:
        if request is None:
            return lookup in declared_filter_parameters(self, None)
        cache: dict[type, set[str]] = request.__dict__.setdefault("_django_events_lookups", {})
        if type(self) not in cache:
            cache[type(self)] = declared_filter_parameters(self, request)
        return lookup in cache[type(self)]


class ReadOnlyAdmin(DeclaredLookupsOnly):
    private_fields: tuple[str, ...] = ()
    """Fields shown only with the view_payload permission; others see ``masked``."""

    paginator = CappedPaginator
    show_full_result_count = False

    def has_add_permission(self, request: HttpRequest) -> bool:
        return False

    def has_change_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return False

    def has_delete_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return False

    def get_fieldsets(self, request: HttpRequest, obj: Any = None) -> Any:
        shown = can_view_payload(request)
        out = []
        for name, options in super().get_fieldsets(request, obj):
            fields = [f for f in options["fields"] if shown or f not in self.private_fields]
            if len(fields) < len(options["fields"]):
                fields.append("masked")
            out.append((name, {**options, "fields": fields}))
        return out

    def get_readonly_fields(self, request: HttpRequest, obj: Any = None) -> Any:
        return flatten_fieldsets(self.get_fieldsets(request, obj))

    @admin.display(description="payload")
    def masked(self, obj: Any) -> str:
        return MASKED


# --------------------------------------------------------------------------- event log


def delivery_states(events: Sequence[EventRecord]) -> dict[uuid.UUID, list[tuple[str, str]]]:
    """``(group, state)`` per subscribed group for each event, in three queries.

    States: handled (inbox record), dead / retried / discarded (latest dead letter),
    in flight, retrying or pending (a database-transport delivery row), else waiting
    (not yet delivered, or held by a broker transport).
    """
    if not events:
        return {}
    ids = [event.id for event in events]
    groups_by_type: dict[str, set[str]] = {}
    for handler in registry:
        groups_by_type.setdefault(handler.event_type, set()).add(handler.group)
    all_groups = sorted({g for gs in groups_by_type.values() for g in gs})
    handled = set(
        InboxRecord.objects.filter(event_id__in=ids, group_name__in=all_groups).values_list(
            "event_id", "group_name"
        )
    )
    dead: dict[tuple[uuid.UUID, str], str] = {}
    for event_id, group, state in (
        DeadLetter.objects.filter(event_id__in=ids)
        .order_by("id")
        .values_list("event_id", "group", "state")
    ):
        dead[(event_id, group)] = "dead" if state == DeadLetter.State.OPEN else str(state)
    now = timezone.now()
    queued: dict[tuple[uuid.UUID, str], str] = {}
    for event_id, group, attempts, claimed_until, parked in Delivery.objects.filter(
        event_id__in=ids
    ).values_list("event_id", "group_name", "attempts", "claimed_until", "parked"):
        if parked:
            state = "parked"
        elif claimed_until and claimed_until > now:
            state = "in flight"
        else:
            state = "retrying" if attempts else "pending"
        queued[(event_id, group)] = state
    out: dict[uuid.UUID, list[tuple[str, str]]] = {}
    for event in events:
        names = sorted(
            groups_by_type.get(event.type, set())
            | {g for (e, g) in [*dead, *queued] if e == event.id}
        )
        states = []
        for group in names:
            slot = (event.id, group)
            if slot in handled:
                state = "handled"
            elif slot in queued:
                state = queued[slot]
            else:
                state = dead.get(slot, "waiting")
            states.append((group, state))
        out[event.id] = states
    return out


@admin.register(EventRecord)
class EventRecordAdmin(ReadOnlyAdmin):
    list_display = ("type", "key", "occurred_at", "id", "correlation_id", "deliveries")
    list_filter = (EventTypeFilter, KeyFilter, "occurred_at")
    search_fields = ("id", "correlation_id")  # see get_search_results: exact, indexed
    search_help_text = "An event id or a correlation id."
    ordering = ("-position",)
    fields = (
        "id",
        "type",
        "version",
        "key",
        "occurred_at",
        "recorded_at",
        "source",
        "correlation",
        "causation",
        "delivery_table",
        "metadata",
        "payload",
    )
    private_fields = ("payload", "metadata")

    def get_search_results(
        self, request: HttpRequest, queryset: QuerySet[Any], search_term: str
    ) -> tuple[QuerySet[Any], bool]:
        term = search_term.strip()
        if not term:
            return queryset, False
        try:
            value = uuid.UUID(term)
        except ValueError:
            return queryset.none(), False
        return queryset.filter(Q(id=value) | Q(correlation_id=value)), False

    def get_changelist_instance(self, request: HttpRequest) -> Any:
        changelist = super().get_changelist_instance(request)
        page = list(changelist.result_list)
        states = delivery_states(page)
        for event in page:
            event.delivery_states = states.get(event.id, [])
        return changelist

    @admin.display(description="deliveries")
    def deliveries(self, obj: EventRecord) -> SafeString:
        states = getattr(obj, "delivery_states", None)
        if states is None:
            states = delivery_states([obj]).get(obj.id, [])
        return format_html_join(
            " ", '<span class="de-state de-{}">{}: {}</span>', ((s, g, s) for g, s in states)
        )

    @admin.display(description="deliveries per group")
    def delivery_table(self, obj: EventRecord) -> SafeString:
        rows = delivery_states([obj]).get(obj.id, [])
        if not rows:
            return format_html("{}", "no group subscribes to this type here")
        dead_url = _url("deadletter_changelist", query={"q": str(obj.id)})
        return format_html(
            "<table>{}</table><p><a href='{}'>dead letters of this event</a></p>",
            format_html_join("", "<tr><td>{}</td><td>{}</td></tr>", rows),
            dead_url,
        )

    @admin.display(description="correlation id")
    def correlation(self, obj: EventRecord) -> SafeString:
        return _correlation_link(obj)

    @admin.display(description="causation id")
    def causation(self, obj: EventRecord) -> SafeString:
        return _event_link(obj.causation_id)

    @admin.display(description="data")
    def payload(self, obj: EventRecord) -> SafeString:
        return _pretty(obj.data)


def _event_link(event_id: uuid.UUID | None) -> SafeString:
    if event_id is None:
        return format_html("{}", "-")
    return format_html("<a href='{}'>{}</a>", _url("eventrecord_change", event_id), event_id)


def _correlation_link(event: EventRecord | None) -> SafeString:
    if event is None or event.correlation_id is None:
        return format_html("{}", "-")
    url = _url("eventrecord_changelist", query={"q": str(event.correlation_id)})
    return format_html(
        "{} (<a href='{}'>events of this correlation</a>)", event.correlation_id, url
    )


# --------------------------------------------------------------------------- dead letters


class TriageMixin:
    """Retry and discard: a confirmation page on GET, the operation on POST."""

    admin_site: admin.AdminSite

    def _check(self, request: HttpRequest, action: str) -> None:
        if not request.user.has_perm("django_events.view_deadletter"):
            raise PermissionDenied
        triage.check_permission(request.user, action)

    def _confirm_or_resolve(
        self,
        request: HttpRequest,
        action: str,
        queryset: QuerySet[DeadLetter],
        *,
        title: str,
        back: str,
        hidden: Sequence[tuple[str, str]] = (),
    ) -> HttpResponse:
        self._check(request, action)
        reason = request.POST.get("reason", "").strip()
        error = ""
        if request.method == "POST" and request.POST.get("confirm"):
            if action == triage.DISCARD and not reason:
                error = "A discard needs a reason; it is kept with the dead letter."
            else:
                run = triage.retry if action == triage.RETRY else triage.discard
                try:
                    outcome = run(queryset, request.user, reason)
                except LookupError as exc:
                    messages.error(request, f"Nothing was retried: {exc}")
                    return HttpResponseRedirect(back)
                messages.success(request, outcome.message)
                return HttpResponseRedirect(back)
        open_ = queryset.filter(state=DeadLetter.State.OPEN)
        context = {
            **self.admin_site.each_context(request),
            "opts": DeadLetter._meta,
            "title": title,
            "action": action,
            "count": open_.count(),
            "sample": list(open_.prefetch_related("event").order_by("-last_failed_at")[:10]),
            "hidden": hidden,
            "can_view_payload": can_view_payload(request),
            "back": back,
            "reason": reason,
            "error": error,
        }
        return TemplateResponse(request, "admin/django_events/confirm.html", context)


@admin.register(DeadLetter)
class DeadLetterAdmin(TriageMixin, ReadOnlyAdmin):
    list_display = (
        "event_type",
        "group",
        "service",
        "handler",
        "error_class",
        "short_message",
        "attempts",
        "first_failed_at",
        "last_failed_at",
        "age",
        "state",
    )
    list_filter = (
        "state",
        FailureGroupFilter,
        GroupFilter,
        DeadLetterTypeFilter,
        ErrorClassFilter,
        "last_failed_at",
    )
    search_fields = ("event__id", "event__key", "error_message")  # see get_search_results
    search_help_text = "An event id, an event key, or words of the error message."
    search_help_text_masked = "An event id or an event key."
    list_select_related = False  # the event is prefetched: a row outlives its log entry
    ordering = ("-last_failed_at",)
    # The site-wide "delete selected" is dropped by Django itself: it needs the delete
    # permission, which nobody has here. (No get_actions() override: its signature
    # differs between Django 5.2 and 6.1.)
    actions = ("retry_selected", "discard_selected")
    fieldsets = (
        (
            "Failure",
            {
                "fields": (
                    "state",
                    "group",
                    "service",
                    "handler",
                    "error_class",
                    "error_message",
                    "failure_group",
                )
            },
        ),
        (
            "Envelope",
            {
                "fields": (
                    "event_link",
                    "event_type",
                    "event_version",
                    "event_key",
                    "event_occurred_at",
                    "correlation",
                    "causation",
                    "event_metadata",
                )
            },
        ),
        ("Payload", {"fields": ("payload",)}),
        ("Stack trace", {"fields": ("traceback_shown",)}),
        (
            "Attempts",
            {"fields": ("attempts", "first_failed_at", "last_failed_at", "delivery_error")},
        ),
        ("Resolution", {"fields": ("resolved_at", "resolved_by", "reason")}),
    )
    private_fields = (
        "payload",
        "event_metadata",
        "traceback_shown",
        "error_message",
        "delivery_error",
    )

    def get_list_display(self, request: HttpRequest) -> Any:
        shown = super().get_list_display(request)
        if can_view_payload(request):
            return shown
        return tuple(name for name in shown if name != "short_message")

    def get_search_fields(self, request: HttpRequest) -> Any:
        if can_view_payload(request):
            return self.search_fields
        return tuple(name for name in self.search_fields if name != "error_message")

    def get_changelist_instance(self, request: HttpRequest) -> Any:
        changelist = super().get_changelist_instance(request)
        if not can_view_payload(request):
            changelist.search_help_text = self.search_help_text_masked
        return changelist

    def get_queryset(self, request: HttpRequest) -> QuerySet[DeadLetter]:
        # Not select_related: its inner join would hide dead letters whose event has
        # left the log (retention, or the UndecodableEvent "missing" case).
        return super().get_queryset(request).prefetch_related("event")

    def get_search_results(
        self, request: HttpRequest, queryset: QuerySet[Any], search_term: str
    ) -> tuple[QuerySet[Any], bool]:
        term = search_term.strip()
        if not term:
            return queryset, False
        try:
            return queryset.filter(event_id=uuid.UUID(term)), False
        except ValueError:
            pass
        match = Q(event_id__in=EventRecord.objects.filter(key=term).values("id"))
        if can_view_payload(request):  # words of an error message are payload too
            match |= Q(error_message__icontains=term)
        return queryset.filter(match), False

    def has_retry_permission(self, request: HttpRequest) -> bool:
        return request.user.has_perm(triage.PERMISSIONS[triage.RETRY])

    def has_discard_permission(self, request: HttpRequest) -> bool:
        return request.user.has_perm(triage.PERMISSIONS[triage.DISCARD])

    def has_redirect_permission(self, request: HttpRequest) -> bool:
        return request.user.has_perm(triage.PERMISSIONS[triage.REDIRECT])

    def get_urls(self) -> list[URLPattern]:
        view = self.admin_site.admin_view
        return [
            *_resolve_urls(self, "<int:pk>", "deadletter"),
            path("<int:pk>/edit/", view(self.edit_view), name="django_events_deadletter_edit"),
            path(
                "<int:pk>/redirect/",
                view(self.redirect_view),
                name="django_events_deadletter_redirect",
            ),
            path(
                "export/<str:fmt>/",
                view(self.export_view),
                name="django_events_deadletter_export",
            ),
            *super().get_urls(),
        ]

    def edit_view(self, request: HttpRequest, pk: int) -> HttpResponse:
        """Edit and retry (see :mod:`django_events.edit_retry`): the form on GET, the
        validated retry on POST; an invalid payload comes back with the error, unchanged."""
        if not edit_retry.enabled():
            raise Http404("Edit and retry is off.")
        if not self.has_view_permission(request):
            raise PermissionDenied
        edit_retry.check_permission(request.user)
        dead = get_object_or_404(DeadLetter, pk=pk)
        event = triage.event_of(dead)
        reason = request.POST.get("reason", "").strip()
        text = request.POST.get("payload", "")
        error = ""
        if request.method == "POST":
            try:
                edited = edit_retry.edit_and_retry(dead, text, request.user, reason)
            except (InvalidEvent, LookupError) as exc:
                error = str(exc)
            else:
                messages.success(request, edited.message)
                return HttpResponseRedirect(_url("deadletter_change", pk))
        elif event is not None:
            text = json.dumps(event.data, indent=2, sort_keys=True, ensure_ascii=False)
        context = {
            **self.admin_site.each_context(request),
            "opts": DeadLetter._meta,
            "title": f"Edit and retry dead letter {pk}",
            "dead": dead,
            "event": event,
            "payload": text,
            "reason": reason,
            "rule": edit_retry.rule(event) if event else "",
            "error": error,
            "back": _url("deadletter_change", pk),
        }
        return TemplateResponse(
            request, "admin/django_events/edit_retry.html", context, status=400 if error else 200
        )

    def redirect_view(self, request: HttpRequest, pk: int) -> HttpResponse:
        """Retry into another group that subscribes to the event's type."""
        self._check(request, triage.REDIRECT)
        dead = get_object_or_404(DeadLetter, pk=pk)
        event = triage.event_of(dead)
        targets = (
            [g for g in triage.redirect_targets(event.type) if g != dead.group] if event else []
        )
        reason = request.POST.get("reason", "").strip()
        error = ""
        if request.method == "POST" and request.POST.get("confirm"):
            try:
                outcome = triage.redirect(
                    DeadLetter.objects.filter(pk=pk),
                    request.user,
                    request.POST.get("group", ""),
                    reason,
                )
            except LookupError as exc:
                error = str(exc)
            else:
                messages.success(request, outcome.message)
                return HttpResponseRedirect(_url("deadletter_change", pk))
        context = {
            **self.admin_site.each_context(request),
            "opts": DeadLetter._meta,
            "title": f"Redirect dead letter {pk}",
            "dead": dead,
            "event": event,
            "targets": targets,
            "reason": reason,
            "error": error,
            "back": _url("deadletter_change", pk),
        }
        return TemplateResponse(
            request, "admin/django_events/redirect.html", context, status=400 if error else 200
        )

    def export_view(self, request: HttpRequest, fmt: str) -> HttpResponseBase:
        """The dead letters of the changelist's current filters and search, streamed."""
        if fmt not in ("csv", "json"):
            raise Http404
        if not self.has_view_permission(request):
            raise PermissionDenied
        try:
            changelist = self.get_changelist_instance(request)
        except IncorrectLookupParameters:
            return HttpResponseBadRequest("Those filters are not valid.")
        queryset = changelist.get_queryset(request)
        write = export.as_csv if fmt == "csv" else export.as_json
        response = StreamingHttpResponse(
            write(queryset, can_view_payload(request)),
            content_type="text/csv; charset=utf-8" if fmt == "csv" else "application/json",
        )
        stamp = timezone.now().strftime("%Y%m%d-%H%M%S")
        response["Content-Disposition"] = f'attachment; filename="dead-letters-{stamp}.{fmt}"'
        return response

    def history_view(
        self, request: HttpRequest, object_id: str, extra_context: dict[str, Any] | None = None
    ) -> HttpResponse:
        """The admin log; an edit's diff holds payload values, so it is masked for users
        without ``view_payload``."""
        response = super().history_view(request, object_id, extra_context)
        page = getattr(response, "context_data", {}).get("action_list")
        if page is None or can_view_payload(request):
            return response
        entries = list(page.object_list)
        for entry in entries:
            head, mark, _ = entry.change_message.partition(edit_retry.EDIT_MARK)
            if mark:
                entry.change_message = f"{head}{mark} {MASKED}"
        page.object_list = entries
        return response

    def resolve_view(self, request: HttpRequest, pk: int, action: str) -> HttpResponse:
        self._check(request, action)
        dead = DeadLetter.objects.filter(pk=pk)
        if not dead.exists():
            raise Http404
        verb = "Retry" if action == triage.RETRY else "Discard"
        return self._confirm_or_resolve(
            request,
            action,
            dead,
            title=f"{verb} dead letter {pk}",
            back=_url("deadletter_change", pk),
        )

    @admin.action(description="Retry selected dead letters…", permissions=["retry"])
    def retry_selected(
        self, request: HttpRequest, queryset: QuerySet[DeadLetter]
    ) -> HttpResponse | None:
        return self._action(request, queryset, triage.RETRY)

    @admin.action(description="Discard selected dead letters…", permissions=["discard"])
    def discard_selected(
        self, request: HttpRequest, queryset: QuerySet[DeadLetter]
    ) -> HttpResponse | None:
        return self._action(request, queryset, triage.DISCARD)

    def _action(
        self, request: HttpRequest, queryset: QuerySet[DeadLetter], action: str
    ) -> HttpResponse:
        selected = request.POST.getlist(ACTION_CHECKBOX_NAME)
        hidden = [("action", f"{action}_selected")] + [
            (ACTION_CHECKBOX_NAME, pk) for pk in selected
        ]
        return self._confirm_or_resolve(
            request,
            action,
            queryset,
            title=f"{action.capitalize()} {len(selected)} selected dead letters",
            back=request.get_full_path(),
            hidden=hidden,
        )

    def change_view(
        self,
        request: HttpRequest,
        object_id: str,
        form_url: str = "",
        extra_context: dict[str, Any] | None = None,
    ) -> HttpResponse:
        extra = {
            "can_retry": self.has_retry_permission(request),
            "can_discard": self.has_discard_permission(request),
            "can_redirect": self.has_redirect_permission(request),
            "can_edit": edit_retry.allowed(request.user),
            **(extra_context or {}),
        }
        return super().change_view(request, object_id, form_url, extra)

    def render_change_form(
        self,
        request: HttpRequest,
        context: dict[str, Any],
        add: bool = False,
        change: bool = False,
        form_url: str = "",
        obj: DeadLetter | None = None,
    ) -> HttpResponse:
        """Adds the attempt timeline: one query whatever its length."""
        if obj is not None:
            using = obj._state.db or DeadLetter.objects.db
            context["attempts"] = history.timeline(using, obj.event_id, obj.group)
            context["show_messages"] = can_view_payload(request)
        return super().render_change_form(request, context, add, change, form_url, obj)

    def changelist_view(
        self, request: HttpRequest, extra_context: dict[str, Any] | None = None
    ) -> HttpResponse:
        extra = {
            "failure_groups_url": _url("failuregroup_changelist"),
            "status_url": _url("queuestatus_changelist"),
            **(extra_context or {}),
        }
        return super().changelist_view(request, extra)

    @admin.display(description="event type")
    def event_type(self, obj: DeadLetter) -> str:
        event = triage.event_of(obj)
        return event.type if event else GONE

    @admin.display(description="message")
    def short_message(self, obj: DeadLetter) -> str:
        return obj.error_message[:120]

    @admin.display(description="age", ordering="first_failed_at")
    def age(self, obj: DeadLetter) -> str:
        return timesince(obj.first_failed_at, timezone.now(), depth=1)

    @admin.display(description="failure group")
    def failure_group(self, obj: DeadLetter) -> SafeString:
        if not obj.fingerprint:
            return format_html("{}", "-")
        url = _url(
            "deadletter_changelist", query={"fingerprint": obj.fingerprint, "state__exact": "open"}
        )
        return format_html("<a href='{}'>{} (open ones like this)</a>", url, obj.fingerprint)

    @admin.display(description="event id")
    def event_link(self, obj: DeadLetter) -> SafeString:
        return _event_link(obj.event_id)

    @admin.display(description="version")
    def event_version(self, obj: DeadLetter) -> Any:
        event = triage.event_of(obj)
        return (event.version) if event else GONE

    @admin.display(description="key")
    def event_key(self, obj: DeadLetter) -> Any:
        event = triage.event_of(obj)
        return (event.key or "-") if event else GONE

    @admin.display(description="occurred at")
    def event_occurred_at(self, obj: DeadLetter) -> Any:
        event = triage.event_of(obj)
        return (event.occurred_at) if event else GONE

    @admin.display(description="correlation id")
    def correlation(self, obj: DeadLetter) -> SafeString:
        return _correlation_link(triage.event_of(obj))

    @admin.display(description="causation id")
    def causation(self, obj: DeadLetter) -> SafeString:
        event = triage.event_of(obj)
        return _event_link(event.causation_id if event else None)

    @admin.display(description="metadata")
    def event_metadata(self, obj: DeadLetter) -> SafeString:
        event = triage.event_of(obj)
        return _pretty(event.metadata) if event else format_html("{}", GONE)

    @admin.display(description="data")
    def payload(self, obj: DeadLetter) -> SafeString:
        event = triage.event_of(obj)
        return _pretty(event.data) if event else format_html("{}", GONE)

    @admin.display(description="stack trace")
    def traceback_shown(self, obj: DeadLetter) -> SafeString:
        return format_html("<pre>{}</pre>", obj.traceback or "(none recorded)")

    @admin.display(description="delivery's last error")
    def delivery_error(self, obj: DeadLetter) -> str:
        row = (
            Delivery.objects.filter(event_id=obj.event_id, group_name=obj.group)
            .values_list("last_error", flat=True)
            .first()
        )
        if row is None:
            return "(no delivery row left; see the attempt history above)"
        return row or "-"


# --------------------------------------------------------------------------- subscriptions

_request = threading.local()


@admin.register(Subscription)
class SubscriptionAdmin(ReadOnlyAdmin):
    """Who consumes what, by service; an orphan (retired, declared by no service) can be
    unsubscribed here, behind ``django_events.unsubscribe``, and the admin log keeps it."""

    list_display = (
        "service",
        "group",
        "event_type",
        "ordered",
        "state",
        "backlog",
        "declared_at",
        "last_seen_at",
        "retired_at",
    )
    list_filter = ("service", "group", "ordered", ("retired_at", admin.EmptyFieldListFilter))
    ordering = ("service", "group", "event_type")
    actions = ("unsubscribe_selected",)
    fieldsets = (
        (
            None,
            {
                "fields": (
                    "service",
                    "group",
                    "event_type",
                    "ordered",
                    "declared_at",
                    "last_seen_at",
                    "retired_at",
                )
            },
        ),
    )

    def has_unsubscribe_permission(self, request: HttpRequest) -> bool:
        return request.user.has_perm(subscriptions.UNSUBSCRIBE_PERMISSION)

    def changelist_view(
        self, request: HttpRequest, extra_context: dict[str, Any] | None = None
    ) -> HttpResponse:
        # Read once per page: the rows' state and backlog come from these.
        transport = transports["default"]
        store = subscriptions.store_of(transport)
        if not isinstance(store, subscriptions.DatabaseStore):
            return self._store_view(request, store, transport)
        rows = store.rows()
        _request.orphans = {row.pk for row in subscriptions.orphaned(rows)}
        _request.backlog = transport.backlog_by_type()
        return super().changelist_view(request, extra_context)

    def _store_view(
        self, request: HttpRequest, store: subscriptions.SubscriptionStore, transport: Any
    ) -> HttpResponse:
        """A store outside the database (Redis' hash at Level 1) has no queryset: its rows
        are listed from the store itself, and orphans are unsubscribed by their key."""
        if not self.has_view_or_change_permission(request):
            raise PermissionDenied
        rows = store.rows()
        if request.method == "POST":
            if not self.has_unsubscribe_permission(request):
                raise PermissionDenied
            chosen = set(request.POST.getlist(ACTION_CHECKBOX_NAME))
            picked = [row for row in rows if _store_key(row) in chosen]
            if picked:
                outcome = subscriptions.unsubscribe(picked, user=request.user)
                level = messages.WARNING if outcome.skipped else messages.SUCCESS
                self.message_user(request, outcome.message, level)
            else:
                self.message_user(request, "No subscription selected.", messages.WARNING)
            return HttpResponseRedirect(request.get_full_path())
        orphans = {_store_key(row) for row in subscriptions.orphaned(rows)}
        backlog = transport.backlog_by_type()
        listed = []
        for row in rows:
            key = _store_key(row)
            state = (
                "ORPHANED: no service declares it"
                if key in orphans
                else ("retired (declared by another service)" if row.retired_at else "declared")
            )
            held = "?" if backlog is None else backlog.get((row.group, row.event_type), 0)
            listed.append({"row": row, "key": key, "state": state, "backlog": held})
        context = {
            **self.admin_site.each_context(request),
            "opts": self.model._meta,
            "title": "Subscriptions",
            "rows": listed,
            "store": getattr(store, "hash", store.key),
            "can_unsubscribe": self.has_unsubscribe_permission(request),
            "orphans": len(orphans),
        }
        return TemplateResponse(request, "admin/django_events/subscriptions.html", context)

    @admin.display(description="state")
    def state(self, obj: Subscription) -> str:
        if obj.pk in getattr(_request, "orphans", ()):
            return "ORPHANED: no service declares it"
        return "retired (declared by another service)" if obj.retired_at else "declared"

    @admin.display(description="pending")
    def backlog(self, obj: Subscription) -> Any:
        found = getattr(_request, "backlog", None)
        return "?" if found is None else found.get((obj.group, obj.event_type), 0)

    @admin.action(description="Unsubscribe selected orphans", permissions=["unsubscribe"])
    def unsubscribe_selected(self, request: HttpRequest, queryset: QuerySet[Subscription]) -> None:
        outcome = subscriptions.unsubscribe(queryset, user=request.user)
        level = messages.WARNING if outcome.skipped else messages.SUCCESS
        self.message_user(request, outcome.message, level)


def _store_key(row: Subscription) -> str:
    """A subscription's identity in a store without primary keys."""
    return json.dumps([row.service, row.group, row.event_type], separators=(",", ":"))


# --------------------------------------------------------------------------- pauses


class PauseForm(forms.ModelForm):
    """A new pause: the group (and type) must be one some service declares."""

    class Meta:
        model = Pause
        fields = ("group", "event_type", "reason")

    def clean(self) -> dict[str, Any]:
        data: dict[str, Any] = super().clean() or {}
        if "group" in data:
            try:
                pauses.check_target(data["group"], data.get("event_type") or "")
            except ValueError as exc:
                raise forms.ValidationError(str(exc)) from exc
        return data


@admin.register(Pause)
class PauseAdmin(DeclaredLookupsOnly):
    """Paused groups and types. Adding one pauses, "Resume selected" resumes; both need
    ``django_events.pause_group`` and are written to the admin log. Workers see either
    within one poll (:mod:`django_events.pauses`)."""

    form = PauseForm
    list_display = ("group", "event_type_shown", "paused_by", "paused_at", "reason")
    list_filter = ("group",)
    ordering = ("group", "event_type")
    actions = ("resume_selected",)
    readonly_fields = ("paused_by", "paused_at")

    def has_view_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        user = request.user
        return user.has_perm("django_events.view_pause") or self.has_pause_group_permission(request)

    def has_pause_group_permission(self, request: HttpRequest) -> bool:
        return request.user.has_perm(pauses.PERMISSION)

    def has_add_permission(self, request: HttpRequest) -> bool:
        return self.has_pause_group_permission(request)

    def has_change_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return False

    def has_delete_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return False

    def get_changeform_initial_data(self, request: HttpRequest) -> dict[str, Any]:
        return {k: request.GET[k] for k in ("group", "event_type") if k in request.GET}

    def save_model(self, request: HttpRequest, obj: Pause, form: Any, change: bool) -> None:
        obj.paused_by = request.user.get_username()
        obj.save(using=transports["default"].database)
        obj.refresh_from_db(fields=["paused_at"])

    def construct_change_message(
        self, request: HttpRequest, form: Any, formsets: Any, add: bool = False
    ) -> Any:  # the admin log's message: a string is kept as written
        return f"Paused: {form.instance.reason}"

    @admin.display(description="event type")
    def event_type_shown(self, obj: Pause) -> str:
        return obj.event_type or "(whole group)"

    @admin.action(description="Resume selected", permissions=["pause_group"])
    def resume_selected(self, request: HttpRequest, queryset: QuerySet[Pause]) -> None:
        using = transports["default"].database
        resumed = []
        for row in queryset:
            try:
                done = pauses.resume(row.group, event_type=row.event_type, using=using)
            except pauses.NotPaused:
                continue  # resumed meanwhile by someone else
            pauses.audit(
                request.user, done, DELETION, f"Resumed (paused by {done.paused_by}: {done.reason})"
            )
            resumed.append(str(done))
        self.message_user(
            request,
            f"Resumed {', '.join(resumed)}: workers claim again within one poll."
            if resumed
            else "Nothing was paused any more.",
            messages.SUCCESS if resumed else messages.WARNING,
        )


# --------------------------------------------------------------------------- pages


class PageAdmin(DeclaredLookupsOnly):
    """An admin page without a table of its own, visible to dead-letter viewers."""

    def has_view_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return request.user.has_perm("django_events.view_deadletter")

    def has_add_permission(self, request: HttpRequest) -> bool:
        return False

    def has_change_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return False

    def has_delete_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return False

    def _page(self, request: HttpRequest, template: str, **context: Any) -> TemplateResponse:
        if not self.has_view_permission(request):
            raise PermissionDenied
        context = {
            **self.admin_site.each_context(request),
            "opts": self.model._meta,
            "title": self.model._meta.verbose_name_plural.capitalize(),
            **context,
        }
        return TemplateResponse(request, template, context)


@admin.register(FailureGroup)
class FailureGroupAdmin(TriageMixin, PageAdmin):
    def get_urls(self) -> list[URLPattern]:
        view = self.admin_site.admin_view
        return [
            *_resolve_urls(self, "<str:fingerprint>", "failuregroup"),
            path("", view(self.changelist_view), name="django_events_failuregroup_changelist"),
        ]

    def changelist_view(
        self, request: HttpRequest, extra_context: dict[str, Any] | None = None
    ) -> HttpResponse:
        groups = list(_failure_groups())
        examples = DeadLetter.objects.prefetch_related("event").in_bulk(
            [g["example_id"] for g in groups]
        )
        for group in groups:
            group["example"] = examples.get(group["example_id"])
            group["label"] = _group_label(group)
            group["list_url"] = _url(
                "deadletter_changelist",
                query={"fingerprint": group["fingerprint"], "state__exact": "open"},
            )
        return self._page(
            request,
            "admin/django_events/failure_groups.html",
            groups=groups,
            can_retry=request.user.has_perm(triage.PERMISSIONS[triage.RETRY]),
            can_discard=request.user.has_perm(triage.PERMISSIONS[triage.DISCARD]),
            can_view_payload=can_view_payload(request),
            title="Failure groups",
        )

    def resolve_view(self, request: HttpRequest, fingerprint: str, action: str) -> HttpResponse:
        self._check(request, action)
        verb = "Retry" if action == triage.RETRY else "Discard"
        return self._confirm_or_resolve(
            request,
            action,
            DeadLetter.objects.filter(state=DeadLetter.State.OPEN, fingerprint=fingerprint),
            title=f"{verb} every open dead letter of failure group {fingerprint}",
            back=_url("failuregroup_changelist"),
        )


@admin.register(QueueStatus)
class QueueStatusAdmin(PageAdmin):
    def get_urls(self) -> list[URLPattern]:
        view = self.admin_site.admin_view
        return [path("", view(self.changelist_view), name="django_events_queuestatus_changelist")]

    def changelist_view(
        self, request: HttpRequest, extra_context: dict[str, Any] | None = None
    ) -> HttpResponse:
        report = collect()
        for name, group in report["groups"].items():
            group["dead_url"] = _url(
                "deadletter_changelist", query={"group": name, "state__exact": "open"}
            )
        return self._page(
            request,
            "admin/django_events/status.html",
            report=report,
            title="Queue status",
            can_pause=request.user.has_perm(pauses.PERMISSION),
            pauses_url=_url("pause_changelist"),
            pause_add_url=_url("pause_add"),
            charts_url=_url("minutestat_changelist"),
        )


@admin.register(MinuteStat)
class ChartsAdmin(PageAdmin):
    """Per-group charts of the per-minute counts (:mod:`django_events.charts`): one query
    for every group and any window."""

    def has_view_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return request.user.has_perm("django_events.view_minutestat")

    def get_urls(self) -> list[URLPattern]:
        view = self.admin_site.admin_view
        return [path("", view(self.changelist_view), name="django_events_minutestat_changelist")]

    def changelist_view(
        self, request: HttpRequest, extra_context: dict[str, Any] | None = None
    ) -> HttpResponse:
        window = request.GET.get("window", charts.DEFAULT_WINDOW)
        if window not in charts.WINDOWS:
            window = charts.DEFAULT_WINDOW
        only = request.GET.get("group") or None
        labels = charts.axis_labels(window)
        step = charts.WINDOWS[window][1]
        per = "minute" if step == 1 else f"{step} minutes"
        groups = [
            {
                "name": one.group,
                "totals": one.totals,
                "throughput": charts.bars(
                    {"handled": one.handled, "failed": one.failed, "dead": one.dead},
                    f"{one.group}: handled, failed and dead per {per}",
                    labels,
                ),
                "pending": charts.line(
                    one.pending, "pending", f"{one.group}: pending events", labels
                ),
                "oldest": charts.line(
                    one.oldest, "oldest", f"{one.group}: oldest pending age (s)", labels
                ),
            }
            for one in charts.series(window, group=only)
        ]
        return self._page(
            request,
            "admin/django_events/charts.html",
            groups=groups,
            window=window,
            windows=list(charts.WINDOWS),
            only=only,
            per=per,
            colors=charts.COLORS,
            retention=get_settings().chart_retention,
            status_url=_url("queuestatus_changelist"),
            title="Charts",
        )


@admin.register(WorkerRecord)
class WorkerAdmin(PageAdmin):
    """Live and recently dead workers, and what each is handling (read-only; one query,
    whatever the number of workers: :func:`django_events.workers.listing`)."""

    def has_view_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return request.user.has_perm("django_events.view_workerrecord")

    def get_urls(self) -> list[URLPattern]:
        view = self.admin_site.admin_view
        return [path("", view(self.changelist_view), name="django_events_workerrecord_changelist")]

    def changelist_view(
        self, request: HttpRequest, extra_context: dict[str, Any] | None = None
    ) -> HttpResponse:
        conf = get_settings().workers
        found = workers.listing(transports["default"].database)
        for worker in found:
            worker["started"] = datetime.fromisoformat(worker["started_at"])
        return self._page(
            request,
            "admin/django_events/workers.html",
            workers=found,
            stuck_after=conf.stuck_after,
            dead_after=conf.heartbeat * conf.dead_after,
            title="Workers",
        )


def _resolve_urls(model_admin: Any, target: str, model: str) -> list[URLPattern]:
    """The retry and discard POST endpoints of ``target`` (a dead letter or failure group)."""
    view = model_admin.admin_site.admin_view(model_admin.resolve_view)
    return [
        path(
            f"{target}/{action}/", view, {"action": action}, name=f"django_events_{model}_{action}"
        )
        for action in (triage.RETRY, triage.DISCARD)
    ]
