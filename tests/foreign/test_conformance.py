"""The correct foreign broker against PROTOCOL.md, through a plain websockets client and real processes.

Memory store for the wire protocol; PostgreSQL (``pg_dsn``) for outcomes under
storage faults, hydration after SIGKILL and what is left in its tables.
"""

from __future__ import annotations

import asyncio
import json
import socket
import time

import pytest

from tests.foreign.harness import HANG, Foreign, Peer, Relay, drive, flush, slow_reader_stalls, table

pytestmark = pytest.mark.integration


def test_frames_answers_and_errors() -> None:
    async def body() -> None:
        async with Foreign() as b:
            sub = await Peer.open(b.url("sub"))
            pub = await Peer.open(b.url("pub"))
            await sub.subscribe("orders/eu")
            payload = {"n": 2**70, "f": 0.1, "s": "é\u2028\U0001f600\x00", "l": [None, True, {"k": []}]}
            await pub.publish("orders/eu", payload, "m-1", ref={"any": "json"})
            published = await pub.expect("published", id="m-1")
            assert published == {"type": "published", "id": "m-1", "ref": {"any": "json"}, "recipients": 1}
            await pub.expect("persisted", id="m-1")
            msg = await sub.expect("message", id="m-1")
            assert msg["topic"] == "orders/eu" and msg["payload"] == payload and msg["attempt"] == 1
            assert isinstance(msg["published_at"], float) and abs(msg["published_at"] - time.time()) < 60

            bad = {
                "not json": "bad_request",
                "[1, 2]": "bad_request",
                "42": "bad_request",
                '{"topic": "t"}': "bad_request",
                '{"type": "shout", "ref": 5}': "unknown_type",
                '{"type": "subscribe"}': "bad_request",
                '{"type": "subscribe", "topic": "no spaces"}': "bad_request",
                '{"type": "publish", "topic": "t"}': "bad_request",
                '{"type": "publish", "topic": "t", "payload": 1, "id": 7}': "bad_request",
                '{"type": "ack"}': "bad_request",
                '{"type": "publish", "topic": "t", "payload": NaN}': "bad_request",
                # found by scenarios/test_fuzz.py: deeper than json's recursion limit was ``internal``
                '{"type": "publish", "topic": "t", "payload": '
                + "[" * 5000
                + "]" * 5000
                + "}": "bad_request",
            }
            for n, (text, code) in enumerate([*bad.items(), (b"\x00binary", "bad_request")]):
                await pub.ws.send(text)
                await pub.send(type="ping", ref=f"alive-{n}")  # answered after the error: still served
                await pub.expect("pong", ref=f"alive-{n}")
                assert pub.got("error")[n]["code"] == code, (text, pub.got("error")[n])
            assert pub.got("error", code="unknown_type")[0]["ref"] == 5

            # dedup: the same id again is answered, not fanned out twice
            await pub.publish("orders/eu", payload, "m-1", ref="again")
            assert (await pub.expect("published", ref="again"))["recipients"] == 1
            await sub.send(type="unsubscribe", topic="orders/eu")
            await sub.expect("unsubscribed", topic="orders/eu")
            await pub.publish("orders/eu", 1, "m-2")
            assert (await pub.expect("published", id="m-2"))["recipients"] == 0
            await sub.subscribe("orders/us")
            await pub.publish("orders/us", 2, "m-3")
            await sub.expect("message", id="m-3")
            assert [f["id"] for f in sub.got("message")] == ["m-1", "m-3"]

            # over 1 MiB: websockets' own 1009 close (PROTOCOL.md allows it)
            big = await Peer.open(b.url("big"), max_size=None)
            await big.ws.send(json.dumps({"type": "publish", "topic": "t", "payload": "x" * (1 << 20)}))
            assert await asyncio.wait_for(big.closed, HANG) == 1009

    drive(body())


def test_http_endpoints_and_handshake() -> None:
    async def body() -> None:
        async with Foreign() as b:
            status, text = await b.http("/healthz")
            assert status == 200 and json.loads(text)["status"] == "ok"
            status, text = await b.http("/metrics")
            assert status == 200 and "foreign_clients 0" in text
            assert (await b.http("/nowhere"))[0] == 404
            assert (await b.http("/?client_id=bad%20id"))[0] == 400
            anon = await Peer.open(b.url())  # no client_id: a random one, still served
            await anon.send(type="ping")
            assert (await anon.expect("pong"))["ref"] is None

    drive(body())


def test_retry_dead_letter_and_redelivery_after_reconnect() -> None:
    async def body() -> None:
        async with Foreign("memory", None, None, "--retry-first", "0.2", "--max-attempts", "3") as b:
            sub = await Peer.open(b.url("s"))
            pub = await Peer.open(b.url("p"))
            await sub.subscribe("jobs")
            await pub.publish("jobs", "a", "a")
            for n in (1, 2, 3):  # retried while connected and unacked, then dead-lettered
                await sub.expect("message", id="a", attempt=n)
            await b.until(lambda: _is(b, "dead_lettered_total", 1), "dead letter")
            await pub.publish("jobs", "b", "b")
            await sub.expect("message", id="b", attempt=1)
            await sub.close()
            back = await Peer.open(b.url("s"))  # the subscription survived the disconnect
            await back.subscribe("jobs")  # replays what is outstanding, at once
            await back.expect("message", id="b", attempt=2)
            await back.send(type="ack", id="b")
            await back.close()
            again = await Peer.open(b.url("s"))
            await again.subscribe("jobs")
            await pub.publish("jobs", "c", "c")
            await again.expect("message", id="c")
            assert [f["id"] for f in again.got("message")] == ["c"], "acked b or dead a came back"

    drive(body())


