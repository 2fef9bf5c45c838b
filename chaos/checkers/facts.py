"""Facts the checkers share, derived once from a history's columns: messages, subscriptions, deliveries.

This is where the history's conventions (docs/checkers.md) are interpreted, so
every checker reads them the same way. The subtle one is *recipients*: PROTOCOL.md
says they are the client_ids subscribed to the topic when the message was
published, and the broker decides that instant somewhere between our publish
``invoke`` and its ``ok``. So a (message, client) pair is

* **required** when the client was surely subscribed over that whole span
  (``subscribe ok`` before the publish invoke, no ``unsubscribe`` invoked before the ok),
* **forbidden** when it surely was not (no subscribe invoked before the publish ok,
  or an ``unsubscribe ok`` before the invoke and no new subscribe since), and
* **ambiguous** otherwise; ambiguous pairs are counted, never judged.

Everything is numpy arrays over the history's columns (``History.columns``), so
one definition serves a suite's thousand deliveries and a load run's ten
million: messages (``msg_*``, in first-invoke order), required pairs (``pair_*``,
in publish order, then each topic's subscribers in order of subscription),
delivery groups (``dg_*``: the deliveries of one (client, id), in history order),
first acks (``ak_*``), subscriptions and online spans. Strings are the history's
integer codes; :meth:`Facts.name` turns one back into its string for evidence.

Fault windows are classified from what the nemesis recorded in them (their
``family`` and flags such as ``crash``), never from a list of names copied
between modules: :func:`storage_windows`, :func:`crash_windows`,
:func:`targeted_windows`. Histories of older lab versions, which carried no
family, are classified by name.

Payloads are recorded as a digest and a length (``chaos.checkers.digest``),
not whole, so a history of 300 KB messages stays small; a recorded ``payload``
is still understood.
"""

from __future__ import annotations

import math
from bisect import bisect_right
from collections import defaultdict
from dataclasses import dataclass, field
from functools import cached_property
from typing import Any

import numpy as np

from chaos.checkers.digest import recorded_digest, recorded_self_check
from chaos.history import (
    DIGEST_HEX,
    DIGEST_INT,
    DIGEST_NONE,
    DIGEST_STR,
    FAIL,
    INVOKE,
    OK,
    Columns,
    Event,
    FaultWindow,
    History,
)

INF = math.inf
_HEX = frozenset("0123456789abcdef")


@dataclass(slots=True)
class PublishedMessage:
    """One message as its publisher saw it (first invoke wins when a publish is retried)."""

    id: str
    topic: str | None
    publisher: str
    digest: str | int | None  # payload digest (see chaos.checkers.digest); None if not recorded
    seq: int  # order of first invoke within its publisher
    invoke_time: float
    ok_time: float | None = None  # the broker answered `published`
    recipients_reported: int | None = None
    persisted_time: float | None = None
    persist_failed_time: float | None = None
    failed: bool = False  # the broker refused it with an error frame
    fail_time: float | None = None

    @property
    def answered_time(self) -> float | None:
        """When the broker answered the publish (``published`` or an error), if it did."""
        return self.ok_time if self.ok_time is not None else self.fail_time


@dataclass(slots=True)
class Intervals:
    """Subscription intervals of one (client, topic), both the sure and the possible ones."""

    sure: list[tuple[float, float]] = field(default_factory=list)  # subscribe ok .. unsubscribe invoke
    possible: list[tuple[float, float]] = field(default_factory=list)  # subscribe invoke .. unsubscribe ok
    oks: list[float] = field(default_factory=list)  # every subscribe ok (resubscribes after reconnects too)

    def subscribed_since(self, t: float) -> bool:
        """A ``subscribe ok`` at or after *t* (e.g. a resubscribe after a restart)."""
        return any(x >= t for x in self.oks)

    def first_ok_since(self, t: float) -> float | None:
        return min((x for x in self.oks if x >= t), default=None)

    def surely_during(self, a: float, b: float) -> bool:
        return any(s <= a and b <= e for s, e in self.sure)

    def possibly_during(self, a: float, b: float) -> bool:
        return any(s <= b and a <= e for s, e in self.possible)

    def surely_mask(self, a: np.ndarray, b: np.ndarray) -> np.ndarray:
        """:meth:`surely_during` of many spans at once."""
        out = np.zeros(len(a), bool)
        for s, e in self.sure:
            out |= (s <= a) & (b <= e)
        return out

    def possibly_mask(self, a: np.ndarray, b: np.ndarray) -> np.ndarray:
        out = np.zeros(len(a), bool)
        for s, e in self.possible:
            out |= (s <= b) & (a <= e)
        return out


