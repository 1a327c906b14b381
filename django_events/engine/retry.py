"""Retry policy: exponential backoff with jitter, per group and per handler."""

from __future__ import annotations

import random

from ..conf import RetryPolicy, get_settings
from ..registry import Handler, registry


def policy_for(group: str, handler: Handler | None) -> RetryPolicy:
    """The group's policy (or the global one), with the handler's own overrides on top."""
    base = get_settings().retry_for(group)
    if handler is None:
        return base
    return RetryPolicy(
        max_attempts=handler.max_attempts or base.max_attempts,
        backoff_base=base.backoff_base if handler.backoff_base is None else handler.backoff_base,
        backoff_max=base.backoff_max if handler.backoff_max is None else handler.backoff_max,
    )


def backoff(policy: RetryPolicy, attempt: int) -> float:
    """Seconds before the next attempt: ``base * 2**(attempt-1)``, capped, then jittered
    into its upper half so retries of one burst spread out without ever coming early."""
    delay = min(policy.backoff_max, policy.backoff_base * 2 ** max(attempt - 1, 0))
    return delay * random.uniform(0.5, 1.0)  # noqa: S311 - jitter, not security


def max_attempts(group: str) -> int:
    """The most attempts any of ``group``'s handlers gets; the group's policy without one."""
    handlers = [h for h in registry if h.group == group]
    return max((policy_for(group, h).max_attempts for h in handlers), default=0) or (
        get_settings().retry_for(group).max_attempts
    )
