"""The fast path into a history's columns: one positional call per high-volume event."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import numpy as np

from chaos.history.columns import (
    DIGEST_HEX,
    DIGEST_INT,
    DIGEST_STR,
    HEX32,
    INT_MIN,
    LO64,
    NULL_CODE,
    Columns,
    Table,
    keeps_int,
)
from chaos.history.events import FAIL, TYPE_NAMES, Event, HistoryFormatError

if TYPE_CHECKING:
    from chaos.history import History


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

    def _finish(self, tbl: Table, cols: tuple[int, ...], vals: tuple[Any, ...], process: str) -> Event | None:
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
        if type(digest) is int and 0 <= digest <= LO64:
            return (pos, pos + 1), (DIGEST_INT, digest)
        if type(digest) is str and HEX32.fullmatch(digest):
            n = int(digest, 16)
            return (pos, pos + 1, pos + 2), (DIGEST_HEX, n & LO64, n >> 64)
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
            if type(digest) is int and topic is not None and 0 <= digest <= LO64:  # the load rig's call
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