def _intervals(rows: list[tuple[int, int, float]]) -> Intervals:
    """From one (client, topic)'s (is_unsubscribe, type, time) rows in history order."""
    iv = Intervals()
    sure_open: float | None = None
    poss_open: float | None = None
    for unsub, typ, t in rows:
        if not unsub:
            if typ == INVOKE and poss_open is None:
                poss_open = t
            elif typ == OK:
                iv.oks.append(t)
                if poss_open is None:
                    poss_open = t
                if sure_open is None:
                    sure_open = t
        else:
            if typ == INVOKE and sure_open is not None:
                iv.sure.append((sure_open, t))
                sure_open = None
            elif typ == OK:
                if sure_open is not None:
                    iv.sure.append((sure_open, t))
                    sure_open = None
                if poss_open is not None:
                    iv.possible.append((poss_open, t))
                    poss_open = None
    if sure_open is not None:
        iv.sure.append((sure_open, INF))
    if poss_open is not None:
        iv.possible.append((poss_open, INF))
    return iv


def first_per_group(groups: np.ndarray) -> np.ndarray:
    """Positions where a run of equal values starts in *groups* (sorted or at least grouped)."""
    if not len(groups):
        return np.empty(0, np.int64)
    return np.flatnonzero(np.r_[True, groups[1:] != groups[:-1]])


def dense(codes: np.ndarray) -> tuple[np.ndarray, int]:
    """(rank of each code among the distinct ones, how many there are), without sorting the codes.

    Codes index the history's string pool, so a table over their range finds the distinct ones in
    one pass; few distinct codes (clients, topics, publishers) then sort as 16-bit keys, which numpy
    radix-sorts ten times faster than 64-bit ones.
    """
    if not len(codes):
        return np.empty(0, np.int64), 0
    lo = int(codes.min())
    seen = np.zeros(int(codes.max()) - lo + 1, bool)
    seen[codes - lo] = True
    rank = np.cumsum(seen) - 1
    return rank[codes - lo], int(seen.sum())


def group_order(codes: np.ndarray) -> np.ndarray:
    """A stable permutation that puts equal codes together (in code order)."""
    if len(codes) < 2 or bool(np.all(codes[1:] >= codes[:-1])):
        return np.arange(len(codes))
    rank, n = dense(codes)
    return np.argsort(rank.astype(np.uint16) if n <= 1 << 16 else rank, kind="stable")


def runs(groups: np.ndarray) -> list[tuple[int, int]]:
    """(start, end) of each run of equal values in *groups*."""
    starts = first_per_group(groups).tolist()
    return list(zip(starts, [*starts[1:], len(groups)], strict=False)) if starts else []


def lookup(sorted_keys: np.ndarray, queries: np.ndarray) -> np.ndarray:
    """Index of each query in *sorted_keys* (unique, ascending), -1 when absent.

    The queries are sorted first: a binary search per random query misses the cache
    at every step, ten times slower than a merge-like pass over sorted ones.
    """
    out = np.full(len(queries), -1, np.int64)
    if not len(queries) or not len(sorted_keys):
        return out
    if len(sorted_keys) <= _CACHED_KEYS or bool(np.all(queries[1:] >= queries[:-1])):
        pos = np.searchsorted(sorted_keys, queries)  # a small table stays in cache; sorted queries too
        pos[pos == len(sorted_keys)] = 0
        hit = sorted_keys[pos] == queries
        out[hit] = pos[hit]
        return out
    o = np.argsort(queries, kind="stable")
    q = queries[o]
    pos = np.searchsorted(sorted_keys, q)
    pos[pos == len(sorted_keys)] = 0
    hit = sorted_keys[pos] == q
    out[o[hit]] = pos[hit]
    return out


