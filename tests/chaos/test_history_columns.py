"""The columnar history: exact round trips through both file formats, merges, the fast path, bad files."""

from __future__ import annotations

import io
import json
import zipfile

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from chaos.history import FAIL, INFO, INVOKE, OK, History, HistoryFormatError
from chaos.load.recorder import HistoryRecorder, Recorder
from tests.chaos.builders import T0, FakeClock, steady

HEX = "0123456789abcdef0123456789abcdef"
# values the columns keep, values they must keep whole beside the row, and odd ones
VALUES = st.one_of(
    st.none(),
    st.fixed_dictionaries(
        {"digest": st.sampled_from([HEX, "XYZ", 7, 2**64 - 1]), "bytes": st.integers(0, 10**6)}
    ),
    st.fixed_dictionaries(
        {"attempt": st.integers(-(2**31) + 2, 2**31 - 1)}, optional={"self_check": st.just(False)}
    ),
    st.fixed_dictionaries({"published_at": st.floats(allow_nan=False, allow_infinity=False)}),
    st.fixed_dictionaries(
        {"recipients": st.none() | st.integers(0, 5), "code": st.none() | st.text(max_size=3)}
    ),
    st.fixed_dictionaries({"cause": st.text(max_size=3), "code": st.none() | st.integers(-5, 5)}),
    st.dictionaries(
        st.sampled_from(["digest", "bytes", "attempt", "self_check", "reason", "payload", "x"]),
        st.none()
        | st.booleans()
        | st.integers()
        | st.floats(allow_nan=False, allow_infinity=False)
        | st.text(),
        max_size=3,
    ),
    st.integers(),
    st.lists(st.integers(), max_size=2),
)
EVENTS = st.lists(
    st.tuples(
        st.sampled_from(["s1", "p", "nemesis"]),
        st.sampled_from(["invoke", "ok", "fail", "info"]),
        st.sampled_from(
            [
                "publish",
                "deliver",
                "ack",
                "persisted",
                "persist_failed",
                "subscribe",
                "disconnect",
                "fault-start",
            ]
        ),
        st.none() | st.sampled_from(["t", "u", "\x00", "é"]),
        st.none() | st.text(min_size=1, max_size=4),
        VALUES,
        st.floats(0, 1e6),
    ),
    max_size=30,
)


def _history(evs) -> History:
    h = History(clock=FakeClock())
    for process, type_, f, topic, id_, value, t in evs:
        h.append(process, type_, f, topic, id_, value, time=t)
    return h


@given(EVENTS)
@settings(max_examples=80, deadline=None)
def test_both_formats_round_trip_exactly(tmp_path_factory, evs):
    h = _history(evs)
    d = tmp_path_factory.mktemp("h")
    h.write(d / "h.npz")
    h.write(d / "h.jsonl")
    h.write(d / "lines.npz", compact=False)
    for back in (History.read(d / "h.npz"), History.read(d / "h.jsonl"), History.read(d / "lines.npz")):
        assert back.events == h.events and back.start == h.start
        assert back.processes() == h.processes()
        assert [back[i] for i in range(len(h))] == h.events
        assert back.by_f("deliver", "ack") == h.by_f("deliver", "ack")
    for i in range(len(h)):  # JSON of every event is today's JSON lines format
        assert json.loads(_dump(h[i])) == h[i].to_dict()


def _dump(ev) -> str:
    return json.dumps(ev.to_dict())


def test_compact_round_trip_of_a_suite_history_and_append_after_read(tmp_path):
    h = steady(200, subs=("s1", "s2", "s3")).fault("storage-down", 3.0, 5.0, effective=True).build()
    h.write(tmp_path / "run.npz")
    back = History.read(tmp_path / "run.npz")
    assert back.events == h.events and back.fault_windows() == h.fault_windows()
    back.append("s1", "ok", "deliver", "t", "p-0", {"attempt": 2}, time=T0 + 99)
    assert back[-1].value == {"attempt": 2} and len(back) == len(h) + 1 and back.end == T0 + 99
    assert back.events[:-1] == h.events


