"""Decoding request bodies the way Toxiproxy's Go server does, plus stricter checks where Go crashes.

Rules copied from Go's encoding/json as Toxiproxy uses it: only the first JSON
value is read, unknown keys are ignored, keys match case-insensitively, ``null``
means "not given", a wrong JSON type is a 400 ``bad request body: json: ...``.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from typing import Any

from chaos.toxiproxy.toxics import TOXIC_TYPES, AttributeError400, Toxic

VERSION = "2.12.0"
INT64 = (-(2**63), 2**63 - 1)
FLOAT32_MAX = 3.4028234663852886e38


class ApiError(Exception):
    """An error answered as ``{"error": message, "status": status}``."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.message = message


def bad_body(detail: str) -> ApiError:
    return ApiError(400, f"bad request body: {detail}")


def _reject_constant(name: str) -> Any:
    raise ValueError(f"invalid character '{name[0]}' looking for beginning of value")


_DECODER = json.JSONDecoder(parse_constant=_reject_constant)


def decode_body(body: bytes) -> Any:
    """The first JSON value of ``body``; an empty body is Go's ``EOF``."""
    text = body.decode("utf-8", errors="replace").lstrip(" \t\r\n")
    if not text:
        raise bad_body("EOF")
    try:
        value, _ = _DECODER.raw_decode(text)
    except json.JSONDecodeError as exc:
        if exc.pos >= len(text.rstrip()):
            raise bad_body("unexpected EOF") from None
        raise bad_body(f"invalid JSON at offset {exc.pos}: {exc.msg}") from None
    except (ValueError, RecursionError) as exc:
        raise bad_body(str(exc)) from None
    return value


def _json_kind(value: Any) -> str:
    if isinstance(value, bool):
        return "bool"
    if isinstance(value, int | float):
        return "number"
    if isinstance(value, str):
        return "string"
    if isinstance(value, list):
        return "array"
    if isinstance(value, dict):
        return "object"
    return "null"


def _mismatch(value: Any, where: str, go_type: str) -> ApiError:
    shown = _json_kind(value)
    if shown == "number":
        shown = f"number {json.dumps(value)}"
    return bad_body(f"json: cannot unmarshal {shown} into Go struct field {where} of type {go_type}")


def fold_keys(obj: Any, struct_name: str, known: tuple[str, ...]) -> dict[str, Any]:
    """Fields of a JSON object by lower-case name; later keys win, ``null`` leaves a field unset."""
    if obj is None:
        return {}  # Go: decoding null into a struct leaves every field at its default
    if not isinstance(obj, dict):
        raise bad_body(f"json: cannot unmarshal {_json_kind(obj)} into Go value of type {struct_name}")
    out: dict[str, Any] = {}
    exact: set[str] = set()
    for key, value in obj.items():
        low = key.lower()
        if low not in known or value is None:
            continue
        if low in exact and key != low:
            continue  # Go prefers the exact-case key over a case-folded one
        if key == low:
            exact.add(low)
        out[low] = value
    return out


def _string(fields: dict[str, Any], key: str, where: str) -> str | None:
    value = fields.get(key)
    if value is not None and not isinstance(value, str):
        raise _mismatch(value, f"{where}.{key}", "string")
    return value


def _bool(fields: dict[str, Any], key: str, where: str) -> bool | None:
    value = fields.get(key)
    if value is not None and not isinstance(value, bool):
        raise _mismatch(value, f"{where}.{key}", "bool")
    return value


def _float32(fields: dict[str, Any], key: str, where: str) -> float | None:
    value = fields.get(key)
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise _mismatch(value, f"{where}.{key}", "float32")
    if not math.isfinite(float(value)) or abs(float(value)) > FLOAT32_MAX:
        raise _mismatch(value, f"{where}.{key}", "float32")
    return float(value)


def _int64(value: Any, where: str) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or not INT64[0] <= value <= INT64[1]:
        raise _mismatch(value, where, "int64")
    return value


# ---------------------------------------------------------------------------- proxies


@dataclass
class ProxySpec:
    name: str
    upstream: str
    listen: str | None = None
    enabled: bool | None = None
    toxics: list[ToxicSpec] = field(default_factory=list)  # populate/config extension only


def parse_proxy_create(obj: Any) -> ProxySpec:
    fields = fold_keys(obj, "proxy.Proxy", ("name", "listen", "upstream", "enabled"))
    name = _string(fields, "name", "Proxy") or ""
    listen = _string(fields, "listen", "Proxy")
    upstream = _string(fields, "upstream", "Proxy") or ""
    enabled = _bool(fields, "enabled", "Proxy")
    return ProxySpec(name=name, upstream=upstream, listen=listen, enabled=enabled)


def require_proxy_fields(spec: ProxySpec, suffix: str = "") -> None:
    if not spec.name:
        raise ApiError(400, f"missing required field: name{suffix}")
    if not spec.upstream:
        raise ApiError(400, f"missing required field: upstream{suffix}")


