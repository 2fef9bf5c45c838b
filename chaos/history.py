"""The run's history: one append-only sequence of everything clients and nemesis observed.

Modelled on Jepsen: every observation is an :class:`Event` with a timestamp, the
*process* that saw it (a client_id, ``"nemesis"`` or the launcher's name), a
*type* (``invoke`` / ``ok`` / ``fail`` / ``info``) and an operation ``f``.
Checkers are pure functions of a history, so the history holds only plain JSON
values and round-trips through its files unchanged; a run can be re-checked
later from its file.

A load run records millions of deliveries, so the history is **columnar**
inside: the high-volume kinds (publish, persisted / persist_failed, deliver,
ack, subscribe / unsubscribe, connect / disconnect) go into typed columns, one
table per kind (``TABLES``): float64 times, processes, topics, ids and short
strings interned as int32 codes, and the value's usual keys (digest, bytes,
attempt, recipients, ...) as columns of their own. A value those columns cannot
reproduce exactly (a whole payload, an odd type) is kept as it is beside its
row. Every other event (faults, launches, errors) is kept as an :class:`Event`.
Events are materialised lazily for the callers that ask for them (``by_f``,
``events``, ``history[i]``); checkers read the columns (:meth:`History.columns`).

Appends come from one asyncio loop, from nemesis threads and (through
:class:`ColumnWriter`) from a load worker's hot path, so they take a lock.
Columns grow as ``array.array`` and are handed out as read-only numpy arrays
(frozen without a copy; the next append copies them back into growable arrays).

Files: :meth:`History.write` writes JSON lines (``history.jsonl``: small, for
people) or the compact columnar format (a ``.npz`` suffix, or ``compact=True``):
see docs/checkers.md. :meth:`History.read` takes either.
"""

from __future__ import annotations

import json
import math
import os
import re
import threading
import time as _time
import zipfile
from array import array
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from functools import cached_property
from operator import call
from pathlib import Path
from typing import IO, Any

import numpy as np

TYPES = frozenset({"invoke", "ok", "fail", "info"})
TYPE_NAMES = ("invoke", "ok", "fail", "info")  # a table's type column holds the position in this tuple
INVOKE, OK, FAIL, INFO = range(4)
FORMAT = "fastport-history"
VERSION = 1
COMPACT_FORMAT = "fastport-history-columns"
COMPACT_VERSION = 1
_FIELDS = ("index", "time", "process", "type", "f", "topic", "id", "value")
_TYPE_CODE = {t: i for i, t in enumerate(TYPE_NAMES)}


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


# --- the tables -------------------------------------------------------------------------------------

INT_MIN = -(2**31)  # an int field's "key absent" in its canonical int32 column; INT_MIN + 1 is null
NO_CODE, NULL_CODE = -1, -2  # a string column's "absent" / "null" (codes >= 0 index the string pool)
_HEX32 = re.compile(r"[0-9a-f]{32}")
_LO64 = 2**64 - 1
DIGEST_NONE, DIGEST_HEX, DIGEST_INT, DIGEST_STR = range(4)  # the digest_kind column


@dataclass(frozen=True, slots=True)
class _Col:
    """One column: its array typecode, its default (what a row that sets nothing holds), its kind.

    Kinds: ``time``; ``code`` (interned strings, -1 absent, -2 null); ``small`` (uint8 flags);
    ``uint`` (digests); ``int`` (an int field: dtype min = absent, min + 1 = null);
    ``float`` (NaN absent, -inf null).
    """

    name: str
    typecode: str
    default: Any
    kind: str


@dataclass(frozen=True, slots=True)
class _Field:
    key: str  # the key in the event's value dict
    kind: str  # digest | int | float | sym | false


@dataclass(frozen=True)
class TableSpec:
    """A columnar table: which ``f`` it holds, the usual type, and the value keys it keeps as columns."""

    name: str
    code: int  # in the history's per-event table column (0: an Event kept whole)
    fs: tuple[str, ...]
    default_type: int
    fields: tuple[_Field, ...]

    @cached_property
    def columns(self) -> tuple[_Col, ...]:
        cols = [
            _Col("time", "d", 0.0, "time"),
            _Col("process", "i", 0, "code"),
            _Col("type", "B", self.default_type, "small"),
        ]
        if len(self.fs) > 1:
            cols.append(_Col("f", "B", 0, "small"))
        cols += [_Col("topic", "i", NO_CODE, "code"), _Col("id", "i", NO_CODE, "code")]
        cols.append(_Col("value", "i", NO_CODE, "code"))  # index of a value kept whole, -1: from the columns
        for fd in self.fields:
            if fd.kind == "digest":
                cols += [
                    _Col("v.digest_kind", "B", DIGEST_NONE, "small"),
                    _Col("v.digest", "Q", 0, "uint"),
                    _Col("v.digest_hi", "Q", 0, "uint"),
                ]
            elif fd.kind == "int":
                cols.append(_Col("v." + fd.key, "i", INT_MIN, "int"))
            elif fd.kind == "float":
                cols.append(_Col("v." + fd.key, "d", math.nan, "float"))
            elif fd.kind == "sym":
                cols.append(_Col("v." + fd.key, "i", NO_CODE, "code"))
            else:  # "false": only ``False`` is kept in the column (1), anything else whole
                cols.append(_Col("v." + fd.key, "B", 0, "small"))
        return tuple(cols)


_F = _Field
TABLES: tuple[TableSpec, ...] = (
    TableSpec(
        "publish",
        1,
        ("publish",),
        INVOKE,
        (
            _F("digest", "digest"),
            _F("bytes", "int"),
            _F("self_check", "false"),
            _F("recipients", "int"),
            _F("code", "sym"),
            _F("message", "sym"),
            _F("reason", "sym"),
        ),
    ),
    TableSpec("persist", 2, ("persisted", "persist_failed"), OK, (_F("reason", "sym"),)),
    TableSpec(
        "deliver",
        3,
        ("deliver",),
        OK,
        (
            _F("digest", "digest"),
            _F("bytes", "int"),
            _F("self_check", "false"),
            _F("attempt", "int"),
            _F("published_at", "float"),
        ),
    ),
    TableSpec("ack", 4, ("ack",), OK, (_F("reason", "sym"),)),
    TableSpec("sub", 5, ("subscribe", "unsubscribe"), OK, ()),
    TableSpec(
        "conn",
        6,
        ("connect", "disconnect"),
        OK,
        (
            _F("attempt", "int"),
            _F("connection", "int"),
            _F("error", "sym"),
            _F("cause", "sym"),
            _F("code", "int"),
            _F("reason", "sym"),
        ),
    ),
)
TABLE = {s.name: s for s in TABLES}
_BY_F = {f: s for s in TABLES for f in s.fs}
_BY_CODE = {s.code: s for s in TABLES}
_NOT = object()  # "this value cannot be kept in the columns"


def _absent(col: _Col, dtype: np.dtype) -> Any:
    """The "key absent" value of *col* stored as *dtype* (int fields: the dtype's minimum)."""
    return int(np.iinfo(dtype).min) if col.kind == "int" else col.default


