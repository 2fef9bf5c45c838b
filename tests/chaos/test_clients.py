"""Workload clients against the reference broker (and against nothing, for the failure paths)."""

from __future__ import annotations

import asyncio
import socket

import pytest

from chaos.checkers import Facts, check_at_least_once, check_duplicates, check_integrity
from chaos.clients import ClientClosed, HangError, Publisher, Subscriber, client_url, wait_for
from chaos.history import History
from chaos.launcher import launch
from tests.chaos.conftest import BROKER_CMD, ROOT, needs_broker, run


def test_client_url_keeps_query_and_rejects_bad_scheme():
    assert client_url("ws://h:1/?a=b&client_id=old", "c-1", "tok") == "ws://h:1/?a=b&client_id=c-1&token=tok"
    assert client_url("ws://h:1", "c") == "ws://h:1/?client_id=c"
    with pytest.raises(ValueError, match="ws:// or wss://"):
        client_url("http://h:1/", "c")


def test_bad_client_arguments_are_rejected():
    h = History()
    with pytest.raises(ValueError, match="ack must be one of"):
        Subscriber("ws://h:1/", "s", ["t"], history=h, ack="sometimes")
    with pytest.raises(ValueError, match="ack_delay"):
        Subscriber("ws://h:1/", "s", ["t"], history=h, ack="late", ack_delay=-1)
    with pytest.raises(ValueError, match="client_id"):
        Publisher("ws://h:1/", "", history=h)
    with pytest.raises(ValueError, match="backoff"):
        Publisher("ws://h:1/", "p", history=h, backoff=(0, 1))


def test_publish_rejects_bad_payload_and_ids_before_sending():
    async def scenario() -> None:
        h = History()
        p = Publisher("ws://127.0.0.1:1/", "p", history=h)
        with pytest.raises(ValueError, match="payload must be JSON-serialisable"):
            await p.publish("t", object())
        with pytest.raises(ValueError, match="publish id must be a non-empty string"):
            await p.publish("t", 1, id="")
        assert len(h) == 0 and p.seq == 0

    run(scenario)


def test_wait_for_wakes_on_events_and_reports_hangs():
    async def scenario() -> None:
        h = History()
        loop = asyncio.get_running_loop()
        loop.call_soon(h.append, "x", "ok", "deliver")
        await wait_for(h, lambda: len(h) >= 1, timeout=10)
        with pytest.raises(HangError, match="timed out after 0.2s waiting for two events: have 1"):
            await wait_for(
                h, lambda: len(h) >= 2, timeout=0.2, what="two events", describe=lambda: f"have {len(h)}"
            )

        loop.call_soon(h.append, "x", "ok", "deliver")
        with pytest.raises(ZeroDivisionError):  # a broken condition fails the wait at once, no hang
            await wait_for(h, lambda: len(h) > 1 and 1 / 0, timeout=30)

    run(scenario)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.integration
def test_unreachable_broker_gives_clear_errors():
    async def scenario() -> None:
        h = History()
        url = f"ws://127.0.0.1:{_free_port()}/"
        p = Publisher(url, "p", history=h, reconnect=False)
        with pytest.raises(ClientClosed, match="cannot connect"):
            await p.start()
        await p.close()
        s = Subscriber(url, "s", ["t"], history=h, backoff=(0.01, 0.05))
        with pytest.raises(
            HangError, match=r"(?s)waiting for s to connect to ws://.*last error .*ConnectionRefused"
        ):
            await s.start(timeout=0.5)
        await s.close()
        fails = h.by_f("connect", type="fail")
        assert len(fails) >= 2 and all("reason" in e.value for e in fails)
        assert [t for t in asyncio.all_tasks() if t is not asyncio.current_task()] == []

    run(scenario)


@needs_broker
@pytest.mark.integration
def test_round_trip_records_a_history_the_checkers_accept(history, ref_broker):
    async def scenario() -> None:
        s1 = Subscriber(ref_broker.url, "s1", ["t"], history=history)
        s2 = Subscriber(ref_broker.url, "s2", ["t"], history=history, ack="late", ack_delay=0.02)
        p = Publisher(ref_broker.url, "p", history=history)
        for c in (s1, s2, p):
            await c.start()
        results = [await p.publish("t", {"n": i}) for i in range(30)]
        ids = [r.id for r in results]
        assert ids == [f"p-{i}" for i in range(30)] and all(r.ok for r in results)
        await s1.wait_received(ids)
        await s2.wait_received(ids)
        outcomes = await p.wait_persisted(ids)
        assert set(outcomes.values()) == {"persisted"}
        await wait_for(history, lambda: len(history.by_f("ack")) >= 60, what="60 acks")
        for c in (s1, s2, p):
            await c.close()

    run(scenario)
    for v in (check_at_least_once(history), check_integrity(history), check_duplicates(history)):
        assert v.status == "pass", v
    deliveries = history.by_f("deliver")
    # payloads are recorded as a digest and a length, the same at both ends
    (first,) = [e for e in history.by_f("publish", type="invoke") if e.id == deliveries[0].id]
    assert deliveries[0].value["digest"] == first.value["digest"] and deliveries[0].value["bytes"] > 20
    assert "payload" not in deliveries[0].value and deliveries[0].value["attempt"] == 1
    late = {e.id: e.time for e in history.by_process("s2") if e.f == "ack"}
    first = {e.id: e.time for e in history.by_process("s2") if e.f == "deliver"}
    assert all(late[i] - first[i] >= 0.02 for i in late)
    assert [e.value["cause"] for e in history.by_f("disconnect")] == ["close"] * 3