async def _is(b: Foreign, name: str, value: float) -> bool:
    return await b.metric(name) == value


def test_slow_reader_does_not_hold_up_others() -> None:
    async def body() -> None:
        async with Foreign() as b:
            assert not await slow_reader_stalls(b)

    drive(body())


def test_port_taken_fails_fast() -> None:
    async def body() -> None:
        with socket.socket() as squat:
            squat.bind(("127.0.0.1", 0))
            squat.listen()
            port = squat.getsockname()[1]
            b = Foreign()
            start = time.monotonic()
            await b.spawn(port)
            try:
                code = await b.exit_code(5.0)
            finally:
                await b.kill()
            assert code is not None and code != 0 and time.monotonic() - start < 5.0
            assert any("address already in use" in line and str(port) in line for line in b.stderr), b.stderr

    drive(body())


def test_sigterm_drains_and_exits_zero() -> None:
    async def body() -> None:
        b = await Foreign().start()
        try:
            sub = await Peer.open(b.url("s"))
            await sub.subscribe("t")
            start = time.monotonic()
            assert await b.terminate() == 0
            assert time.monotonic() - start < 10.0
            assert await asyncio.wait_for(sub.closed, HANG) == 1001
        finally:
            await b.kill()

    drive(body())


def test_outcomes_under_storage_faults(pg_dsn: str) -> None:
    async def body() -> None:
        relay = Relay(pg_dsn)
        dsn = await relay.start()
        try:
            async with Foreign("postgres", dsn, None, "--persist-give-up", "3", "--db-timeout", "1") as b:
                sub = await Peer.open(b.url("s"))
                pub = await Peer.open(b.url("p"))
                await sub.subscribe("t")
                await flush(pub, "f0")
                relay.down()
                await b.until(lambda: _status(b, "degraded"), "healthz degraded (idle probe)")
                await pub.publish("t", "during outage", "kept")
                await sub.expect("message", id="kept", timeout=2.0)  # real-time flow goes on
                relay.heal()
                await pub.expect("persisted", id="kept")
                relay.freeze()
                await pub.publish("t", "too long", "lost")
                await sub.expect("message", id="lost", timeout=2.0)
                failed = await pub.expect("persist_failed", id="lost")
                assert failed["reason"]
                relay.heal()
                await flush(pub, "f1")
                assert len(pub.got("persisted", id="kept")) == 1 and not pub.got("persisted", id="lost")
                await b.until(lambda: _status(b, "ok"), "healthz ok again")
        finally:
            await relay.close()

    drive(body())


async def _status(b: Foreign, status: str) -> bool:
    return json.loads((await b.http("/healthz"))[1])["status"] == status


def test_hydration_after_sigkill_and_acked_rows_gone(pg_dsn: str) -> None:
    async def body() -> None:
        async with Foreign("postgres", pg_dsn) as b:
            keeper = await Peer.open(b.url("keeper"))
            acker = await Peer.open(b.url("acker"))
            pub = await Peer.open(b.url("p"))
            for p in (keeper, acker):
                await p.subscribe("jobs")
            await keeper.close()  # offline: its deliveries are never sent before the crash
            ids = [f"j{i}" for i in range(5)]
            for i in ids:
                await pub.publish("jobs", {"i": i}, i)
                await acker.expect("message", id=i)
                await acker.send(type="ack", id=i)
            await flush(pub, "f0")
            rows = await table(pg_dsn, "SELECT client_id, message_id FROM foreign_owed ORDER BY 2")
            assert [(r[0], r[1]) for r in rows] == [("keeper", i) for i in ids]
            await b.restart()  # SIGKILL, then the same command on the same port
            acker = await Peer.open(b.url("acker"))
            keeper = await Peer.open(b.url("keeper"))
            await pub.ws.close()
            pub = await Peer.open(b.url("p"))
            await pub.publish("jobs", "after", "after")  # the subscriptions came back too
            await keeper.expect("message", id="after")
            await acker.expect("message", id="after")
            await keeper.subscribe("jobs")
            for i in ids:
                assert (await keeper.expect("message", id=i))["payload"] == {"i": i}
            assert not [f for f in acker.got("message") if f["id"] in ids], "acked deliveries came back"
            await keeper.ack_all()
            await acker.ack_all()
            await flush(pub, "f1")
            assert not await table(pg_dsn, "SELECT 1 FROM foreign_owed")
            assert not await table(pg_dsn, "SELECT 1 FROM foreign_message")

    drive(body())