class _Table:
    """The growable columns of one table: ``array.array`` per column, None while all defaults."""

    def __init__(self, spec: TableSpec) -> None:
        self.spec = spec
        self.cols = spec.columns
        self.pos = {c.name: i for i, c in enumerate(self.cols)}
        self.arrs: list[array | None] = [None] * len(self.cols)
        for name in ("time", "process"):
            self.arrs[self.pos[name]] = array(self.cols[self.pos[name]].typecode)
        self.rows = 0
        self.frozen: dict[str, np.ndarray] | None = None  # read-only numpy columns, while nobody appends
        self.sides: list[Any] = []  # values kept whole
        fpos = []
        for fd in spec.fields:
            fpos.append(self.pos["v.digest_kind" if fd.kind == "digest" else "v." + fd.key])
        self.field_pos = {fd.key: (fd, p) for fd, p in zip(spec.fields, fpos, strict=True)}
        self.defaults = tuple(c.default for c in self.cols)
        # per set of columns a call sets: the appends of those, and of the other allocated columns with
        # their defaults; dropped whenever a column is allocated, frozen or thawed
        self._plans: dict[tuple[int, ...], tuple[list[Callable[[Any], None]], list[Any]]] = {}

    def put(self, cols: tuple[int, ...], vals: tuple[Any, ...]) -> None:
        """Append a row that sets only *cols* (the fast path: the rest hold their defaults)."""
        plan = self._plans.get(cols)
        if plan is None:
            plan = self._plan(cols, vals)
            if plan is None:
                return
        appends, pads = plan
        list(map(call, appends, vals))  # a third faster than a for loop, on the hot path
        for append, d in pads:
            append(d)
        self.rows += 1

    def _plan(self, cols: tuple[int, ...], vals: tuple[Any, ...]) -> Any:
        """The plan for *cols* once they are all allocated (None: this row was appended the slow way)."""
        if self.frozen is not None:
            self.thaw()
        if any(self.arrs[i] is None for i in cols):
            row = list(self.defaults)
            for i, v in zip(cols, vals, strict=True):
                row[i] = v
            self.add(row)
            return None
        arrs = self.arrs
        appends = [arrs[i].append for i in cols]  # type: ignore[union-attr]
        pads = [(a.append, self.defaults[i]) for i, a in enumerate(arrs) if a is not None and i not in cols]
        plan = self._plans[cols] = (appends, pads)
        return plan

    def add(self, row: Sequence[Any]) -> None:
        """Append one row given as a value per column (defaults where nothing is set)."""
        if self.frozen is not None:
            self.thaw()
        arrs, n = self.arrs, self.rows
        for i, v in enumerate(row):
            a = arrs[i]
            if a is not None:
                a.append(v)
            elif v != self.defaults[i] and v == v:  # NaN is a float column's default
                self._allocate(i, n).append(v)
        self.rows = n + 1

    def _allocate(self, i: int, n: int) -> array:
        c = self.cols[i]
        a = array(c.typecode, [c.default]) * n
        self.arrs[i] = a
        self._plans = {}
        return a

    def freeze(self) -> dict[str, np.ndarray]:
        """The allocated columns as read-only numpy arrays, without a copy (until the next append)."""
        if self.frozen is None:
            out = {}
            for c, a in zip(self.cols, self.arrs, strict=True):
                if a is not None:
                    nd = np.frombuffer(a, dtype=np.dtype(c.typecode)) if len(a) else np.empty(0, c.typecode)
                    nd.flags.writeable = False
                    out[c.name] = nd
            self.frozen = out
            self.arrs = [None] * len(self.cols)
            self._plans = {}
        return self.frozen

    def thaw(self) -> None:
        """Back to growable arrays (one copy; numpy arrays handed out stay valid and unchanged)."""
        frozen, self.frozen = self.frozen, None
        assert frozen is not None
        self._plans = {}
        for name, nd in frozen.items():
            i = self.pos[name]
            self.arrs[i] = _to_array(self.cols[i], nd)
        for name in ("time", "process"):
            if self.arrs[self.pos[name]] is None:
                self.arrs[self.pos[name]] = array(self.cols[self.pos[name]].typecode)

    def last_time(self) -> float:
        if self.frozen is not None:
            return float(self.frozen["time"][-1])
        a = self.arrs[0]
        assert a is not None
        return a[-1]

    def nbytes(self) -> int:
        if self.frozen is not None:
            return sum(nd.nbytes for nd in self.frozen.values())
        return sum(a.itemsize * len(a) for a in self.arrs if a is not None)


def _to_array(col: _Col, nd: np.ndarray) -> array:
    """A growable canonical column from a (possibly narrower, as read from a file) numpy column."""
    want = np.dtype(col.typecode)
    if nd.dtype != want:
        if col.kind == "int":
            info = np.iinfo(nd.dtype)
            wide = nd.astype(want)
            wide[nd == info.min] = INT_MIN
            wide[nd == info.min + 1] = INT_MIN + 1
            nd = wide
        else:
            nd = nd.astype(want)
    a = array(col.typecode)
    a.frombytes(np.ascontiguousarray(nd).tobytes())
    return a


class Columns:
    """A read-only snapshot of one table, for the checkers: ``cols["time"]``, ``cols["id"]``, ...

    A column nobody set is a constant (a zero-copy broadcast of its default);
    :meth:`has` says whether it holds anything else. Codes index ``strings``.
    """

    def __init__(self, spec: TableSpec, rows: int, arrays: Mapping[str, np.ndarray], sides: Sequence[Any]):
        self.spec = spec
        self.rows = rows
        self._arrays = dict(arrays)
        self.sides = sides
        self._cols = {c.name: c for c in spec.columns}

    def __getitem__(self, name: str) -> np.ndarray:
        nd = self._arrays.get(name)
        if nd is not None:
            return nd
        c = self._cols[name]
        return np.broadcast_to(np.array(c.default, dtype=np.dtype(c.typecode)), (self.rows,))

    def has(self, name: str) -> bool:
        return name in self._arrays

    def absent(self, name: str) -> Any:
        """What *name* holds where a row's value has no such key (dtype-dependent for int fields)."""
        return _absent(self._cols[name], self[name].dtype)

    def f_code(self, f: str) -> int:
        return self.spec.fs.index(f)


@dataclass
class _Snapshot:
    """Everything a history holds, as arrays: what files, merges and copies are made of."""

    start: float
    tab: np.ndarray  # uint8, one per event: its table's code, 0 for an Event kept whole
    tables: dict[str, tuple[int, dict[str, np.ndarray], list[Any]]]  # name -> (rows, columns, sides)
    cold: list[Event]
    strings: list[str]
    processes: list[str]


# --- the history -----------------------------------------------------------------------------------


