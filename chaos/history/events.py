"""Events and fault windows: what a history holds, and the JSON form of one event.

An :class:`Event` is one observation (docs/checkers.md): its index, a timestamp,
the process that saw it, a type (``invoke`` / ``ok`` / ``fail`` / ``info``), an
operation ``f``, and optionally a topic, a message id and a JSON value. Events
are what callers see; the columns inside the history are how most are stored.
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

TYPES = frozenset({"invoke", "ok", "fail", "info"})
TYPE_NAMES = ("invoke", "ok", "fail", "info")  # a table's type column holds the position in this tuple
FORMAT = "fastport-history"
VERSION = 1
EVENT_FIELDS = ("index", "time", "process", "type", "f", "topic", "id", "value")
TYPE_CODE = {t: i for i, t in enumerate(TYPE_NAMES)}  # a type's code in the columns
INVOKE, OK, FAIL, INFO = range(4)


class HistoryFormatError(ValueError):
    """A history file or event is malformed; the message names the file and line, or the event."""


@dataclass(frozen=True, slots=True)
class Event:
    index: int
    time: float  # seconds from the history's clock (monotonic for the suites, wall clock for load runs)
    process: str  # client_id, "nemesis", or a launcher name such as "broker"
    type: str  # invoke | ok | fail | info
    f: str  # connect, subscribe, publish, persisted, deliver, ack, fault-start, launch, ...
    topic: str | None = None
    id: str | None = None  # message id
    value: Any = None  # payload, attempt, reason, evidence...: any JSON value

    def to_dict(self) -> dict[str, Any]:
        d: dict[str, Any] = {
            "index": self.index,
            "time": self.time,
            "process": self.process,
            "type": self.type,
            "f": self.f,
        }
        if self.topic is not None:
            d["topic"] = self.topic
        if self.id is not None:
            d["id"] = self.id
        if self.value is not None:
            d["value"] = self.value
        return d

    def get(self, key: str, default: Any = None) -> Any:
        """``value[key]`` when value is a dict, else *default* (events are read defensively)."""
        v = self.value
        return v.get(key, default) if isinstance(v, dict) else default


@dataclass(frozen=True, slots=True)
class FaultWindow:
    """A fault from its ``fault-start`` to its ``fault-stop`` (``end`` is None while still open).

    ``evidence`` merges the start and stop events' values. ``effective`` is the
    nemesis's own observation that the fault landed: True, False, or None when
    it did not say (checkers treat None as "not confirmed").
    """

    name: str
    start: float
    end: float | None
    evidence: dict[str, Any] = field(default_factory=dict)
    start_index: int = -1
    stop_index: int | None = None

    @property
    def effective(self) -> bool | None:
        e = self.evidence.get("effective")
        return e if isinstance(e, bool) else None

    @property
    def targets(self) -> tuple[str, ...]:
        t = self.evidence.get("targets") or ()
        return tuple(str(x) for x in t) if isinstance(t, (list, tuple)) else (str(t),)

    def contains(self, t: float, end_default: float = math.inf) -> bool:
        end = self.end if self.end is not None else end_default
        return self.start <= t <= end


def dumps_event(ev: Event) -> str:
    try:
        return json.dumps(ev.to_dict(), separators=(",", ":"), allow_nan=False)
    except (TypeError, ValueError) as exc:
        raise HistoryFormatError(
            f"event {ev.index} ({ev.process} {ev.type} {ev.f}) is not JSON-serialisable: {exc}"
        ) from None


def json_object(line: str, where: str) -> dict[str, Any]:
    """One JSON-lines line as an object; :class:`HistoryFormatError` naming *where* otherwise."""
    try:
        obj = json.loads(line)
    except json.JSONDecodeError as exc:
        raise HistoryFormatError(f"{where}: not JSON: {exc.msg}") from None
    if not isinstance(obj, dict):
        raise HistoryFormatError(f"{where}: expected a JSON object, got {type(obj).__name__}")
    return obj


def event_from(obj: Mapping[str, Any], where: str) -> Event:
    unknown = set(obj) - set(EVENT_FIELDS)
    if unknown:
        raise HistoryFormatError(f"{where}: unknown field(s) {sorted(unknown)}")
    for req in ("index", "time", "process", "type", "f"):
        if req not in obj:
            raise HistoryFormatError(f"{where}: missing field {req!r}")
    index, t = obj["index"], obj["time"]
    if not isinstance(index, int) or isinstance(index, bool):
        raise HistoryFormatError(f"{where}: 'index' must be an integer, got {index!r}")
    if not isinstance(t, (int, float)) or isinstance(t, bool) or not math.isfinite(t):
        raise HistoryFormatError(f"{where}: 'time' must be a finite number, got {t!r}")
    if obj["type"] not in TYPES:
        raise HistoryFormatError(f"{where}: 'type' must be one of {sorted(TYPES)}, got {obj['type']!r}")
    for key in ("process", "f"):
        if not isinstance(obj[key], str) or not obj[key]:
            raise HistoryFormatError(f"{where}: {key!r} must be a non-empty string, got {obj[key]!r}")
    for key in ("topic", "id"):
        if obj.get(key) is not None and not isinstance(obj[key], str):
            raise HistoryFormatError(f"{where}: {key!r} must be a string, got {obj[key]!r}")
    return Event(
        index,
        float(t),
        obj["process"],
        obj["type"],
        obj["f"],
        obj.get("topic"),
        obj.get("id"),
        obj.get("value"),
    )
