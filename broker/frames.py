"""Wire frames of PROTOCOL.md: parsing, validation and encoding, with no I/O.

Parsing turns one incoming text frame into a typed frame or raises
:class:`FrameError` carrying the protocol error code, so the connection shell
only has to send ``error_frame(exc)`` back and keep going. Encoding produces
``bytes`` ready for ``protocol.send_text`` so a message is encoded once and the
same buffer is written to every recipient.
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable
from dataclasses import dataclass
from math import isfinite
from typing import Any

# Error codes of PROTOCOL.md section 2.
BAD_REQUEST = "bad_request"
UNKNOWN_TYPE = "unknown_type"
UNAUTHORIZED = "unauthorized"
FORBIDDEN = "forbidden"
TOO_LARGE = "too_large"
OVERLOADED = "overloaded"
INTERNAL = "internal"
ERROR_CODES = (BAD_REQUEST, UNKNOWN_TYPE, UNAUTHORIZED, FORBIDDEN, TOO_LARGE, OVERLOADED, INTERNAL)

TOPIC_RE = re.compile(r"[A-Za-z0-9_.:/-]{1,256}")
CLIENT_ID_RE = re.compile(r"[A-Za-z0-9_.:-]{1,128}")
MAX_ID_LEN = 128
DEFAULT_MAX_FRAME = 1 << 20

_MISSING = object()


class FrameError(Exception):
    """A refused frame: ``code`` is one of :data:`ERROR_CODES`."""

    def __init__(self, code: str, message: str, ref: Any = None) -> None:
        super().__init__(message)
        self.code = code
        self.message = message
        self.ref = ref


# Client frames are plain (not frozen) slotted records: one is built per frame received, and a
# frozen dataclass's __init__ (object.__setattr__ per field) cost about 4x as much; measured in
# ``fastport-lab bench broker`` at fan-out 1, frozen records here and in store.py cost ~10 %.
@dataclass(slots=True)
class Subscribe:
    topic: str
    ref: Any = None


@dataclass(slots=True)
class Unsubscribe:
    topic: str
    ref: Any = None


@dataclass(slots=True)
class Publish:
    topic: str
    payload: Any
    id: str | None = None
    ref: Any = None


@dataclass(slots=True)
class Ack:
    id: str
    ref: Any = None


@dataclass(slots=True)
class Ping:
    ref: Any = None


ClientFrame = Subscribe | Unsubscribe | Publish | Ack | Ping


def _reject_constant(name: str) -> Any:
    # json.loads accepts NaN/Infinity, which are not JSON and could not be re-encoded for other clients.
    raise ValueError(f"{name} is not valid JSON")


_decode = json.JSONDecoder(parse_constant=_reject_constant).decode  # built once: json.loads(**kw) is not


def valid_topic(topic: object) -> bool:
    return isinstance(topic, str) and TOPIC_RE.fullmatch(topic) is not None


def valid_client_id(client_id: object) -> bool:
    return isinstance(client_id, str) and CLIENT_ID_RE.fullmatch(client_id) is not None


def _topic(obj: dict[str, Any], ref: Any) -> str:
    topic = obj.get("topic", _MISSING)
    if topic is _MISSING:
        raise FrameError(BAD_REQUEST, "missing field 'topic'", ref)
    if not valid_topic(topic):
        raise FrameError(BAD_REQUEST, "'topic' must be 1..256 chars of [A-Za-z0-9_.:/-]", ref)
    return topic  # type: ignore[return-value]


def _message_id(value: object, ref: Any) -> str:
    if not isinstance(value, str) or not 1 <= len(value) <= MAX_ID_LEN:
        raise FrameError(BAD_REQUEST, f"'id' must be a string of 1..{MAX_ID_LEN} chars", ref)
    return value


# The usual ack, exactly as clients write it (compact or json.dumps spacing, id without escapes):
# matched without the JSON decoder, since there is one ack per delivery.
_PLAIN_ACK = re.compile(r'\{"type": ?"ack", ?"id": ?"([^"\\\x00-\x1f]{1,' + str(MAX_ID_LEN) + r'})"\}')


# A surrogate escape not part of a pair: the only way JSON text spells a lone surrogate. (An escaped
# backslash before "ud800" matches too; _encodable then says it is fine.)
_HIGH, _LOW = r"\\u[dD][89abAB][0-9a-fA-F]{2}", r"\\u[dD][c-fC-F][0-9a-fA-F]{2}"
_LONE_SURROGATE = re.compile(f"{_HIGH}(?!{_LOW})|(?<!{_HIGH}){_LOW}")


def _encodable(obj: Any) -> bool:
    try:
        _dumps(obj).encode()
    except UnicodeEncodeError:
        return False
    return True


def parse(data: str | bytes, max_frame: int = DEFAULT_MAX_FRAME) -> ClientFrame:
    """Parse one client frame; raise :class:`FrameError` with the protocol's code."""
    if type(data) is str and len(data) * 4 <= max_frame and (m := _PLAIN_ACK.fullmatch(data)) is not None:
        return Ack(m.group(1))
    if isinstance(data, bytes):
        raise FrameError(BAD_REQUEST, "binary frames are not supported; send JSON in a text frame")
    # len(str) <= UTF-8 byte length, so the cheap check first; encode only near the limit.
    if len(data) > max_frame or (len(data) * 4 > max_frame and len(data.encode()) > max_frame):
        raise FrameError(TOO_LARGE, f"frame exceeds {max_frame} bytes")
    try:
        obj = _decode(data)
    except (ValueError, RecursionError) as exc:
        raise FrameError(BAD_REQUEST, f"not JSON: {exc}") from None
    if "\\" in data and _LONE_SURROGATE.search(data) is not None and not _encodable(obj):
        # json accepts a lone surrogate escape ("\\ud800"); no UTF-8 frame or store row can carry it.
        raise FrameError(BAD_REQUEST, "a string holds a lone UTF-16 surrogate: not Unicode text")
    if not isinstance(obj, dict):
        raise FrameError(BAD_REQUEST, "a frame must be a JSON object")
    ref = obj.get("ref")
    kind = obj.get("type", _MISSING)
    if kind is _MISSING:
        raise FrameError(BAD_REQUEST, "missing field 'type'", ref)
    if not isinstance(kind, str):
        raise FrameError(BAD_REQUEST, "'type' must be a string", ref)
    if kind == "publish":
        topic = _topic(obj, ref)
        if "payload" not in obj:
            raise FrameError(BAD_REQUEST, "missing field 'payload'", ref)
        mid = obj.get("id")
        return Publish(topic, obj["payload"], None if mid is None else _message_id(mid, ref), ref)
    if kind == "ack":
        if "id" not in obj:
            raise FrameError(BAD_REQUEST, "missing field 'id'", ref)
        return Ack(_message_id(obj["id"], ref), ref)
    if kind == "subscribe":
        return Subscribe(_topic(obj, ref), ref)
    if kind == "unsubscribe":
        return Unsubscribe(_topic(obj, ref), ref)
    if kind == "ping":
        return Ping(ref)
    raise FrameError(UNKNOWN_TYPE, f"unknown frame type {kind!r}", ref)


