"""The broker as a real process over real sockets: every frame, error code and launch-contract rule."""

from __future__ import annotations

import asyncio
import json
import signal
import socket
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

import pytest
from websockets.asyncio.client import connect
from websockets.exceptions import ConnectionClosed, InvalidStatus

from .harness import ROOT, Client, RunningBroker, run_async

pytestmark = pytest.mark.integration


def http_get(url: str) -> tuple[int, dict[str, str], str]:
    try:
        with urllib.request.urlopen(url, timeout=10) as r:
            return r.status, dict(r.headers), r.read().decode()
    except urllib.error.HTTPError as e:
        return e.code, dict(e.headers), e.read().decode()


async def aget(url: str) -> tuple[int, dict[str, str], str]:
    return await asyncio.to_thread(http_get, url)


def metric(text: str, name: str) -> float:
    for line in text.splitlines():
        if line.startswith(f"fastport_broker_{name} "):
            return float(line.split()[1])
    raise AssertionError(f"metric {name} not exposed")


async def wait_metric(b: RunningBroker, name: str, value: float, timeout: float = 10) -> None:
    async with asyncio.timeout(timeout):
        # The broker's state is only observable by asking; poll its endpoint until it holds.
        while metric((await aget(b.http + "/metrics"))[2], name) != value:  # noqa: ASYNC110
            await asyncio.sleep(0.05)


@run_async(60)
async def test_every_frame_round_trip() -> None:
    async with (
        RunningBroker() as b,
        await Client.connect(b.url("pub")) as pub,
        await Client.connect(b.url("sub")) as sub,
    ):
        await sub.send({"type": "subscribe", "topic": "news/eu"})
        assert await sub.expect("subscribed") == {"type": "subscribed", "topic": "news/eu"}
        published = await pub.publish("news/eu", {"n": [1, "two", None]}, id="m-1", ref={"r": 1})
        assert published == {"type": "published", "id": "m-1", "ref": {"r": 1}, "recipients": 1}
        msg = await sub.expect("message")
        assert msg["topic"] == "news/eu" and msg["id"] == "m-1" and msg["payload"] == {"n": [1, "two", None]}
        assert msg["attempt"] == 1 and isinstance(msg["published_at"], float)
        assert abs(msg["published_at"] - time.time()) < 60
        assert await pub.expect("persisted") == {"type": "persisted", "id": "m-1"}
        await sub.ack("m-1")
        await pub.send({"type": "ping", "ref": 42})
        assert await pub.expect("pong") == {"type": "pong", "ref": 42}
        await pub.send({"type": "ping"})
        assert await pub.expect("pong") == {"type": "pong", "ref": None}
        auto = await pub.publish("news/eu", 5)  # no id: the broker makes one
        assert isinstance(auto["id"], str) and auto["id"] and auto["ref"] is None
        assert (await sub.expect("message"))["id"] == auto["id"]
        await sub.send({"type": "unsubscribe", "topic": "news/eu"})
        assert await sub.expect("unsubscribed") == {"type": "unsubscribed", "topic": "news/eu"}
        assert (await pub.publish("news/eu", 6))["recipients"] == 0
        await sub.roundtrip()  # a delivery would have been written before this pong
        assert [f["id"] for f in sub.seen if f["type"] == "message"] == ["m-1", auto["id"]]
        # a dropped delivery is not redelivered: the ack of m-1 and the unsubscribe settled everything
        _, _, text = await aget(b.http + "/metrics")
        assert metric(text, "outstanding_deliveries") == 0 and metric(text, "acked_total") == 1


@run_async(60)
async def test_errors_keep_the_connection_usable_except_too_large() -> None:
    async with RunningBroker("--max-frame", "2048") as b, await Client.connect(b.url("c")) as c:
        cases = [
            ("not json", "bad_request"),
            ("[1]", "bad_request"),
            (json.dumps({"topic": "t"}), "bad_request"),
            (json.dumps({"type": "publish", "topic": "bad topic", "payload": 1, "ref": "r1"}), "bad_request"),
            (json.dumps({"type": "ack"}), "bad_request"),
            (json.dumps({"type": "teleport", "ref": 3}), "unknown_type"),
        ]
        for raw, code in cases:
            await c.send(raw)
            e = await c.expect("error")
            assert e["code"] == code and isinstance(e["message"], str) and e["message"]
            await c.roundtrip()  # still usable
        assert [f.get("ref") for f in c.seen if f["type"] == "error"][3:] == ["r1", None, 3]
        await c.ws.send(b'{"type":"ping"}')  # binary frame
        assert (await c.expect("error"))["code"] == "bad_request"
        await c.roundtrip()
        # an id in use on another topic is refused, not silently merged
        await c.publish("a", 1, id="same")
        await c.send({"type": "publish", "topic": "b", "payload": 1, "id": "same", "ref": "x"})
        e = await c.expect("error", ref="x")
        assert e["code"] == "bad_request" and "in use" in e["message"]
        await c.roundtrip()
        # too_large: an error frame, then close 1009
        await c.send({"type": "publish", "topic": "t", "payload": "x" * 4000})
        assert (await c.expect("error"))["code"] == "too_large"
        await asyncio.wait_for(c.ws.wait_closed(), 10)
        assert c.ws.close_code == 1009
        _, _, text = await aget(b.http + "/metrics")
        assert 'fastport_broker_errors_total{code="too_large"} 1' in text
        assert 'fastport_broker_errors_total{code="bad_request"} 7' in text