class History:
    """Append-only, lock-protected events: columns for the high-volume kinds, Events for the rest."""

    def __init__(self, clock: Callable[[], float] = _time.monotonic, start: float | None = None) -> None:
        self._clock = clock
        self.start = clock() if start is None else start  # run start: evidence times are relative to it
        self._lock = threading.Lock()
        self._listeners: list[Callable[[Event], None]] = []
        self._tables = {s.name: _Table(s) for s in TABLES}
        self._tab = array("B")  # per event: the code of its table (0: kept whole in _cold)
        self._tab_np: np.ndarray | None = None
        self._cold: list[Event] = []
        self._cold_by_f: dict[str, list[Event]] = {}
        self._cold_by_process: dict[str, list[Event]] = {}
        self._strings: list[str] = []
        self._codes: dict[str, int] | None = {}  # built on demand after a read
        self._processes: dict[str, None] = {}
        self._index_cache: dict[str, np.ndarray] = {}
        self._n = 0

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
            t = float(self._clock() if time is None else time)
            ev = Event(self._n, t, process, type, f, topic, id, value)
            self._add(ev)
            listeners = tuple(self._listeners)
        for listener in listeners:
            listener(ev)
        return ev

    def _add(self, ev: Event) -> None:
        """Store *ev* (lock held): into its table when the columns can hold it exactly, else whole."""
        spec = _BY_F.get(ev.f)
        if (
            spec is not None
            and (ev.topic is None or type(ev.topic) is str)
            and (ev.id is None or type(ev.id) is str)
        ):
            tbl = self._tables[spec.name]
            row = list(tbl.defaults)
            row[0] = ev.time
            row[1] = self._intern(ev.process)
            row[2] = _TYPE_CODE[ev.type]
            p = tbl.pos
            if len(spec.fs) > 1:
                row[p["f"]] = spec.fs.index(ev.f)
            if ev.topic is not None:
                row[p["topic"]] = self._intern(ev.topic)
            if ev.id is not None:
                row[p["id"]] = self._intern(ev.id)
            if ev.value is not None and not self._encode(tbl, ev.value, row):
                row = [*row[: p["value"]], len(tbl.sides), *tbl.defaults[p["value"] + 1 :]]
                tbl.sides.append(ev.value)
            tbl.add(row)
            self._push(spec.code, ev.process)
            return
        self._cold.append(ev)
        self._cold_by_f.setdefault(ev.f, []).append(ev)
        self._cold_by_process.setdefault(ev.process, []).append(ev)
        self._push(0, ev.process)

    def _push(self, code: int, process: str) -> None:
        if self._tab_np is not None:
            self._tab = _to_array(_Col("tab", "B", 0, "small"), self._tab_np)
            self._tab_np = None
        self._tab.append(code)
        self._n += 1
        if process not in self._processes:
            self._processes[process] = None
        if self._index_cache:
            self._index_cache = {}

    def _encode(self, tbl: _Table, value: Any, row: list[Any]) -> bool:
        """Put *value*'s keys into *row*'s field columns; False when the columns cannot hold it exactly."""
        if type(value) is not dict or not value:
            return False
        sets: list[tuple[int, Any]] = []
        strs: list[tuple[int, str]] = []  # (column, string): interned once the whole value fits
        for k, v in value.items():
            hit = tbl.field_pos.get(k)
            if hit is None:
                return False
            fd, pos = hit
            kind = fd.kind
            if kind == "digest":
                if type(v) is str:
                    if _HEX32.fullmatch(v):
                        n = int(v, 16)
                        sets += [(pos, DIGEST_HEX), (pos + 1, n & _LO64), (pos + 2, n >> 64)]
                    else:
                        sets.append((pos, DIGEST_STR))
                        strs.append((pos + 1, v))
                elif type(v) is int and 0 <= v <= _LO64:
                    sets += [(pos, DIGEST_INT), (pos + 1, v)]
                else:
                    return False
            elif kind == "int":
                if v is None:
                    sets.append((pos, INT_MIN + 1))
                elif keeps_int(v):
                    sets.append((pos, v))
                else:
                    return False
            elif kind == "float":
                if v is None:
                    sets.append((pos, -math.inf))
                elif type(v) is float and math.isfinite(v):
                    sets.append((pos, v))
                else:
                    return False
            elif kind == "sym":
                if v is None:
                    sets.append((pos, NULL_CODE))
                elif type(v) is str:
                    strs.append((pos, v))
                else:
                    return False
            elif v is False:  # kind "false"
                sets.append((pos, 1))
            else:
                return False
        for pos, v in sets:
            row[pos] = v
        for pos, s in strs:
            row[pos] = self._intern(s)
        return True

    def _intern(self, s: str) -> int:
        codes = self._codes
        if codes is None:
            codes = self._codes = {x: i for i, x in enumerate(self._strings)}
        c = codes.get(s)
        if c is None:
            c = codes[s] = len(self._strings)
            self._strings.append(s)
        return c

    def add_listener(self, listener: Callable[[Event], None]) -> Callable[[], None]:
        """Call *listener(event)* after every append (from the appending thread); returns a remover."""
        with self._lock:
            self._listeners.append(listener)

        def remove() -> None:
            with self._lock:
                if listener in self._listeners:
                    self._listeners.remove(listener)

        return remove

    def writer(self) -> ColumnWriter:
        """The fast path into the columns (no Event, no dict per event): see :class:`ColumnWriter`."""
        return ColumnWriter(self)

    # --- reading ---------------------------------------------------------

    def __len__(self) -> int:
        return self._n

    def __iter__(self) -> Iterator[Event]:
        return iter(self.events)

    def __getitem__(self, i: int | slice) -> Any:
        if isinstance(i, slice):
            return self.events[i]
        with self._lock:
            n = self._n
            if i < 0:
                i += n
            if not 0 <= i < n:
                raise IndexError("history index out of range")
            code = self._tab_np[i] if self._tab_np is not None else self._tab[i]
            if code == 0:
                k = _bisect_index(self._cold, i)
                return self._cold[k]
            spec = _BY_CODE[int(code)]
            row = int(np.searchsorted(self._index_locked(spec.name), i))
            cols = self._columns_locked(spec.name)
        return self._materialise(cols, np.array([row]), np.array([i]))[0]

    @property
    def events(self) -> list[Event]:
        """A snapshot copy of every event (materialised: for small histories and tools)."""
        with self._lock:
            n = self._n
            parts = [(self._columns_locked(s.name), self._index_locked(s.name)) for s in TABLES]
            cold = list(self._cold)
        out: list[Any] = [None] * n
        for ev in cold:
            out[ev.index] = ev
        for cols, index in parts:
            if cols.rows:
                for ev in self._materialise(cols, np.arange(cols.rows), index):
                    out[ev.index] = ev
        return out

    @property
    def end(self) -> float:
        """Time of the last event (the run's end for open fault windows)."""
        with self._lock:
            if not self._n:
                return self.start
            code = self._tab_np[-1] if self._tab_np is not None else self._tab[-1]
            if code == 0:
                return self._cold[-1].time
            return self._tables[_BY_CODE[int(code)].name].last_time()

    def rel(self, t: float | None) -> float | None:
        """Seconds since run start, rounded for evidence."""
        return None if t is None else round(t - self.start, 6)

    def by_process(self, process: str) -> list[Event]:
        with self._lock:
            cold = list(self._cold_by_process.get(process, ()))
            code = self._code_locked(process)
            parts = []
            if code >= 0:
                for s in TABLES:
                    cols = self._columns_locked(s.name)
                    rows = np.flatnonzero(cols["process"] == code) if cols.rows else ()
                    if len(rows):
                        parts.append((cols, rows, self._index_locked(s.name)[rows]))
        evs = cold
        for cols, rows, index in parts:
            evs = evs + self._materialise(cols, rows, index)
        if parts:
            evs.sort(key=lambda e: e.index)
        return evs

    def by_f(self, *fs: str, type: str | None = None) -> list[Event]:
        """Events whose ``f`` is any of *fs* (in history order), optionally of one type."""
        parts = []
        with self._lock:
            cold = [e for f in fs for e in self._cold_by_f.get(f, ())]
            for s in TABLES:
                wanted = [s.fs.index(f) for f in fs if f in s.fs]
                if not wanted:
                    continue
                cols = self._columns_locked(s.name)
                if not cols.rows:
                    continue
                mask = np.ones(cols.rows, bool)
                if len(s.fs) > 1 and len(wanted) < len(s.fs):
                    mask &= np.isin(cols["f"], wanted)
                if type is not None:
                    mask &= cols["type"] == _TYPE_CODE.get(type, 255)
                rows = np.flatnonzero(mask)
                if len(rows):
                    parts.append((cols, rows, self._index_locked(s.name)[rows]))
        if type is not None:
            cold = [e for e in cold if e.type == type]
        evs = cold
        for cols, rows, index in parts:
            evs = evs + self._materialise(cols, rows, index)
        if len(parts) + bool(cold) > 1 or len(fs) > 1:
            evs.sort(key=lambda e: e.index)
        return evs

    def processes(self) -> list[str]:
        with self._lock:
            return list(self._processes)

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

    # --- the columns, for checkers ---------------------------------------

    def columns(self, table: str) -> Columns:
        """A read-only numpy snapshot of one table (``TABLES``): what the checkers read."""
        with self._lock:
            return self._columns_locked(table)

    def strings(self) -> list[str]:
        """The string pool: ``strings()[code]`` is what a process / topic / id / string code stands for."""
        with self._lock:
            return self._strings[:]

    def code(self, s: str) -> int:
        """The code of string *s*, or -1 when the history holds no such string."""
        with self._lock:
            return self._code_locked(s)

    def _code_locked(self, s: str) -> int:
        if self._codes is None:
            self._codes = {x: i for i, x in enumerate(self._strings)}
        return self._codes.get(s, -1)

    def row_index(self, table: str) -> np.ndarray:
        """The history index of each row of *table* (rows are in history order)."""
        with self._lock:
            return self._index_locked(table)

    def row_event(self, table: str, row: int) -> Event:
        """The :class:`Event` of one row of *table* (for evidence: a checker lists a few)."""
        with self._lock:
            cols = self._columns_locked(table)
            index = self._index_locked(table)
        return self._materialise(cols, np.array([row]), index[[row]])[0]

    def nbytes(self) -> dict[str, int]:
        """Memory held, in bytes: ``columns`` (all tables and the table column), ``strings``, ``events``."""
        import sys

        with self._lock:
            cols = sum(t.nbytes() for t in self._tables.values())
            cols += self._tab_np.nbytes if self._tab_np is not None else len(self._tab)
            strings = sum(sys.getsizeof(s) for s in self._strings) + sys.getsizeof(self._strings)
            if self._codes:
                strings += sys.getsizeof(self._codes)
            events = len(self._cold) * 200 + sum(len(t.sides) for t in self._tables.values()) * 200
        return {"columns": cols, "strings": strings, "events": events}

    def _columns_locked(self, table: str) -> Columns:
        t = self._tables[table]
        return Columns(t.spec, t.rows, t.freeze(), t.sides)

    def _tab_locked(self) -> np.ndarray:
        if self._tab_np is None:
            self._tab_np = np.frombuffer(self._tab, dtype=np.uint8) if self._n else np.empty(0, np.uint8)
            self._tab_np.flags.writeable = False
            self._tab = array("B")
        return self._tab_np

    def _index_locked(self, table: str) -> np.ndarray:
        """Global event index of each row of *table* (cached until the next append)."""
        idx = self._index_cache.get(table)
        if idx is None:
            idx = self._index_cache[table] = np.flatnonzero(self._tab_locked() == TABLE[table].code)
        return idx

    def _materialise(self, cols: Columns, rows: np.ndarray, index: np.ndarray) -> list[Event]:
        """Events of *rows* of one table (values rebuilt from the columns, or the one kept whole)."""
        spec = cols.spec
        strings = self._strings  # only grows; codes in a snapshot are always in range
        get = {
            name: cols[name][rows].tolist() for name in ("time", "process", "type", "topic", "id", "value")
        }
        fcol = cols["f"][rows].tolist() if len(spec.fs) > 1 else None
        fields = []
        for fd in spec.fields:
            names = ("v.digest_kind", "v.digest", "v.digest_hi") if fd.kind == "digest" else ("v." + fd.key,)
            if any(cols.has(n) for n in names):
                fields.append((fd, [cols[n][rows].tolist() for n in names], cols.absent(names[0])))
        out = []
        for j in range(len(rows)):
            xref = get["value"][j]
            value = cols.sides[xref] if xref >= 0 else _decode(fields, j, strings)
            topic, mid = get["topic"][j], get["id"][j]
            out.append(
                Event(
                    int(index[j]),
                    get["time"][j],
                    strings[get["process"][j]],
                    TYPE_NAMES[get["type"][j]],
                    spec.fs[fcol[j]] if fcol is not None else spec.fs[0],
                    strings[topic] if topic >= 0 else None,
                    strings[mid] if mid >= 0 else None,
                    value,
                )
            )
        return out

    # --- JSON lines ------------------------------------------------------

    def dumps_lines(self) -> Iterator[str]:
        yield json.dumps({"format": FORMAT, "version": VERSION, "start": self.start})
        for ev in self.events:
            yield _dumps_event(ev)

    def write(
        self, target: str | Path | IO[str], *, compact: bool | None = None, compress: bool = False
    ) -> None:
        """Write as JSON lines (a header line, then one event per line), or compact.

        Compact (the columns in a ``.npz``, see docs/checkers.md) when *compact* is True, or when it
        is None and *target* is a path ending in ``.npz``; *compress* deflates it (smaller, slower).
        """
        if isinstance(target, (str, Path)):
            path = Path(target)
            if compact or (compact is None and path.suffix == ".npz"):
                _write_compact(self._snapshot(), path, compress)
                return
            with open(target, "w", encoding="utf-8") as fp:
                self.write(fp)
            return
        if compact:
            raise ValueError("a compact history is written to a path, not a text stream")
        for line in self.dumps_lines():
            target.write(line + "\n")

    @classmethod
    def read(cls, source: str | Path | IO[str]) -> History:
        """Read either format (a compact file is recognised by its content, not its name)."""
        if isinstance(source, (str, Path)):
            with open(source, "rb") as fb:
                magic = fb.read(4)
            if magic == b"PK\x03\x04":
                return cls._from_snapshot(_read_compact(Path(source)))
            if Path(source).suffix == ".npz":
                what = "empty" if not magic else "it does not start as a zip archive does"
                raise HistoryFormatError(f"{source}: not a compact history: {what}")
            try:
                with open(source, encoding="utf-8") as fp:
                    return cls.from_lines(fp, name=str(source))
            except UnicodeDecodeError as exc:
                raise HistoryFormatError(
                    f"{source}: neither a compact history nor UTF-8 JSON lines: {exc}"
                ) from None
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
            if ev.index != h._n:
                raise HistoryFormatError(
                    f"{name}:{lineno}: event index {ev.index} out of sequence, expected {h._n}"
                )
            h._add(ev)
        return h if h is not None else cls(start=0.0)

    # --- snapshots: files, merges ----------------------------------------

    def _snapshot(self) -> _Snapshot:
        with self._lock:
            tables = {}
            for s in TABLES:
                t = self._tables[s.name]
                tables[s.name] = (t.rows, dict(t.freeze()), list(t.sides))
            return _Snapshot(
                self.start,
                self._tab_locked(),
                tables,
                list(self._cold),
                self._strings[:],
                list(self._processes),
            )

    @classmethod
    def _from_snapshot(cls, snap: _Snapshot) -> History:
        h = cls(start=snap.start)
        h._tab_np = snap.tab
        h._n = len(snap.tab)
        for name, (rows, arrays, sides) in snap.tables.items():
            t = h._tables[name]
            t.rows = rows
            t.frozen = dict(arrays)
            t.arrs = [None] * len(t.cols)
            t.sides = sides
        h._cold = snap.cold
        for ev in snap.cold:
            h._cold_by_f.setdefault(ev.f, []).append(ev)
            h._cold_by_process.setdefault(ev.process, []).append(ev)
        h._strings = snap.strings
        h._codes = None
        h._processes = dict.fromkeys(snap.processes)
        return h

    @classmethod
    def merge(cls, histories: Iterable[History], *, offsets: Sequence[float] | None = None) -> History:
        """One history from several (e.g. one per Locust worker), in time order.

        Ties keep the order of *histories*, then each one's own order. *offsets* (seconds, one per
        history) are added to its times: a clock correction for workers on other machines, whose
        clocks are not the same clock (docs/checkers.md). Listeners are not carried over.
        """
        snaps = [h._snapshot() for h in histories]
        offs = list(offsets) if offsets is not None else [0.0] * len(snaps)
        if len(offs) != len(snaps):
            raise ValueError(f"{len(offs)} offsets for {len(snaps)} histories")
        return cls._from_snapshot(_merge(snaps, offs))


