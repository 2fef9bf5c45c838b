"""``python -m chaos.bench.history``: record, store, merge and check a load-run-sized history.

A synthetic run, built with numpy and recorded event by event through the
load rig's fast path (:class:`~chaos.load.recorder.HistoryRecorder`, one per
simulated Locust worker, its subscribers and publishers dealt round robin):
``deliveries / subscribers`` messages from 20 publishers on 4 topics, every
subscriber on every topic, a baseline, then a storage latency window (storage
slow, delivery not), a slow subscriber (the others unaffected), and a broker
kill with a restart that replays every persisted, unacked delivery; a few
deliveries seeded lost, duplicated and altered. The nemesis's fault windows
are recorded by the "master", as in a Locust run, and the worker histories
merged into it.

It prints the bytes per delivery (in memory while recording, on disk), the
time of each step and of each checker, and whether the checkers found exactly
what was seeded. Not a test: the tests run :func:`synthetic` at a moderate
scale (tests/chaos/test_history_scale.py).
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import resource
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import psutil

from chaos.checkers import (
    Facts,
    check_at_least_once,
    check_availability,
    check_duplicates,
    check_hydration,
    check_integrity,
    check_isolation,
    check_persistence_outcomes,
    check_recovery,
    check_resurrection,
)
from chaos.checkers.verdict import Verdict
from chaos.history import History
from chaos.load.recorder import HistoryRecorder, Recorder

T0 = 1_700_000_000.0  # the rig stamps wall-clock times
CONNECT_INVOKED, CONNECTED, DISCONNECTED, SUBSCRIBE_INVOKED, SUBSCRIBED = range(5)
PUBLISH_INVOKED, PUBLISHED, PERSISTED, DELIVERED, ACKED = range(5, 10)
KILL_S = 1.0  # the broker is down this long
PAUSE_S = (0.005, 1.5)  # publishers stop this long before the kill, and resume this long after it


@dataclass
class Seeded:
    """What the synthetic run holds, to check that the checkers find exactly that."""

    messages: int
    deliveries: int
    lost: set[tuple[str, str]] = field(default_factory=set)  # (id, recipient)
    duplicated: set[tuple[str, str]] = field(default_factory=set)
    altered: set[tuple[str, str]] = field(default_factory=set)
    owed: int = 0  # persisted, unacked pairs at the kill: hydration must redeliver them
    redelivered_twice: int = 0  # owed pairs delivered before the kill too (duplicates of the replay)
    events: int = 0


@dataclass
class _Stream:
    """One worker's events, columns in time order."""

    kind: list[np.ndarray] = field(default_factory=list)
    t: list[np.ndarray] = field(default_factory=list)
    who: list[np.ndarray] = field(default_factory=list)
    a: list[np.ndarray] = field(default_factory=list)  # message or topic
    b: list[np.ndarray] = field(default_factory=list)  # attempt
    c: list[np.ndarray] = field(default_factory=list)  # digest

    def add(self, kind: int, t: np.ndarray, who: np.ndarray, a: Any = 0, b: Any = 0, c: Any = 0) -> None:
        n = len(t)
        self.kind.append(np.full(n, kind, np.uint8))
        self.t.append(np.asarray(t, np.float64))
        self.who.append(np.broadcast_to(np.asarray(who, np.int32), (n,)))
        self.a.append(np.broadcast_to(np.asarray(a, np.int32), (n,)))
        self.b.append(np.broadcast_to(np.asarray(b, np.int16), (n,)))
        self.c.append(np.broadcast_to(np.asarray(c, np.uint32), (n,)))