@run_async(60)
async def test_far_oversized_frame_is_closed_1009() -> None:
    async with RunningBroker("--max-frame", "1024") as b, await Client.connect(b.url("c")) as c:
        await c.send({"type": "publish", "topic": "t", "payload": "x" * 200_000})
        await asyncio.wait_for(c.ws.wait_closed(), 10)
        assert c.ws.close_code == 1009
        async with await Client.connect(b.url("c")) as again:  # the broker itself is fine
            await again.roundtrip()


@run_async(60)
async def test_redelivery_after_reconnect_keeps_client_id() -> None:
    async with (
        RunningBroker("--retry-initial", "30", "--retry-min", "20") as b,
        await Client.connect(b.url("pub")) as pub,
    ):
        sub = await Client.connect(b.url("alice"))
        await sub.subscribe("t")
        await pub.publish("t", "seen-unacked", id="m1")
        assert (await sub.expect("message"))["attempt"] == 1
        await sub.close()
        await wait_metric(b, "connected_clients", 1)  # the broker saw alice leave
        await pub.publish("t", "while-away", id="m2")
        async with await Client.connect(b.url("alice")) as sub2:
            await sub2.subscribe("t")
            got = {
                m["id"]: m["attempt"] for m in [await sub2.expect("message"), await sub2.expect("message")]
            }
            assert got == {"m1": 2, "m2": 1}
            await sub2.ack("m1")
            await sub2.ack("m2")
            await sub2.roundtrip()
        async with await Client.connect(b.url("alice")) as sub3:
            await sub3.subscribe("t")
            await sub3.roundtrip()
            assert not [f for f in sub3.seen if f["type"] == "message"]
        async with await Client.connect(b.url("bob")) as other:  # another client_id has nothing
            await other.subscribe("t")
            await other.roundtrip()
            assert not [f for f in other.seen if f["type"] == "message"]


@run_async(60)
async def test_retries_while_connected_then_dead_letter() -> None:
    args = ("--retry-initial", "0.4", "--retry-min", "0.1", "--retry-max", "0.5", "--max-attempts", "3")
    async with RunningBroker(*args) as b, await Client.connect(b.url("s")) as s:
        await s.subscribe("t")
        await s.publish("t", 1, id="m1")
        for n in (1, 2, 3):
            assert (await s.expect("message", id="m1"))["attempt"] == n
        await wait_metric(b, "dead_lettered_total", 1)
        await s.nothing("message", 1.0)  # dead: no fourth attempt
        # an acked delivery is not retried
        await s.publish("t", 2, id="m2")
        await s.expect("message", id="m2")
        await s.ack("m2")
        await s.nothing("message", 1.5, id="m2")


@run_async(60)
async def test_dedup_by_publish_id() -> None:
    async with (
        RunningBroker() as b,
        await Client.connect(b.url("p")) as p,
        await Client.connect(b.url("s")) as s,
    ):
        await s.subscribe("t")
        first = await p.publish("t", "a", id="dup")
        await p.expect("persisted", id="dup")
        again = await p.publish("t", "b", id="dup", ref="second")
        assert again == {"type": "published", "id": "dup", "ref": "second", "recipients": first["recipients"]}
        assert await p.expect("persisted", id="dup")  # the duplicate is told the original's outcome
        await s.roundtrip()
        assert [f["payload"] for f in s.seen if f["type"] == "message"] == ["a"]
        _, _, text = await aget(b.http + "/metrics")
        assert metric(text, "duplicates_total") == 1 and metric(text, "published_total") == 1


