"""Realistic recorded histories for the report and gate tests, built with the History API and a fake clock.

The shapes follow docs/checkers.md: clients connect and subscribe, a publisher
publishes paced messages (``invoke``/``ok``, then ``persisted``), subscribers get
``deliver`` and ``ack``, and the nemesis records ``fault-start``/``fault-stop``.
"""

from __future__ import annotations

import random
from collections.abc import Collection
from typing import Any

from chaos.checkers import (
    check_at_least_once,
    check_availability,
    check_duplicates,
    check_hydration,
    check_integrity,
    check_recovery,
)
from chaos.checkers.digest import payload_checksum
from chaos.checkers.facts import Facts
from chaos.checkers.verdict import Verdict
from chaos.history import History

T0 = 5000.0


class Rows:
    """Events at relative times, appended to a History in time order (stable for equal times)."""

    def __init__(self) -> None:
        self.rows: list[tuple[float, int, tuple[Any, ...]]] = []

    def add(self, t: float, process: str, type_: str, f: str, topic=None, id=None, value=None) -> None:
        self.rows.append((t, len(self.rows), (process, type_, f, topic, id, value)))

    def history(self) -> History:
        clock_t = [T0]
        h = History(clock=lambda: clock_t[0])
        for t, _, args in sorted(self.rows, key=lambda r: (r[0], r[1])):
            h.append(*args, time=T0 + t)
        return h


def _payload(msg_id: str, i: int) -> dict[str, Any]:
    data = {"n": i}
    return {"id": msg_id, "publisher": "p", "seq": i, "data": data, "sha256": payload_checksum(data)}


def storage_run(
    per_phase: int = 40,
    *,
    every: float = 0.02,
    fault_latency: float | None = None,
    lose: Collection[int] = (),
    duplicate: Collection[int] = (),
    effective: bool | None = True,
    subscribers: tuple[str, ...] = ("s1", "s2"),
    seed: int = 1,
) -> History:
    """Baseline, one ``storage-latency`` fault, recovery: ``3 * per_phase`` messages to every subscriber.

    *fault_latency* (s): the delivery latency during the fault (None: as fast as the baseline, the
    fix held). *lose*: message numbers never delivered to the last subscriber. *duplicate*: numbers
    delivered twice to the first subscriber.
    """
    rng = random.Random(seed)
    r = Rows()
    topic = "orders"
    for c in (*subscribers, "p"):
        r.add(0.0, c, "invoke", "connect", value={"attempt": 1})
        r.add(0.001, c, "ok", "connect", value={"attempt": 1})
    for c in subscribers:
        r.add(0.002, c, "invoke", "subscribe", topic)
        r.add(0.003, c, "ok", "subscribe", topic)
    start = 0.1
    fault_start = start + per_phase * every
    fault_end = fault_start + per_phase * every
    evidence: dict[str, Any] = {"name": "storage-latency", "kind": "storage", "latency_ms": 300}
    if effective is not None:
        evidence["effective"] = effective
    r.add(fault_start - every / 2, "nemesis", "info", "fault-start", value=evidence)
    r.add(fault_end - every / 2, "nemesis", "info", "fault-stop", value={"name": "storage-latency"})
    for i in range(3 * per_phase):
        t = start + i * every
        mid = f"p-{i}"
        in_fault = fault_start - every / 2 <= t <= fault_end - every / 2
        r.add(t, "p", "invoke", "publish", topic, mid, {"payload": _payload(mid, i)})
        r.add(t + 0.001, "p", "ok", "publish", topic, mid, {"recipients": len(subscribers)})
        r.add(t + (0.3 if in_fault else 0.01), "p", "ok", "persisted", topic, mid)
        for k, c in enumerate(subscribers):
            if i in lose and k == len(subscribers) - 1:
                continue
            lat = (fault_latency if in_fault and fault_latency else 0.003) * (1 + 0.5 * rng.random())
            r.add(t + lat, c, "ok", "deliver", topic, mid, {"payload": _payload(mid, i), "attempt": 1})
            r.add(t + lat + 0.001, c, "ok", "ack", topic, mid)
            if i in duplicate and k == 0:
                r.add(
                    t + lat + 0.5, c, "ok", "deliver", topic, mid, {"payload": _payload(mid, i), "attempt": 2}
                )
    return r.history()


def crash_run(n: int = 20, *, redeliver: bool = True) -> History:
    """Persisted, unacked messages, a ``kill`` of the broker, then a restart that redelivers them."""
    r = Rows()
    topic = "jobs"
    for c in ("s", "p"):
        r.add(0.0, c, "ok", "connect", value={"attempt": 1})
    r.add(0.002, "s", "invoke", "subscribe", topic)
    r.add(0.003, "s", "ok", "subscribe", topic)
    for i in range(n):
        t = 0.1 + i * 0.02
        mid = f"p-{i}"
        r.add(t, "p", "invoke", "publish", topic, mid, {"payload": _payload(mid, i)})
        r.add(t + 0.001, "p", "ok", "publish", topic, mid, {"recipients": 1})
        r.add(t + 0.01, "p", "ok", "persisted", topic, mid)
        r.add(t + 0.004, "s", "ok", "deliver", topic, mid, {"payload": _payload(mid, i), "attempt": 1})
    kill, up = 1.0, 2.5
    r.add(kill, "nemesis", "info", "fault-start", value={"name": "kill", "effective": True})
    r.add(kill + 0.001, "broker", "info", "exit", value={"exit_code": -9, "signalled": True})
    r.add(kill + 0.002, "s", "info", "disconnect", value={"cause": "connection-lost"})
    r.add(kill + 0.002, "p", "info", "disconnect", value={"cause": "connection-lost"})
    r.add(up, "nemesis", "info", "fault-stop", value={"name": "kill"})
    for c in ("s", "p"):
        r.add(up + 0.1, c, "ok", "connect", value={"attempt": 2})
    r.add(up + 0.11, "s", "ok", "subscribe", topic)
    if redeliver:
        for i in range(n):
            mid = f"p-{i}"
            r.add(
                up + 0.2 + i * 0.01,
                "s",
                "ok",
                "deliver",
                topic,
                mid,
                {"payload": _payload(mid, i), "attempt": 2},
            )
            r.add(up + 0.201 + i * 0.01, "s", "ok", "ack", topic, mid)
    for j in range(n, n + 15):  # after the restart: fresh traffic, delivered promptly
        t = up + 0.5 + (j - n) * 0.02
        mid = f"p-{j}"
        r.add(t, "p", "invoke", "publish", topic, mid, {"payload": _payload(mid, j)})
        r.add(t + 0.001, "p", "ok", "publish", topic, mid, {"recipients": 1})
        r.add(t + 0.004, "s", "ok", "deliver", topic, mid, {"payload": _payload(mid, j), "attempt": 1})
        r.add(t + 0.005, "s", "ok", "ack", topic, mid)
    return r.history()


def storage_verdicts(h: History, **availability: Any) -> list[Verdict]:
    """What the FMEA 1 scenario judges, with the real checkers."""
    facts = Facts(h)
    return [
        check_availability(facts, **availability),
        check_at_least_once(facts),
        check_integrity(facts),
        check_duplicates(facts),
        check_recovery(facts),
    ]


def crash_verdicts(h: History) -> list[Verdict]:
    facts = Facts(h)
    return [check_hydration(facts), check_at_least_once(facts), check_integrity(facts), check_recovery(facts)]
