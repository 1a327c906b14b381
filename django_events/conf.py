"""The ``DJANGO_EVENTS`` setting, read lazily so ``override_settings`` works.

Every key has a typed default here; an unknown key or a value of the wrong kind raises
``EventsConfigurationError`` naming it, at the first read rather than deep inside a worker.
"""

from __future__ import annotations

import math
import os
import re
from dataclasses import dataclass, field
from typing import Any

from django.conf import settings as django_settings
from django.core.signals import setting_changed
from django.dispatch import receiver

from .exceptions import EventsConfigurationError
from .signing import Signing
from .signing import parse as parse_signing
from .validation import check_text

DEFAULT_TRANSPORT = "django_events.transports.database.DatabaseTransport"
GROUP_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.:-]{0,99}$")


def default_service() -> str:
    """The top-level package of the settings module (``shop`` for ``shop.settings``), or
    ``"default"`` when settings were configured by hand: one name per Django project."""
    module = getattr(django_settings, "SETTINGS_MODULE", None)
    return module.split(".")[0] if module else "default"


@dataclass(frozen=True)
class RetryPolicy:
    """How often and how patiently a failing handler is retried."""

    max_attempts: int = 5
    backoff_base: float = 1.0
    backoff_max: float = 300.0


@dataclass(frozen=True)
class Health:
    """Thresholds beyond which ``events_status`` exits 2; ``None`` disables one."""

    max_pending_age: float | None = 300.0
    max_outbox_age: float | None = 60.0
    max_dead: int | None = None


@dataclass(frozen=True)
class Workers:
    """The worker registry (:mod:`django_events.workers`): how often a worker's row is
    written, when a silent one counts as dead, when a handler counts as stuck, and how
    long the rows of dead and stopped workers are kept."""

    heartbeat: float = 10.0
    dead_after: int = 3
    stuck_after: float = 300.0
    retention: float = 7 * 86400.0


@dataclass(frozen=True)
class EventsSettings:
    transports: dict[str, dict[str, Any]] = field(
        default_factory=lambda: {"default": {"BACKEND": DEFAULT_TRANSPORT, "OPTIONS": {}}}
    )
    groups: dict[str, RetryPolicy] = field(default_factory=dict)
    outbox_databases: tuple[str, ...] = ("default",)
    retry: RetryPolicy = field(default_factory=RetryPolicy)
    lease: float = 30.0
    call_timeout: float = 30.0
    poll_interval: float = 1.0
    batch_size: int = 50
    batch_bytes: int = 4 * 1024 * 1024
    batch_transactions: bool = True
    publish_notify: bool = True
    prepared_statements: bool = True
    admin_edit_retry: bool = False
    relay_batch_size: int = 500
    max_payload_bytes: int = 256 * 1024
    max_metadata_bytes: int = 8 * 1024
    source: str = ""
    service: str = field(default_factory=default_service)
    subscriptions_cache: float = 0.0
    log_retention: float | None = None
    inbox_retention: float | None = None
    dead_letter_retention: float | None = None
    attempt_history: int = 20
    chart_retention: float | None = 48 * 3600.0
    health: Health = field(default_factory=Health)
    workers: Workers = field(default_factory=Workers)
    autodiscover_modules: tuple[str, ...] = ("events", "handlers")
    schema_dir: str | None = None
    allow_command_names: tuple[str, ...] = ()
    signing: Signing = field(default_factory=Signing)
    metrics_token: str | None = None

    def retry_for(self, group: str) -> RetryPolicy:
        return self.groups.get(group, self.retry)


