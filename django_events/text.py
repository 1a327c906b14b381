"""Text made storable before it is stored.

What an exception says, or what a broken message holds, can be any Python string; what
the stores accept is narrower. PostgreSQL, SQLite and Redis need valid UTF-8 (no lone
surrogate such as ``"\\ud800"``), and PostgreSQL text cannot hold NUL. Error messages and
tracebacks pass through :func:`storable` on their way into ``last_error`` and dead letters.
"""

from __future__ import annotations


def storable(text: str) -> str:
    """``text`` with lone surrogates as backslash escapes and NUL characters dropped."""
    return text.encode("utf-8", "backslashreplace").decode("utf-8").replace("\x00", "")


def describe(exc: BaseException) -> str:
    """``str(exc)``, storable, even for an exception whose ``__str__`` itself raises."""
    try:
        message = str(exc)
    except Exception:
        message = f"<{type(exc).__name__}: its message could not be read>"
    return storable(message)
