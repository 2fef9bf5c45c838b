"""Hand-built and generated histories for the checker tests (a fake clock, no sockets)."""

from __future__ import annotations

import random
from dataclasses import dataclass, field
from typing import Any

from chaos.checkers.integrity import payload_checksum
from chaos.history import History

T0 = 1000.0  # the fake monotonic clock's run start


class FakeClock:
    def __init__(self, t: float = T0) -> None:
        self.t = t

    def __call__(self) -> float:
        return self.t


def payload(msg_id: str, data: Any = None) -> dict[str, Any]:
    data = {"n": msg_id} if data is None else data
    return {"id": msg_id, "data": data, "sha256": payload_checksum(data)}


@dataclass
class Builder:
    """Collects events at relative times, then appends them to a History in time order."""

    rows: list[tuple[float, int, tuple, dict]] = field(default_factory=list)

    def ev(self, t: float, process: str, type_: str, f: str, topic=None, id=None, value=None) -> Builder:
        self.rows.append((t, len(self.rows), (process, type_, f, topic, id, value), {}))
        return self

    def connect(self, c: str, t: float) -> Builder:
        self.ev(t, c, "invoke", "connect")
        return self.ev(t, c, "ok", "connect", value={"attempt": 1})

    def disconnect(self, c: str, t: float, cause: str = "abort") -> Builder:
        return self.ev(t, c, "info", "disconnect", value={"cause": cause})

    def sub(self, c: str, topic: str, t: float, dt: float = 0.001) -> Builder:
        self.ev(t, c, "invoke", "subscribe", topic)
        return self.ev(t + dt, c, "ok", "subscribe", topic)

    def unsub(self, c: str, topic: str, t: float, dt: float = 0.001) -> Builder:
        self.ev(t, c, "invoke", "unsubscribe", topic)
        return self.ev(t + dt, c, "ok", "unsubscribe", topic)

    def pub(
        self,
        p: str,
        topic: str,
        msg_id: str,
        t: float,
        *,
        ok_dt: float | None = 0.001,
        persisted_dt: float | None = None,
        data: Any = None,
    ) -> Builder:
        self.ev(t, p, "invoke", "publish", topic, msg_id, {"payload": payload(msg_id, data)})
        if ok_dt is not None:
            self.ev(t + ok_dt, p, "ok", "publish", topic, msg_id, {"recipients": 1})
        if persisted_dt is not None:
            self.ev(t + persisted_dt, p, "ok", "persisted", topic, msg_id)
        return self

    def deliver(
        self, c: str, topic: str, msg_id: str, t: float, attempt: int = 1, data: Any = None, pl: Any = None
    ) -> Builder:
        value = {"payload": payload(msg_id, data) if pl is None else pl, "attempt": attempt}
        return self.ev(t, c, "ok", "deliver", topic, msg_id, value)

    def ack(self, c: str, topic: str, msg_id: str, t: float) -> Builder:
        return self.ev(t, c, "ok", "ack", topic, msg_id)

    def fault(self, name: str, start: float, end: float | None, **evidence: Any) -> Builder:
        self.ev(start, "nemesis", "info", "fault-start", value={"name": name, **evidence})
        if end is not None:
            self.ev(end, "nemesis", "info", "fault-stop", value={"name": name})
        return self

    def drop(self, process: str, f: str, msg_id: str) -> Builder:
        """Remove the matching events (to turn a good history into a bad one)."""
        self.rows = [r for r in self.rows if not (r[2][0] == process and r[2][2] == f and r[2][4] == msg_id)]
        return self

    def build(self) -> History:
        clock = FakeClock()
        h = History(clock=clock)
        for t, _, args, _ in sorted(self.rows, key=lambda r: (r[0], r[1])):
            h.append(*args, time=T0 + t)
        return h


def steady(
    n: int = 60,
    *,
    subs: tuple[str, ...] = ("s1", "s2"),
    topic: str = "t",
    pub: str = "p",
    start: float = 1.0,
    every: float = 0.1,
    latency: float = 0.005,
    persisted: bool = True,
    slow: dict[str, float] | None = None,
    slow_between: tuple[float, float] | None = None,
    rng: random.Random | None = None,
    builder: Builder | None = None,
) -> Builder:
    """A healthy run: subscribers connect and subscribe, *pub* publishes *n* messages, all delivered.

    ``slow`` maps a subscriber to the latency it sees for messages published in ``slow_between``.
    """
    b = builder or Builder()
    rng = rng or random.Random(0)
    for c in subs:
        b.connect(c, 0.0).sub(c, topic, 0.01)
    b.connect(pub, 0.0)
    for i in range(n):
        t = start + i * every
        mid = f"{pub}-{i}"
        b.pub(pub, topic, mid, t, persisted_dt=0.02 if persisted else None)
        for c in subs:
            lat = latency * (1 + rng.random())
            if slow and c in slow and slow_between and slow_between[0] <= t <= slow_between[1]:
                lat = slow[c]
            b.deliver(c, topic, mid, t + lat)
            b.ack(c, topic, mid, t + lat + 0.001)
    return b