@needs_broker
@pytest.mark.integration
def test_abort_reconnects_and_resubscribes(history, ref_broker):
    async def scenario() -> None:
        s1 = Subscriber(ref_broker.url, "s1", ["t", "u"], history=history)
        p = Publisher(ref_broker.url, "p", history=history)
        await s1.start()
        await p.start()
        assert s1.abort()
        await s1.wait_subscribed(["t", "u"])
        ids = [(await p.publish("u", i)).id for i in range(5)]
        await s1.wait_received(ids)
        assert s1.connections == 2
        await s1.close()
        await p.close()

    run(scenario)
    causes = [e.value["cause"] for e in history.by_process("s1") if e.f == "disconnect"]
    assert causes == ["abort", "close"]
    assert history.fault_windows() == []  # the client records no fault: the nemesis does (chaos.faults)
    facts = Facts(history)
    assert facts.subscriptions[("s1", "u")].oks and len(facts.subscriptions[("s1", "t")].oks) == 2


@needs_broker
@pytest.mark.integration
def test_paused_subscriber_receives_nothing_until_resumed(history, ref_broker):
    async def scenario() -> None:
        fast = Subscriber(ref_broker.url, "fast", ["t"], history=history)
        slow = Subscriber(ref_broker.url, "slow", ["t"], history=history)
        p = Publisher(ref_broker.url, "p", history=history)
        for c in (fast, slow, p):
            await c.start()
        assert slow.pause_reading()
        ids = [(await p.publish("t", "x" * 1000)).id for _ in range(20)]
        await fast.wait_received(ids)
        assert not set(ids) & slow.received.keys()
        slow.resume_reading()
        await slow.wait_received(ids)
        for c in (fast, slow, p):
            await c.close()

    run(scenario)
    assert not [e for e in history.by_process("slow") if e.f == "disconnect" and e.value["cause"] != "close"]


@needs_broker
@pytest.mark.integration
def test_never_ack_then_ack_all_and_refused_publish(history, ref_broker):
    async def scenario() -> None:
        s = Subscriber(ref_broker.url, "s", ["t"], history=history, ack="never")
        p = Publisher(ref_broker.url, "p", history=history)
        await s.start()
        await p.start()
        ids = [(await p.publish("t", i)).id for i in range(3)]
        await s.wait_received(ids)
        assert history.by_f("ack") == [] and set(s.unacked) == set(ids)
        assert await s.ack_all() == 3 and s.unacked == {}
        bad = await p.publish("not a topic!", 1)
        assert bad.status == "refused" and bad.error["code"] == "bad_request"
        with pytest.raises(HangError, match="still missing 1: nope-1"):
            await s.wait_received(["nope-1"], timeout=0.3)
        await s.unsubscribe("t")
        await s.close()
        await p.close()

    run(scenario)
    assert [e.id for e in history.by_f("ack")] == ["p-0", "p-1", "p-2"]
    assert history.by_f("publish", type="fail")[0].value["code"] == "bad_request"
    assert history.by_f("unsubscribe", type="ok")[0].topic == "t"


@needs_broker
@pytest.mark.integration
def test_clients_reconnect_across_a_broker_restart_and_resend_in_flight_publishes(history, ref_broker):
    async def scenario() -> None:
        s = Subscriber(ref_broker.url, "s", ["t"], history=history, backoff=(0.02, 0.2))
        p = Publisher(ref_broker.url, "p", history=history, backoff=(0.02, 0.2))
        await s.start()
        await p.start()
        await asyncio.to_thread(ref_broker.kill)
        await wait_for(history, lambda: not (s.connected or p.connected), what="both clients to notice")
        pending = asyncio.create_task(p.publish("t", "after restart", timeout=30))
        again = await asyncio.to_thread(
            launch, BROKER_CMD, history=history, port=ref_broker.port, cwd=str(ROOT)
        )
        try:
            result = await pending
            assert result.ok and result.id == "p-0"
            await s.wait_subscribed(["t"], timeout=30)
            follow = await p.publish("t", "second")
            await s.wait_received([follow.id])
            await s.close()
            await p.close()
        finally:
            await asyncio.to_thread(again.terminate)

    run(scenario)
    resent = [e for e in history.by_process("p") if e.f == "publish" and e.type == "info"]
    assert resent and resent[0].value["reason"] == "sent after (re)connect"
    assert [e.value["exit_code"] for e in history.by_f("exit")][:1] == [-9]


@needs_broker
@pytest.mark.integration
def test_async_with_closes_clients_when_the_scenario_fails(history, ref_broker):
    async def scenario() -> None:
        with pytest.raises(RuntimeError, match="scenario failed"):
            async with (
                Subscriber(ref_broker.url, "s", ["t"], history=history),
                Publisher(ref_broker.url, "p", history=history) as p,
            ):
                await p.publish("t", 1)
                raise RuntimeError("scenario failed")
        assert [t for t in asyncio.all_tasks() if t is not asyncio.current_task()] == []

    run(scenario)
    assert [e.value["cause"] for e in history.by_f("disconnect")] == ["close", "close"]
