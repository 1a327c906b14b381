"""What an event may hold: one rule, checked wherever an event enters a stage.

``publish()`` refuses an event that breaks it and names the path (nothing is written);
the relay sets an outbox row that breaks it aside as a ``(relay)`` dead letter; a
transport's decode turns a message that breaks it into a dead letter. So what
``publish()`` accepts, every later stage accepts: PostgreSQL's text and jsonb, SQLite,
Redis, SNS + SQS (docs/guarantees.md, "What publish refuses").

Beyond "a JSON object of JSON values", the rule refuses:

- a NUL character anywhere (PostgreSQL's text and jsonb cannot store it);
- a lone surrogate such as ``"\\ud800"``, which ``json.loads`` of an HTTP body can
  produce: it has no UTF-8 form, so jsonb, Redis and SNS refuse it;
- NaN and Infinity, which JSON does not have and jsonb refuses;
- nesting deeper than ``MAX_NESTING`` levels, so no decoder recurses far;
- in a key, more than ``MAX_KEY_LENGTH`` characters, or a control character, surrogate
  or non-character (U+FFFE, U+FFFF), which an SNS message attribute cannot carry.

JSON text is checked with one scan by a regular expression; a value is walked, to name
the path, only when that scan finds something. ``publish()`` therefore pays for one
``json.dumps`` and one scan of its output.
"""

from __future__ import annotations

import json
import math
import re
from typing import Any

from .exceptions import InvalidEvent, UnstorableValue

MAX_NESTING = 64
"""Deepest nesting of objects and arrays an event may have (data and metadata)."""
MAX_KEY_LENGTH = 200
"""Longest event key, in characters: the width of the key columns."""

_HIGH = r"[dD][89abAB][0-9a-fA-F]{2}"
_LOW = r"[dD][c-fC-F][0-9a-fA-F]{2}"
_ESCAPES = (  # \u0000, or a surrogate escape that is not half of a pair
    rf"\\u(?:0000|{_HIGH}(?!\\u{_LOW})|{_LOW}(?<!\\u{_HIGH}\\u{_LOW}))"
)
_ENCODED_SUSPECT = re.compile(_ESCAPES)
"""What can be wrong in text from ``json.dumps(..., allow_nan=False)``: ASCII, no NaN."""
_SUSPECT = re.compile(rf"{_ESCAPES}|[\x00\ud800-\udfff\ufffe\uffff]|NaN|Infinity")
"""What can be wrong in JSON text from anywhere (NaN may be inside a string: walked then)."""
_BAD_TEXT = re.compile("[\x00\ud800-\udfff]")
_BAD_RAW_TEXT = re.compile("[\x00\ud800-\udfff\ufffe\uffff]")
_BAD_KEY = re.compile("[\x00-\x1f\x7f-\x9f\ud800-\udfff\ufffe\uffff]")


def check_storable(text: str, what: str) -> None:
    """Refuse JSON ``text`` (data, metadata, a whole envelope) that holds what some stage
    cannot store: raise ``UnstorableValue`` whose message names the path, such as
    ``data['items'][3]['name']: lone surrogate '\\ud800' cannot be stored``.

    For JSON from anywhere: an outbox row, a stream entry, a message body. Checks nesting
    before anything is parsed. Whether ``text`` is JSON at all is left to the parser.
    """
    _check(text, what, _SUSPECT, ours=False)


def check_encoded(text: str, what: str) -> None:
    """``check_storable`` for text that ``json.dumps(..., allow_nan=False)`` produced,
    which is ASCII and has no NaN: only escapes can be wrong, so the scan is narrower."""
    _check(text, what, _ENCODED_SUSPECT, ours=True)


def check_text(value: str, what: str) -> None:
    """Refuse a plain string field (stored as it is, not as JSON) that holds a NUL or a
    lone surrogate; ``what`` names it in the message."""
    if _BAD_TEXT.search(value):
        raise UnstorableValue(_text_problem(value, what, _BAD_TEXT))


def validate_key(key: Any) -> str | None:
    """Return ``key`` if every transport can carry it: ``None``, or a non-empty str of at
    most ``MAX_KEY_LENGTH`` characters without control characters, surrogates or
    non-characters. (SNS + SQS FIFO maps a key that is not a valid ``MessageGroupId`` to
    one, deterministically: docs/transport-sqs.md.)"""
    if key is None:
        return None
    if not isinstance(key, str) or not key or len(key) > MAX_KEY_LENGTH:
        raise InvalidEvent(
            f"Event key must be a non-empty str of at most {MAX_KEY_LENGTH} characters."
        )
    if _BAD_KEY.search(key):
        raise UnstorableValue(_text_problem(key, "key", _BAD_KEY))
    return key


