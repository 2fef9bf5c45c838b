"""Frames of PROTOCOL.md section 2: parse and check what clients send, spell what the broker answers.

Payloads are kept as JSON text from the moment they are parsed (``body``), so each
message is encoded once and a delivery frame is string assembly. ``ensure_ascii``
stays on: a lone surrogate (legal in JSON escapes) could not be UTF-8 encoded later.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from typing import Any

TOPIC = re.compile(r"[A-Za-z0-9_.:/-]{1,256}")
CLIENT_ID = re.compile(r"[A-Za-z0-9_.:-]{1,128}")
KINDS = ("subscribe", "unsubscribe", "publish", "ack", "ping")
_MISSING = object()


class Refused(Exception):
    """A frame the broker answers with ``error``; the connection stays open."""

    def __init__(self, code: str, message: str, ref: Any = _MISSING) -> None:
        super().__init__(message)
        self.code, self.message, self.ref = code, message, ref


@dataclass(frozen=True, slots=True)
class Frame:
    kind: str
    topic: str | None = None
    id: str | None = None
    body: str | None = None  # publish payload as JSON text
    ref: Any = _MISSING

    @property
    def has_ref(self) -> bool:
        return self.ref is not _MISSING


def _no_constants(name: str) -> Any:
    raise ValueError(f"{name} is not JSON")


def encode(value: Any) -> str:
    return json.dumps(value, separators=(",", ":"), allow_nan=False)


def parse(raw: str | bytes, *, trusting: bool = False) -> Frame:
    """One client frame, checked; raises :class:`Refused` with the protocol's error code.

    ``trusting`` skips the shape check of the decoded value (the non-object-crash mutant).
    """
    if isinstance(raw, bytes):
        raise Refused("bad_request", "binary frames are not accepted; send JSON text")
    try:
        data = json.loads(raw, parse_constant=_no_constants)
    except (ValueError, RecursionError) as exc:  # RecursionError: nested deeper than the decoder goes
        raise Refused("bad_request", f"not JSON: {exc}") from None
    if not trusting and not isinstance(data, dict):
        raise Refused("bad_request", f"a frame must be a JSON object, got {type(data).__name__}")
    ref = data.get("ref", _MISSING)
    kind = data.get("type")
    if not isinstance(kind, str):
        raise Refused("bad_request", "missing or non-string 'type'", ref)
    if kind not in KINDS:
        raise Refused("unknown_type", f"unknown frame type {kind[:64]!r}", ref)
    if kind == "ping":
        return Frame(kind, ref=ref)
    if kind == "ack":
        return Frame(kind, id=_msg_id(data, ref, required=True), ref=ref)
    topic = data.get("topic")
    if not isinstance(topic, str) or not TOPIC.fullmatch(topic):
        raise Refused("bad_request", "'topic' must be 1..256 chars of [A-Za-z0-9_.:/-]", ref)
    if kind != "publish":
        return Frame(kind, topic=topic, ref=ref)
    if "payload" not in data:
        raise Refused("bad_request", "publish needs a 'payload'", ref)
    msg_id = _msg_id(data, ref, required=False)
    return Frame(kind, topic=topic, id=msg_id, body=encode(data["payload"]), ref=ref)


def _msg_id(data: dict[str, Any], ref: Any, *, required: bool) -> str | None:
    value = data.get("id")
    if value is None and not required:
        return None
    if not isinstance(value, str) or not 1 <= len(value) <= 128:
        raise Refused("bad_request", "'id' must be a string of 1..128 chars", ref)
    return value


def reply(kind: str, **fields: Any) -> str:
    return encode({"type": kind, **fields})


def error(code: str, message: str, ref: Any = _MISSING) -> str:
    fields: dict[str, Any] = {"code": code, "message": message}
    if ref is not _MISSING:
        fields["ref"] = ref
    return reply("error", **fields)


def message(topic: str, msg_id: str, body: str, attempt: int, published_at: float) -> str:
    """A delivery frame; ``body`` is already JSON, so it is spliced in, never re-encoded."""
    return (
        f'{{"type":"message","topic":{encode(topic)},"id":{encode(msg_id)},"attempt":{attempt},'
        f'"published_at":{published_at!r},"payload":{body}}}'
    )