_CACHED_KEYS = 1 << 16  # int64 keys: half a megabyte, within a core's cache


def take(values: np.ndarray, idx: np.ndarray, fill: Any) -> np.ndarray:
    """``values[idx]`` where *idx* >= 0, *fill* where it is -1 (an index lookup that found nothing)."""
    out = np.full(len(idx), fill, dtype=values.dtype)
    hit = idx >= 0
    out[hit] = values[idx[hit]]
    return out


def pair_key(client: np.ndarray, code: np.ndarray) -> np.ndarray:
    """One int64 per (client code, string code): how deliveries and acks are grouped."""
    return (client.astype(np.int64) << 32) | code.astype(np.int64)


class Facts:
    """Arrays over one history; build once (``Facts(history)``) and share between checkers."""

    def __init__(self, history: History) -> None:
        if not isinstance(history, History):
            raise TypeError(f"checkers take a chaos.history.History, got {type(history).__name__}")
        self.history = history
        self.end = history.end
        self.cache: dict[Any, Any] = {}  # what checkers derive and share (latency samples, ...)
        pub, per, dv = history.columns("publish"), history.columns("persist"), history.columns("deliver")
        ak, sb, cn = history.columns("ack"), history.columns("sub"), history.columns("conn")
        self.strings = history.strings()  # after the columns: every code in them is in range
        self._local: dict[str, int] = {}  # digest strings found only in whole payload values
        self.deliver_cols = dv
        self._messages(pub, per)
        self._subscriptions(sb)
        self._deliveries(dv)
        self._acks(ak)
        self._online_spans(cn)

    # --- building --------------------------------------------------------

    def _messages(self, pub: Columns, per: Columns) -> None:
        ids = pub["id"].astype(np.int64)
        typ = pub["type"]
        t = pub["time"]
        inv_rows = np.flatnonzero((ids >= 0) & (typ == INVOKE))
        codes, first = np.unique(ids[inv_rows], return_index=True)
        rows = inv_rows[first]
        order = np.argsort(rows, kind="stable")
        self.msg_row = rows = rows[order]  # first invoke, in history order
        self.msg_code = codes[order]
        m = self.n_messages = len(rows)
        self.msg_of_code = np.full(len(self.strings) + 1, -1, np.int64)  # [-1] stays -1: no id, no message
        self.msg_of_code[self.msg_code] = np.arange(m)
        self.msg_topic = pub["topic"][rows].astype(np.int64)
        self.msg_publisher = pub["process"][rows].astype(np.int64)
        self.msg_invoke = t[rows]
        o = group_order(self.msg_publisher)
        starts = first_per_group(self.msg_publisher[o])
        seq = np.empty(m, np.int64)
        seq[o] = np.arange(m) - np.repeat(starts, np.diff(np.r_[starts, m]))
        self.msg_seq = seq
        self.msg_digest = self._digests(pub, rows)

        def after_invoke(kind: int) -> tuple[np.ndarray, np.ndarray]:
            r = np.flatnonzero((ids >= 0) & (typ == kind))
            mm = self.msg_of_code[ids[r]]
            keep = mm >= 0
            keep[keep] = r[keep] > self.msg_row[mm[keep]]
            return r[keep], mm[keep]

        ok_rows, ok_m = after_invoke(OK)
        u, fi = np.unique(ok_m, return_index=True)
        self.msg_ok_row = np.full(m, -1, np.int64)
        self.msg_ok_row[u] = ok_rows[fi]
        self.msg_ok = np.full(m, np.nan)
        self.msg_ok[u] = t[ok_rows[fi]]
        fail_rows, fail_m = after_invoke(FAIL)
        okr = self.msg_ok_row[fail_m]
        keep = (okr < 0) | (fail_rows < okr)
        fail_rows, fail_m = fail_rows[keep], fail_m[keep]
        u, fi = np.unique(fail_m[::-1], return_index=True)  # the last refusal before the answer
        self.msg_failed = np.zeros(m, bool)
        self.msg_failed[u] = True
        self.msg_fail = np.full(m, np.nan)
        self.msg_fail[u] = t[fail_rows[::-1][fi]]
        self.msg_answered = np.where(np.isnan(self.msg_ok), self.msg_fail, self.msg_ok)

        pids = per["id"].astype(np.int64)
        pm = self.msg_of_code[pids]
        pf = per["f"]
        for name, fcode in (("msg_persisted", 0), ("msg_persist_failed", 1)):
            r = np.flatnonzero((pm >= 0) & (pf == fcode))
            u, fi = np.unique(pm[r], return_index=True)
            out = np.full(m, np.nan)
            out[u] = per["time"][r[fi]]
            setattr(self, name, out)

    def _digests(
        self, cols: Columns, rows: np.ndarray
    ) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
        """(kind, lo, hi, self_check_failed) of the payloads of *rows*, from the columns or whole values."""
        kind = cols["v.digest_kind"][rows].copy()
        lo = cols["v.digest"][rows].astype(np.uint64)
        hi = cols["v.digest_hi"][rows].astype(np.uint64)
        bad = (
            cols["v.self_check"][rows].astype(bool) if cols.has("v.self_check") else np.zeros(len(rows), bool)
        )
        if cols.has("value"):
            whole = np.flatnonzero(cols["value"][rows] >= 0)
            xrefs = cols["value"][rows][whole].tolist()
            for j, x in zip(whole.tolist(), xrefs, strict=True):
                value = cols.sides[x]
                kind[j], lo[j], hi[j] = self._digest_of(recorded_digest(value))
                bad[j] = not recorded_self_check(value)
        return kind, lo, hi, bad

    def _digest_of(self, d: str | int | None) -> tuple[int, int, int]:
        if d is None:
            return DIGEST_NONE, 0, 0
        if isinstance(d, int):
            return DIGEST_INT, d, 0
        if len(d) == 32 and _HEX.issuperset(d):
            n = int(d, 16)
            return DIGEST_HEX, n & (2**64 - 1), n >> 64
        return DIGEST_STR, self._str_code(d), 0

    def _str_code(self, s: str) -> int:
        c = self.history.code(s)
        if 0 <= c < len(self.strings):
            return c
        return len(self.strings) + self._local.setdefault(s, len(self._local))

    def _subscriptions(self, sb: Columns) -> None:
        rows = np.flatnonzero(sb["topic"] >= 0)
        per_key: dict[tuple[int, int], list[tuple[int, int, float]]] = {}
        cols = zip(
            sb["process"][rows].tolist(),
            sb["topic"][rows].tolist(),
            sb["f"][rows].tolist(),
            sb["type"][rows].tolist(),
            sb["time"][rows].tolist(),
            strict=True,
        )
        for c, tp, f, typ, t in cols:
            per_key.setdefault((c, tp), []).append((f, typ, t))
        self.sub_client = np.array([k[0] for k in per_key], np.int64)
        self.sub_topic = np.array([k[1] for k in per_key], np.int64)
        self.sub_intervals = [_intervals(v) for v in per_key.values()]
        self.n_subs = len(self.sub_intervals)
        self.subscriptions: dict[tuple[str, str], Intervals] = {
            (self.strings[c], self.strings[tp]): iv
            for (c, tp), iv in zip(per_key, self.sub_intervals, strict=True)
        }
        self.subscribers: list[str] = sorted({c for c, _ in self.subscriptions})
        self._sub_keys = pair_key(self.sub_client, self.sub_topic)
        self._sub_order = np.argsort(self._sub_keys, kind="stable")

    def possibly_subscribed_mask(self, sub: np.ndarray, a: np.ndarray, b: np.ndarray) -> np.ndarray:
        """:meth:`Intervals.possibly_during` (a, b) of subscription *sub* (-1: none) of many rows at once.

        Subscriptions hold few possible intervals, so the k-th interval of every subscription is
        tried on every row at once, without grouping the rows by subscription.
        """
        out = np.zeros(len(sub), bool)
        if not self.n_subs or not len(sub):
            return out
        width = max(len(iv.possible) for iv in self.sub_intervals)
        has = sub >= 0
        s = np.where(has, sub, 0)
        for k in range(width):
            start = np.array(
                [iv.possible[k][0] if k < len(iv.possible) else np.nan for iv in self.sub_intervals]
            )
            stop = np.array(
                [iv.possible[k][1] if k < len(iv.possible) else np.nan for iv in self.sub_intervals]
            )
            out |= has & (start[s] <= b) & (a <= stop[s])
        return out

    def sub_of(self, client: np.ndarray, topic: np.ndarray) -> np.ndarray:
        """The subscription (index into ``sub_*``) of each (client, topic) code pair, -1 when none."""
        found = lookup(self._sub_keys[self._sub_order], pair_key(client, topic))
        return take(self._sub_order, found, -1)

    def _deliveries(self, dv: Columns) -> None:
        ids = dv["id"].astype(np.int64)
        rows = np.flatnonzero(ids >= 0)  # deliveries without an id are not about any message
        self.dv_rows = rows
        self.dv_time = dv["time"][rows]
        self.dv_client = dv["process"][rows].astype(np.int64)
        self.dv_code = ids[rows]
        self.dv_msg = self.msg_of_code[self.dv_code]
        keys = pair_key(self.dv_client, self.dv_code)
        o = np.argsort(keys, kind="stable")  # stable: each group in history order
        self.dv_order = o
        sk = keys[o]
        starts = first_per_group(sk)
        self.dg_key = sk[starts]
        self.dg_start = starts
        self.dg_count = np.diff(np.r_[starts, len(sk)]).astype(np.int64)
        self.dg_first = o[starts]  # index into dv_* of the group's first delivery
        self.dg_first_time = self.dv_time[self.dg_first]
        self.dg_client = self.dv_client[self.dg_first]
        self.dg_msg = self.dv_msg[self.dg_first]
        self.n_groups = len(starts)
        self.dv_sorted_group = np.repeat(np.arange(self.n_groups), self.dg_count)  # group of dv_order[k]
        self.dv_sorted_time = self.dv_time[o]
        self.dg_last_time = np.maximum.reduceat(self.dv_sorted_time, starts) if len(starts) else np.empty(0)

    @cached_property
    def dv_group(self) -> np.ndarray:
        """The delivery group of each delivery (index into ``dg_*``)."""
        out = np.empty(len(self.dv_rows), np.int64)
        out[self.dv_order] = self.dv_sorted_group
        return out

    @cached_property
    def dv_digest(self) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
        """(kind, lo, hi, self_check_failed) of each delivery's payload."""
        return self._digests(self.deliver_cols, self.dv_rows)

    @cached_property
    def dv_topic(self) -> np.ndarray:
        return self.deliver_cols["topic"][self.dv_rows].astype(np.int64)

    def _acks(self, ak: Columns) -> None:
        ids = ak["id"].astype(np.int64)
        typ = ak["type"]
        rows = np.flatnonzero((ids >= 0) & ((typ == INVOKE) | (typ == OK)))
        keys = pair_key(ak["process"][rows], ids[rows])
        self.ak_key, fi = np.unique(keys, return_index=True)
        self.ak_row = rows[fi]  # first ack of each (client, id): its order is the acks' order
        self.ak_time = ak["time"][self.ak_row]
        self.ak_client = (self.ak_key >> 32).astype(np.int64)
        self.ak_code = (self.ak_key & 0xFFFFFFFF).astype(np.int64)

    def _online_spans(self, cn: Columns) -> None:
        """Connected intervals per client: ``connect ok`` .. the next ``disconnect``."""
        opened: dict[int, float] = {}
        spans: dict[int, list[tuple[float, float]]] = defaultdict(list)
        drops: dict[int, list[float]] = defaultdict(list)
        rows = zip(
            cn["process"].tolist(), cn["f"].tolist(), cn["type"].tolist(), cn["time"].tolist(), strict=True
        )
        for c, f, typ, t in rows:
            if f == 0 and typ == OK:
                opened.setdefault(c, t)
            elif f == 1:
                drops[c].append(t)
                if c in opened:
                    spans[c].append((opened.pop(c), t))
        for c, t in opened.items():
            spans[c].append((t, INF))
        self._online = {
            c: (np.array([s for s, _ in lst]), np.array([e for _, e in lst])) for c, lst in spans.items()
        }
        self.disconnects = {c: np.array(v) for c, v in drops.items()}

    # --- shared questions, vectorised ---------------------------------------------

    def name(self, code: int) -> str | None:
        """The string a code stands for (None for -1: no topic, no id)."""
        code = int(code)
        if code < 0:
            return None
        if code < len(self.strings):
            return self.strings[code]
        return next(s for s, c in self._local.items() if c == code - len(self.strings))

    def online_mask(self, clients: np.ndarray, times: np.ndarray) -> np.ndarray:
        """:meth:`online` of many (client code, time) pairs at once."""
        out = np.zeros(len(clients), bool)
        if not len(clients):
            return out
        o = group_order(clients)
        sc = clients[o]
        for a, b in runs(sc):
            spans = self._online.get(int(sc[a]))
            if spans is None:
                continue
            idx = o[a:b]
            t = times[idx]
            i = np.searchsorted(spans[0], t, side="right") - 1
            out[idx] = (i >= 0) & (t <= spans[1][np.maximum(i, 0)])
        return out

    @cached_property
    def _msg_by_topic(self) -> dict[int, np.ndarray]:
        o = group_order(self.msg_topic)
        st = self.msg_topic[o]
        return {int(st[a]): o[a:b] for a, b in runs(st) if st[a] >= 0}

    @cached_property
    def msg_rank(self) -> np.ndarray:
        """Each message's place in publish (invoke time) order."""
        order = np.argsort(self.msg_invoke, kind="stable")
        rank = np.empty(self.n_messages, np.int64)
        rank[order] = np.arange(self.n_messages)
        return rank

    def _pairs(self) -> None:
        """Required and ambiguous (message, subscription) pairs of every message."""
        end = np.where(np.isnan(self.msg_answered), self.end, self.msg_answered)
        req_m, req_s, amb_m = [], [], []
        for s, (tp, iv) in enumerate(zip(self.sub_topic.tolist(), self.sub_intervals, strict=True)):
            idx = self._msg_by_topic.get(tp)
            if idx is None:
                continue
            a, b = self.msg_invoke[idx], end[idx]
            sure = iv.surely_mask(a, b)
            req_m.append(idx[sure])
            req_s.append(np.full(int(sure.sum()), s, np.int64))
            amb_m.append(idx[~sure & iv.possibly_mask(a, b)])
        pm = np.concatenate(req_m) if req_m else np.empty(0, np.int64)
        ps = np.concatenate(req_s) if req_s else np.empty(0, np.int64)
        order = np.argsort(self.msg_rank[pm] * max(1, self.n_subs) + ps, kind="stable")
        self.__dict__["pair_msg"] = pm[order]
        self.__dict__["pair_sub"] = ps[order]
        amb = np.concatenate(amb_m) if amb_m else np.empty(0, np.int64)
        self.__dict__["msg_ambiguous"] = np.bincount(amb, minlength=self.n_messages)

    @cached_property
    def pair_msg(self) -> np.ndarray:
        """Message of each required pair, in publish order (then the topic's subscribers in order)."""
        self._pairs()
        return self.__dict__["pair_msg"]

    @cached_property
    def pair_sub(self) -> np.ndarray:
        self._pairs()
        return self.__dict__["pair_sub"]

    @cached_property
    def msg_ambiguous(self) -> np.ndarray:
        """Ambiguous recipients per message (a subscribe or unsubscribe raced its publish)."""
        self._pairs()
        return self.__dict__["msg_ambiguous"]

    @cached_property
    def pair_client(self) -> np.ndarray:
        return self.sub_client[self.pair_sub]

    @cached_property
    def pair_group(self) -> np.ndarray:
        """The delivery group of each required pair, -1 when it was never delivered."""
        return self.groups_of(self.pair_client, self.msg_code[self.pair_msg])

    def groups_of(self, clients: np.ndarray, codes: np.ndarray) -> np.ndarray:
        """Delivery group of each (client code, id code), -1 when never delivered."""
        return lookup(self.dg_key, pair_key(clients, codes))

    def acks_of(self, clients: np.ndarray, codes: np.ndarray) -> np.ndarray:
        """First ack time of each (client code, id code), NaN when never acked."""
        i = lookup(self.ak_key, pair_key(clients, codes))
        return take(self.ak_time, i, np.nan)

    @cached_property
    def dg_ack(self) -> np.ndarray:
        """First ack time of each delivery group's pair, NaN when never acked (sorted keys: one pass)."""
        return take(self.ak_time, lookup(self.ak_key, self.dg_key), np.nan)

    @cached_property
    def pair_ack(self) -> np.ndarray:
        """First ack time of each required pair, NaN when never acked."""
        g = self.pair_group
        out = take(self.dg_ack, g, np.nan)
        never = np.flatnonzero(g < 0)  # acked without a delivery: odd, but an ack all the same
        out[never] = self.acks_of(self.pair_client[never], self.msg_code[self.pair_msg[never]])
        return out

    def first_delivery_after(self, t: float, *, inclusive: bool = False) -> tuple[np.ndarray, np.ndarray]:
        """Per delivery group: (time, index into ``dv_*``) of its first delivery after *t* (NaN, -1: none)."""
        o = self.dv_order
        ts = self.dv_sorted_time
        pos = np.flatnonzero(ts >= t if inclusive else ts > t)
        g = self.dv_sorted_group[pos]
        first = first_per_group(g)
        when = np.full(self.n_groups, np.nan)
        which = np.full(self.n_groups, -1, np.int64)
        when[g[first]] = ts[pos[first]]
        which[g[first]] = o[pos[first]]
        return when, which

    def delivery_event(self, i: int) -> Event:
        """The Event of delivery *i* (an index into ``dv_*``), for evidence."""
        return self.history.row_event("deliver", int(self.dv_rows[i]))

    def group_events(self, g: int) -> list[Event]:
        """Every delivery of group *g*, in history order."""
        a = int(self.dg_start[g])
        return [self.delivery_event(i) for i in self.dv_order[a : a + int(self.dg_count[g])].tolist()]

    def message_digest(self, m: int) -> str | int | None:
        kind, lo, hi, _ = self.msg_digest
        return self.digest_value(int(kind[m]), int(lo[m]), int(hi[m]))

    def digest_value(self, kind: int, lo: int, hi: int) -> str | int | None:
        """A digest as recorded: a hex string, an int (CRC-32) or None."""
        if kind == DIGEST_HEX:
            return f"{hi:016x}{lo:016x}"
        if kind == DIGEST_INT:
            return lo
        if kind == DIGEST_STR:
            return self.name(lo)
        return None

    @property
    def published_mask(self) -> np.ndarray:
        """Messages the broker answered ``published``."""
        return ~np.isnan(self.msg_ok)

    def rel(self, t: float | None) -> float | None:
        return self.history.rel(None if t is None or t != t else float(t))

    # --- the same questions one at a time, on Python objects (small histories, tools) -----------

    @cached_property
    def messages(self) -> dict[str, PublishedMessage]:
        """Every message by id, as objects (materialised on first use: for small histories)."""
        out = {}
        for m in range(self.n_messages):
            ok_row = int(self.msg_ok_row[m])
            out[self.strings[int(self.msg_code[m])]] = PublishedMessage(
                self.strings[int(self.msg_code[m])],
                self.name(self.msg_topic[m]),
                self.strings[int(self.msg_publisher[m])],
                self.message_digest(m),
                int(self.msg_seq[m]),
                float(self.msg_invoke[m]),
                _opt(self.msg_ok[m]),
                self.history.row_event("publish", ok_row).get("recipients") if ok_row >= 0 else None,
                _opt(self.msg_persisted[m]),
                _opt(self.msg_persist_failed[m]),
                bool(self.msg_failed[m]),
                _opt(self.msg_fail[m]),
            )
        return out

    @cached_property
    def deliveries(self) -> dict[tuple[str, str], list[Event]]:
        """(client, id) -> its deliveries in history order (materialised on first use: small histories)."""
        out: dict[tuple[str, str], list[Event]] = {}
        for g in np.argsort(self.dg_first, kind="stable").tolist():
            evs = self.group_events(g)
            out[(evs[0].process, evs[0].id)] = evs  # type: ignore[index]
        return out

    @cached_property
    def acks(self) -> dict[tuple[str, str], float]:
        """(client, id) -> first ack time, in the order of the first acks."""
        order = np.argsort(self.ak_row, kind="stable")
        return {
            (self.strings[int(self.ak_client[i])], self.strings[int(self.ak_code[i])]): float(self.ak_time[i])
            for i in order.tolist()
        }

    def published(self) -> list[PublishedMessage]:
        """Messages the broker answered ``published``, in invoke order."""
        return sorted(
            (m for m in self.messages.values() if m.ok_time is not None), key=lambda m: m.invoke_time
        )

    def recipients(self, m: PublishedMessage) -> tuple[list[str], list[str]]:
        """(required, ambiguous) recipients of a published message."""
        if m.topic is None:
            return [], []
        end = m.answered_time if m.answered_time is not None else self.end
        required, ambiguous = [], []
        for (c, t), iv in self.subscriptions.items():
            if t != m.topic:
                continue
            if iv.surely_during(m.invoke_time, end):
                required.append(c)
            elif iv.possibly_during(m.invoke_time, end):
                ambiguous.append(c)
        return required, ambiguous

    def possibly_subscribed(self, client: str, topic: str | None, a: float, b: float) -> bool:
        iv = self.subscriptions.get((client, topic)) if topic is not None else None
        return iv is not None and iv.possibly_during(a, b)

    def online(self, client: str, t: float) -> bool:
        """Connected at *t* (between a ``connect ok`` and the next ``disconnect``)."""
        spans = self._online.get(self.history.code(client))
        if spans is None:
            return False
        i = bisect_right(spans[0].tolist(), t) - 1
        return i >= 0 and t <= spans[1][i]

    def first_delivery(self, client: str, msg_id: str) -> float | None:
        g = self.groups_of(np.array([self.history.code(client)]), np.array([self.history.code(msg_id)]))[0]
        return None if g < 0 else float(self.dg_first_time[g])

    def latency(self, m: PublishedMessage, client: str) -> float:
        """Publish invoke to first delivery in seconds; inf when never delivered."""
        t = self.first_delivery(client, m.id)
        return INF if t is None else t - m.invoke_time