def find_unstorable(value: Any, path: str, *, raw: bool = False) -> str | None:
    """The first thing in a decoded JSON ``value`` that cannot be stored, as ``"<path>:
    <problem>"``, or None. ``raw``: the value came from text that was not ASCII, so
    non-characters were there as they are (not escaped) and count too."""
    return _walk(value, path, 1, _BAD_RAW_TEXT if raw else _BAD_TEXT)


def nesting_depth(text: str) -> int:
    """Deepest bracket nesting, ignoring brackets inside strings; runs before any parse."""
    depth = deepest = 0
    in_string = escaped = False
    for char in text:
        if in_string:
            if escaped:
                escaped = False
            elif char == "\\":
                escaped = True
            elif char == '"':
                in_string = False
        elif char == '"':
            in_string = True
        elif char in "[{":
            depth += 1
            deepest = max(deepest, depth)
        elif char in "]}":
            depth -= 1
    return deepest


def too_deep(text: str, limit: int = MAX_NESTING) -> bool:
    """Whether JSON ``text`` nests deeper than ``limit``; counts brackets first, so the
    character walk runs only for text that has that many."""
    return text.count("[") + text.count("{") > limit and nesting_depth(text) > limit


# -- internals ------------------------------------------------------------------------------


def _check(text: str, what: str, suspect: re.Pattern[str], *, ours: bool) -> None:
    deep = too_deep(text)
    if deep and not ours:  # text from outside is not parsed before its depth is known
        raise UnstorableValue(f"{what}: nests deeper than {MAX_NESTING} levels.")
    if not deep and (_plain(text) or suspect.search(text) is None):
        return
    try:
        value = json.loads(text)
    except (ValueError, RecursionError):
        problem = None  # not JSON: the parser that follows says so
    else:
        problem = find_unstorable(value, what, raw=not text.isascii())
    if problem:
        raise UnstorableValue(problem)
    if deep:
        raise UnstorableValue(f"{what}: nests deeper than {MAX_NESTING} levels.")


def _plain(text: str) -> bool:
    """Nothing in ``text`` could be wrong: ASCII without escapes, NUL, NaN or Infinity.
    Four substring searches, several times faster than the regular expression."""
    return (
        text.isascii()
        and "\\u" not in text
        and "\x00" not in text
        and "NaN" not in text
        and "Infinity" not in text
    )


def _walk(value: Any, path: str, depth: int, bad: re.Pattern[str]) -> str | None:
    if isinstance(value, str):
        return _text_problem(value, path, bad) if bad.search(value) else None
    if isinstance(value, float):
        if math.isfinite(value):
            return None
        return f"{path}: {value!r} cannot be stored (JSON has no NaN or Infinity)"
    if not isinstance(value, (dict, list)):
        return None
    if depth > MAX_NESTING:
        return f"{path}: nests deeper than {MAX_NESTING} levels"
    if isinstance(value, dict):
        for key, item in value.items():
            here = f"{path}[{key!r}]"
            if isinstance(key, str) and bad.search(key):
                return _text_problem(key, f"{here} (a key)", bad)
            found = _walk(item, here, depth + 1, bad)
            if found:
                return found
        return None
    for index, item in enumerate(value):
        found = _walk(item, f"{path}[{index}]", depth + 1, bad)
        if found:
            return found
    return None


def _text_problem(value: str, path: str, bad: re.Pattern[str]) -> str:
    found = bad.search(value)
    assert found is not None  # noqa: S101 - callers searched already
    char = found.group()
    code = ord(char)
    if code == 0:
        return f"{path}: NUL character cannot be stored (PostgreSQL refuses it)"
    shown = f"'\\u{code:04x}'" if code > 0xFF else f"'\\x{code:02x}'"
    if 0xD800 <= code <= 0xDFFF:
        return f"{path}: lone surrogate {shown} cannot be stored (it has no UTF-8 form)"
    if code in (0xFFFE, 0xFFFF):
        return f"{path}: non-character {shown} cannot be carried by SNS + SQS"
    return f"{path}: control character {shown} cannot be carried by SNS + SQS"
