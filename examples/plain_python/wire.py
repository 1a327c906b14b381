"""Reading django-events' wire format 1 without Django: decode and check one envelope.

Shared by ``redis_consumer.py`` and ``sqs_consumer.py``; only the standard library. The
rules are in docs/wire-format.md: a message is one CloudEvents 1.0 JSON object, UTF-8,
at most ``MAX_BYTES``; a consumer refuses what it cannot trust (before parsing where it
can) and ignores attributes it does not know.
"""

from __future__ import annotations

import argparse
import base64
import hashlib
import hmac
import json
import os
import re
import uuid
from typing import Any

MAX_BYTES = 512 * 1024
"""Largest envelope accepted: django-events' own readers allow twice MAX_PAYLOAD_BYTES."""
REQUIRED = ("specversion", "id", "type", "time", "data")
"""What a reader needs; writers of format 1 always write more (see the spec's table)."""


class Undecodable(ValueError):
    """The message is not a wire format 1 envelope; retrying will not change that."""


def _refuse_constant(name: str) -> Any:
    raise Undecodable(f"the envelope holds {name}, which JSON does not allow")


def verify(raw: bytes, signature: str | None, keys: dict[str, bytes]) -> None:
    """Check ``signature`` (``v1=<key id>:<base64url>``, docs/wire-format.md "Signatures"):
    HMAC-SHA256 of the envelope's bytes as received, with the secret of its key id."""
    scheme, _, rest = (signature or "").partition("=")
    key_id, _, given = rest.partition(":")
    if not signature:
        raise Undecodable("the message is not signed")
    if scheme != "v1" or not key_id or not given:
        raise Undecodable(f"the signature {signature[:80]!r} is not v1=<key id>:<base64url>")
    if key_id not in keys:
        raise Undecodable(f"the message is signed with key id {key_id!r}, not one of ours")
    mac = hmac.new(keys[key_id], raw, hashlib.sha256).digest()
    if not hmac.compare_digest(base64.urlsafe_b64encode(mac).rstrip(b"="), given.encode()):
        raise Undecodable(f"the signature does not match the envelope (key id {key_id!r})")


def decode(
    body: str | bytes,
    *,
    keys: dict[str, bytes] | None = None,
    signature: str | None = None,
    copies: dict[str, str | None] | None = None,
) -> dict[str, Any]:
    """The envelope as a dict, checked; ``Undecodable`` naming the problem otherwise. With
    ``keys``, the signature is verified first, and ``copies`` (envelope attribute -> the
    value a stream field or message attribute carries beside it) must equal the envelope's.
    """
    raw = body.encode() if isinstance(body, str) else body
    if keys:
        verify(raw, signature, keys)
    if len(raw) > MAX_BYTES:
        raise Undecodable(f"the envelope is {len(raw)} bytes, over the {MAX_BYTES} limit")
    try:
        envelope = json.loads(raw.decode("utf-8"), parse_constant=_refuse_constant)
    except UnicodeDecodeError as exc:
        raise Undecodable(f"the envelope is not UTF-8: {exc}") from exc
    except (ValueError, RecursionError) as exc:
        raise Undecodable(f"the envelope is not JSON: {exc}") from exc
    if not isinstance(envelope, dict):
        raise Undecodable("the envelope is not a JSON object")
    missing = [name for name in REQUIRED if name not in envelope]
    if missing:
        raise Undecodable(f"the envelope lacks {', '.join(missing)}")
    if envelope["specversion"] != "1.0":
        raise Undecodable(f"specversion {envelope['specversion']!r} is not 1.0")
    if envelope.get("wireformat", 1) != 1:
        raise Undecodable(f"wire format {envelope['wireformat']!r} is newer than this reader")
    try:
        uuid.UUID(str(envelope["id"]))
    except ValueError as exc:
        raise Undecodable(f"id {envelope['id']!r} is not a UUID") from exc
    if not isinstance(envelope["data"], dict):
        raise Undecodable("data is not a JSON object")
    version = envelope.get("dataversion", 1)
    if isinstance(version, bool) or not isinstance(version, int) or version < 1:
        raise Undecodable(f"dataversion {version!r} is not a positive integer")
    for name, carried in (copies or {}).items() if keys else ():
        if carried != envelope.get(name):
            raise Undecodable(f"{name} {carried!r} beside the envelope is not the signed one")
    return envelope


def summary(envelope: dict[str, Any], attempt: int) -> dict[str, Any]:
    """What the example handlers print: the fields a consumer usually needs."""
    return {
        "id": envelope["id"],
        "type": envelope["type"],
        "version": envelope.get("dataversion", 1),
        "key": envelope.get("partitionkey"),
        "source": envelope.get("source"),
        "time": envelope["time"],
        "correlationid": envelope.get("correlationid"),
        "causationid": envelope.get("causationid"),
        "metadata": envelope.get("metadata", {}),
        "data": envelope["data"],
        "attempt": attempt,
    }


def emit(outcome: str, **fields: Any) -> None:
    """One JSON line per outcome on stdout: what a real consumer would do with the event."""
    print(json.dumps({"outcome": outcome, **fields}, ensure_ascii=False), flush=True)


def signing_keys(key_ids: list[str] | None) -> dict[str, bytes]:
    """The secrets of ``--signing-key`` ids, from the environment (never the command line,
    which other users can see): ``SIGNING_KEY_<ID>``, the id upper-cased with ``-`` and
    ``.`` as ``_`` (key id ``2026-12``: ``SIGNING_KEY_2026_12``)."""
    keys = {}
    for key_id in key_ids or ():
        name = "SIGNING_KEY_" + re.sub(r"[^A-Za-z0-9]", "_", key_id).upper()
        if not os.environ.get(name):
            raise SystemExit(f"--signing-key {key_id}: set its secret in ${name}")
        keys[key_id] = os.environ[name].encode()
    return keys


def common_arguments(parser: argparse.ArgumentParser, idle: str) -> None:
    """The options both example consumers take; ``idle`` says when ``--until-idle`` stops."""
    parser.add_argument("--group", required=True, help="the django-events group to consume")
    parser.add_argument("--fail-type", action="append", help="fail events of this type (demo)")
    parser.add_argument(
        "--until-idle", action="store_true", help=f"exit once {idle} (for cron and tests)"
    )
    parser.add_argument(
        "--signing-key",
        action="append",
        metavar="KEY_ID",
        help="verify signatures, accepting this key id (repeat for several); its secret "
        "comes from $SIGNING_KEY_<KEY_ID>. Unsigned or forged messages are dead-lettered.",
    )