def test_merge_orders_by_time_and_shifts_by_offsets():
    a, b, master = History(start=10.0), History(start=11.0), History(start=9.0)
    a.append("s1", "ok", "deliver", "t", "m1", {"digest": 5, "attempt": 1}, time=12.0)
    a.append("s1", "ok", "ack", None, "m1", time=14.0)
    b.append("p", "invoke", "publish", "t", "m1", {"digest": 5, "bytes": 3}, time=11.5)
    b.append("p", "ok", "persisted", None, "m1", time=13.0)
    master.append("nemesis", "info", "fault-start", value={"name": "kill"}, time=12.5)
    m = History.merge([a, b, master])
    assert [(e.index, e.time, e.f) for e in m.events] == [
        (0, 11.5, "publish"),
        (1, 12.0, "deliver"),
        (2, 12.5, "fault-start"),
        (3, 13.0, "persisted"),
        (4, 14.0, "ack"),
    ]
    assert m.start == 9.0 and m.processes() == ["p", "s1", "nemesis"] and m.fault_windows()[0].name == "kill"
    shifted = History.merge([a, b], offsets=[0.0, 1.0])
    assert [e.time for e in shifted.events] == [12.0, 12.5, 14.0, 14.0]
    with pytest.raises(ValueError, match="2 offsets for 1 histories"):
        History.merge([a], offsets=[0.0, 1.0])


def test_recorder_writes_the_suites_vocabulary_into_the_columns(tmp_path):
    rec = HistoryRecorder(path=tmp_path / "w1.npz")
    assert isinstance(rec, Recorder)
    rec.connect_invoked("s", 1.0, 1)
    rec.connected("s", 1.1, 1)
    rec.subscribe_invoked("s", "t", 1.2)
    rec.subscribed("s", "t", 1.3)
    rec.publish_invoked("p", "p-0", "t", 2.0, 123, 64)
    rec.published("p", "p-0", 2.1, 1)
    rec.delivered("s", "p-0", "t", 2.2, 1, 123)
    rec.acked("s", "p-0", 2.3)
    rec.persisted("p", "p-0", 2.4)
    rec.refused("p", "p-1", 2.5, "overloaded")
    rec.persist_failed("p", "p-2", 2.6, "down")
    rec.error("s", 2.7, "bad_request", "no")
    rec.unsubscribed("s", "t", 2.8)
    rec.disconnected("s", 2.9, "close", None)
    rec.connect_failed("s", 3.0, "ConnectionRefusedError")
    rec.close()
    got = [(e.process, e.type, e.f, e.topic, e.id, e.value) for e in History.read(tmp_path / "w1.npz").events]
    assert got == [
        ("s", "invoke", "connect", None, None, {"attempt": 1}),
        ("s", "ok", "connect", None, None, {"connection": 1}),
        ("s", "invoke", "subscribe", "t", None, None),
        ("s", "ok", "subscribe", "t", None, None),
        ("p", "invoke", "publish", "t", "p-0", {"digest": 123, "bytes": 64}),
        ("p", "ok", "publish", None, "p-0", {"recipients": 1}),
        ("s", "ok", "deliver", "t", "p-0", {"digest": 123, "attempt": 1}),
        ("s", "ok", "ack", None, "p-0", None),
        ("p", "ok", "persisted", None, "p-0", None),
        ("p", "fail", "publish", None, "p-1", {"code": "overloaded"}),
        ("p", "fail", "persist_failed", None, "p-2", {"reason": "down"}),
        ("s", "info", "error", None, None, {"code": "bad_request", "message": "no"}),
        ("s", "ok", "unsubscribe", "t", None, None),
        ("s", "info", "disconnect", None, None, {"cause": "close", "code": None}),
        ("s", "fail", "connect", None, None, {"error": "ConnectionRefusedError"}),
    ]


