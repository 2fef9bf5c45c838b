"""Progress snapshots from scenario histories, as ``fastport-lab run`` reads them."""

from __future__ import annotations

import itertools

from chaos.history import History
from chaos.progress import ENV, ProgressReader, ProgressWriter, attach


def test_writer_follows_phases_and_faults(tmp_path) -> None:
    path = tmp_path / "progress.jsonl"
    ticks = itertools.count()
    clock = lambda: next(ticks) * 0.01  # noqa: E731 - a fake clock that never reaches the interval
    history = History(clock=clock)
    writer = ProgressWriter(path, "storage_down", interval=1.0, clock=clock)
    history.add_listener(writer)
    reader = ProgressReader(path)

    history.append("bob", "ok", "publish", "t", "bob-0")
    history.append("alice", "ok", "deliver", "t", "bob-0")
    history.append("nemesis", "info", "fault-start", value={"name": "storage-down"})
    snap = reader.poll()["storage_down"]
    assert (snap.phase, snap.faults, snap.published, snap.delivered) == ("fault", ["storage-down"], 1, 1)

    history.append("nemesis", "info", "fault-stop", value={"name": "storage-down", "effective": True})
    assert reader.poll()["storage_down"].phase == "recovery"

    writer.finish("pass")
    snap = reader.poll()["storage_down"]
    assert (snap.phase, snap.status, snap.faults) == ("done", "pass", [])


def test_writer_throttles_between_faults(tmp_path) -> None:
    path = tmp_path / "progress.jsonl"
    now = [0.0]
    history = History(clock=lambda: now[0])
    history.add_listener(ProgressWriter(path, "s", interval=0.5, clock=lambda: now[0]))
    for _ in range(100):
        history.append("alice", "ok", "deliver", "t", "x")
    assert len(path.read_text().splitlines()) == 1  # the first one, then nothing within the interval
    now[0] = 1.0
    history.append("alice", "ok", "deliver", "t", "y")
    lines = path.read_text().splitlines()
    assert len(lines) == 2 and '"delivered":101' in lines[-1]


def test_reader_skips_torn_and_foreign_lines(tmp_path) -> None:
    path = tmp_path / "progress.jsonl"
    reader = ProgressReader(path)
    assert reader.poll() == {}  # no file yet is not an error
    path.write_text('not json\n{"other": 1}\n{"scenario": "a", "phase": "baseline"}\n{"scenario": "b"')
    assert list(reader.poll()) == ["a"]
    with open(path, "a") as fp:
        fp.write(', "phase": "fault"}\n')  # the torn line completes
    assert reader.poll()["b"].phase == "fault"


def test_attach_only_when_asked(tmp_path, monkeypatch) -> None:
    monkeypatch.delenv(ENV, raising=False)
    assert attach(History(), "s") is None
    monkeypatch.setenv(ENV, str(tmp_path / "p.jsonl"))
    history = History()
    assert attach(history, "s") is not None
    history.append("nemesis", "info", "fault-start", value={"name": "kill"})
    assert "kill" in (tmp_path / "p.jsonl").read_text()