_TOP_KEYS = {
    "TRANSPORTS",
    "GROUPS",
    "OUTBOX_DATABASES",
    "MAX_ATTEMPTS",
    "BACKOFF_BASE",
    "BACKOFF_MAX",
    "LEASE",
    "CALL_TIMEOUT",
    "POLL_INTERVAL",
    "BATCH_SIZE",
    "BATCH_BYTES",
    "BATCH_TRANSACTIONS",
    "PUBLISH_NOTIFY",
    "PREPARED_STATEMENTS",
    "ADMIN_EDIT_RETRY",
    "RELAY_BATCH_SIZE",
    "MAX_PAYLOAD_BYTES",
    "MAX_METADATA_BYTES",
    "SOURCE",
    "SERVICE",
    "SUBSCRIPTIONS_CACHE",
    "LOG_RETENTION",
    "INBOX_RETENTION",
    "DEAD_LETTER_RETENTION",
    "ATTEMPT_HISTORY",
    "CHART_RETENTION",
    "HEALTH",
    "WORKERS",
    "AUTODISCOVER_MODULES",
    "SCHEMA_DIR",
    "ALLOW_COMMAND_NAMES",
    "SIGNING_KEYS",
    "SIGNING_KEY_ID",
    "REQUIRE_SIGNATURES",
    "METRICS_TOKEN",
}
_RETRY_KEYS = {"MAX_ATTEMPTS", "BACKOFF_BASE", "BACKOFF_MAX"}
_HEALTH_KEYS = {"MAX_PENDING_AGE", "MAX_OUTBOX_AGE", "MAX_DEAD"}
_WORKERS_KEYS = {"HEARTBEAT", "DEAD_AFTER", "STUCK_AFTER", "RETENTION"}
_TRANSPORT_KEYS = {"BACKEND", "OPTIONS"}


def _unknown(given: dict[str, Any], allowed: set[str], where: str) -> None:
    extra = sorted(set(given) - allowed)
    if extra:
        raise EventsConfigurationError(
            f"{where}: unknown key {extra[0]!r}; expected one of {', '.join(sorted(allowed))}."
        )


def _number(
    raw: dict[str, Any],
    key: str,
    default: float | None,
    where: str,
    *,
    minimum: float = 0,
    integer: bool = False,
    optional: bool = False,
) -> Any:
    value = raw.get(key, default)
    if value is None and optional:
        return None
    kind = int if integer else (int, float)
    if (
        isinstance(value, bool)
        or not isinstance(value, kind)
        or not math.isfinite(value)
        or value < minimum
    ):
        wanted = "an integer" if integer else "a number"
        raise EventsConfigurationError(
            f"{where}[{key!r}] must be {wanted} >= {minimum}, got {value!r}."
        )
    return value


def _unstorable(text: str) -> bool:
    try:
        check_text(text, "SOURCE")
    except ValueError:
        return True
    return False


def _retry(raw: dict[str, Any], base: RetryPolicy, where: str) -> RetryPolicy:
    _unknown(raw, _RETRY_KEYS, where)
    policy = RetryPolicy(
        max_attempts=_number(
            raw, "MAX_ATTEMPTS", base.max_attempts, where, minimum=1, integer=True
        ),
        backoff_base=float(_number(raw, "BACKOFF_BASE", base.backoff_base, where)),
        backoff_max=float(_number(raw, "BACKOFF_MAX", base.backoff_max, where)),
    )
    return policy


def _workers(raw: dict[str, Any], where: str) -> Workers:
    _unknown(raw, _WORKERS_KEYS, where)
    base = Workers()
    return Workers(
        heartbeat=float(_number(raw, "HEARTBEAT", base.heartbeat, where, minimum=0.01)),
        dead_after=_number(raw, "DEAD_AFTER", base.dead_after, where, minimum=2, integer=True),
        stuck_after=float(_number(raw, "STUCK_AFTER", base.stuck_after, where)),
        retention=float(_number(raw, "RETENTION", base.retention, where)),
    )


def _dict(value: Any, where: str) -> dict[str, Any]:
    if not isinstance(value, dict):
        raise EventsConfigurationError(f"{where} must be a dict, got {type(value).__name__}.")
    return value