def synthetic(
    recorders: Sequence[Recorder],
    master: History,
    *,
    deliveries: int = 10_000_000,
    subscribers: int = 10,
    publishers: int = 20,
    topics: int = 4,
    rate: float = 20_000.0,
    lost: int = 7,
    duplicated: int = 11,
    altered: int = 5,
    seed: int = 1,
) -> Seeded:
    """Record the synthetic run into *recorders* (its workers) and *master* (the nemesis's windows)."""
    rng = np.random.default_rng(seed)
    n_msg = deliveries // subscribers
    duration = max(n_msg / rate, 20.0)  # long enough for every phase at small scales too
    names = [f"p{i}" for i in range(publishers)] + [f"s{i}" for i in range(subscribers)]
    topic_names = [f"orders.{k}" for k in range(topics)]
    storage = (0.3 * duration, 0.4 * duration)
    slow = (0.5 * duration, 0.6 * duration)
    kill = 0.75 * duration
    restart = kill + KILL_S
    target = publishers + subscribers - 1  # the slow subscriber

    invoke = 0.1 + np.arange(n_msg) * (duration / n_msg)
    paused = invoke >= kill - PAUSE_S[0]
    invoke[paused] += PAUSE_S[0] + PAUSE_S[1]
    msg_pub = np.arange(n_msg) % publishers
    digest = rng.integers(0, 2**32, n_msg, dtype=np.int64)
    persisted = invoke + np.where((invoke >= storage[0]) & (invoke <= storage[1]), 0.3, 0.001)

    # every (message, subscriber) pair, message-major
    pm = np.repeat(np.arange(n_msg), subscribers)
    ps = np.tile(np.arange(subscribers), n_msg) + publishers
    lat = 0.001 + rng.exponential(0.0003, len(pm))
    in_slow = (invoke[pm] >= slow[0]) & (invoke[pm] <= slow[1]) & (ps == target)
    lat[in_slow] = 0.3
    t_deliver = invoke[pm] + lat
    attempt = np.ones(len(pm), np.int64)
    d_digest = digest[pm].copy()
    acked = np.ones(len(pm), bool)
    # the kill: what was due after it comes back after the restart; acks of the last 0.2 s were not sent
    before_kill = invoke[pm] < kill
    due_after = before_kill & (t_deliver >= kill)
    ack_lag = before_kill & ~due_after & (t_deliver >= kill - 0.2)
    owed = due_after | ack_lag
    replay_t = restart + 0.03 + np.arange(int(owed.sum())) * 1e-6

    seeded = Seeded(n_msg, int(len(pm) + ack_lag.sum()))
    seeded.owed = int(owed.sum())
    seeded.redelivered_twice = int(ack_lag.sum())
    # seeded anomalies: duplicated and altered in the baseline, lost after the restart (before the
    # kill a lost pair would be owed by hydration too, and be reported twice)
    early = np.flatnonzero((invoke[pm] > 0.05 * duration) & (invoke[pm] < 0.25 * duration))
    late = np.flatnonzero(invoke[pm] > restart + PAUSE_S[1] + 1.0)
    picks = rng.choice(early, duplicated + altered, replace=False)
    dup_p, alt_p = picks[:duplicated], picks[duplicated:]
    lost_p = rng.choice(late, lost, replace=False)
    keep = np.ones(len(pm), bool)
    keep[lost_p] = False
    acked[lost_p] = False
    d_digest[alt_p] ^= 1
    for target_set, pairs in ((seeded.lost, lost_p), (seeded.duplicated, dup_p), (seeded.altered, alt_p)):
        for i in pairs.tolist():
            target_set.add((_msg_id(int(pm[i]), publishers), names[int(ps[i])]))
    seeded.deliveries += len(dup_p) - len(lost_p)

    streams = [_Stream() for _ in recorders]

    def stream_of(who: np.ndarray) -> np.ndarray:
        return who % len(recorders)

    def deal(kind: int, t: np.ndarray, who: np.ndarray, a: Any = 0, b: Any = 0, c: Any = 0) -> None:
        w = stream_of(who)
        for k, s in enumerate(streams):
            sel = w == k
            s.add(
                kind,
                t[sel],
                who[sel],
                *(x[sel] if isinstance(x, np.ndarray) else x for x in (a, b, c)),
            )

    everyone = np.arange(len(names))
    subs = np.arange(publishers, len(names))
    for at, who in ((0.0, everyone), (restart + 0.01, everyone)):
        deal(CONNECT_INVOKED, np.full(len(who), at), who, b=1)
        deal(CONNECTED, np.full(len(who), at + 0.0005), who, b=1 if at == 0 else 2)
    deal(DISCONNECTED, np.full(len(everyone), kill + 0.001), everyone)
    for at in (0.002, restart + 0.02):
        sub_t = np.repeat(subs, topics)
        top = np.tile(np.arange(topics), len(subs))
        deal(SUBSCRIBE_INVOKED, np.full(len(sub_t), at), sub_t, a=top)
        deal(SUBSCRIBED, np.full(len(sub_t), at + 0.001), sub_t, a=top)
    msgs = np.arange(n_msg)
    deal(PUBLISH_INVOKED, invoke, msg_pub, a=msgs, c=digest)
    deal(PUBLISHED, invoke + 0.0005, msg_pub, a=msgs, b=subscribers)
    deal(PERSISTED, persisted, msg_pub, a=msgs)
    live = keep & ~due_after
    deal(DELIVERED, t_deliver[live], ps[live], a=pm[live], b=attempt[live], c=d_digest[live])
    sent = live & acked & ~ack_lag
    deal(ACKED, t_deliver[sent] + 0.0003, ps[sent], a=pm[sent])
    deal(DELIVERED, t_deliver[dup_p] + 0.25, ps[dup_p], a=pm[dup_p], b=2, c=d_digest[dup_p])
    deal(DELIVERED, replay_t, ps[owed], a=pm[owed], b=2, c=d_digest[owed])
    deal(ACKED, replay_t + 0.0003, ps[owed], a=pm[owed])

    windows = [
        (
            storage,
            {
                "name": "storage-latency",
                "family": "storage",
                "effective": True,
                "toxic": "latency",
                "attributes": {"latency": 300},
            },
        ),
        (
            slow,
            {"name": "slow-consumer", "family": "subscriber", "targets": [names[target]], "effective": True},
        ),
        ((kill, restart), {"name": "kill", "family": "process", "crash": True, "effective": True}),
    ]
    for (a, b), ev in windows:
        master.append("nemesis", "info", "fault-start", value=ev, time=T0 + a)
        master.append("nemesis", "info", "fault-stop", value={"name": ev["name"]}, time=T0 + b)
    del pm, ps, lat, t_deliver, attempt, d_digest, acked, keep
    gc.collect()
    for rec, s in zip(recorders, streams, strict=True):
        seeded.events += _feed(rec, s, names, topic_names, publishers)
    return seeded


