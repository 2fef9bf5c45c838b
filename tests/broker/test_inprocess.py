"""The broker in this process over real sockets, where a test needs to reach inside it."""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator

import pytest

from broker.config import Config
from broker.server import Broker
from broker.store_memory import MemoryStore

from .harness import Client, run_async

pytestmark = pytest.mark.integration


@contextlib.asynccontextmanager
async def running(broker: Broker) -> AsyncIterator[Broker]:
    await broker.bind()
    await broker.open_store()
    await broker.start()
    try:
        yield broker
    finally:
        await broker.shutdown()


def url(b: Broker, client_id: str) -> str:
    return f"ws://127.0.0.1:{b.port}/?client_id={client_id}"


@run_async(30)
async def test_an_unexpected_failure_is_an_internal_error_and_the_connection_survives() -> None:
    async with running(Broker(Config(port=0))) as b, await Client.connect(url(b, "c")) as c:

        def boom(*args: object) -> None:
            raise RuntimeError("bug")

        b.core.publish = boom  # type: ignore[method-assign]
        await c.send({"type": "publish", "topic": "t", "payload": 1, "ref": "x"})
        e = await c.expect("error", ref="x")
        assert e["code"] == "internal" and "bug" not in e["message"]  # no internals leak to clients
        await c.roundtrip()
        assert b.errors["internal"] == 1


@run_async(30)
async def test_hydration_from_a_durable_store_in_process() -> None:
    """Two broker lifetimes share one store object; the second hydrates from it."""
    store = MemoryStore()
    store.durable = True  # type: ignore[misc]  # stands in for a durable store: same Snapshot path
    async with running(Broker(Config(port=0), store)) as b1:
        async with await Client.connect(url(b1, "s")) as s, await Client.connect(url(b1, "p")) as p:
            await s.subscribe("t")
            for mid in ("a", "b"):
                await p.publish("t", mid, id=mid)
                await p.expect("persisted", id=mid)
            await s.expect("message", id="a")
            await s.ack("a")
            await s.roundtrip()
        assert await b1.writer.flush(5)
    async with running(Broker(Config(port=0), store)) as b2, await Client.connect(url(b2, "s")) as s:
        await s.subscribe("t")
        assert (await s.expect("message"))["id"] == "b"
        await s.roundtrip()
        assert [f["id"] for f in s.seen if f["type"] == "message"] == ["b"]
