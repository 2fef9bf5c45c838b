"""The compact history file: the columns in a numpy ``.npz`` archive, checked as they are read.

A zip archive of ``.npy`` members (``numpy.load`` opens it too), written whole to
a ``.part`` file and renamed, so a crash never leaves half a file under the name.
Reading validates everything it relies on (header, counts, dtypes, code ranges),
and any damage at all is a :class:`~chaos.history.HistoryFormatError` naming the
file, never a crash, a hang or a silently different history.
"""

from __future__ import annotations

import json
import math
import os
import zipfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from chaos.history.columns import (
    BY_CODE,
    DIGEST_STR,
    NO_CODE,
    NULL_CODE,
    TABLES,
    Col,
    Columns,
    Snapshot,
    TableSpec,
    materialise,
)
from chaos.history.events import INFO, Event, HistoryFormatError, dumps_event, event_from, json_object

COMPACT_FORMAT = "fastport-history-columns"
COMPACT_VERSION = 1

# The layout:
#
# A zip archive of numpy .npy members (so ``numpy.load`` opens it too), written by write_compact:
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


def _narrow(col: Col, nd: np.ndarray) -> np.ndarray:
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


def write_compact(snap: Snapshot, path: Path, compress: bool) -> None:
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
    members["events"] = _bytes("".join(dumps_event(ev) + "\n" for ev in snap.cold))
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


def _side_event(snap: Snapshot, spec: TableSpec, k: int) -> Event:
    rows, arrays, sides = snap.tables[spec.name]
    row = int(np.flatnonzero(arrays["value"] == k)[0])
    index = np.flatnonzero(snap.tab == spec.code)
    return materialise(Columns(spec, rows, arrays, sides), np.array([row]), index[[row]], snap.strings)[0]


def read_compact(path: Path) -> Snapshot:
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


def _snapshot_from(header: dict[str, Any], member: Callable[[str], np.ndarray], where: str) -> Snapshot:
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
    if n_events and int(tab.max()) > max(BY_CODE):
        raise bad(f"member 'tab' holds unknown table code {int(tab.max())}")
    counts = np.bincount(tab, minlength=len(TABLES) + 1)
    cold = []
    for lineno, line in enumerate(_text_member(member("events"), where, "events").splitlines(), 1):
        at = f"{where}: events:{lineno}"
        cold.append(event_from(json_object(line, at), at))
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
    return Snapshot(float(start), tab, tables, cold, strings, processes)


def _check_column(
    c: Col, nd: np.ndarray, n_strings: int, n_sides: int, what: str, bad: Callable[[str], Exception]
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