def _msg_id(m: int, publishers: int) -> str:
    return f"p{m % publishers}-{m // publishers}"


def _feed(rec: Recorder, s: _Stream, names: list[str], topics: list[str], publishers: int) -> int:
    """Call *rec* once per event, in time order, in chunks (a chunk's columns as Python lists)."""
    t = np.concatenate(s.t)
    order = np.argsort(t, kind="stable")
    t = t[order] + T0
    cols = [np.concatenate(x)[order] for x in (s.kind, s.who, s.a, s.b, s.c)]
    s.kind = s.t = s.who = s.a = s.b = s.c = []
    n_topics = len(topics)
    ids: dict[int, str] = {}
    calls: list[Callable[..., None]] = [
        rec.connect_invoked,
        rec.connected,
        rec.disconnected,
        rec.subscribe_invoked,
        rec.subscribed,
        rec.publish_invoked,
        rec.published,
        rec.persisted,
        rec.delivered,
        rec.acked,
    ]
    step = 200_000
    for lo in range(0, len(t), step):
        chunk = zip(*(c[lo : lo + step].tolist() for c in cols), t[lo : lo + step].tolist(), strict=True)
        for kind, who, a, b, c, when in chunk:
            client = names[who]
            if kind >= PUBLISH_INVOKED:
                mid = ids.get(a)
                if mid is None:
                    mid = ids[a] = _msg_id(a, publishers)
                if kind == DELIVERED:
                    calls[kind](client, mid, topics[a % n_topics], when, b, c)
                elif kind in (ACKED, PERSISTED):
                    calls[kind](client, mid, when)
                elif kind == PUBLISH_INVOKED:
                    calls[kind](client, mid, topics[a % n_topics], when, c, 64)
                else:
                    calls[kind](client, mid, when, b)
            elif kind == DISCONNECTED:
                calls[kind](client, when, "connection-lost", None)
            elif kind >= SUBSCRIBE_INVOKED:
                calls[kind](client, topics[a], when)
            else:
                calls[kind](client, when, b)
    return len(t)