def write_auth(tmp_path: Path) -> str:
    f = tmp_path / "auth.json"
    f.write_text(
        json.dumps(
            {
                "tokens": {
                    "tok-alice": {
                        "client_id": "alice",
                        "publish": ["orders/*"],
                        "subscribe": ["orders/*", "news"],
                    },
                    "tok-free": {},
                    "tok-soon": {"expires_at": time.time() + 4},
                }
            }
        )
    )
    return str(f)


@run_async(60)
async def test_auth_401_rights_and_binding(tmp_path: Path) -> None:
    async with RunningBroker("--auth", write_auth(tmp_path)) as b:
        for url in (b.url("x"), b.url("x", token="wrong")):
            with pytest.raises(InvalidStatus) as info:
                await connect(url, open_timeout=10)
            assert info.value.response.status_code == 401
        with pytest.raises(InvalidStatus) as info:
            await connect(b.url("mallory", token="tok-alice"), open_timeout=10)
        assert info.value.response.status_code == 403  # token bound to another client_id
        async with await Client.connect(
            b.url(), additional_headers={"Authorization": "Bearer tok-alice"}
        ) as a:
            await a.subscribe("orders/1")
            await a.send({"type": "subscribe", "topic": "secret", "ref": 1})
            assert (await a.expect("error", ref=1))["code"] == "forbidden"
            await a.send({"type": "publish", "topic": "news", "payload": 1, "ref": 2})
            assert (await a.expect("error", ref=2))["code"] == "forbidden"
            await a.roundtrip()
            await a.publish("orders/1", "ok", id="o1")
            assert (await a.expect("message", id="o1"))["payload"] == "ok"  # bound id: alice got her own
        async with await Client.connect(b.url("anyone", token="tok-free")) as f:
            await f.subscribe("whatever/topic")
        # status of the health endpoint is not guarded by tokens
        assert (await aget(b.http + "/healthz"))[0] == 200


@run_async(60)
async def test_expired_token_gets_unauthorized_frames(tmp_path: Path) -> None:
    auth = write_auth(tmp_path)
    expires = json.loads(await asyncio.to_thread(Path(auth).read_text))["tokens"]["tok-soon"]["expires_at"]
    async with RunningBroker("--auth", auth) as b, await Client.connect(b.url("c", token="tok-soon")) as c:
        await c.subscribe("t")
        await asyncio.sleep(max(0.0, expires - time.time() + 0.2))  # wait for the wall clock, not the broker
        await c.send({"type": "subscribe", "topic": "t", "ref": "late"})
        e = await c.expect("error", ref="late")
        assert e["code"] == "unauthorized"
        await c.roundtrip()  # ping still answered: the client can tell it must reconnect
        with pytest.raises(InvalidStatus):
            await connect(b.url("c", token="tok-soon"), open_timeout=10)


@run_async(60)
async def test_handshake_rejections_and_http_endpoints() -> None:
    async with RunningBroker() as b:
        with pytest.raises(InvalidStatus) as info:
            await connect(b.url("bad/id"), open_timeout=10)
        assert info.value.response.status_code == 400
        status, headers, body = await aget(b.http + "/healthz")
        assert status == 200 and headers["Content-Type"] == "application/json"
        health = json.loads(body)
        assert health["status"] == "ok" and health["reasons"] == [] and health["store"] == "memory"
        status, headers, body = await aget(b.http + "/metrics")
        assert status == 200 and headers["Content-Type"].startswith("text/plain; version=0.0.4")
        for name in (
            "published_total",
            "delivered_total",
            "retried_total",
            "acked_total",
            "dead_lettered_total",
            "persist_failures_total",
            "persistence_backlog",
            "connected_clients",
        ):
            assert f"# TYPE fastport_broker_{name} " in body
        assert (await aget(b.http + "/nope"))[0] == 404
        assert (await aget(b.http + "/"))[0] == 426  # plain GET on the WebSocket path
        async with await Client.connect(b.url("one")), await Client.connect(b.url("two")):
            assert metric((await aget(b.http + "/metrics"))[2], "connected_clients") == 2


@run_async(60)
async def test_newer_connection_takes_over_the_client_id() -> None:
    async with RunningBroker() as b, await Client.connect(b.url("p")) as p:
        old = await Client.connect(b.url("same"))
        await old.subscribe("t")
        async with await Client.connect(b.url("same")) as new:
            await asyncio.wait_for(old.ws.wait_closed(), 10)
            assert old.ws.close_code == 4000
            await p.publish("t", 1, id="m1")
            assert (await new.expect("message"))["id"] == "m1"
        await old.close()


