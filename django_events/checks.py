"""System checks: what a user could get wrong, caught at start-up with a stable id.

E001 invalid DJANGO_EVENTS · E002 transport cannot be loaded · E003 missing optional
dependency · E004 unsupported database · E005 SQLite too old · E006 handler for a group
not in GROUPS · E007 OUTBOX_DATABASES names an unknown database · E008 ordered handler on
a transport without ordering · E009 an outbox database the transport cannot read ·
E010-E011 the log transport's (rotation on SQLite; a first claim that would hand out
again what another transport handled) · W001 no LISTEN/NOTIFY driver · W002 GROUPS entry
without handlers · W003-W005 Redis persistence, eviction, reachability · W006 no handlers
at all · W007 no transport named · W020 event type named like a command · W021 schema
snapshot missing or broken without a version bump · W022 a version with no upcaster to
the next · E030 INBOX_RETENTION within the redelivery window · E040-E042 SNS/SQS
transport (database, region, queue names and filter policies) · W050 an orphaned
subscription · W051 a group declared by several services (W05x read the database: they
run with ``migrate`` and ``check --database``).

W003-W006 are deployment checks under the tag ``django_events_runtime``: they need the
transport's server or concern a process that delivers events, so ``check --deploy``,
``consume_events`` and ``setup_events`` run them, not every ``manage.py`` command.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from django.conf import settings
from django.core.checks import CheckMessage, Error, Warning

from . import conf as conf_module
from .conf import EventsSettings, get_settings
from .exceptions import EventsConfigurationError, TransportUnavailable

RUNTIME_TAG = "django_events_runtime"

OPTIONAL_DEPENDENCIES = {
    "redis": "redis",
    "django_redis": "redis",
    "boto3": "aws",
    "botocore": "aws",
}


def check_events(app_configs: Any = None, **kwargs: Any) -> list[CheckMessage]:
    try:
        conf = get_settings()
    except EventsConfigurationError as exc:
        return [Error(str(exc), id="django_events.E001")]
    from .registry import registry
    from .transports import transports

    errors: list[CheckMessage] = unnamed_transport()
    try:
        transport = transports["default"]
    except EventsConfigurationError as exc:
        cause = exc.__cause__
        missing = getattr(cause, "name", None)
        if isinstance(cause, ImportError) and missing in OPTIONAL_DEPENDENCIES:
            extra = OPTIONAL_DEPENDENCIES[missing]
            return [
                Error(
                    f"The configured transport needs {missing!r}, which is not installed.",
                    hint=f"pip install 'django-events-outbox[{extra}]'",
                    id="django_events.E003",
                )
            ]
        return [Error(str(exc), id="django_events.E002")]
    errors.extend(transport.check())

    for alias in conf.outbox_databases:
        if alias not in settings.DATABASES:
            errors.append(
                Error(
                    f"DJANGO_EVENTS['OUTBOX_DATABASES'] names {alias!r}, "
                    "which is not in DATABASES.",
                    id="django_events.E007",
                )
            )
    handled_groups = set()
    for handler in registry:
        handled_groups.add(handler.group)
        if conf.groups and handler.group not in conf.groups:
            errors.append(
                Error(
                    f"Handles {handler.event_type!r} for group {handler.group!r}, "
                    "which is not in DJANGO_EVENTS['GROUPS'].",
                    hint=f"Add it ({', '.join(sorted(conf.groups))} are configured) "
                    "or fix the name.",
                    obj=handler.name,
                    id="django_events.E006",
                )
            )
        if handler.ordered and not transport.supports_ordering:
            errors.append(
                Error(
                    f"Asks for ordered=True, which {type(transport).__name__} cannot promise.",
                    hint=transport.ordering_note or None,
                    obj=handler.name,
                    id="django_events.E008",
                )
            )
    for group in sorted(set(conf.groups) - handled_groups):
        errors.append(
            Warning(
                f"DJANGO_EVENTS['GROUPS'] configures {group!r}, but no handler uses that group.",
                hint="Remove it, or check the group name in your @handler decorators.",
                id="django_events.W002",
            )
        )
    errors.extend(check_contracts(conf))
    from .retention import check_retention

    errors.extend(check_retention(conf))
    return errors


def unnamed_transport() -> list[CheckMessage]:
    """W007: without ``TRANSPORTS`` the first-generation database transport serves, so
    that an upgrade never switches a running installation's engine without the recorded
    move; a new project should name the log transport instead (docs/settings.md,
    "Which transport a project gets")."""
    if "TRANSPORTS" in (getattr(settings, "DJANGO_EVENTS", None) or {}):
        return []
    return [
        Warning(
            f"DJANGO_EVENTS['TRANSPORTS'] is not set, so 'default' is "
            f"{conf_module.DEFAULT_TRANSPORT}, the default kept for installations that "
            "never named a transport.",
            hint="Name the transport. A new project: DJANGO_EVENTS['TRANSPORTS'] = "
            "{'default': {'BACKEND': 'django_events.transports.log.LogTransport'}}. "
            "An installation that has been running names "
            "'django_events.transports.database.DatabaseTransport' to keep it, and moves "
            "with 'manage.py move_transport' (docs/moving.md, \"Into the log transport\").",
            id="django_events.W007",
        )
    ]


def check_runtime(app_configs: Any = None, **kwargs: Any) -> list[CheckMessage]:
    """W003-W005 from the transport's server, W006 when no handler is registered at all."""
    from .registry import registry
    from .transports import transports

    try:
        get_settings()
        transport = transports["default"]
    except EventsConfigurationError:
        return []  # check_events reports it
    found = list(transport.check_server())
    if not list(registry):
        found.append(
            Warning(
                "No event handlers are registered: a worker started here delivers events "
                "to nobody.",
                hint="Handlers are imported from the AUTODISCOVER_MODULES (events.py and "
                "handlers.py by default) of each installed app: check the module's name. "
                "If this project only publishes, silence django_events.W006.",
                id="django_events.W006",
            )
        )
    return found


