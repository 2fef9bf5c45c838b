"""Exact latency percentiles and delivery accounting of a load run, mergeable across Locust workers.

Locust rounds every response time it stores (147 -> 150 ms, 3432 -> 3400 ms),
so its percentiles are of rounded values. Each process therefore also records
every latency, in microseconds, into an HDR histogram (3 significant digits,
1 us to 1 h) and counts what it saw; a worker ships both to the master as a
delta with each Locust stats report (``report_to_master``), where
:meth:`LoadStats.merge` adds them up. Pure: no Locust, no gevent.
"""

from __future__ import annotations

import time
from typing import Any

from hdrh.histogram import HdrHistogram

METRICS = ("connect", "published", "persisted", "push", "redelivery")
COUNTERS = (
    "sent",  # publish frames sent (first sends; resends after a reconnect are in `resent`)
    "resent",
    "published",
    "refused",  # an error answered a publish
    "overloaded",  # ... with code `overloaded`
    "persisted",
    "persist_failed",
    "delivered",  # message frames received, all attempts
    "duplicates",  # a message id this subscriber had already received
    "redelivered",  # attempt > 1
    "corrupt",  # payload data did not match its CRC
    "acked",
    "connects",
    "connect_failed",
    "disconnects",
    "errors",  # other error frames
)
PERCENTILES = (50.0, 90.0, 99.0, 99.9)
_LOW, _HIGH, _DIGITS = 1, 3_600_000_000, 3  # microseconds


def new_histogram() -> HdrHistogram:
    return HdrHistogram(_LOW, _HIGH, _DIGITS)


class LoadStats:
    """Counters (plain attributes: ``stats.delivered += 1`` is the cheapest count there is) and histograms."""

    __slots__ = (*COUNTERS, "hist", "windows", "shipped")

    def __init__(self) -> None:
        for name in COUNTERS:
            setattr(self, name, 0)
        self.hist: dict[str, HdrHistogram] = {m: new_histogram() for m in METRICS}
        # Measurement windows of the delivery rate, one per process: (t0, delivered0, t1, delivered1).
        self.windows: dict[str, list[float]] = {}
        self.shipped: dict[str, int] = dict.fromkeys(COUNTERS, 0)  # taken away by take_delta so far

    def total(self, name: str) -> int:
        """Absolute count in this process, including what was already shipped to the master."""
        return self.shipped[name] + getattr(self, name)

    def record(self, metric: str, seconds: float) -> None:
        """One latency sample; clock steps below zero count as 1 us."""
        us = int(seconds * 1e6)
        self.hist[metric].record_value(us if us > 0 else 1)

    # --- shipping between processes -----------------------------------------

    def take_delta(self) -> dict[str, Any]:
        """Everything counted since the last call, encoded for a Locust message; resets this object."""
        delta: dict[str, Any] = {"counters": {}, "hist": {}, "windows": self.windows}
        for name in COUNTERS:
            if value := getattr(self, name):
                delta["counters"][name] = value
                self.shipped[name] += value
                setattr(self, name, 0)
        for metric, h in self.hist.items():
            if h.get_total_count():
                delta["hist"][metric] = h.encode().decode("ascii")
                h.reset()
        self.windows = {}
        return delta

    def merge(self, delta: dict[str, Any]) -> None:
        for name, value in delta.get("counters", {}).items():
            if name in COUNTERS:
                setattr(self, name, getattr(self, name) + int(value))
        for metric, encoded in delta.get("hist", {}).items():
            if metric in self.hist:
                self.hist[metric].decode_and_add(encoded)
        self.windows.update(delta.get("windows", {}))

    # --- reading ----------------------------------------------------------------

    def counters(self) -> dict[str, int]:
        return {name: getattr(self, name) for name in COUNTERS}

    def latency_ms(self, metric: str) -> dict[str, float | int]:
        """Count, mean, exact percentiles (to 3 significant digits) and max of one metric, in ms."""
        h = self.hist[metric]
        n = h.get_total_count()
        out: dict[str, float | int] = {"count": n}
        if not n:
            return out
        out["mean"] = round(h.get_mean_value() / 1000, 3)
        for p in PERCENTILES:
            out[f"p{p:g}"] = h.get_value_at_percentile(p) / 1000
        out["max"] = h.get_max_value() / 1000
        return out

    def delivery_rate(self) -> float | None:
        """Deliveries per second: each process's measured window, summed over processes."""
        rates = [(d1 - d0) / (t1 - t0) for t0, d0, t1, d1 in self.windows.values() if t1 > t0]
        return sum(rates) if rates else None

    def summary(self) -> dict[str, Any]:
        return {
            "counters": self.counters(),
            "latency_ms": {m: self.latency_ms(m) for m in METRICS},
            "deliveries_per_s": self.delivery_rate(),
            "processes": len(self.windows),
        }


class RateWindow:
    """The delivery-rate window of one process: opened after the warm-up, closed when load stops."""

    def __init__(self, stats: LoadStats, key: str) -> None:
        self.stats, self.key = stats, key
        self.opened: tuple[float, int] | None = None

    def open(self) -> None:
        self.opened = (time.time(), self.stats.total("delivered"))

    def close(self) -> None:
        if self.opened is not None:
            t0, d0 = self.opened
            self.stats.windows[self.key] = [t0, d0, time.time(), self.stats.total("delivered")]
            self.opened = None
