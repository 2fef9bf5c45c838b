"""The pure parts of the load rig: settings, exact stats merged across workers, the recorders."""

from __future__ import annotations

import argparse

import pytest

from chaos.load.recorder import MemoryRecorder, NullRecorder, Recorder
from chaos.load.settings import Settings, add_arguments, parse_ack_mix
from chaos.load.stats import LoadStats, RateWindow


def _options(*argv: str) -> argparse.Namespace:
    parser = argparse.ArgumentParser()
    add_arguments(parser)
    return parser.parse_args(list(argv))


def test_defaults_and_validation() -> None:
    s = Settings.from_options(_options())
    assert s.rate == 10 and s.window == 100 and s.ack_mix == ("always",) and s.drain_timeout == 10
    with pytest.raises(ValueError, match="--fp-window"):
        Settings.from_options(_options("--fp-window", "0"))
    with pytest.raises(ValueError, match="--fp-rate"):
        Settings.from_options(_options("--fp-rate", "-1"))


def test_ack_mix_is_weighted_and_interleaved() -> None:
    mix = parse_ack_mix("always=8, late=1, never=1")
    assert sorted(mix) == sorted(["always"] * 8 + ["late", "never"])
    assert set(mix[:3]) == {"always", "late", "never"}  # a few subscribers already follow the mix
    assert parse_ack_mix("late") == ("late",)
    for bad, why in (("sometimes", "unknown ack mode"), ("always=x", "integer"), ("always=0", "no ack mode")):
        with pytest.raises(ValueError, match=why):
            parse_ack_mix(bad)


def test_stats_deltas_merge_into_exact_percentiles() -> None:
    workers = [LoadStats(), LoadStats()]
    for i, w in enumerate(workers):
        for ms in range(1, 501):
            w.record("push", (ms + 500 * i) / 1000)
        w.delivered += 500
    master = LoadStats()
    for w in workers:
        master.merge(w.take_delta())
        assert w.delivered == 0 and w.total("delivered") == 500  # shipped, still known to the worker
    push = master.latency_ms("push")
    assert push["count"] == 1000 and master.delivered == 1000
    assert push["p50"] == pytest.approx(500, rel=1e-3) and push["p99"] == pytest.approx(990, rel=1e-3)
    assert push["max"] == pytest.approx(1000, rel=1e-3)
    assert master.latency_ms("persisted") == {"count": 0}


def test_rate_window_survives_shipping() -> None:
    stats = LoadStats()
    window = RateWindow(stats, "w1")
    stats.delivered += 10
    window.open()
    stats.delivered += 40
    stats.take_delta()  # a report to the master in between
    stats.delivered += 50
    window.close()
    t0, d0, t1, d1 = stats.windows["w1"]
    assert (d0, d1) == (10, 100) and t1 >= t0


def test_recorders() -> None:
    assert isinstance(NullRecorder(), Recorder) and isinstance(MemoryRecorder(), Recorder)
    worker, master = MemoryRecorder(), MemoryRecorder()
    worker.publish_invoked("p", "p-0", "t", 1.0, 7, 64)
    worker.delivered("s", "p-0", "t", 2.0, 1, 7)
    master.extend([list(e) for e in worker.drain()])  # msgpack hands tuples over as lists
    worker.acked("s", "p-0", 3.0)
    master.extend(worker.drain())
    assert worker.drain() == []
    assert master.events == [
        ("publish_invoked", "p", "p-0", "t", 1.0, 7, 64),
        ("delivered", "s", "p-0", "t", 2.0, 1, 7),
        ("acked", "s", "p-0", 3.0),
    ]
    assert master.count("delivered") == 1 and next(master.of("acked"))[1] == "s"