def check_contracts(conf: EventsSettings) -> list[CheckMessage]:
    """W020 command-like type names, W021 the schema snapshot, W022 upcaster gaps."""
    from . import schema, versions
    from .naming import command_verb
    from .registry import registry
    from .typed import declarations

    found: list[CheckMessage] = []
    types = {h.event_type for h in registry} | set(versions.versioned_types())
    for event_type in sorted(types - set(conf.allow_command_names)):
        verb = command_verb(event_type)
        if verb:
            found.append(
                Warning(
                    f"Event type {event_type!r} reads as a command ({verb!r} is an imperative "
                    "verb): events are facts that already happened.",
                    hint="Name what happened, in the past tense (e.g. 'email.sent'), or list "
                    "the type in DJANGO_EVENTS['ALLOW_COMMAND_NAMES'].",
                    id="django_events.W020",
                )
            )
    if conf.schema_dir:
        directory = Path(conf.schema_dir)
        hint = (
            "Declare the change as a new version with an upcaster; if no event of that "
            "version was ever published, run manage.py events_schema to accept it."
        )
        try:
            snapshot = schema.load(directory)
        except ValueError as exc:
            snapshot, changes = {}, []
            found.append(
                Warning(f"Cannot read the schema snapshot: {exc}", id="django_events.W021")
            )
        else:
            changes = schema.compare(snapshot, schema.current_schemas())
        if not snapshot and declarations() and not found:
            found.append(
                Warning(
                    f"No schema snapshot in {directory}.",
                    hint="Run manage.py events_schema and commit what it writes.",
                    id="django_events.W021",
                )
            )
        for change in changes:
            if change.breaking:
                found.append(
                    Warning(
                        f"Breaking change without a version bump: {change}.",
                        hint=hint,
                        id="django_events.W021",
                    )
                )
    steps = versions.upcasters()
    for event_type in versions.versioned_types():
        known = versions.known_versions(event_type)
        for version in range(min(known), max(known)):
            if (event_type, version) not in steps:
                found.append(
                    Warning(
                        f"{event_type} has version {max(known)} but no upcaster from version "
                        f"{version}: events of version {version} or older will be "
                        "dead-lettered.",
                        hint=f"Register one with @upcaster({event_type!r}, "
                        f"from_version={version}).",
                        id="django_events.W022",
                    )
                )
    return found


def check_subscriptions(
    app_configs: Any = None, databases: Any = None, **kwargs: Any
) -> list[CheckMessage]:
    """W050 orphaned subscriptions, W051 groups shared by services: read from the store, so
    only when the check is given its database (``migrate``, ``check --database``)."""
    from django.db import DatabaseError

    from . import subscriptions
    from .transports import transports

    try:
        transport = transports["default"]
    except EventsConfigurationError:
        return []  # E001/E002 report it
    if not databases or transport.database not in databases:
        return []
    try:
        rows = subscriptions.all_rows(transport)
        backlog = transport.backlog_by_type()
    except DatabaseError:
        return []  # not migrated yet
    except (TransportUnavailable, EventsConfigurationError) as exc:
        # a broker's store (Redis, SNS) out of reach, or no AWS credentials here
        return [
            Warning(
                f"Subscriptions could not be read to look for orphans: {exc}",
                id="django_events.W050",
            )
        ]
    found: list[CheckMessage] = []
    for row in subscriptions.orphaned(rows):
        held = "" if backlog is None else f", {backlog.get((row.group, row.event_type), 0)} pending"
        found.append(
            Warning(
                f"Subscription {row.service}: {row.group} on {row.event_type!r} is orphaned "
                f"(retired {row.retired_at:%Y-%m-%d %H:%M}, no service declares it{held}): "
                "its group keeps receiving events that no handler takes.",
                hint="Once no worker of an older version runs, remove it with "
                "manage.py setup_events --prune (--dry-run lists it), or from the admin.",
                id="django_events.W050",
            )
        )
    for group, declared in subscriptions.shared_groups(rows).items():
        names = sorted({row.service for row in declared})
        mixed = len({row.ordered for row in declared}) > 1
        found.append(
            Warning(
                f"Group {group!r} is declared by services {', '.join(names)}: group names are "
                "shared by every service in the database (one inbox, one backlog), so an "
                "event type both handle in it reaches only one of them"
                + (", and they disagree on ordered (ordered wins)." if mixed else "."),
                hint="Give each service's groups their own names, e.g. prefixed with the service.",
                id="django_events.W051",
            )
        )
    return found