class ColumnWriter:
    """The fast path: one positional call per high-volume event, straight into the columns.

    No :class:`Event` and no dict is made per event (listeners, if the history has
    any, still get their Event). Strings (client ids, topics, message ids) are
    interned; *digest* is kept as the recorder gives it: an int (the load rig's
    CRC-32) or a 32-hex-digit string (the suites' canonical-JSON digest). What the
    columns cannot hold (an id that is not a string, an attempt that is not an int)
    takes the general path, :meth:`History.append`, unchanged.
    """

    def __init__(self, history: History) -> None:
        self.history = history
        self._lock = history._lock
        self._intern = history._intern
        with history._lock:
            history._code_locked("")  # the string codes exist from here on: look them up inline
            self._get = history._codes.get  # type: ignore[union-attr]
        t = self._t = history._tables
        self._p = p = {name: tbl.pos for name, tbl in t.items()}
        d = p["deliver"]  # the columns the load rig's two hottest calls set
        self._deliver_cols = (0, 1, d["topic"], d["id"], d["v.attempt"], d["v.digest_kind"], d["v.digest"])
        self._ack_cols = (0, 1, p["ack"]["id"])

    def _finish(
        self, tbl: _Table, cols: tuple[int, ...], vals: tuple[Any, ...], process: str
    ) -> Event | None:
        """Append the row (lock held); the Event for the listeners, if there are any."""
        h = self.history
        tbl.put(cols, vals)
        if h._tab_np is None and not h._index_cache and process in h._processes:
            h._tab.append(tbl.spec.code)  # what _push does, minus what only a reader or a newcomer needs
            h._n += 1
        else:
            h._push(tbl.spec.code, process)
        if not h._listeners:
            return None
        row = list(tbl.defaults)
        for i, v in zip(cols, vals, strict=True):
            row[i] = v
        arrays = {
            c.name: np.array([v], dtype=np.dtype(c.typecode)) for c, v in zip(tbl.cols, row, strict=True)
        }
        return h._materialise(Columns(tbl.spec, 1, arrays, tbl.sides), np.array([0]), np.array([h._n - 1]))[0]

    def _notify(self, ev: Event | None) -> None:
        if ev is not None:
            for listener in tuple(self.history._listeners):
                listener(ev)

    def _digest(self, pos: int, digest: Any) -> tuple[tuple[int, ...], tuple[Any, ...]]:
        """(columns, values) of a digest."""
        if digest is None:
            return (), ()
        if type(digest) is int and 0 <= digest <= _LO64:
            return (pos, pos + 1), (DIGEST_INT, digest)
        if type(digest) is str and _HEX32.fullmatch(digest):
            n = int(digest, 16)
            return (pos, pos + 1, pos + 2), (DIGEST_HEX, n & _LO64, n >> 64)
        if type(digest) is str:
            return (pos, pos + 1), (DIGEST_STR, self._intern(digest))
        raise HistoryFormatError(f"a digest is an int or a string, got {digest!r}")

    def publish(
        self,
        process: str,
        type_code: int,
        msg_id: str,
        topic: str | None,
        t: float,
        *,
        digest: int | str | None = None,
        length: int | None = None,
        recipients: int | None = None,
        code: str | None = None,
        reason: str | None = None,
    ) -> None:
        """``publish`` of *type_code* (INVOKE, OK, FAIL or INFO): invoke ``{digest, bytes}``,
        ok ``{recipients}``, fail ``{code}``, info ``{reason}`` (whichever are given)."""
        if not (type(msg_id) is str and (topic is None or type(topic) is str)) or not (
            (length is None or keeps_int(length)) and (recipients is None or keeps_int(recipients))
        ):
            value = {
                "digest": digest,
                "bytes": length,
                "recipients": recipients,
                "code": code,
                "reason": reason,
            }
            value = {k: v for k, v in value.items() if v is not None} or None
            self.history.append(process, TYPE_NAMES[type_code], "publish", topic, msg_id, value, time=t)
            return
        p = self._p["publish"]
        intern = self._intern
        with self._lock:
            cols: tuple[int, ...] = (0, 1, 2, p["id"])
            vals: tuple[Any, ...] = (t, intern(process), type_code, intern(msg_id))
            if topic is not None:
                cols, vals = (*cols, p["topic"]), (*vals, intern(topic))
            if digest is not None:
                dc, dv = self._digest(p["v.digest_kind"], digest)
                cols, vals = cols + dc, vals + dv
            for key, v in (("v.bytes", length), ("v.recipients", recipients)):
                if v is not None:
                    cols, vals = (*cols, p[key]), (*vals, v)
            for key, s in (("v.code", code), ("v.reason", reason)):
                if s is not None:
                    cols, vals = (*cols, p[key]), (*vals, intern(str(s)))
            ev = self._finish(self._t["publish"], cols, vals, process)
        self._notify(ev)

    def persist(
        self, process: str, msg_id: str, t: float, *, failed: bool = False, reason: str | None = None
    ) -> None:
        """``persisted`` ok, or ``persist_failed`` fail ``{reason}``."""
        if type(msg_id) is not str:
            f, typ = ("persist_failed", "fail") if failed else ("persisted", "ok")
            self.history.append(process, typ, f, None, msg_id, {"reason": reason} if failed else None, time=t)
            return
        p = self._p["persist"]
        intern = self._intern
        with self._lock:
            if failed:
                why = intern(str(reason)) if reason is not None else NULL_CODE
                cols = (0, 1, 2, p["f"], p["id"], p["v.reason"])
                vals: tuple[Any, ...] = (t, intern(process), FAIL, 1, intern(msg_id), why)
            else:
                cols, vals = (0, 1, p["id"]), (t, intern(process), intern(msg_id))
            ev = self._finish(self._t["persist"], cols, vals, process)
        self._notify(ev)

    def deliver(
        self, process: str, msg_id: str, topic: str | None, t: float, attempt: int, digest: int | str | None
    ) -> None:
        """``deliver`` ok ``{digest, attempt}``."""
        if not (
            type(msg_id) is str
            and (topic is None or type(topic) is str)
            and type(attempt) is int
            and INT_MIN + 2 <= attempt < 2**31
        ):
            value = {"digest": digest, "attempt": attempt} if digest is not None else {"attempt": attempt}
            self.history.append(process, "ok", "deliver", topic, msg_id, value, time=t)
            return
        intern, get = self._intern, self._get
        with self._lock:
            if type(digest) is int and topic is not None and 0 <= digest <= _LO64:  # the load rig's call
                cols = self._deliver_cols
                vals: tuple[Any, ...] = (
                    t,
                    c if (c := get(process)) is not None else intern(process),
                    c if (c := get(topic)) is not None else intern(topic),
                    c if (c := get(msg_id)) is not None else intern(msg_id),
                    attempt,
                    DIGEST_INT,
                    digest,
                )
            else:
                p = self._p["deliver"]
                cols, vals = (0, 1, p["id"], p["v.attempt"]), (t, intern(process), intern(msg_id), attempt)
                if topic is not None:
                    cols, vals = (*cols, p["topic"]), (*vals, intern(topic))
                dc, dv = self._digest(p["v.digest_kind"], digest)
                cols, vals = cols + dc, vals + dv
            ev = self._finish(self._t["deliver"], cols, vals, process)
        self._notify(ev)

    def ack(self, process: str, msg_id: str, t: float, topic: str | None = None) -> None:
        """``ack`` ok."""
        if not (type(msg_id) is str and (topic is None or type(topic) is str)):
            self.history.append(process, "ok", "ack", topic, msg_id, time=t)
            return
        intern, get = self._intern, self._get
        with self._lock:
            if topic is None:
                pc = c if (c := get(process)) is not None else intern(process)
                cols, vals = self._ack_cols, (t, pc, c if (c := get(msg_id)) is not None else intern(msg_id))
            else:
                p = self._p["ack"]
                cols, vals = (0, 1, p["id"], p["topic"]), (t, intern(process), intern(msg_id), intern(topic))
            ev = self._finish(self._t["ack"], cols, vals, process)
        self._notify(ev)

    def subscription(
        self, process: str, topic: str, t: float, type_code: int, *, unsubscribe: bool = False
    ) -> None:
        """``subscribe`` / ``unsubscribe`` of *type_code* (INVOKE or OK)."""
        if type(topic) is not str:
            f = "unsubscribe" if unsubscribe else "subscribe"
            self.history.append(process, TYPE_NAMES[type_code], f, topic, time=t)
            return
        p = self._p["sub"]
        with self._lock:
            cols = (0, 1, 2, p["f"], p["topic"])
            vals = (t, self._intern(process), type_code, 1 if unsubscribe else 0, self._intern(topic))
            ev = self._finish(self._t["sub"], cols, vals, process)
        self._notify(ev)

    def connection(
        self,
        process: str,
        t: float,
        type_code: int,
        *,
        disconnect: bool = False,
        attempt: int | None = None,
        connection: int | None = None,
        error: str | None = None,
        cause: str | None = None,
        code: int | None = None,
    ) -> None:
        """``connect`` invoke ``{attempt}`` / ok ``{connection}`` / fail ``{error}``, or
        ``disconnect`` info ``{cause, code}`` (a *code* of None is recorded as null)."""
        ints = [v for v in (attempt, connection, code) if v is not None]
        if not all(keeps_int(v) for v in ints):
            value: dict[str, Any] = {"attempt": attempt, "connection": connection, "error": error}
            value = {k: v for k, v in value.items() if v is not None}
            if disconnect:
                value |= {"cause": cause, "code": code}
            f = "disconnect" if disconnect else "connect"
            self.history.append(process, TYPE_NAMES[type_code], f, None, None, value or None, time=t)
            return
        p = self._p["conn"]
        intern = self._intern
        with self._lock:
            cols: tuple[int, ...] = (0, 1, 2)
            vals: tuple[Any, ...] = (t, intern(process), type_code)
            if disconnect:
                cause_code = intern(str(cause)) if cause is not None else NULL_CODE
                cols = (*cols, p["f"], p["v.cause"], p["v.code"])
                vals = (*vals, 1, cause_code, code if code is not None else INT_MIN + 1)
            for key, v in (("v.attempt", attempt), ("v.connection", connection)):
                if v is not None:
                    cols, vals = (*cols, p[key]), (*vals, v)
            if error is not None:
                cols, vals = (*cols, p["v.error"]), (*vals, intern(str(error)))
            ev = self._finish(self._t["conn"], cols, vals, process)
        self._notify(ev)


