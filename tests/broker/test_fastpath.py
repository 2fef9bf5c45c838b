"""The hot-path shortcuts give exactly what the general code gives: frames, JSON, ordering, loops."""

from __future__ import annotations

import asyncio
import contextlib
import json
import random
import sys
from collections.abc import Callable

import pytest
from hypothesis import given
from hypothesis import strategies as st
from websockets.client import ClientProtocol
from websockets.exceptions import ConnectionClosed
from websockets.frames import Frame, Opcode
from websockets.protocol import State
from websockets.server import ServerProtocol
from websockets.uri import parse_uri

from broker import frames as F
from broker.cli import event_loop_factory
from broker.config import Config
from broker.connection import text_frame
from broker.server import Broker

from .harness import HANG, Client, RunningBroker, run_async
from .test_inprocess import running, url

json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False, allow_infinity=False) | st.text(),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner, max_size=4),
    max_leaves=20,
)


@pytest.mark.parametrize("size", [0, 1, 125, 126, 127, 65535, 65536, 70000])
def test_a_shared_frame_is_what_the_protocol_would_write(size: int) -> None:
    data = b"x" * size
    proto = ServerProtocol(state=State.OPEN)
    proto.send_text(data)
    assert text_frame(data) == b"".join(proto.data_to_send())


@given(json_values)
def test_prebuilt_encoder_matches_the_json_module(value: object) -> None:
    expected = json.dumps(value, ensure_ascii=False, separators=(",", ":"), allow_nan=False)
    assert F._dumps(value) == expected


def test_prebuilt_encoder_refuses_what_the_json_module_refuses() -> None:
    with pytest.raises(ValueError):
        F._dumps({"x": float("nan")})
    with pytest.raises(TypeError, match="not JSON serializable"):
        F._dumps({"x": object()})


@given(st.text(max_size=140), st.sampled_from([(",", ":"), (", ", ": ")]), st.booleans())
def test_plain_ack_shortcut_agrees_with_the_full_parser(mid: str, seps: tuple[str, str], ascii: bool) -> None:
    text = json.dumps({"type": "ack", "id": mid}, separators=seps, ensure_ascii=ascii)
    if 1 <= len(mid) <= F.MAX_ID_LEN:
        assert F.parse(text) == F.Ack(mid)
    else:
        with pytest.raises(F.FrameError) as err:
            F.parse(text)
        assert err.value.code == F.BAD_REQUEST
    with pytest.raises(F.FrameError) as err:  # the size limit still comes first
        F.parse(text, max_frame=len(text.encode()) - 1)
    assert err.value.code == F.TOO_LARGE


def test_acks_that_are_not_plain_take_the_full_parser() -> None:
    assert F.parse('{"type":"ack","id":"m1","ref":7}') == F.Ack("m1", 7)
    assert F.parse('{"id":"m1","type":"ack"}') == F.Ack("m1")
    with pytest.raises(F.FrameError):
        F.parse('{"type":"ack","id":"m1"} x')


@pytest.mark.integration
@run_async(30)
async def test_fragmented_and_whole_frames_are_handled_in_arrival_order() -> None:
    async with running(Broker(Config(port=0))) as b, await Client.connect(url(b, "c")) as c:
        for i in range(3):
            whole = json.dumps({"type": "ping", "ref": f"w{i}"})
            parts = json.dumps({"type": "ping", "ref": f"f{i}"})
            await c.ws.send([parts[:5], parts[5:12], parts[12:]])  # one message in three frames
            await c.ws.send(whole)
        await c.expect("pong", ref="w2")
        assert [f["ref"] for f in c.seen] == ["f0", "w0", "f1", "w1", "f2", "w2"]


@pytest.mark.integration
@run_async(30)
async def test_binary_and_invalid_utf8_frames_on_the_fast_path() -> None:
    async with running(Broker(Config(port=0))) as b, await Client.connect(url(b, "c")) as c:
        await c.roundtrip()
        await c.ws.send(b'{"type":"ping"}')  # binary
        assert (await c.expect("error"))["code"] == F.BAD_REQUEST
        await c.ws.send(b'{"type":"ping","ref":"\xff"}', text=True)  # not UTF-8
        await c.ws.wait_closed()
        assert c.ws.close_code == 1007
        with pytest.raises(ConnectionClosed):
            await c.ws.send("{}")


def test_loop_choice(monkeypatch: pytest.MonkeyPatch) -> None:
    assert event_loop_factory("asyncio") is None
    monkeypatch.setitem(sys.modules, "uvloop", None)  # as if not installed
    assert event_loop_factory("auto") is None
    with pytest.raises(ImportError):
        event_loop_factory("uvloop")


