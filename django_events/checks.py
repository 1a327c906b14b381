"""System checks: what a user could get wrong, caught at start-up with a stable id.

E001 invalid DJANGO_EVENTS · E002 transport cannot be loaded · E003 missing optional
dependency · E004 unsupported database · E005 SQLite too old · E006 handler for a group
not in GROUPS · E007 OUTBOX_DATABASES names an unknown database · E008 ordered handler on
a transport without ordering · E009 an outbox database the transport cannot
read · E030-E032 SNS/SQS transport (database, region, queue names and filter
policies) · W001 no LISTEN/NOTIFY driver · W002 GROUPS entry without
handlers.
"""

from __future__ import annotations

from typing import Any

from django.conf import settings
from django.core.checks import CheckMessage, Error, Warning

from .conf import get_settings
from .exceptions import EventsConfigurationError

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

    errors: list[CheckMessage] = []
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
                    hint=f"pip install 'django-events[{extra}]'",
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
                    f"{handler.name} handles {handler.event_type!r} for group {handler.group!r}, "
                    "which is not in DJANGO_EVENTS['GROUPS'].",
                    hint=f"Add it ({', '.join(sorted(conf.groups))} are configured) "
                    "or fix the name.",
                    obj=handler.func,
                    id="django_events.E006",
                )
            )
        if handler.ordered and not transport.supports_ordering:
            errors.append(
                Error(
                    f"{handler.name} asks for ordered=True, which {type(transport).__name__} "
                    "cannot promise.",
                    obj=handler.func,
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
    return errors
