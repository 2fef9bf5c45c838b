"""The run's history: one append-only list of everything clients and nemesis observed.

Modelled on Jepsen: every observation is an :class:`Event` with a monotonic
timestamp, the *process* that saw it (a client_id, ``"nemesis"`` or the
launcher's name), a *type* (``invoke`` / ``ok`` / ``fail`` / ``info``) and an
operation ``f``. Checkers are pure functions of a history, so the history holds
only plain JSON values and round-trips through JSON lines unchanged; a run can
be re-checked later from its file.

Appends come from one asyncio loop and from nemesis threads, so they take a
lock. Indexes by process and by ``f`` are kept as events arrive, so checkers
over 100,000-event histories never rescan the whole list per question.
"""

from __future__ import annotations

import json
import math
import threading
import time as _time
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any

TYPES = frozenset({"invoke", "ok", "fail", "info"})
FORMAT = "fastport-history"
VERSION = 1
_FIELDS = ("index", "time", "process", "type", "f", "topic", "id", "value")


class HistoryFormatError(ValueError):
    """A history file or event is malformed; the message names the line or event."""


@dataclass(frozen=True, slots=True)
class Event:
    index: int
    time: float  # monotonic seconds from the history's clock
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


class History:
    """Append-only, lock-protected event list with per-process and per-``f`` indexes."""

    def __init__(self, clock: Callable[[], float] = _time.monotonic, start: float | None = None) -> None:
        self._clock = clock
        self.start = clock() if start is None else start  # run start: evidence times are relative to it
        self._events: list[Event] = []
        self._by_process: dict[str, list[Event]] = {}
        self._by_f: dict[str, list[Event]] = {}
        self._lock = threading.Lock()
        self._listeners: list[Callable[[Event], None]] = []

    # --- writing ---------------------------------------------------------

    def now(self) -> float:
        return self._clock()

    def append(
        self,
        process: str,
        type: str,
        f: str,
        topic: str | None = None,
        id: str | None = None,
        value: Any = None,
        *,
        time: float | None = None,
    ) -> Event:
        """Record one observation; stamps it with the clock unless *time* is given."""
        if type not in TYPES:
            raise HistoryFormatError(f"event type must be one of {sorted(TYPES)}, got {type!r}")
        if not isinstance(process, str) or not process:
            raise HistoryFormatError(f"event process must be a non-empty string, got {process!r}")
        if not isinstance(f, str) or not f:
            raise HistoryFormatError(f"event f must be a non-empty string, got {f!r}")
        with self._lock:
            t = self._clock() if time is None else float(time)
            ev = Event(len(self._events), t, process, type, f, topic, id, value)
            self._add(ev)
            listeners = tuple(self._listeners)
        for listener in listeners:
            listener(ev)
        return ev

    def _add(self, ev: Event) -> None:
        self._events.append(ev)
        self._by_process.setdefault(ev.process, []).append(ev)
        self._by_f.setdefault(ev.f, []).append(ev)

    def add_listener(self, listener: Callable[[Event], None]) -> Callable[[], None]:
        """Call *listener(event)* after every append (from the appending thread); returns a remover."""
        with self._lock:
            self._listeners.append(listener)

        def remove() -> None:
            with self._lock:
                if listener in self._listeners:
                    self._listeners.remove(listener)

        return remove

    # --- reading ---------------------------------------------------------

    def __len__(self) -> int:
        return len(self._events)

    def __iter__(self) -> Iterator[Event]:
        return iter(self.events)

    def __getitem__(self, i: int) -> Event:
        return self._events[i]

    @property
    def events(self) -> list[Event]:
        """A snapshot copy (safe to iterate while others append)."""
        with self._lock:
            return list(self._events)

    @property
    def end(self) -> float:
        """Time of the last event (the run's end for open fault windows)."""
        with self._lock:
            return self._events[-1].time if self._events else self.start

    def rel(self, t: float | None) -> float | None:
        """Seconds since run start, rounded for evidence."""
        return None if t is None else round(t - self.start, 6)

    def by_process(self, process: str) -> list[Event]:
        with self._lock:
            return list(self._by_process.get(process, ()))

    def by_f(self, *fs: str, type: str | None = None) -> list[Event]:
        """Events whose ``f`` is any of *fs* (in history order), optionally of one type."""
        with self._lock:
            lists = [self._by_f.get(f, ()) for f in fs]
        if len(lists) == 1:
            evs = list(lists[0])
        else:
            evs = sorted((e for lst in lists for e in lst), key=lambda e: e.index)
        return evs if type is None else [e for e in evs if e.type == type]

    def processes(self) -> list[str]:
        with self._lock:
            return list(self._by_process)

    def fault_windows(self, name: str | None = None) -> list[FaultWindow]:
        """Pair each ``fault-start`` with the next ``fault-stop`` of the same name (FIFO).

        The fault name is ``value["name"]``; a stop without a start is ignored,
        a start without a stop gives an open window (``end`` None).
        """
        open_: dict[str, list[Event]] = {}
        pairs: list[tuple[Event, Event | None]] = []
        for ev in self.by_f("fault-start", "fault-stop"):
            n = ev.get("name")
            if not isinstance(n, str):
                continue
            if ev.f == "fault-start":
                open_.setdefault(n, []).append(ev)
            elif open_.get(n):
                pairs.append((open_[n].pop(0), ev))
        pairs += [(s, None) for starts in open_.values() for s in starts]
        pairs.sort(key=lambda p: p[0].index)
        windows = []
        for s, e in pairs:
            ev_ = dict(s.value)
            if e is not None:
                ev_.update(e.value)
            windows.append(
                FaultWindow(
                    s.get("name"),
                    s.time,
                    None if e is None else e.time,
                    ev_,
                    s.index,
                    None if e is None else e.index,
                )
            )
        return [w for w in windows if name is None or w.name == name]

    # --- JSON lines ------------------------------------------------------

    def dumps_lines(self) -> Iterator[str]:
        yield json.dumps({"format": FORMAT, "version": VERSION, "start": self.start})
        for ev in self.events:
            try:
                yield json.dumps(ev.to_dict(), separators=(",", ":"), allow_nan=False)
            except (TypeError, ValueError) as exc:
                raise HistoryFormatError(
                    f"event {ev.index} ({ev.process} {ev.type} {ev.f}) is not JSON-serialisable: {exc}"
                ) from None

    def write(self, target: str | Path | IO[str]) -> None:
        """Write as JSON lines: a header line, then one event per line."""
        if isinstance(target, (str, Path)):
            with open(target, "w", encoding="utf-8") as fp:
                self.write(fp)
            return
        for line in self.dumps_lines():
            target.write(line + "\n")

    @classmethod
    def read(cls, source: str | Path | IO[str]) -> History:
        if isinstance(source, (str, Path)):
            with open(source, encoding="utf-8") as fp:
                return cls.from_lines(fp, name=str(source))
        return cls.from_lines(source, name=getattr(source, "name", "<stream>"))

    @classmethod
    def from_lines(cls, lines: Iterable[str], name: str = "<lines>") -> History:
        """Parse JSON lines; raises :class:`HistoryFormatError` naming the bad line number."""
        h: History | None = None
        for lineno, line in enumerate(lines, 1):
            if not line.strip():
                continue
            try:
                obj = json.loads(line)
            except json.JSONDecodeError as exc:
                raise HistoryFormatError(f"{name}:{lineno}: not JSON: {exc.msg}") from None
            if not isinstance(obj, dict):
                raise HistoryFormatError(f"{name}:{lineno}: expected a JSON object, got {type(obj).__name__}")
            if "format" in obj:
                if h is not None:
                    raise HistoryFormatError(f"{name}:{lineno}: header must be the first line")
                if obj.get("format") != FORMAT or obj.get("version") != VERSION:
                    raise HistoryFormatError(
                        f"{name}:{lineno}: unsupported history format "
                        f"{obj.get('format')!r} version {obj.get('version')!r}"
                    )
                start = obj.get("start")
                if not isinstance(start, (int, float)) or isinstance(start, bool):
                    raise HistoryFormatError(f"{name}:{lineno}: header 'start' must be a number")
                h = cls(start=float(start))
                continue
            ev = _event_from(obj, f"{name}:{lineno}")
            if h is None:
                h = cls(start=ev.time)
            if ev.index != len(h._events):
                raise HistoryFormatError(
                    f"{name}:{lineno}: event index {ev.index} out of sequence, expected {len(h._events)}"
                )
            h._add(ev)
        return h if h is not None else cls(start=0.0)


def _event_from(obj: Mapping[str, Any], where: str) -> Event:
    unknown = set(obj) - set(_FIELDS)
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