@pytest.mark.integration
@pytest.mark.parametrize("loop", ["asyncio", "uvloop"])
@run_async(60)
async def test_broker_round_trip_on_each_loop(loop: str) -> None:
    if loop == "uvloop":
        pytest.importorskip("uvloop")
    async with (
        RunningBroker("--loop", loop, "--log-level", "info") as bp,
        await Client.connect(bp.url("s")) as s,
        await Client.connect(bp.url("p")) as p,
    ):
        await s.subscribe("t")
        await p.publish("t", {"n": 1}, id="m1")
        assert (await s.expect("message", id="m1"))["payload"] == {"n": 1}
        await s.ack("m1")
        await p.expect("persisted", id="m1")
        await s.roundtrip()
    assert f"loop={loop}" in bp.stderr


async def _raw_session(port: int, chunks: Callable[[bytes], list[bytes]], frames: list[Frame]) -> list[Frame]:
    """Handshake with websockets' sans-I/O client, write ``frames`` cut by ``chunks``, read replies."""
    client = ClientProtocol(parse_uri(f"ws://127.0.0.1:{port}/?client_id=raw"))
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    try:
        client.send_request(client.connect())
        writer.write(b"".join(client.data_to_send()))
        while client.state is not State.OPEN:
            client.receive_data(await reader.read(65536))
            client.events_received()
        for frame in frames:
            client.send_frame(frame)
        for chunk in chunks(b"".join(client.data_to_send())):
            writer.write(chunk)
            await asyncio.wait_for(writer.drain(), HANG)
        replies: list[Frame] = []
        async with asyncio.timeout(HANG):
            while not any(f.opcode is Opcode.TEXT and b'"end"' in f.data for f in replies):
                client.receive_data(await reader.read(65536))
                replies += [e for e in client.events_received() if isinstance(e, Frame)]
                writer.write(b"".join(client.data_to_send()))
        return replies
    finally:
        writer.close()
        with contextlib.suppress(Exception):
            await writer.wait_closed()


@pytest.mark.integration
@pytest.mark.parametrize("seed", range(4))
@run_async(60)
async def test_frames_cut_anywhere_in_the_stream_are_handled_in_order(seed: int) -> None:
    rng = random.Random(seed)
    frames, expected = [], []
    for i in range(40):
        ref = f"{i}-" + "x" * rng.choice([0, 10, 120, 130, 300, 70000])  # 7-bit, 16-bit and 64-bit lengths
        text = json.dumps({"type": "ping", "ref": ref}).encode()
        kind = rng.random()
        if kind < 0.15:  # a fragmented message: goes through websockets' own parser
            cut = rng.randrange(1, len(text))
            frames += [Frame(Opcode.TEXT, text[:cut], fin=False), Frame(Opcode.CONT, text[cut:])]
        else:
            frames.append(Frame(Opcode.TEXT, text))
        expected.append(ref)
        if kind > 0.85:  # a control frame in between
            frames.append(Frame(Opcode.PING, f"p{i}".encode()))
    frames.append(Frame(Opcode.TEXT, b'{"type":"ping","ref":"end"}'))
    expected.append("end")

    def chunks(data: bytes) -> list[bytes]:
        cuts = sorted(rng.sample(range(1, len(data)), 60))
        return [data[a:b] for a, b in zip([0, *cuts], [*cuts, len(data)], strict=True)]

    async with running(Broker(Config(port=0))) as b:
        assert b.port is not None
        replies = await _raw_session(b.port, chunks, frames)
    pongs = [json.loads(f.data)["ref"] for f in replies if f.opcode is Opcode.TEXT]
    assert pongs == expected
    pings = [f.data for f in frames if f.opcode is Opcode.PING]
    assert [f.data for f in replies if f.opcode is Opcode.PONG] == pings
    assert b.errors == dict.fromkeys(F.ERROR_CODES, 0)


@pytest.mark.integration
@run_async(30)
async def test_a_frame_over_the_size_limit_is_refused_as_soon_as_its_header_arrives() -> None:
    async with running(Broker(Config(port=0, max_frame=1000))) as b, await Client.connect(url(b, "c")) as c:
        await c.roundtrip()
        header = bytes((0x81, 0xFF)) + (10_000_000).to_bytes(8, "big") + b"mask"  # no payload follows
        c.ws.transport.write(header)
        await c.ws.wait_closed()
        assert c.ws.close_code == 1009


@given(
    st.text(max_size=20),
    st.text(min_size=1, max_size=20),
    json_values,
    st.one_of(st.floats(allow_nan=False, allow_infinity=False), st.integers(-(10**6), 10**12)),
)
def test_message_frame_template_matches_encoding_the_whole_frame(
    topic: str, mid: str, payload: object, published_at: float
) -> None:
    body = json.dumps(
        {"type": "message", "topic": topic, "id": mid, "payload": payload, "published_at": published_at},
        ensure_ascii=False,
        separators=(",", ":"),
        allow_nan=False,
    )
    enc = F.MessageEncoder(topic, mid, payload, published_at)
    assert enc.first == (body[:-1] + ',"attempt":1}').encode()
    assert json.loads(enc.frame(3))["attempt"] == 3
