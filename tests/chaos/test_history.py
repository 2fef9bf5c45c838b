from __future__ import annotations

import io
import json
import threading
import time

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from chaos.history import History, HistoryFormatError
from tests.chaos.builders import T0, FakeClock

json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False, allow_infinity=False) | st.text(),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(), inner, max_size=3),
    max_leaves=8,
)
events = st.lists(
    st.tuples(
        st.sampled_from(["s1", "p", "nemesis"]),
        st.sampled_from(["invoke", "ok", "fail", "info"]),
        st.sampled_from(["publish", "deliver", "fault-start"]),
        st.none() | st.text(min_size=1),
        st.none() | st.text(min_size=1),
        json_values,
        st.floats(0, 1e6),
    ),
    max_size=30,
)


@given(events)
@settings(max_examples=60, deadline=None)
def test_jsonl_round_trip(evs):
    h = History(clock=FakeClock())
    for process, type_, f, topic, id_, value, t in evs:
        h.append(process, type_, f, topic, id_, value, time=t)
    buf = io.StringIO()
    h.write(buf)
    back = History.from_lines(io.StringIO(buf.getvalue()))
    assert back.events == h.events
    assert back.start == h.start


def test_append_stamps_clock_and_indexes():
    clock = FakeClock()
    h = History(clock=clock)
    clock.t = T0 + 1.5
    e = h.append("s1", "ok", "deliver", "t", "p-0", {"attempt": 1})
    h.append("p", "invoke", "publish", "t", "p-1")
    assert (e.index, e.time) == (0, T0 + 1.5)
    assert h.rel(e.time) == 1.5
    assert [x.id for x in h.by_f("deliver")] == ["p-0"]
    assert [x.index for x in h.by_f("publish", "deliver")] == [0, 1]
    assert h.by_f("publish", type="ok") == []
    assert h.by_process("p")[0].f == "publish"
    assert h.processes() == ["s1", "p"]


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (("s1", "done", "deliver"), "type must be one of"),
        (("", "ok", "deliver"), "process must be a non-empty string"),
        (("s1", "ok", ""), "f must be a non-empty string"),
    ],
)
def test_append_rejects_bad_events(args, message):
    with pytest.raises(HistoryFormatError, match=message):
        History().append(*args)


def test_fault_windows_pair_by_name_fifo_and_keep_open_ones():
    h = History(clock=FakeClock())
    h.append("nemesis", "info", "fault-start", value={"name": "storage-down", "effective": True}, time=T0 + 1)
    h.append("nemesis", "info", "fault-start", value={"name": "kill"}, time=T0 + 2)
    h.append("nemesis", "info", "fault-stop", value={"name": "storage-down", "healthz": "ok"}, time=T0 + 3)
    h.append("nemesis", "info", "fault-stop", value={"name": "nothing"}, time=T0 + 4)
    h.append("nemesis", "info", "fault-start", value={"name": "slow", "targets": ["s2"]}, time=T0 + 5)
    ws = h.fault_windows()
    assert [(w.name, w.start - T0, w.end and w.end - T0) for w in ws] == [
        ("storage-down", 1, 3),
        ("kill", 2, None),
        ("slow", 5, None),
    ]
    assert ws[0].effective is True and ws[0].evidence["healthz"] == "ok"
    assert ws[1].effective is None
    assert ws[2].targets == ("s2",)
    assert h.fault_windows("kill")[0].contains(T0 + 100)


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ('{"index":0,"time":1,"process":"a","type":"ok","f":"x"}\nnot json\n', r"<lines>:2: not JSON"),
        ("[1,2]\n", r":1: expected a JSON object"),
        ('{"index":0,"time":1,"process":"a","type":"ok"}\n', r":1: missing field 'f'"),
        ('{"index":0,"time":"x","process":"a","type":"ok","f":"x"}\n', r":1: 'time' must be a finite number"),
        ('{"index":0,"time":1,"process":"a","type":"maybe","f":"x"}\n', r":1: 'type' must be one of"),
        ('{"index":3,"time":1,"process":"a","type":"ok","f":"x"}\n', r":1: event index 3 out of sequence"),
        ('{"index":0,"time":1,"process":"a","type":"ok","f":"x","colour":1}\n', r":1: unknown field"),
        ('{"index":0,"time":1,"process":"a","type":"ok","f":"x","id":5}\n', r":1: 'id' must be a string"),
        ('{"format":"other","version":1,"start":0}\n', r":1: unsupported history format"),
        (
            '{"index":0,"time":1,"process":"a","type":"ok","f":"x"}\n{"format":"fastport-history","version":1,'
            '"start":0}\n',
            r":2: header must be the first line",
        ),
    ],
)
def test_bad_lines_name_the_line(text, message):
    with pytest.raises(HistoryFormatError, match=message):
        History.from_lines(io.StringIO(text))


def test_file_round_trip_and_unserialisable_value(tmp_path):
    h = History()
    h.append("s1", "ok", "deliver", "t", "p-0", {"payload": [1, "x"]})
    path = tmp_path / "h.jsonl"
    h.write(path)
    lines = path.read_text().splitlines()
    assert json.loads(lines[0])["format"] == "fastport-history"
    assert History.read(path).events == h.events
    h.append("s1", "ok", "deliver", value={"bad": object()})
    with pytest.raises(HistoryFormatError, match=r"event 1 \(s1 ok deliver\) is not JSON-serialisable"):
        h.write(io.StringIO())
    with pytest.raises(HistoryFormatError, match="not JSON-serialisable"):
        _with_nan().write(io.StringIO())


def _with_nan() -> History:
    h = History()
    h.append("n", "info", "x", value=float("nan"))
    return h


def test_concurrent_appends_from_threads_keep_indexes_dense():
    h = History()
    seen = []
    h.add_listener(seen.append)

    def work(name: str) -> None:
        for i in range(2000):
            h.append(name, "ok", "deliver", id=f"{name}-{i}")

    threads = [threading.Thread(target=work, args=(f"t{k}",)) for k in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert [e.index for e in h.events] == list(range(8000))
    assert len(seen) == 8000 and len(h.by_f("deliver")) == 8000


def test_hundred_thousand_events_are_fast(tmp_path):
    h = History(clock=FakeClock())
    started = time.perf_counter()
    for i in range(100_000):
        h.append(
            "s1" if i % 2 else "p",
            "ok",
            "deliver" if i % 2 else "publish",
            "t",
            f"p-{i // 2}",
            {"attempt": 1},
            time=T0 + i / 1000,
        )
    path = tmp_path / "big.jsonl"
    h.write(path)
    back = History.read(path)
    elapsed = time.perf_counter() - started
    assert len(back) == 100_000 and len(back.by_f("deliver")) == 50_000
    assert elapsed < 10, f"append + write + read of 100k events took {elapsed:.1f}s"
