"""Facts, not commands: spot an event type named like an order to someone.

The rule is deliberately small, so a warning can always be explained: take the action
part (the last dotted part, split into words on ``_`` and ``-``); it reads as a command
when its first word is a common imperative verb and its last word is not in the past
tense. ``email.send``, ``user.create`` and ``invoice.send_reminder`` are commands;
``email.sent``, ``user.created`` and ``invoice.reminder_sent`` are facts.
"""

from __future__ import annotations

import re

COMMAND_VERBS = frozenset(
    """
    activate add apply approve archive assign book calculate cancel charge check close
    compute confirm create deactivate delete deliver disable dispatch do download email
    enable execute export fetch fulfil fulfill generate get handle import index invite
    invoice issue lock make mark notify open pay place post process publish purge put
    refund register reject reload remind remove render request reserve reset resize
    restore retry run save schedule send set ship start stop store submit sync trigger
    unlock update upload validate verify
    """.split()  # noqa: SIM905 - a word list reads best as words
)
"""Verbs that, leading the action part, give an order rather than report a fact."""

PAST_PARTICIPLES = frozenset(
    """
    begun bought brought built caught chosen done drawn found frozen given gone held
    hidden kept known laid left lost made met paid put read run said seen sent set shown
    sold spent split spun stolen struck taken taught thrown told understood withdrawn
    won written
    """.split()  # noqa: SIM905
)
"""Irregular past forms; any word ending in ``-ed`` counts as past too."""

_WORDS = re.compile(r"[_-]+")


def command_verb(event_type: str) -> str | None:
    """The imperative verb that makes ``event_type`` read as a command, or None."""
    words = [w for w in _WORDS.split(event_type.rsplit(".", 1)[-1]) if w]
    if not words or words[0] not in COMMAND_VERBS:
        return None
    last = words[-1]
    if len(words) > 1 and (last.endswith("ed") or last in PAST_PARTICIPLES):
        return None
    return words[0]