def parse(raw: Any) -> EventsSettings:
    """Validate the raw setting into ``EventsSettings``."""
    where = "DJANGO_EVENTS"
    raw = _dict(raw if raw is not None else {}, where)
    _unknown(raw, _TOP_KEYS, where)
    defaults = EventsSettings()

    transports = _dict(raw.get("TRANSPORTS", defaults.transports), f"{where}['TRANSPORTS']")
    if "default" not in transports:
        raise EventsConfigurationError(f"{where}['TRANSPORTS'] must define a 'default' transport.")
    for alias, conf in transports.items():
        here = f"{where}['TRANSPORTS'][{alias!r}]"
        _unknown(_dict(conf, here), _TRANSPORT_KEYS, here)
        if not isinstance(conf.get("BACKEND"), str):
            raise EventsConfigurationError(f"{here}['BACKEND'] must be a dotted path string.")
        _dict(conf.get("OPTIONS", {}), f"{here}['OPTIONS']")

    retry = _retry({k: raw[k] for k in _RETRY_KEYS if k in raw}, defaults.retry, where)
    groups: dict[str, RetryPolicy] = {}
    for name, conf in _dict(raw.get("GROUPS", {}), f"{where}['GROUPS']").items():
        here = f"{where}['GROUPS'][{name!r}]"
        if not isinstance(name, str) or not GROUP_NAME.match(name):
            raise EventsConfigurationError(f"{here}: invalid group name.")
        groups[name] = _retry(_dict(conf or {}, here), retry, here)

    health_raw = _dict(raw.get("HEALTH", {}), f"{where}['HEALTH']")
    _unknown(health_raw, _HEALTH_KEYS, f"{where}['HEALTH']")
    hw = f"{where}['HEALTH']"
    health = Health(
        max_pending_age=_number(
            health_raw, "MAX_PENDING_AGE", defaults.health.max_pending_age, hw, optional=True
        ),
        max_outbox_age=_number(
            health_raw, "MAX_OUTBOX_AGE", defaults.health.max_outbox_age, hw, optional=True
        ),
        max_dead=_number(
            health_raw, "MAX_DEAD", defaults.health.max_dead, hw, integer=True, optional=True
        ),
    )

    workers = _workers(_dict(raw.get("WORKERS", {}), f"{where}['WORKERS']"), f"{where}['WORKERS']")

    databases = raw.get("OUTBOX_DATABASES", defaults.outbox_databases)
    if (
        not isinstance(databases, (list, tuple))
        or not databases
        or not all(isinstance(d, str) for d in databases)
    ):
        raise EventsConfigurationError(f"{where}['OUTBOX_DATABASES'] must be a list of aliases.")
    modules = raw.get("AUTODISCOVER_MODULES", defaults.autodiscover_modules)
    if not isinstance(modules, (list, tuple)) or not all(isinstance(m, str) for m in modules):
        raise EventsConfigurationError(f"{where}['AUTODISCOVER_MODULES'] must be a list of names.")
    source = raw.get("SOURCE", defaults.source)
    if not isinstance(source, str) or len(source) > 200 or _unstorable(source):
        raise EventsConfigurationError(
            f"{where}['SOURCE'] must be a string of at most 200 characters, without NUL "
            "characters or lone surrogates (every event carries it)."
        )
    max_payload = _number(
        raw, "MAX_PAYLOAD_BYTES", defaults.max_payload_bytes, where, minimum=64, integer=True
    )
    max_metadata = _number(
        raw,
        "MAX_METADATA_BYTES",
        min(defaults.max_metadata_bytes, max_payload),
        where,
        minimum=2,
        integer=True,
    )
    if max_metadata > max_payload:
        raise EventsConfigurationError(
            f"{where}['MAX_METADATA_BYTES'] ({max_metadata}) must not exceed "
            f"MAX_PAYLOAD_BYTES ({max_payload}): consumers read metadata within that limit."
        )
    service = raw.get("SERVICE") or default_service()
    if not isinstance(service, str) or not GROUP_NAME.match(service):
        raise EventsConfigurationError(
            f"{where}['SERVICE'] must be a name of letters, digits and _.:- (at most 100 "
            f"characters), got {service!r}."
        )

    schema_dir = raw.get("SCHEMA_DIR")
    if schema_dir is not None and not isinstance(schema_dir, (str, os.PathLike)):
        raise EventsConfigurationError(f"{where}['SCHEMA_DIR'] must be a path or None.")
    allowed = raw.get("ALLOW_COMMAND_NAMES", ())
    if not isinstance(allowed, (list, tuple)) or not all(isinstance(t, str) for t in allowed):
        raise EventsConfigurationError(f"{where}['ALLOW_COMMAND_NAMES'] must be a list of types.")

    metrics_token = raw.get("METRICS_TOKEN")
    if metrics_token is not None and (
        not isinstance(metrics_token, str) or len(metrics_token) < 16
    ):
        raise EventsConfigurationError(
            f"{where}['METRICS_TOKEN'] must be a string of at least 16 characters (a secret "
            "the scraper sends as 'Authorization: Bearer ...'), or None."
        )

    lease = float(_number(raw, "LEASE", defaults.lease, where, minimum=1))
    flags = {}
    for key in ("BATCH_TRANSACTIONS", "PUBLISH_NOTIFY", "PREPARED_STATEMENTS", "ADMIN_EDIT_RETRY"):
        flags[key] = raw.get(key, getattr(defaults, key.lower()))
        if not isinstance(flags[key], bool):
            raise EventsConfigurationError(f"{where}[{key!r}] must be True or False.")
    return EventsSettings(
        transports=transports,
        groups=groups,
        outbox_databases=tuple(databases),
        retry=retry,
        lease=lease,
        call_timeout=float(_number(raw, "CALL_TIMEOUT", defaults.call_timeout, where, minimum=1)),
        poll_interval=float(
            _number(raw, "POLL_INTERVAL", defaults.poll_interval, where, minimum=0.01)
        ),
        batch_size=_number(raw, "BATCH_SIZE", defaults.batch_size, where, minimum=1, integer=True),
        batch_bytes=_number(
            raw, "BATCH_BYTES", defaults.batch_bytes, where, minimum=1, integer=True
        ),
        batch_transactions=flags["BATCH_TRANSACTIONS"],
        prepared_statements=flags["PREPARED_STATEMENTS"],
        publish_notify=flags["PUBLISH_NOTIFY"],
        admin_edit_retry=flags["ADMIN_EDIT_RETRY"],
        relay_batch_size=_number(
            raw, "RELAY_BATCH_SIZE", defaults.relay_batch_size, where, minimum=1, integer=True
        ),
        max_payload_bytes=max_payload,
        max_metadata_bytes=max_metadata,
        source=source,
        service=service,
        subscriptions_cache=float(_number(raw, "SUBSCRIPTIONS_CACHE", 0.0, where)),
        log_retention=_number(raw, "LOG_RETENTION", None, where, optional=True),
        inbox_retention=_number(raw, "INBOX_RETENTION", None, where, optional=True),
        dead_letter_retention=_number(raw, "DEAD_LETTER_RETENTION", None, where, optional=True),
        attempt_history=_number(
            raw, "ATTEMPT_HISTORY", defaults.attempt_history, where, integer=True
        ),
        chart_retention=_number(
            raw, "CHART_RETENTION", defaults.chart_retention, where, optional=True
        ),
        health=health,
        workers=workers,
        autodiscover_modules=tuple(modules),
        schema_dir=None if schema_dir is None else os.fspath(schema_dir),
        allow_command_names=tuple(allowed),
        signing=parse_signing(raw, where),
        metrics_token=metrics_token,
    )


def current_service() -> str:
    """This deployment's ``SERVICE``: recorded on the dead letters its workers create."""
    try:
        return get_settings().service
    except EventsConfigurationError:
        return default_service()


_cached: EventsSettings | None = None


def get_settings() -> EventsSettings:
    """The validated settings, parsed once and re-read after ``setting_changed``."""
    global _cached
    if _cached is None:
        _cached = parse(getattr(django_settings, "DJANGO_EVENTS", None))
    return _cached


@receiver(setting_changed)
def _reset(*, setting: str, **kwargs: Any) -> None:
    global _cached
    if setting == "DJANGO_EVENTS":
        _cached = None  # transports reset themselves (transports/__init__.py)