# --- the benchmark ----------------------------------------------------------------------------------

CHECKERS: list[tuple[str, Callable[[Facts], Verdict]]] = [
    ("at-least-once", check_at_least_once),
    ("availability", check_availability),
    ("isolation", check_isolation),
    ("hydration", check_hydration),
    ("resurrection", check_resurrection),
    ("integrity", check_integrity),
    ("duplicates", check_duplicates),
    ("recovery", check_recovery),
    ("persistence", check_persistence_outcomes),
]


def found_exactly(verdicts: dict[str, Verdict], seeded: Seeded) -> dict[str, bool]:
    """Whether each checker reported exactly what :func:`synthetic` seeded."""
    ev = {k: v.evidence for k, v in verdicts.items()}
    lost = {(x["id"], x["recipient"]) for x in ev["at-least-once"].get("lost", [])}
    altered = {(x["id"], x["recipient"]) for x in ev["integrity"]["altered"]}
    # the seeded duplicates come first (listed in the order of first delivery), then hydration's replays
    listed = ev["duplicates"]["duplicates"][: len(seeded.duplicated)]
    dups = {(x["id"], x["recipient"]) for x in listed}
    return {
        "lost": verdicts["at-least-once"].status == "fail"
        and ev["at-least-once"]["pairs_lost"] == len(seeded.lost)
        and lost == seeded.lost,
        "altered": ev["integrity"]["altered_count"] == len(seeded.altered)
        and altered == seeded.altered
        and ev["integrity"]["phantom_count"] == ev["integrity"]["misrouted_count"] == 0,
        "duplicated": ev["duplicates"]["duplicate_deliveries"]
        == len(seeded.duplicated) + seeded.redelivered_twice
        and dups == seeded.duplicated,
        "deliveries": ev["integrity"]["deliveries"] == seeded.deliveries,
        "hydration": verdicts["hydration"].status == "pass"
        and ev["hydration"]["pairs_expected"] == seeded.owed,
        "the rest pass": all(
            verdicts[k].status == "pass"
            for k in ("availability", "isolation", "resurrection", "recovery", "persistence")
        ),
    }


def run_checkers(history: History) -> tuple[dict[str, Verdict], dict[str, float]]:
    """Every load checker on *history* (one shared Facts), with the seconds each took."""
    times: dict[str, float] = {}
    t0 = time.perf_counter()
    facts = Facts(history)
    times["facts"] = time.perf_counter() - t0
    verdicts = {}
    for name, check in CHECKERS:
        t0 = time.perf_counter()
        verdicts[name] = check(facts)
        times[name] = time.perf_counter() - t0
    return verdicts, times


def _rss() -> int:
    return psutil.Process().memory_info().rss