def keeps_int(v: Any) -> bool:
    """An int an int column keeps exactly (not a bool, not one of its two sentinels, within int32)."""
    return type(v) is int and INT_MIN + 2 <= v < 2**31


def _decode(fields: list[tuple[_Field, list[list[Any]], Any]], j: int, strings: list[str]) -> Any:
    """A row's value rebuilt from its field columns (None when no key is set)."""
    out: dict[str, Any] = {}
    for fd, cols, absent in fields:
        kind = fd.kind
        if kind == "digest":
            k = cols[0][j]
            if k == DIGEST_HEX:
                out[fd.key] = f"{cols[2][j]:016x}{cols[1][j]:016x}"
            elif k == DIGEST_INT:
                out[fd.key] = cols[1][j]
            elif k == DIGEST_STR:
                out[fd.key] = strings[cols[1][j]]
            continue
        v = cols[0][j]
        if kind == "int":
            if v != absent:
                out[fd.key] = None if v == absent + 1 else v
        elif kind == "float":
            if v == v:
                out[fd.key] = None if v == -math.inf else v
        elif kind == "sym":
            if v != NO_CODE:
                out[fd.key] = None if v == NULL_CODE else strings[v]
        elif v:
            out[fd.key] = False
    return out or None


def _bisect_index(events: list[Event], i: int) -> int:
    lo, hi = 0, len(events)
    while lo < hi:
        mid = (lo + hi) // 2
        if events[mid].index < i:
            lo = mid + 1
        else:
            hi = mid
    return lo