@pytest.mark.parametrize("listen", [True, False])
def test_taken_port_fails_fast_and_clearly(listen: bool) -> None:
    with socket.socket() as squatter:
        squatter.bind(("127.0.0.1", 0))
        if listen:
            squatter.listen()
        port = squatter.getsockname()[1]
        t0 = time.monotonic()
        proc = __import__("subprocess").run(
            [sys.executable, "-m", "broker", "--port", str(port)],
            cwd=ROOT,
            capture_output=True,
            text=True,
            timeout=15,
        )
        assert time.monotonic() - t0 < 5
    assert proc.returncode != 0 and proc.stdout == ""
    assert "address already in use" in proc.stderr and str(port) in proc.stderr


def test_bad_options_fail_clearly_as_a_process() -> None:
    import subprocess

    proc = subprocess.run(
        [sys.executable, "-m", "broker", "--flaw", "typo"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=15,
    )
    assert proc.returncode == 2 and "unknown flaw 'typo'" in proc.stderr and proc.stdout == ""
    proc = subprocess.run(
        [sys.executable, "-m", "fastport_lab.cli", "broker", "--help"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=15,
    )
    assert proc.returncode == 0 and "--persist-queue-limit" in proc.stdout


@run_async(60)
async def test_sigterm_closes_clients_1001_and_exits_zero_quickly() -> None:
    async with RunningBroker() as b:
        c = await Client.connect(b.url("c"))
        await c.subscribe("t")
        await c.publish("t", 1, id="m1")
        t0 = time.monotonic()
        rc = await b.terminate()
        assert rc == 0 and time.monotonic() - t0 < 10
        await asyncio.wait_for(c.ws.wait_closed(), 10)
        assert c.ws.close_code == 1001
        await c.close()
        assert '"event": "listening"' in b.stdout_lines[0] and "stopped" in b.stderr


@run_async(60)
async def test_sigkill_leaves_nothing_behind_and_port_is_reusable() -> None:
    b = await RunningBroker().start()
    port = b.port
    b.signal(signal.SIGKILL)
    assert await b.wait() == -signal.SIGKILL
    async with RunningBroker("--port", str(port)) as again, await Client.connect(again.url("c")) as c:
        assert again.port == port
        await c.roundtrip()


@run_async(90)
async def test_slow_consumer_is_closed_and_others_keep_flowing() -> None:
    async with (
        RunningBroker("--send-queue", "4", "--retry-initial", "30", "--retry-min", "20") as b,
        await Client.connect(b.url("p")) as p,
        await Client.connect(b.url("fast")) as fast,
    ):
        slow = await connect(b.url("slow"), max_size=None, open_timeout=10)
        await slow.send(json.dumps({"type": "subscribe", "topic": "t"}))
        assert json.loads(await slow.recv())["type"] == "subscribed"
        slow.transport.pause_reading()  # a consumer that stops reading: the broker's writes back up
        await fast.subscribe("t")
        payload = "x" * 256_000
        sent = 0
        async with asyncio.timeout(60):
            while True:
                sent += 1
                await p.publish("t", payload, id=f"m{sent}")
                await fast.expect("message", id=f"m{sent}")
                await fast.ack(f"m{sent}")
                _, _, text = await aget(b.http + "/metrics")
                if metric(text, "slow_consumers_total") == 1:
                    break
        assert sent >= 2
        slow.transport.resume_reading()
        with pytest.raises(ConnectionClosed):
            while True:
                await asyncio.wait_for(slow.recv(), 10)
        assert slow.close_code in (1013, 1006)
        # its deliveries stay outstanding and come back on reconnect
        async with await Client.connect(b.url("slow")) as back:
            await back.subscribe("t")
            got = {(await back.expect("message"))["id"] for _ in range(sent)}
            assert got == {f"m{i}" for i in range(1, sent + 1)}


@run_async(60)
async def test_json_logs_are_one_object_per_line() -> None:
    async with RunningBroker("--log-format", "json", "--log-level", "debug") as b:
        async with await Client.connect(b.url("c")) as c:
            await c.roundtrip()
        assert await b.terminate() == 0
    lines = [json.loads(line) for line in b.stderr.splitlines() if line.strip()]
    events = [entry["event"] for entry in lines]
    assert "listening" in events and "stopped" in events and "connected" in events
    assert all({"ts", "level", "event"} <= entry.keys() for entry in lines)
    assert next(e for e in lines if e["event"] == "connected")["client_id"] == "c"