def bench(deliveries: int, workers: int, workdir: Path, seed: int = 1) -> dict[str, Any]:
    out: dict[str, Any] = {"deliveries": deliveries, "workers": workers, "steps_s": {}}
    steps = out["steps_s"]
    master = History(start=T0)
    recorders = [HistoryRecorder(History(start=T0), workdir / f"worker-{k}.npz") for k in range(workers)]
    gc.collect()
    rss0 = _rss()
    t0 = time.perf_counter()
    seeded = synthetic(recorders, master, deliveries=deliveries, seed=seed)
    steps["generate+record"] = time.perf_counter() - t0
    gc.collect()
    out["events"] = seeded.events
    out["record_us_per_event"] = round(steps["generate+record"] / seeded.events * 1e6, 3)
    held = [r.history.nbytes() for r in recorders]
    out["memory"] = {
        "columns_bytes_per_delivery": round(sum(h["columns"] for h in held) / seeded.deliveries, 1),
        "strings_bytes_per_delivery": round(sum(h["strings"] for h in held) / seeded.deliveries, 1),
        "rss_growth_bytes_per_delivery": round((_rss() - rss0) / seeded.deliveries, 1),
    }
    t0 = time.perf_counter()
    for r in recorders:
        r.close()
    steps["write workers"] = time.perf_counter() - t0
    del recorders
    gc.collect()
    t0 = time.perf_counter()
    parts = [History.read(workdir / f"worker-{k}.npz") for k in range(workers)]
    steps["read workers"] = time.perf_counter() - t0
    t0 = time.perf_counter()
    merged = History.merge([master, *parts])
    steps["merge"] = time.perf_counter() - t0
    del parts
    t0 = time.perf_counter()
    merged.write(workdir / "history.npz")
    steps["write merged"] = time.perf_counter() - t0
    size = (workdir / "history.npz").stat().st_size
    del merged
    gc.collect()
    t0 = time.perf_counter()
    history = History.read(workdir / "history.npz")
    steps["read merged"] = time.perf_counter() - t0
    out["disk"] = {"file_bytes": size, "bytes_per_delivery": round(size / seeded.deliveries, 1)}
    out["memory"]["read_back_columns_bytes_per_delivery"] = round(
        history.nbytes()["columns"] / seeded.deliveries, 1
    )
    verdicts, times = run_checkers(history)
    out["check_s"] = {k: round(v, 3) for k, v in times.items()}
    out["check_total_s"] = round(sum(times.values()), 3)
    out["verdicts"] = {k: v.status for k, v in verdicts.items()}
    out["found_exactly"] = found_exactly(verdicts, seeded)
    out["steps_s"] = {k: round(v, 3) for k, v in steps.items()}
    out["peak_rss_mb"] = round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1)
    return out


def _print(r: dict[str, Any]) -> None:
    m, d = r["memory"], r["disk"]
    print(f"history bench: {r['deliveries']:,} deliveries, {r['events']:,} events, {r['workers']} workers")
    print(
        f"  recording: {r['record_us_per_event']} us/event (numpy generator and the rig's Recorder calls);"
        f" memory {m['columns_bytes_per_delivery']} B/delivery in columns + {m['strings_bytes_per_delivery']}"
        f" B in strings (RSS grew {m['rss_growth_bytes_per_delivery']} B/delivery)"
    )
    print(
        f"  on disk: {d['bytes_per_delivery']} B/delivery ({d['file_bytes'] / 1e6:.1f} MB); read back:"
        f" {m['read_back_columns_bytes_per_delivery']} B/delivery in columns"
    )
    for k, v in r["steps_s"].items():
        print(f"  {k:<18} {v:8.2f} s")
    for k, v in r["check_s"].items():
        status = r["verdicts"].get(k, "")
        print(f"  check {k:<12} {v:8.2f} s  {status}")
    print(f"  checkers total     {r['check_total_s']:8.2f} s   peak RSS {r['peak_rss_mb']:.0f} MB")
    print(
        "  found exactly what was seeded: "
        + ", ".join(f"{k} {'yes' if v else 'NO'}" for k, v in r["found_exactly"].items())
    )


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m chaos.bench.history", description=__doc__.splitlines()[0])
    p.add_argument("--deliveries", type=int, default=10_000_000)
    p.add_argument("--workers", type=int, default=2, help="simulated Locust workers (one recorder each)")
    p.add_argument("--seed", type=int, default=1)
    p.add_argument("--dir", type=Path, default=None, help="keep the files here (default: a temporary folder)")
    p.add_argument("--json", action="store_true", help="print the figures as JSON")
    args = p.parse_args(argv)
    if args.deliveries < 1000 or args.workers < 1:
        p.error("need --deliveries >= 1000 and --workers >= 1")
    if args.dir is not None:
        args.dir.mkdir(parents=True, exist_ok=True)
        r = bench(args.deliveries, args.workers, args.dir, args.seed)
    else:
        with tempfile.TemporaryDirectory(prefix="history-bench-") as tmp:
            r = bench(args.deliveries, args.workers, Path(tmp), args.seed)
    if args.json:
        print(json.dumps(r, indent=2))
    else:
        _print(r)
    return 0 if all(r["found_exactly"].values()) else 1


if __name__ == "__main__":
    os.environ.setdefault("PYTHONHASHSEED", "0")
    sys.exit(main())