def _dumps_event(ev: Event) -> str:
    try:
        return json.dumps(ev.to_dict(), separators=(",", ":"), allow_nan=False)
    except (TypeError, ValueError) as exc:
        raise HistoryFormatError(
            f"event {ev.index} ({ev.process} {ev.type} {ev.f}) is not JSON-serialisable: {exc}"
        ) from None


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


# --- the compact file -------------------------------------------------------------------------------
#
# A zip archive of numpy .npy members (so ``numpy.load`` opens it too), written by _write_compact:
#   header          uint8: UTF-8 JSON {"format": COMPACT_FORMAT, "version", "start", "events",
#                   "strings", "string_encoding", "processes", "tables": {name: {"rows", "sides",
#                   "columns": {column: dtype}}}}
#   tab             uint8[events]: each event's table code (0: kept whole, in "events")
#   strings         uint8: the string pool, UTF-8, NUL-separated ("nul") or a JSON array ("json")
#   events          uint8: the events kept whole, as JSON lines in the JSON-lines format
#   <table>.<col>   one array per column that holds anything but its default (ints narrowed to
#                   the smallest dtype that holds them; an int field's absent / null: dtype min / min + 1)
#   <table>.sides   uint8: the values kept whole, one JSON per line, numbered by the "value" column


def _bytes(s: str) -> np.ndarray:
    return np.frombuffer(s.encode("utf-8", "surrogatepass"), dtype=np.uint8)


def _narrow(col: _Col, nd: np.ndarray) -> np.ndarray:
    """The smallest dtype that holds the column exactly (sentinels remapped for int fields)."""
    if col.kind in ("time", "float", "small") or not len(nd):
        return nd
    if col.kind == "uint":
        hi = int(nd.max())
        for dt in (np.uint8, np.uint16, np.uint32):
            if hi <= np.iinfo(dt).max:
                return nd.astype(dt)
        return nd
    if col.kind == "code":
        lo, hi = int(nd.min()), int(nd.max())
        for dt in (np.int8, np.int16):
            if lo >= np.iinfo(dt).min and hi <= np.iinfo(dt).max:
                return nd.astype(dt)
        return nd
    # an int field: values besides the two sentinels must fit above the narrow dtype's min + 1
    info = np.iinfo(nd.dtype)
    real = nd[(nd != info.min) & (nd != info.min + 1)]
    lo, hi = (int(real.min()), int(real.max())) if len(real) else (0, 0)
    for dt in (np.int8, np.int16):
        di = np.iinfo(dt)
        if lo >= di.min + 2 and hi <= di.max:
            out = nd.astype(dt)
            out[nd == info.min] = di.min
            out[nd == info.min + 1] = di.min + 1
            return out
    return nd


