"""The history's tables: typed columns for the high-volume kinds of event.

One table per kind (``TABLES``: publish, persist, deliver, ack, sub, conn), one
column per part of an event: float64 times; processes, topics, ids and short
strings as int32 codes into the history's string pool; the value's usual keys
(``digest``, ``bytes``, ``attempt``, ``recipients``, ...) as columns of their
own. A value the columns cannot reproduce exactly (a whole payload, a bool
where an int is usual) is kept whole beside its row (``sides``, numbered by the
row's ``value`` column). A column stays unallocated until a row sets it to
something other than its default, so a load run pays nothing for the suites'
``published_at`` or a subscriber's ``bytes``.

Columns grow as ``array.array`` (:class:`Table`) and are handed out as read-only
numpy arrays (:class:`Columns`): frozen without a copy, copied back into
growable arrays by the next append.
"""

from __future__ import annotations

import math
import re
from array import array
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from functools import cached_property
from operator import call
from typing import Any

import numpy as np

from chaos.history.events import INVOKE, OK, TYPE_NAMES, Event

INT_MIN = -(2**31)  # an int field's "key absent" in its canonical int32 column; INT_MIN + 1 is null
NO_CODE, NULL_CODE = -1, -2  # a string column's "absent" / "null" (codes >= 0 index the string pool)
HEX32 = re.compile(r"[0-9a-f]{32}")
LO64 = 2**64 - 1
DIGEST_NONE, DIGEST_HEX, DIGEST_INT, DIGEST_STR = range(4)  # the digest_kind column


@dataclass(frozen=True, slots=True)
class Col:
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
class Field:
    key: str  # the key in the event's value dict
    kind: str  # digest | int | float | sym | false


@dataclass(frozen=True)
class TableSpec:
    """A columnar table: which ``f`` it holds, the usual type, and the value keys it keeps as columns."""

    name: str
    code: int  # in the history's per-event table column (0: an Event kept whole)
    fs: tuple[str, ...]
    default_type: int
    fields: tuple[Field, ...]

    @cached_property
    def columns(self) -> tuple[Col, ...]:
        cols = [
            Col("time", "d", 0.0, "time"),
            Col("process", "i", 0, "code"),
            Col("type", "B", self.default_type, "small"),
        ]
        if len(self.fs) > 1:
            cols.append(Col("f", "B", 0, "small"))
        cols += [Col("topic", "i", NO_CODE, "code"), Col("id", "i", NO_CODE, "code")]
        cols.append(Col("value", "i", NO_CODE, "code"))  # index of a value kept whole, -1: from the columns
        for fd in self.fields:
            if fd.kind == "digest":
                cols += [
                    Col("v.digest_kind", "B", DIGEST_NONE, "small"),
                    Col("v.digest", "Q", 0, "uint"),
                    Col("v.digest_hi", "Q", 0, "uint"),
                ]
            elif fd.kind == "int":
                cols.append(Col("v." + fd.key, "i", INT_MIN, "int"))
            elif fd.kind == "float":
                cols.append(Col("v." + fd.key, "d", math.nan, "float"))
            elif fd.kind == "sym":
                cols.append(Col("v." + fd.key, "i", NO_CODE, "code"))
            else:  # "false": only ``False`` is kept in the column (1), anything else whole
                cols.append(Col("v." + fd.key, "B", 0, "small"))
        return tuple(cols)


_F = Field
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
BY_F = {f: s for s in TABLES for f in s.fs}
BY_CODE = {s.code: s for s in TABLES}


def absent_value(col: Col, dtype: np.dtype) -> Any:
    """The "key absent" value of *col* stored as *dtype* (int fields: the dtype's minimum)."""
    return int(np.iinfo(dtype).min) if col.kind == "int" else col.default


class Table:
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
            self.arrs[i] = to_array(self.cols[i], nd)
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


def to_array(col: Col, nd: np.ndarray) -> array:
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
        return absent_value(self._cols[name], self[name].dtype)

    def f_code(self, f: str) -> int:
        return self.spec.fs.index(f)


@dataclass
class Snapshot:
    """Everything a history holds, as arrays: what files, merges and copies are made of."""

    start: float
    tab: np.ndarray  # uint8, one per event: its table's code, 0 for an Event kept whole
    tables: dict[str, tuple[int, dict[str, np.ndarray], list[Any]]]  # name -> (rows, columns, sides)
    cold: list[Event]
    strings: list[str]
    processes: list[str]


def keeps_int(v: Any) -> bool:
    """An int an int column keeps exactly (not a bool, not one of its two sentinels, within int32)."""
    return type(v) is int and INT_MIN + 2 <= v < 2**31


def decode(fields: list[tuple[Field, list[list[Any]], Any]], j: int, strings: list[str]) -> Any:
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


def canonical(col: Col, nd: np.ndarray | None, rows: int) -> np.ndarray:
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


def materialise(cols: Columns, rows: np.ndarray, index: np.ndarray, strings: list[str]) -> list[Event]:
    """Events of *rows* of one table (values rebuilt from the columns, or the one kept whole)."""
    spec = cols.spec
    get = {name: cols[name][rows].tolist() for name in ("time", "process", "type", "topic", "id", "value")}
    fcol = cols["f"][rows].tolist() if len(spec.fs) > 1 else None
    fields = []
    for fd in spec.fields:
        names = ("v.digest_kind", "v.digest", "v.digest_hi") if fd.kind == "digest" else ("v." + fd.key,)
        if any(cols.has(n) for n in names):
            fields.append((fd, [cols[n][rows].tolist() for n in names], cols.absent(names[0])))
    out = []
    for j in range(len(rows)):
        xref = get["value"][j]
        value = cols.sides[xref] if xref >= 0 else decode(fields, j, strings)
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
