"""Facts the checkers share, derived once from a history: messages, subscriptions, deliveries.

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
from typing import Any

from chaos.checkers.digest import recorded_digest
from chaos.history import Event, FaultWindow, History

INF = math.inf


@dataclass(slots=True)
class PublishedMessage:
    """One message as its publisher saw it (first invoke wins when a publish is retried)."""

    id: str
    topic: str | None
    publisher: str
    digest: str | None  # payload digest (see chaos.checkers.digest); None if not recorded
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

    def surely_during(self, a: float, b: float) -> bool:
        return any(s <= a and b <= e for s, e in self.sure)

    def possibly_during(self, a: float, b: float) -> bool:
        return any(s <= b and a <= e for s, e in self.possible)


def _intervals(events: list[Event]) -> Intervals:
    iv = Intervals()
    sure_open: float | None = None
    poss_open: float | None = None
    for ev in events:
        if ev.f == "subscribe":
            if ev.type == "invoke" and poss_open is None:
                poss_open = ev.time
            elif ev.type == "ok":
                iv.oks.append(ev.time)
                if poss_open is None:
                    poss_open = ev.time
                if sure_open is None:
                    sure_open = ev.time
        elif ev.f == "unsubscribe":
            if ev.type == "invoke" and sure_open is not None:
                iv.sure.append((sure_open, ev.time))
                sure_open = None
            elif ev.type == "ok":
                if sure_open is not None:
                    iv.sure.append((sure_open, ev.time))
                    sure_open = None
                if poss_open is not None:
                    iv.possible.append((poss_open, ev.time))
                    poss_open = None
    if sure_open is not None:
        iv.sure.append((sure_open, INF))
    if poss_open is not None:
        iv.possible.append((poss_open, INF))
    return iv


class Facts:
    """Indexes over one history; build once (``Facts(history)``) and share between checkers."""

    def __init__(self, history: History) -> None:
        if not isinstance(history, History):
            raise TypeError(f"checkers take a chaos.history.History, got {type(history).__name__}")
        self.history = history
        self.end = history.end
        self.messages: dict[str, PublishedMessage] = {}
        seqs: dict[str, int] = defaultdict(int)
        for ev in history.by_f("publish"):
            if ev.id is None:
                continue
            m = self.messages.get(ev.id)
            if ev.type == "invoke":
                if m is None:
                    self.messages[ev.id] = PublishedMessage(
                        ev.id, ev.topic, ev.process, recorded_digest(ev.value), seqs[ev.process], ev.time
                    )
                    seqs[ev.process] += 1
            elif m is not None and ev.type == "ok" and m.ok_time is None:
                m.ok_time = ev.time
                m.recipients_reported = ev.get("recipients")
            elif m is not None and ev.type == "fail" and m.ok_time is None:
                m.failed = True
                m.fail_time = ev.time
        for ev in history.by_f("persisted", "persist_failed"):
            m = self.messages.get(ev.id) if ev.id is not None else None
            if m is None:
                continue
            if ev.f == "persisted" and m.persisted_time is None:
                m.persisted_time = ev.time
            elif ev.f == "persist_failed" and m.persist_failed_time is None:
                m.persist_failed_time = ev.time

        sub_events: dict[tuple[str, str], list[Event]] = defaultdict(list)
        for ev in history.by_f("subscribe", "unsubscribe"):
            if ev.topic is not None:
                sub_events[(ev.process, ev.topic)].append(ev)
        self.subscriptions: dict[tuple[str, str], Intervals] = {
            k: _intervals(v) for k, v in sub_events.items()
        }
        self.subscribers: list[str] = sorted({c for c, _ in self.subscriptions})
        self._topic_clients: dict[str, list[str]] = defaultdict(list)
        for c, t in self.subscriptions:
            self._topic_clients[t].append(c)

        self.deliveries: dict[tuple[str, str], list[Event]] = defaultdict(list)  # (client, id) -> delivers
        for ev in history.by_f("deliver"):
            if ev.id is not None:
                self.deliveries[(ev.process, ev.id)].append(ev)
        self.acks: dict[tuple[str, str], float] = {}  # (client, id) -> first ack time
        for ev in history.by_f("ack"):
            if ev.id is not None and ev.type in ("invoke", "ok"):
                self.acks.setdefault((ev.process, ev.id), ev.time)

        # connected intervals per client: connect ok .. disconnect
        self._online: dict[str, tuple[list[float], list[float]]] = {}
        opened: dict[str, float] = {}
        spans: dict[str, list[tuple[float, float]]] = defaultdict(list)
        for ev in history.by_f("connect", "disconnect"):
            if ev.f == "connect" and ev.type == "ok":
                opened.setdefault(ev.process, ev.time)
            elif ev.f == "disconnect" and ev.process in opened:
                spans[ev.process].append((opened.pop(ev.process), ev.time))
        for c, t in opened.items():
            spans[c].append((t, INF))
        for c, lst in spans.items():
            self._online[c] = ([s for s, _ in lst], [e for _, e in lst])

    # --- questions -------------------------------------------------------

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
        for c in self._topic_clients.get(m.topic, ()):
            iv = self.subscriptions[(c, m.topic)]
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
        spans = self._online.get(client)
        if spans is None:
            return False
        i = bisect_right(spans[0], t) - 1
        return i >= 0 and t <= spans[1][i]

    def first_delivery(self, client: str, msg_id: str) -> float | None:
        d = self.deliveries.get((client, msg_id))
        return d[0].time if d else None

    def latency(self, m: PublishedMessage, client: str) -> float:
        """Publish invoke to first delivery in seconds; inf when never delivered."""
        t = self.first_delivery(client, m.id)
        return INF if t is None else t - m.invoke_time

    def rel(self, t: float | None) -> float | None:
        return self.history.rel(t)


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


def window_evidence(w: FaultWindow, history: History) -> dict[str, Any]:
    return {
        "name": w.name,
        "start_s": history.rel(w.start),
        "end_s": history.rel(w.end),
        "effective": w.effective,
        **{k: v for k, v in w.evidence.items() if k not in ("name", "effective")},
    }