def _write_compact(snap: _Snapshot, path: Path, compress: bool) -> None:
    members: dict[str, np.ndarray] = {}
    header: dict[str, Any] = {
        "format": COMPACT_FORMAT,
        "version": COMPACT_VERSION,
        "start": snap.start,
        "events": len(snap.tab),
        "strings": len(snap.strings),
        "processes": snap.processes,
        "tables": {},
    }
    joined = "\x00".join(snap.strings)
    if joined.count("\x00") == max(0, len(snap.strings) - 1):
        header["string_encoding"] = "nul"
        members["strings"] = _bytes(joined)
    else:
        header["string_encoding"] = "json"
        members["strings"] = _bytes(json.dumps(snap.strings))
    members["tab"] = snap.tab
    members["events"] = _bytes("".join(_dumps_event(ev) + "\n" for ev in snap.cold))
    for spec in TABLES:
        rows, arrays, sides = snap.tables[spec.name]
        cols = {c.name: c for c in spec.columns}
        theader: dict[str, Any] = {"rows": rows, "sides": len(sides), "columns": {}}
        for name, nd in arrays.items():
            out = _narrow(cols[name], nd)
            members[f"{spec.name}.{name}"] = out
            theader["columns"][name] = out.dtype.str
        if sides:
            lines = []
            for k, v in enumerate(sides):
                try:
                    lines.append(json.dumps(v, separators=(",", ":"), allow_nan=False))
                except (TypeError, ValueError) as exc:
                    ev = _side_event(snap, spec, k)
                    raise HistoryFormatError(
                        f"event {ev.index} ({ev.process} {ev.type} {ev.f}) is not JSON-serialisable: {exc}"
                    ) from None
            members[f"{spec.name}.sides"] = _bytes("\n".join(lines))
        header["tables"][spec.name] = theader
    members = {"header": _bytes(json.dumps(header)), **members}
    tmp = path.with_name(path.name + ".part")
    method = zipfile.ZIP_DEFLATED if compress else zipfile.ZIP_STORED
    try:
        with zipfile.ZipFile(tmp, "w", compression=method, compresslevel=1 if compress else None) as zf:
            for name, nd in members.items():
                with zf.open(name + ".npy", "w", force_zip64=True) as fp:
                    np.lib.format.write_array(fp, np.ascontiguousarray(nd), allow_pickle=False)
        os.replace(tmp, path)
    finally:
        if tmp.exists():
            tmp.unlink()


def _side_event(snap: _Snapshot, spec: TableSpec, k: int) -> Event:
    rows, arrays, sides = snap.tables[spec.name]
    row = int(np.flatnonzero(arrays["value"] == k)[0])
    index = np.flatnonzero(snap.tab == spec.code)
    h = History._from_snapshot(snap)
    return h._materialise(h.columns(spec.name), np.array([row]), index[[row]])[0]


def _read_compact(path: Path) -> _Snapshot:
    where = str(path)
    try:
        with zipfile.ZipFile(path) as zf:
            names = set(zf.namelist())

            def member(name: str) -> np.ndarray:
                if name + ".npy" not in names:
                    raise HistoryFormatError(f"{where}: member {name!r} is missing")
                with zf.open(name + ".npy") as fp:
                    return np.lib.format.read_array(fp, allow_pickle=False)

            header = _json_member(member("header"), where, "header")
            if not isinstance(header, dict) or header.get("format") != COMPACT_FORMAT:
                raise HistoryFormatError(f"{where}: not a compact fastport history (header {header!r:.80})")
            if header.get("version") != COMPACT_VERSION:
                raise HistoryFormatError(
                    f"{where}: unsupported compact history version {header.get('version')!r}"
                )
            return _snapshot_from(header, member, where)
    except HistoryFormatError:
        raise
    except FileNotFoundError:
        raise
    except Exception as exc:  # zip, zlib, numpy's header parser...: whatever a damaged byte trips
        raise HistoryFormatError(
            f"{where}: truncated or corrupt compact history: {type(exc).__name__}: {exc}"
        ) from None


def _json_member(nd: np.ndarray, where: str, name: str) -> Any:
    if nd.dtype != np.uint8 or nd.ndim != 1:
        raise HistoryFormatError(f"{where}: member {name!r} must be bytes, got {nd.dtype} {nd.shape}")
    try:
        return json.loads(nd.tobytes().decode("utf-8", "surrogatepass"))
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise HistoryFormatError(f"{where}: member {name!r} is not JSON: {exc}") from None


def _text_member(nd: np.ndarray, where: str, name: str) -> str:
    if nd.dtype != np.uint8 or nd.ndim != 1:
        raise HistoryFormatError(f"{where}: member {name!r} must be bytes, got {nd.dtype} {nd.shape}")
    try:
        return nd.tobytes().decode("utf-8", "surrogatepass")
    except UnicodeDecodeError as exc:
        raise HistoryFormatError(f"{where}: member {name!r} is not UTF-8: {exc}") from None


def _snapshot_from(header: dict[str, Any], member: Callable[[str], np.ndarray], where: str) -> _Snapshot:
    def bad(what: str) -> HistoryFormatError:
        return HistoryFormatError(f"{where}: {what}")

    start, n_events, n_strings = header.get("start"), header.get("events"), header.get("strings")
    if not isinstance(start, (int, float)) or isinstance(start, bool) or not math.isfinite(start):
        raise bad("header 'start' must be a finite number")
    if not isinstance(n_events, int) or not isinstance(n_strings, int) or n_events < 0 or n_strings < 0:
        raise bad("header 'events' and 'strings' must be counts")
    text = _text_member(member("strings"), where, "strings")
    if header.get("string_encoding") == "nul":
        strings = text.split("\x00") if n_strings else []
    elif header.get("string_encoding") == "json":
        strings = json.loads(text)
    else:
        raise bad(f"unknown string_encoding {header.get('string_encoding')!r}")
    if not isinstance(strings, list) or len(strings) != n_strings:
        raise bad(f"string pool has {len(strings)} strings, header says {n_strings}")
    tab = member("tab")
    if tab.dtype != np.uint8 or tab.shape != (n_events,):
        raise bad(f"member 'tab' must be uint8[{n_events}], got {tab.dtype} {tab.shape}")
    if n_events and int(tab.max()) > max(_BY_CODE):
        raise bad(f"member 'tab' holds unknown table code {int(tab.max())}")
    counts = np.bincount(tab, minlength=len(TABLES) + 1)
    cold = []
    for lineno, line in enumerate(_text_member(member("events"), where, "events").splitlines(), 1):
        try:
            obj = json.loads(line)
        except json.JSONDecodeError as exc:
            raise bad(f"events:{lineno}: not JSON: {exc.msg}") from None
        if not isinstance(obj, dict):
            raise bad(f"events:{lineno}: expected a JSON object")
        cold.append(_event_from(obj, f"{where}: events:{lineno}"))
    cold_index = np.flatnonzero(tab == 0)
    if len(cold) != len(cold_index) or any(
        ev.index != int(i) for ev, i in zip(cold, cold_index, strict=False)
    ):
        raise bad(f"{len(cold)} whole events do not match the {len(cold_index)} places 'tab' gives them")
    theaders = header.get("tables")
    if not isinstance(theaders, dict):
        raise bad("header 'tables' must be an object")
    tables = {}
    for spec in TABLES:
        th = theaders.get(spec.name, {"rows": 0, "sides": 0, "columns": {}})
        rows, n_sides, cols = th.get("rows"), th.get("sides"), th.get("columns")
        if rows != int(counts[spec.code]):
            raise bad(f"table {spec.name!r} has {rows!r} rows, 'tab' places {int(counts[spec.code])}")
        if not isinstance(n_sides, int) or not isinstance(cols, dict):
            raise bad(f"table {spec.name!r}: bad header {th!r:.80}")
        known = {c.name: c for c in spec.columns}
        arrays = {}
        for name in cols:
            c = known.get(name)
            if c is None:
                raise bad(f"table {spec.name!r}: unknown column {name!r}")
            nd = member(f"{spec.name}.{name}")
            if nd.shape != (rows,):
                raise bad(f"column {spec.name}.{name} has shape {nd.shape}, expected ({rows},)")
            _check_column(c, nd, len(strings), n_sides, f"column {spec.name}.{name}", bad)
            nd.flags.writeable = False
            arrays[name] = nd
        for name in ("time", "process"):
            if rows and name not in arrays:
                raise bad(f"table {spec.name!r} lacks its {name!r} column")
        if "v.digest_kind" in arrays and "v.digest" in arrays:
            as_str = arrays["v.digest"][arrays["v.digest_kind"] == DIGEST_STR]
            if len(as_str) and int(as_str.max()) >= len(strings):
                raise bad(f"column {spec.name}.v.digest holds string codes beyond the pool")
        sides: list[Any] = []
        if n_sides:
            for k, line in enumerate(_text_member(member(f"{spec.name}.sides"), where, "sides").split("\n")):
                try:
                    sides.append(json.loads(line))
                except json.JSONDecodeError as exc:
                    raise bad(f"{spec.name}.sides:{k + 1}: not JSON: {exc.msg}") from None
            if len(sides) != n_sides:
                raise bad(f"{spec.name}.sides holds {len(sides)} values, header says {n_sides}")
        tables[spec.name] = (rows, arrays, sides)
    processes = header.get("processes")
    if not isinstance(processes, list) or not all(isinstance(p, str) for p in processes):
        raise bad("header 'processes' must be a list of strings")
    return _Snapshot(float(start), tab, tables, cold, strings, processes)


