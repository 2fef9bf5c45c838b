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
import threading
import time as _time
from array import array
from collections.abc import Callable, Iterable, Iterator, Sequence
from pathlib import Path
from typing import IO, Any

import numpy as np

from chaos.history.columns import (
    BY_CODE,
    BY_F,
    DIGEST_HEX,
    DIGEST_INT,
    DIGEST_NONE,
    DIGEST_STR,
    HEX32,
    INT_MIN,
    LO64,
    NO_CODE,
    NULL_CODE,
    TABLE,
    TABLES,
    Col,
    Columns,
    Snapshot,
    Table,
    TableSpec,
    keeps_int,
    materialise,
    to_array,
)
from chaos.history.compact import COMPACT_FORMAT, COMPACT_VERSION, read_compact, write_compact
from chaos.history.events import (
    FAIL,
    FORMAT,
    INFO,
    INVOKE,
    OK,
    TYPE_CODE,
    TYPE_NAMES,
    TYPES,
    VERSION,
    Event,
    FaultWindow,
    HistoryFormatError,
    dumps_event,
    event_from,
    json_object,
)
from chaos.history.merge import merge_snapshots
from chaos.history.writer import ColumnWriter

__all__ = [
    "COMPACT_FORMAT",
    "COMPACT_VERSION",
    "DIGEST_HEX",
    "DIGEST_INT",
    "DIGEST_NONE",
    "DIGEST_STR",
    "FAIL",
    "FORMAT",
    "INFO",
    "INT_MIN",
    "INVOKE",
    "NO_CODE",
    "NULL_CODE",
    "OK",
    "TABLE",
    "TABLES",
    "TYPES",
    "TYPE_NAMES",
    "VERSION",
    "ColumnWriter",
    "Columns",
    "Event",
    "FaultWindow",
    "History",
    "HistoryFormatError",
    "TableSpec",
    "keeps_int",
]


class History:
    """Append-only, lock-protected events: columns for the high-volume kinds, Events for the rest."""

    def __init__(self, clock: Callable[[], float] = _time.monotonic, start: float | None = None) -> None:
        self._clock = clock
        self.start = clock() if start is None else start  # run start: evidence times are relative to it
        self._lock = threading.Lock()
        self._listeners: list[Callable[[Event], None]] = []
        self._tables = {s.name: Table(s) for s in TABLES}
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
        spec = BY_F.get(ev.f)
        if (
            spec is not None
            and (ev.topic is None or type(ev.topic) is str)
            and (ev.id is None or type(ev.id) is str)
        ):
            tbl = self._tables[spec.name]
            row = list(tbl.defaults)
            row[0] = ev.time
            row[1] = self._intern(ev.process)
            row[2] = TYPE_CODE[ev.type]
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
            self._tab = to_array(Col("tab", "B", 0, "small"), self._tab_np)
            self._tab_np = None
        self._tab.append(code)
        self._n += 1
        if process not in self._processes:
            self._processes[process] = None
        if self._index_cache:
            self._index_cache = {}

    def _encode(self, tbl: Table, value: Any, row: list[Any]) -> bool:
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
                    if HEX32.fullmatch(v):
                        n = int(v, 16)
                        sets += [(pos, DIGEST_HEX), (pos + 1, n & LO64), (pos + 2, n >> 64)]
                    else:
                        sets.append((pos, DIGEST_STR))
                        strs.append((pos + 1, v))
                elif type(v) is int and 0 <= v <= LO64:
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
            spec = BY_CODE[int(code)]
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
            return self._tables[BY_CODE[int(code)].name].last_time()

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
                    mask &= cols["type"] == TYPE_CODE.get(type, 255)
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
        """Memory held, in bytes: ``columns`` (all tables and the table column, exact), ``strings``
        (the pool's objects and index, as ``sys.getsizeof`` counts them), ``events`` (the events and
        values kept whole, estimated at 200 bytes each)."""
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
        return materialise(cols, rows, index, self._strings)  # the pool only grows: codes stay in range

    # --- JSON lines ------------------------------------------------------

    def dumps_lines(self) -> Iterator[str]:
        yield json.dumps({"format": FORMAT, "version": VERSION, "start": self.start})
        for ev in self.events:
            yield dumps_event(ev)

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
                write_compact(self._snapshot(), path, compress)
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
                return cls._from_snapshot(read_compact(Path(source)))
            if Path(source).suffix == ".npz" and not magic.startswith(b"{"):  # JSON lines, named .npz
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
            obj = json_object(line, f"{name}:{lineno}")
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
            ev = event_from(obj, f"{name}:{lineno}")
            if h is None:
                h = cls(start=ev.time)
            if ev.index != h._n:
                raise HistoryFormatError(
                    f"{name}:{lineno}: event index {ev.index} out of sequence, expected {h._n}"
                )
            h._add(ev)
        return h if h is not None else cls(start=0.0)

    # --- snapshots: files, merges ----------------------------------------

    def _snapshot(self) -> Snapshot:
        with self._lock:
            tables = {}
            for s in TABLES:
                t = self._tables[s.name]
                tables[s.name] = (t.rows, dict(t.freeze()), list(t.sides))
            return Snapshot(
                self.start,
                self._tab_locked(),
                tables,
                list(self._cold),
                self._strings[:],
                list(self._processes),
            )

    @classmethod
    def _from_snapshot(cls, snap: Snapshot) -> History:
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
        return cls._from_snapshot(merge_snapshots(snaps, offs))


def _bisect_index(events: list[Event], i: int) -> int:
    lo, hi = 0, len(events)
    while lo < hi:
        mid = (lo + hi) // 2
        if events[mid].index < i:
            lo = mid + 1
        else:
            hi = mid
    return lo