@dataclass
class ProxyUpdate:
    listen: str | None = None
    upstream: str | None = None
    enabled: bool | None = None


def parse_proxy_update(obj: Any) -> ProxyUpdate:
    fields = fold_keys(obj, "proxy.Proxy", ("listen", "upstream", "enabled"))
    return ProxyUpdate(
        listen=_string(fields, "listen", "Proxy"),
        upstream=_string(fields, "upstream", "Proxy"),
        enabled=_bool(fields, "enabled", "Proxy"),
    )


def parse_populate(obj: Any) -> list[ProxySpec]:
    """Populate body: an array of proxies; ``toxics`` per proxy is this server's extension."""
    if obj is None:
        return []
    if not isinstance(obj, list):
        raise bad_body(f"json: cannot unmarshal {_json_kind(obj)} into Go value of type []proxy.Proxy")
    specs: list[ProxySpec] = []
    for index, item in enumerate(obj, start=1):
        spec = parse_proxy_create(item)
        raw = fold_keys(item, "proxy.Proxy", ("toxics",)).get("toxics")
        if raw is not None:
            if not isinstance(raw, list):
                raise _mismatch(raw, "Proxy.toxics", "[]toxics.ToxicWrapper")
            for toxic in raw:
                try:
                    spec.toxics.append(parse_toxic_create(toxic))
                except ApiError as exc:
                    raise ApiError(exc.status, f"{exc.message} at proxy {index}") from None
        specs.append(spec)
    return specs


# ---------------------------------------------------------------------------- toxics


@dataclass
class ToxicSpec:
    """A toxic create request after the body step (stream, type, attributes checked later)."""

    type: str
    stream: str
    name: str | None
    toxicity: float
    attributes: dict[str, Any]


def parse_toxic_create(obj: Any) -> ToxicSpec:
    fields = fold_keys(obj, "toxics.ToxicWrapper", ("name", "type", "stream", "toxicity", "attributes"))
    attrs = fields.get("attributes")
    if attrs is not None and not isinstance(attrs, dict):
        raise _mismatch(attrs, "ToxicWrapper.attributes", "toxics.Toxic")
    toxicity = _float32(fields, "toxicity", "ToxicWrapper")
    stream = _string(fields, "stream", "ToxicWrapper")
    return ToxicSpec(
        type=_string(fields, "type", "ToxicWrapper") or "",
        stream="downstream" if stream is None else stream,
        name=_string(fields, "name", "ToxicWrapper") or None,
        toxicity=1.0 if toxicity is None else toxicity,
        attributes=attrs or {},
    )


def check_stream(stream: str) -> str:
    direction = stream.lower()
    if direction not in ("upstream", "downstream"):
        raise ApiError(400, "stream was invalid, can be either upstream or downstream")
    return direction


def toxic_name(spec: ToxicSpec) -> str:
    return spec.name or f"{spec.type}_{spec.stream}"


def check_type(type_: str) -> None:
    if type_ not in TOXIC_TYPES:
        raise ApiError(400, "invalid toxic type")


def parse_attributes(type_: str, raw: dict[str, Any], base: dict[str, int] | None = None) -> dict[str, int]:
    """The type's full attribute set: ``base`` (or zeros) overridden by ``raw``; validated."""
    names = TOXIC_TYPES[type_].attributes
    attrs = dict(base) if base is not None else dict.fromkeys(names, 0)
    for key, value in raw.items():
        low = key.lower()
        if low in names and value is not None:
            attrs[low] = _int64(value, f".attributes.{low}")
    try:
        TOXIC_TYPES[type_].validate(attrs)
    except AttributeError400 as exc:
        raise ApiError(400, f"bad attributes: {exc}") from None
    return attrs


def build_toxic(spec: ToxicSpec, existing: set[str]) -> Toxic:
    """Validation in Go's order: stream, default name, type, duplicate, attributes."""
    check_stream(spec.stream)
    name = toxic_name(spec)
    check_type(spec.type)
    if name in existing:
        raise ApiError(409, "toxic already exists")
    attrs = parse_attributes(spec.type, spec.attributes)
    return Toxic(name=name, type=spec.type, stream=spec.stream, toxicity=spec.toxicity, attributes=attrs)


@dataclass
class ToxicUpdate:
    attributes: dict[str, int]
    toxicity: float


def parse_toxic_update(obj: Any, toxic: Toxic) -> ToxicUpdate:
    """Attributes merge into the current ones; toxicity is kept when absent."""
    fields = fold_keys(obj, "toxics.ToxicWrapper", ("toxicity", "attributes"))
    attrs = fields.get("attributes")
    if attrs is not None and not isinstance(attrs, dict):
        raise _mismatch(attrs, "ToxicWrapper.attributes", "toxics.Toxic")
    toxicity = _float32(fields, "toxicity", "ToxicWrapper")
    merged = parse_attributes(toxic.type, attrs or {}, toxic.attributes)
    return ToxicUpdate(attributes=merged, toxicity=toxic.toxicity if toxicity is None else toxicity)