def _check_column(
    c: _Col, nd: np.ndarray, n_strings: int, n_sides: int, what: str, bad: Callable[[str], Exception]
) -> None:
    k = nd.dtype.kind
    if c.kind in ("time", "float"):
        if nd.dtype != np.float64:
            raise bad(f"{what} must be float64, got {nd.dtype}")
        if c.kind == "time" and len(nd) and not np.isfinite(nd).all():
            raise bad(f"{what} holds a time that is not a finite number")
        return
    if k not in "iu":
        raise bad(f"{what} must hold integers, got {nd.dtype}")
    if not len(nd):
        return
    lo, hi = int(nd.min()), int(nd.max())
    if c.kind == "code":
        limit = n_sides if c.name == "value" else n_strings
        low = NO_CODE if c.name in ("value", "topic", "id") else NULL_CODE
        if c.name == "process":
            low = 0
        if lo < low or hi >= limit:
            raise bad(f"{what} holds codes {lo}..{hi} outside {low}..{limit - 1}")
    elif c.kind == "small":
        if nd.dtype != np.uint8 or (c.name == "type" and hi > INFO):
            raise bad(f"{what} must be uint8 flags, got {nd.dtype} up to {hi}")
        if c.name == "v.digest_kind" and hi > DIGEST_STR:
            raise bad(f"{what} holds unknown digest kinds")


def _canonical(col: _Col, nd: np.ndarray | None, rows: int) -> np.ndarray:
    """A column at its canonical dtype (default-filled when absent) for concatenation."""
    want = np.dtype(col.typecode)
    if nd is None:
        return np.full(rows, col.default, dtype=want)
    if nd.dtype == want:
        return nd
    if col.kind == "int":
        info = np.iinfo(nd.dtype)
        wide = nd.astype(want)
        wide[nd == info.min] = INT_MIN
        wide[nd == info.min + 1] = INT_MIN + 1
        return wide
    return nd.astype(want)


def _merge(snaps: list[_Snapshot], offsets: list[float]) -> _Snapshot:
    strings: list[str] = []
    codes: dict[str, int] = {}
    remaps = []
    for s in snaps:
        remap = np.empty(len(s.strings) + 2, dtype=np.int32)  # the last two map -2, -1 onto themselves
        for i, x in enumerate(s.strings):
            c = codes.get(x)
            if c is None:
                c = codes[x] = len(strings)
                strings.append(x)
            remap[i] = c
        remap[-2], remap[-1] = NULL_CODE, NO_CODE
        remaps.append(remap)
    # every event's time, in the concatenated order, to sort on
    times, tabs = [], []
    for s, off in zip(snaps, offsets, strict=True):
        t = np.empty(len(s.tab), dtype=np.float64)
        for spec in TABLES:
            rows, arrays, _ = s.tables[spec.name]
            if rows:
                t[s.tab == spec.code] = arrays["time"]
        t[s.tab == 0] = [ev.time for ev in s.cold]
        times.append(t + off)
        tabs.append(s.tab)
    all_t = np.concatenate(times) if times else np.empty(0)
    all_tab = np.concatenate(tabs) if tabs else np.empty(0, np.uint8)
    order = np.argsort(all_t, kind="stable")
    new_pos = np.empty(len(order), dtype=np.int64)
    new_pos[order] = np.arange(len(order))
    tab = all_tab[order]
    bases = np.cumsum([0] + [len(s.tab) for s in snaps])
    tables = {}
    for spec in TABLES:
        pos_parts, col_parts, side_parts = [], {c.name: [] for c in spec.columns}, []
        present = {name for s in snaps for name in s.tables[spec.name][1]}
        side_base = 0
        for s, off, remap, base in zip(snaps, offsets, remaps, bases, strict=False):
            rows, arrays, sides = s.tables[spec.name]
            pos_parts.append(new_pos[base + np.flatnonzero(s.tab == spec.code)])
            for c in spec.columns:
                if c.name not in present:
                    continue
                nd = _canonical(c, arrays.get(c.name), rows)
                if c.name == "time":
                    nd = nd + off
                elif c.name == "value":
                    nd = np.where(nd >= 0, nd + side_base, nd)
                elif c.kind == "code":
                    nd = remap[nd]
                elif c.name == "v.digest":  # a digest kept as a string: its code moves too
                    kinds = arrays.get("v.digest_kind")
                    if kinds is not None and (kinds == DIGEST_STR).any():
                        nd = nd.copy()
                        sel = kinds == DIGEST_STR
                        nd[sel] = remap[nd[sel].astype(np.int64)]
                col_parts[c.name].append(nd)
            side_parts += sides
            side_base += len(sides)
        pos = np.concatenate(pos_parts)
        perm = np.argsort(pos, kind="stable")
        arrays = {name: np.concatenate(parts)[perm] for name, parts in col_parts.items() if parts}
        tables[spec.name] = (len(pos), arrays, side_parts)
    cold = []
    for s, off, base in zip(snaps, offsets, bases, strict=False):
        for ev in s.cold:
            cold.append(
                Event(
                    int(new_pos[base + ev.index]),
                    ev.time + off,
                    ev.process,
                    ev.type,
                    ev.f,
                    ev.topic,
                    ev.id,
                    ev.value,
                )
            )
    cold.sort(key=lambda e: e.index)
    processes = _process_order(tab, tables, cold, strings)
    return _Snapshot(
        min((s.start + o for s, o in zip(snaps, offsets, strict=True)), default=0.0),
        tab,
        tables,
        cold,
        strings,
        processes,
    )


def _process_order(
    tab: np.ndarray,
    tables: dict[str, tuple[int, dict[str, np.ndarray], list[Any]]],
    cold: list[Event],
    strings: list[str],
) -> list[str]:
    """Processes in order of their first event (what :meth:`History.processes` answers)."""
    first: dict[str, int] = {ev.process: ev.index for ev in reversed(cold)}
    for spec in TABLES:
        rows, arrays, _ = tables[spec.name]
        if not rows:
            continue
        codes, at = np.unique(arrays["process"], return_index=True)
        index = np.flatnonzero(tab == spec.code)[at]
        for c, i in zip(codes.tolist(), index.tolist(), strict=True):
            name = strings[c]
            if i < first.get(name, len(tab)):
                first[name] = i
    return sorted(first, key=first.__getitem__)
