"""A load-run-shaped history at a moderate scale: recorded by the fast path, merged, stored, judged.

The synthetic run of ``python -m chaos.bench.history`` (200,000 deliveries, two
workers, a storage fault, a slow subscriber, a broker kill with its replay):
the seeded lost, duplicated and altered deliveries are found exactly, the rest
passes, and the compact file round-trips. No timing here: the benchmark times it.
"""

from __future__ import annotations

import numpy as np
import pytest

from chaos.bench.history import T0, found_exactly, run_checkers, synthetic
from chaos.history import TABLES, History
from chaos.history.columns import canonical as _canonical
from chaos.load.recorder import HistoryRecorder


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    d = tmp_path_factory.mktemp("scale")
    master = History(start=T0)
    recorders = [HistoryRecorder(History(start=T0), d / f"w{k}.npz") for k in range(2)]
    seeded = synthetic(recorders, master, deliveries=200_000, seed=7)
    for r in recorders:
        r.close()
    merged = History.merge([master, *(History.read(d / f"w{k}.npz") for k in range(2))])
    merged.write(d / "history.npz")
    return seeded, merged, History.read(d / "history.npz")


def test_the_seeded_faults_are_found_exactly(run):
    seeded, _, history = run
    verdicts, _ = run_checkers(history)
    assert found_exactly(verdicts, seeded) == dict.fromkeys(found_exactly(verdicts, seeded), True)
    assert len(seeded.lost) == 7 and len(seeded.altered) == 5 and len(seeded.duplicated) == 11
    assert verdicts["at-least-once"].status == verdicts["integrity"].status == "fail"
    assert verdicts["hydration"].evidence["crashes"][0]["pairs_expected"] == seeded.owed > 0
    assert verdicts["resurrection"].evidence["pairs_settled"] > 50_000


def test_merged_history_is_in_time_order_and_round_trips(run):
    seeded, merged, back = run
    assert len(merged) == len(back) == seeded.events + 6  # the master's three fault windows
    times = np.empty(len(back))
    for s in TABLES:
        times[back.row_index(s.name)] = back.columns(s.name)["time"]
    for ev in back.by_f("fault-start", "fault-stop"):
        times[ev.index] = ev.time
    assert np.all(np.diff(times) >= 0)
    for s in TABLES:
        a, b = merged.columns(s.name), back.columns(s.name)
        assert a.rows == b.rows
        for c in s.columns:  # the file narrows integer columns: compare them at their canonical width
            x, y = (_canonical(c, col[c.name], col.rows) for col in (a, b))
            assert np.array_equal(x, y, equal_nan=c.kind in ("float", "time")), (s.name, c.name)
    assert back.strings() == merged.strings() and back.fault_windows() == merged.fault_windows()
    assert back.by_f("fault-start") == merged.by_f("fault-start")
    sample = [0, 1, len(back) // 2, len(back) - 1]
    assert [back[i] for i in sample] == [merged[i] for i in sample]