def test_fast_path_falls_back_on_odd_arguments_and_feeds_listeners():
    h = History(start=0.0)
    seen = []
    h.add_listener(seen.append)
    w = h.writer()
    w.deliver("s", "m1", "t", 1.0, 1, HEX)
    w.deliver("s", "m1", None, 2.0, True, None)  # a bool attempt: kept whole, as the broker sent it
    w.deliver("s", None, "t", 3.0, 1, 5)  # type: ignore[arg-type]  # no id
    w.publish("p", OK, "m1", "t", 4.0, recipients=2**40)
    w.connection("s", 5.0, INFO, disconnect=True, cause="abort", code=1006)
    w.publish("p", INVOKE, "m2", "t", 6.0, digest="short", length=3)
    w.persist("p", "m2", 7.0, failed=True, reason="gone")
    w.subscription("s", "t", 8.0, FAIL)
    assert [e.value for e in h.events] == [
        {"digest": HEX, "attempt": 1},
        {"attempt": True},
        {"digest": 5, "attempt": 1},
        {"recipients": 2**40},
        {"cause": "abort", "code": 1006},
        {"digest": "short", "bytes": 3},
        {"reason": "gone"},
        None,
    ]
    assert seen == h.events
    with pytest.raises(HistoryFormatError, match="a digest is an int or a string"):
        w.deliver("s", "m3", "t", 9.0, 1, 1.5)  # type: ignore[arg-type]


def test_columns_are_read_only_snapshots_that_survive_appends():
    h = steady(5).build()
    cols = h.columns("deliver")
    times = cols["time"]
    with pytest.raises(ValueError, match="read-only"):
        times[0] = 0.0
    h.append("s1", "ok", "deliver", "t", "p-9", {"attempt": 1}, time=T0 + 50)
    assert len(times) == cols.rows == 10 and h.columns("deliver").rows == 11
    assert not cols.has("v.published_at") and np.isnan(cols["v.published_at"]).all()


def _corrupt(raw: bytes, at: int) -> bytes:
    b = bytearray(raw)
    b[at] ^= 0xFF
    return bytes(b)


def test_a_bad_compact_file_names_itself_and_what_is_wrong(tmp_path):
    h = steady(30).build()
    good = tmp_path / "good.npz"
    h.write(good)
    raw = good.read_bytes()
    bad = tmp_path / "bad.npz"
    for n in range(0, len(raw), 97):  # cut anywhere: an error naming the file, never a crash or a hang
        bad.write_bytes(raw[:n])
        with pytest.raises(HistoryFormatError, match=r"bad\.npz: (truncated or corrupt|not a compact)"):
            History.read(bad)
    for at in range(0, len(raw), 89):  # a damaged byte: an error, or a field nobody reads (same history)
        bad.write_bytes(_corrupt(raw, at))
        try:
            back = History.read(bad)
        except HistoryFormatError as exc:
            assert str(exc).startswith(f"{bad}: ")
        else:
            assert back.events == h.events
    with zipfile.ZipFile(good) as zf, zipfile.ZipFile(bad, "w") as out:  # a member missing
        for name in zf.namelist():
            if name != "deliver.id.npy":
                out.writestr(name, zf.read(name))
    with pytest.raises(HistoryFormatError, match=r"bad\.npz: member 'deliver.id' is missing"):
        History.read(bad)
    with zipfile.ZipFile(good) as zf, zipfile.ZipFile(bad, "w") as out:  # codes out of the pool
        for name in zf.namelist():
            data = zf.read(name)
            if name == "deliver.process.npy":
                arr = np.full(60, 99, np.int8)
                buf = io.BytesIO()
                np.lib.format.write_array(buf, arr)
                data = buf.getvalue()
            out.writestr(name, data)
    with pytest.raises(HistoryFormatError, match=r"column deliver.process holds codes 99..99 outside"):
        History.read(bad)
    bad.write_bytes(b"\xff\xfe not text")
    with pytest.raises(HistoryFormatError, match=r"bad\.npz: not a compact history: it does not start"):
        History.read(bad)
    odd = tmp_path / "bad.jsonl"
    odd.write_bytes(b"\xff\xfe not text")
    with pytest.raises(HistoryFormatError, match=r"bad\.jsonl: neither a compact history nor UTF-8"):
        History.read(odd)


def test_write_refuses_values_that_are_not_json_naming_the_event(tmp_path):
    h = History()
    h.append("s1", "ok", "deliver", "t", "p-0", {"payload": float("nan"), "attempt": 1})
    with pytest.raises(HistoryFormatError, match=r"event 0 \(s1 ok deliver\) is not JSON-serialisable"):
        h.write(tmp_path / "h.npz")
    assert not list(tmp_path.iterdir())  # nothing half-written left behind