def _opt(x: float) -> float | None:
    return None if x != x else float(x)


def facts_of(history: History | Facts) -> Facts:
    """The shared facts: reuse them when given, else derive them (raises TypeError on anything else)."""
    return history if isinstance(history, Facts) else Facts(history)


CRASH_NAMES = ("kill", "crash", "sigkill")  # how histories without a recorded family named crashes


def is_storage_window(w: FaultWindow) -> bool:
    """A fault on the broker's storage: recorded ``family`` storage (or, in old histories, ``kind``/name)."""
    fam = w.evidence.get("family", w.evidence.get("kind"))
    return fam == "storage" if fam is not None else w.name.startswith("storage")


def is_crash_window(w: FaultWindow) -> bool:
    """The broker was killed and restarted: recorded ``crash: true`` (old histories: by name)."""
    crash = w.evidence.get("crash")
    return crash is True if isinstance(crash, bool) else w.name in CRASH_NAMES


def storage_windows(history: History) -> list[FaultWindow]:
    return [w for w in history.fault_windows() if is_storage_window(w)]


def crash_windows(history: History) -> list[FaultWindow]:
    return [w for w in history.fault_windows() if is_crash_window(w)]


def targeted_windows(history: History) -> list[FaultWindow]:
    """Faults aimed at some clients (their ``targets``): every other client must not notice."""
    return [w for w in history.fault_windows() if w.targets]


def in_any(t: float, windows: list[FaultWindow], end: float) -> FaultWindow | None:
    for w in windows:
        if w.contains(t, end):
            return w
    return None


def window_mask(times: np.ndarray, w: FaultWindow, end: float) -> np.ndarray:
    """:meth:`FaultWindow.contains` of many times at once (an open window lasts until *end*)."""
    stop = w.end if w.end is not None else end
    return (w.start <= times) & (times <= stop)


def window_evidence(w: FaultWindow, history: History) -> dict[str, Any]:
    return {
        "name": w.name,
        "start_s": history.rel(w.start),
        "end_s": history.rel(w.end),
        "effective": w.effective,
        **{k: v for k, v in w.evidence.items() if k not in ("name", "effective")},
    }
