"""The connection layer (websockets' sans-I/O protocol under asyncio) through what a client observes.

Keepalive, compression, the read pause while an awaiting handler runs, and the
open timeout: each over real loopback sockets, waiting for events, never for time.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
from collections.abc import AsyncIterator, Awaitable

import pytest
from websockets.asyncio.client import connect
from websockets.client import ClientProtocol
from websockets.frames import Frame, Opcode
from websockets.http11 import Request, Response
from websockets.protocol import State
from websockets.uri import parse_uri

from broker import frames as F
from broker.config import Config
from broker.connection import Connection, Listener, Settings
from broker.server import Broker
from broker.session import Session

from .harness import HANG, Client, run_async
from .test_inprocess import running, url

pytestmark = pytest.mark.integration


class RawClient:
    """websockets' sans-I/O client on a stream: every frame is seen, pongs go out only when it flushes."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, proto: ClientProtocol):
        self.reader, self.writer, self.proto = reader, writer, proto

    @classmethod
    @contextlib.asynccontextmanager
    async def connect(cls, port: int, client_id: str) -> AsyncIterator[RawClient]:
        proto = ClientProtocol(parse_uri(f"ws://127.0.0.1:{port}/?client_id={client_id}"))
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        client = cls(reader, writer, proto)
        try:
            proto.send_request(proto.connect())
            writer.write(b"".join(proto.data_to_send()))
            async with asyncio.timeout(HANG):
                while proto.state is State.CONNECTING:
                    proto.receive_data(await reader.read(65536))
                    proto.events_received()
            yield client
        finally:
            writer.close()
            with contextlib.suppress(Exception):
                await writer.wait_closed()

    async def frames(self, answer: bool) -> AsyncIterator[Frame]:
        """Frames as they come; with ``answer`` the protocol's automatic pongs are written back."""
        while data := await self.reader.read(65536):
            self.proto.receive_data(data)
            out = self.proto.data_to_send()
            if answer:
                self.writer.write(b"".join(out))
            for event in self.proto.events_received():
                assert isinstance(event, Frame)
                yield event


@run_async(30)
async def test_keepalive_pings_a_live_client_and_closes_a_silent_one_1011() -> None:
    async with running(Broker(Config(port=0, ping_interval=0.1))) as b:
        assert b.port is not None
        async with RawClient.connect(b.port, "live") as live:
            pings = 0
            async with asyncio.timeout(HANG):
                async for frame in live.frames(answer=True):
                    pings += frame.opcode is Opcode.PING
                    if pings == 4:  # three pongs answered in time: still open
                        break
            assert b.conns["live"].conn.state is State.OPEN
        async with RawClient.connect(b.port, "silent") as silent:
            async with asyncio.timeout(HANG):
                frames = [f async for f in silent.frames(answer=False)]
            close = frames[-1]
            assert close.opcode is Opcode.CLOSE and close.data[:2] == (1011).to_bytes(2, "big")
            assert b"keepalive ping timeout" in close.data


@run_async(30)
async def test_compression_is_negotiated_and_fan_out_still_reaches_everyone() -> None:
    async with (
        running(Broker(Config(port=0, compression=True))) as b,
        await Client.connect(url(b, "deflate")) as deflate,
        await Client.connect(url(b, "plain"), compression=None) as plain,
        await Client.connect(url(b, "p")) as p,
    ):
        assert [e.name for e in deflate.ws.protocol.extensions] == ["permessage-deflate"]
        assert plain.ws.protocol.extensions == []
        for c in (deflate, plain):
            await c.subscribe("t")
        for i in range(3):
            await p.publish("t", "x" * 10_000, id=f"m{i}")
            for c in (deflate, plain):
                assert (await c.expect("message", id=f"m{i}"))["payload"] == "x" * 10_000


@run_async(30)
async def test_compression_off_by_default() -> None:
    async with running(Broker(Config(port=0))) as b, await Client.connect(url(b, "c")) as c:
        assert c.ws.protocol.extensions == []  # the client offered deflate; the broker declined
        await c.roundtrip()


class HeldPublish:
    """A publish path that waits until released: stands in for a flaw that awaits (store-first)."""

    def __init__(self) -> None:
        self.started = asyncio.Event()
        self.release = asyncio.Event()

    def publish(self, b: Broker, s: Session, frame: F.Publish, size: int) -> Awaitable[None]:
        return self._publish(s, frame)

    async def _publish(self, s: Session, frame: F.Publish) -> None:
        self.started.set()
        await self.release.wait()
        s.send(F.published_frame(frame.id or "?", frame.ref, 0))


@run_async(30)
async def test_frames_wait_in_order_behind_an_awaiting_handler_and_reading_pauses_at_max_queue() -> None:
    held = HeldPublish()
    async with (
        running(Broker(Config(port=0, max_queue=4), publishing=held)) as b,
        await Client.connect(url(b, "c")) as c,
    ):
        await c.roundtrip()
        transport = b.conns["c"].conn.transport
        assert transport is not None
        paused = asyncio.Event()
        pause = transport.pause_reading
        transport.pause_reading = lambda: (paused.set(), pause())[1]  # type: ignore[method-assign]
        await c.send({"type": "publish", "topic": "t", "payload": 1, "id": "m1"})
        await held.started.wait()
        for i in range(40):
            await c.send({"type": "ping", "ref": i})
        await asyncio.wait_for(paused.wait(), HANG)  # 4 frames waiting: the broker stops reading
        barrier = c.seen[0]["ref"]
        assert [f.get("ref") for f in c.seen] == [barrier]  # nothing answered while the publish waits
        held.release.set()
        await c.expect("pong", ref=39)
        assert [f.get("ref") if f["type"] == "pong" else f["type"] for f in c.seen] == [
            barrier,
            "published",
            *range(40),
        ]
        assert transport.is_reading()


class Refuser:
    """An application that answers every request with 404 and counts opened connections."""

    opened = 0

    def process_request(self, conn: Connection, request: Request) -> Response | None:
        return conn.ws.reject(404, "nothing here\n") if request.path != "/" else None

    def connection_open(self, conn: Connection) -> None:
        self.opened += 1
        conn.on_message = lambda data: conn.send_text(json.dumps({"echo": data}).encode())

    def connection_closed(self, conn: Connection) -> None:
        pass


@run_async(30)
async def test_a_connection_that_sends_no_request_is_dropped_after_the_open_timeout() -> None:
    listener = Listener(Refuser(), Settings(open_timeout=0.2))
    port = await listener.bind("127.0.0.1", 0)
    await listener.start_serving()
    try:
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        assert await asyncio.wait_for(reader.read(), HANG) == b""  # closed by the server, unanswered
        writer.close()
        async with connect(f"ws://127.0.0.1:{port}/", open_timeout=HANG) as ws:  # the listener itself is fine
            await ws.send("hi")
            assert json.loads(await asyncio.wait_for(ws.recv(), HANG)) == {"echo": "hi"}
    finally:
        listener.close()
        await asyncio.wait_for(listener.wait_closed(), HANG)
    assert not listener.connections
