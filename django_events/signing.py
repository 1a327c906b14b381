"""HMAC signatures on messages that leave the database (Redis Streams, SNS + SQS).

Why: on Levels 1 and 2 anyone who can write to the stream or the queue can make a worker
handle an event. With ``SIGNING_KEYS`` set, every message a publisher sends carries
``signature = v1=<key id>:<base64url HMAC-SHA256 of the envelope's bytes>`` beside the
envelope (a stream field, an SNS/SQS message attribute), and a worker refuses what does
not verify: a dead letter ``UnverifiedMessage``, never handled. The MAC covers exactly the
envelope text as sent (UTF-8); the copies of its id, type and key that routing reads
(stream fields, message attributes) must equal the signed envelope's. Several keys are
accepted at once so that keys rotate without stopping anything (docs/services.md).
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from .exceptions import EventsConfigurationError, UndecodableEvent

SIGNATURE = "signature"
"""The stream field / message attribute that carries the signature."""
SCHEME = "v1"
KEY_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,31}$")
"""Key ids: short names without ``:`` or ``=``, which the signature's syntax uses."""
MIN_SECRET_BYTES = 32


class UnverifiedMessage(UndecodableEvent):
    """A message without a valid signature where one is required: never handled."""


@dataclass(frozen=True)
class Signing:
    """The parsed signing settings. Secrets stay out of ``repr`` (settings get logged)."""

    keys: Mapping[str, bytes] = field(default_factory=dict, repr=False)
    key_id: str | None = None
    require: bool = False
    _macs: dict[str, Any] = field(default_factory=dict, repr=False, compare=False)

    def __post_init__(self) -> None:
        # One keyed HMAC per key, copied per message: cheaper than keying each time.
        for name, secret in self.keys.items():
            self._macs[name] = hmac.new(secret, digestmod=hashlib.sha256)

    @property
    def enabled(self) -> bool:
        return bool(self.keys)

    def sign(self, body: str) -> str:
        """The signature of an envelope as sent, with the current key."""
        key_id = self.key_id or ""  # parse() sets it whenever there are keys
        return f"{SCHEME}={key_id}:{self._mac(key_id, body.encode())}"

    def _mac(self, key_id: str, body: bytes) -> str:
        mac = self._macs[key_id].copy()
        mac.update(body)
        return base64.urlsafe_b64encode(mac.digest()).rstrip(b"=").decode()

    def verify(self, signature: str | bytes | None, body: str | bytes) -> bool:
        """Check a received message's signature over its envelope bytes. Returns whether
        it was verified (False: unsigned and signatures not required); raises
        ``UnverifiedMessage`` naming why otherwise. Without keys, signatures are ignored.
        """
        if not self.keys:
            return False
        if signature is None or signature in ("", b""):
            if self.require:
                raise UnverifiedMessage(
                    "Message is not signed, and this worker requires signatures "
                    "(SIGNING_KEYS is set)."
                )
            return False
        if isinstance(signature, bytes):
            signature = signature.decode(errors="backslashreplace")
        scheme, _, rest = signature.partition("=")
        key_id, _, given = rest.partition(":")
        if scheme != SCHEME or not key_id or not given:
            raise UnverifiedMessage(
                f"Message signature {signature[:80]!r} is not of the form "
                f"'{SCHEME}=<key id>:<base64url>'."
            )
        if key_id not in self._macs:
            raise UnverifiedMessage(
                f"Message is signed with key id {key_id[:40]!r}, which is not in "
                f"SIGNING_KEYS here (accepted: {', '.join(sorted(self._macs))})."
            )
        raw = body.encode() if isinstance(body, str) else body
        if not hmac.compare_digest(self._mac(key_id, raw).encode(), given.encode()):
            raise UnverifiedMessage(
                f"Message signature does not match its envelope for key id {key_id!r} "
                "(tampered with, or signed with another secret)."
            )
        return True


def same(what: str, carried: str | None, signed: str | None) -> None:
    """A routing copy (stream field, message attribute) must equal the signed envelope's
    value, or a signed body could travel under attributes it was not sent with."""
    if carried != signed:
        raise UnverifiedMessage(
            f"Message {what} {str(carried)[:80]!r} differs from the signed envelope's "
            f"{str(signed)[:80]!r}."
        )


def parse(raw: Mapping[str, Any], where: str) -> Signing:
    """``SIGNING_KEYS``, ``SIGNING_KEY_ID`` and ``REQUIRE_SIGNATURES`` of ``DJANGO_EVENTS``,
    checked strictly; errors name the key and never show a secret."""
    given = raw.get("SIGNING_KEYS", {})
    here = f"{where}['SIGNING_KEYS']"
    if not isinstance(given, Mapping):
        raise EventsConfigurationError(
            f"{here} must be a dict of key id -> secret, got {type(given).__name__}."
        )
    keys: dict[str, bytes] = {}
    for key_id, secret in given.items():
        if not isinstance(key_id, str) or not KEY_ID.match(key_id):
            raise EventsConfigurationError(
                f"{here}: key id {key_id!r} must be 1 to 32 letters, digits and _.- "
                "(starting with a letter or digit)."
            )
        if isinstance(secret, str):
            secret = secret.encode()
        if not isinstance(secret, bytes) or len(secret) < MIN_SECRET_BYTES:
            what = f"{len(secret)} bytes" if isinstance(secret, bytes) else type(secret).__name__
            raise EventsConfigurationError(
                f"{here}[{key_id!r}] must be a str or bytes secret of at least "
                f"{MIN_SECRET_BYTES} bytes, got {what}."
            )
        keys[key_id] = secret
    key_id = raw.get("SIGNING_KEY_ID")
    if key_id is None and len(keys) == 1:
        key_id = next(iter(keys))
    if keys and key_id is None:
        raise EventsConfigurationError(
            f"{where}['SIGNING_KEY_ID'] must name the key that signs when SIGNING_KEYS "
            f"holds more than one (it holds {', '.join(sorted(keys))})."
        )
    if key_id is not None and key_id not in keys:
        raise EventsConfigurationError(
            f"{where}['SIGNING_KEY_ID'] is {key_id!r}, which is not a key id of "
            f"SIGNING_KEYS ({', '.join(sorted(keys)) or 'empty'})."
        )
    require = raw.get("REQUIRE_SIGNATURES", bool(keys))
    if not isinstance(require, bool):
        raise EventsConfigurationError(f"{where}['REQUIRE_SIGNATURES'] must be True or False.")
    if require and not keys:
        raise EventsConfigurationError(
            f"{where}['REQUIRE_SIGNATURES'] is True but SIGNING_KEYS is empty: there is no "
            "key to verify with."
        )
    return Signing(keys=keys, key_id=key_id, require=require)
