"""Text made storable before it is stored.

What an exception says, or what a broken message holds, can be any Python string; what
the stores accept is narrower. PostgreSQL, SQLite and Redis need valid UTF-8 (no lone
surrogate such as ``"\\ud800"``), and PostgreSQL text cannot hold NUL. Error messages and
tracebacks pass through :func:`storable` on their way into ``last_error`` and dead letters.
"""

from __future__ import annotations


def storable(text: str, limit: int | None = None) -> str:
    """``text`` with NUL characters and lone surrogates written as backslash escapes, cut
    after ``limit`` characters if one is given (a decode error quoting a hostile body)."""
    if limit is not None and len(text) > limit:
        text = text[:limit] + f"... ({len(text) - limit} more characters)"
    if text.isascii() and "\x00" not in text:
        return text
    return text.encode("utf-8", "backslashreplace").decode().replace("\x00", "\\x00")


def describe(exc: BaseException) -> str:
    """``str(exc)``, storable, even for an exception whose ``__str__`` itself raises."""
    try:
        message = str(exc)
    except Exception:
        message = f"<{type(exc).__name__}: its message could not be read>"
    return storable(message)