# --- encoding ---------------------------------------------------------------


def _unserializable(obj: object) -> Any:
    raise TypeError(f"Object of type {obj.__class__.__name__} is not JSON serializable")


def _make_dumps() -> Callable[[Any], str]:
    """Compact UTF-8 JSON, no NaN: ``JSONEncoder.encode`` with its C encoder built once.

    ``JSONEncoder.encode`` builds a new C encoder (and a circular-reference map)
    on every call, which costs as much as encoding a small frame. Nothing
    encoded here can be circular (payloads come from JSON), so one encoder
    without the map serves every call.
    """
    c_make_encoder = getattr(json.encoder, "c_make_encoder", None)
    if c_make_encoder is None:  # pragma: no cover - CPython without the _json accelerator
        return json.JSONEncoder(ensure_ascii=False, separators=(",", ":"), allow_nan=False).encode
    encoder = c_make_encoder(
        None, _unserializable, json.encoder.encode_basestring, None, ":", ",", False, False, False
    )
    join = "".join

    def dumps(obj: Any) -> str:
        return join(encoder(obj, 0))

    return dumps


_dumps = _make_dumps()


def encode(obj: dict[str, Any]) -> bytes:
    return _dumps(obj).encode()


def error_frame(code: str, message: str, ref: Any = None) -> bytes:
    frame: dict[str, Any] = {"type": "error", "code": code, "message": message}
    if ref is not None:
        frame["ref"] = ref
    return encode(frame)


def error_from(exc: FrameError) -> bytes:
    return error_frame(exc.code, exc.message, exc.ref)


def subscribed_frame(topic: str) -> bytes:
    return encode({"type": "subscribed", "topic": topic})


def unsubscribed_frame(topic: str) -> bytes:
    return encode({"type": "unsubscribed", "topic": topic})


_str = json.encoder.encode_basestring  # type: ignore[attr-defined]  # the C string escaper


def published_frame(mid: str, ref: Any, recipients: int) -> bytes:
    # Hot path (one per publish): template instead of a dict through the encoder.
    r = "null" if ref is None else _dumps(ref)
    return f'{{"type":"published","id":{_str(mid)},"ref":{r},"recipients":{recipients}}}'.encode()


def persisted_frame(mid: str) -> bytes:
    return f'{{"type":"persisted","id":{_str(mid)}}}'.encode()


def persist_failed_frame(mid: str, reason: str) -> bytes:
    return encode({"type": "persist_failed", "id": mid, "reason": reason})


def pong_frame(ref: Any) -> bytes:
    return encode({"type": "pong", "ref": ref})


class MessageEncoder:
    """The ``message`` frame of one message, encoded once for every recipient and attempt.

    Only ``attempt`` differs between deliveries, so it is placed last and the
    rest of the frame is kept as a prefix.
    """

    __slots__ = ("_prefix", "first")

    def __init__(self, topic: str, mid: str, payload: Any, published_at: float) -> None:
        # What _dumps of the frame as a dict gives, assembled from a template: one encoder call fewer.
        at = repr(published_at) if type(published_at) is float and isfinite(published_at) else None
        self._prefix = (
            '{"type":"message","topic":'
            + _str(topic)
            + ',"id":'
            + _str(mid)
            + ',"payload":'
            + _dumps(payload)
            + ',"published_at":'
            + (at or _dumps(published_at))
            + ',"attempt":'
        ).encode()
        self.first = self._prefix + b"1}"

    def frame(self, attempt: int) -> bytes:
        return self.first if attempt == 1 else self._prefix + str(attempt).encode() + b"}"
