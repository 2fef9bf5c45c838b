"""Payload digests: what the clients record instead of whole payloads, and how integrity compares them.

A history must stay small however large the messages (a run folder of 300 KB
payloads was 185 MB), yet integrity must still notice one altered byte. So the
publisher records the digest and length of the payload it sent, the subscriber
those of the payload it got, both over the payload's canonical JSON (sorted
keys, no spaces): a broker may re-encode JSON, but not change its value.

The lab's publishers also put ``sha256`` of their ``data`` into each payload
(:func:`payload_checksum`), so a subscriber can check a delivery on its own,
without the publisher's record: :func:`self_check`.

A digest has one of two kinds, and is only ever compared with one of the same
kind (the publisher's and the subscribers' record of the same message are
made by the same rig): a **string**, the suites' clients' canonical-JSON
digest above, and an **int**, the load rig's CRC-32 of the payload's data
string (``chaos.load.sessions``: cheap enough per delivery at load rates).
"""

from __future__ import annotations

import hashlib
import json
from typing import Any

DIGEST_CHARS = 32  # 128 bits of sha256: collisions are not a concern for a test run


def canonical(value: Any) -> bytes:
    """Canonical JSON: the bytes two equal JSON values always share."""
    return json.dumps(value, sort_keys=True, separators=(",", ":"), ensure_ascii=False).encode()


def payload_checksum(data: Any) -> str:
    """The checksum the lab's publishers put in payloads: sha256 of canonical JSON of ``data``."""
    return hashlib.sha256(json.dumps(data, sort_keys=True, separators=(",", ":")).encode()).hexdigest()


def payload_digest(payload: Any) -> tuple[str, int]:
    """(digest, length in bytes) of *payload*'s canonical JSON."""
    raw = canonical(payload)
    return hashlib.sha256(raw).hexdigest()[:DIGEST_CHARS], len(raw)


def self_check(payload: Any) -> bool:
    """False when *payload* carries ``sha256`` of its ``data`` and they no longer match."""
    if isinstance(payload, dict) and "sha256" in payload and "data" in payload:
        try:
            return payload_checksum(payload["data"]) == payload["sha256"]
        except (TypeError, ValueError):
            return False
    return True


def record(payload: Any) -> dict[str, Any]:
    """What a client records for a payload it sent or got: digest, bytes and (if it fails) the self-check."""
    digest, n = payload_digest(payload)
    out: dict[str, Any] = {"digest": digest, "bytes": n}
    if not self_check(payload):
        out["self_check"] = False
    return out


def recorded_digest(value: Any) -> str | int | None:
    """The payload digest in a recorded event value (``digest``, or a whole ``payload`` as old labs kept).

    A string (canonical JSON, the suites) or an int (CRC-32 of the data, the load rig).
    """
    if not isinstance(value, dict):
        return None
    d = value.get("digest")
    if isinstance(d, str):
        return d
    if type(d) is int and 0 <= d < 2**64:
        return d
    if "payload" in value:
        try:
            return payload_digest(value["payload"])[0]
        except (TypeError, ValueError):
            return None
    return None


def recorded_self_check(value: Any) -> bool:
    """False when the recorder saw a failed self-check (or a recorded whole payload fails it)."""
    if not isinstance(value, dict):
        return True
    if value.get("self_check") is False:
        return False
    return self_check(value["payload"]) if "payload" in value else True
