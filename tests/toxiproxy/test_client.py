"""The lab's async client against the embedded server (thread) and a server in a child process."""

from __future__ import annotations

import asyncio
import time

import pytest

from chaos.toxiproxy import ToxiproxyProcess
from chaos.toxiproxy.client import Conflict, FaultProxy, NotFound, ToxiproxyError, lab_toxiproxy
from tests.toxiproxy.conftest import EchoServer

pytestmark = pytest.mark.integration


async def _rtt(port: int, payload: bytes = b"ping") -> float:
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    try:
        start = time.monotonic()
        writer.write(payload)
        assert await asyncio.wait_for(reader.readexactly(len(payload)), 10) == payload
        return time.monotonic() - start
    finally:
        writer.close()


async def _refused(port: int) -> bool:
    try:
        _, writer = await asyncio.open_connection("127.0.0.1", port)
    except ConnectionRefusedError:
        return True
    writer.close()
    return False


def test_lab_client_against_embedded_server(echo: EchoServer, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("TOXIPROXY_URL", raising=False)

    async def scenario() -> None:
        async with lab_toxiproxy() as tp:
            assert await tp.version() == "2.12.0"
            proxy = await tp.create("pg", upstream=echo.addr, listen="127.0.0.1:0")
            assert proxy.host == "127.0.0.1" and proxy.port > 0
            with pytest.raises(Conflict):
                await tp.create("pg", upstream=echo.addr)
            assert await _rtt(proxy.port) < 0.1
            toxic = await proxy.add_toxic("latency", attributes={"latency": 120})
            assert toxic["name"] == "latency_downstream"
            assert await _rtt(proxy.port) >= 0.12 - 0.002
            upd = await proxy.update_toxic("latency_downstream", attributes={"latency": 0})
            assert upd["attributes"]["latency"] == 0
            await proxy.remove_toxic("latency_downstream")
            async with proxy.toxic("latency", stream="upstream", attributes={"latency": 100}):
                assert len(await proxy.list_toxics()) == 1
                assert await _rtt(proxy.port) >= 0.1 - 0.002
            assert await proxy.list_toxics() == []
            async with proxy.down():
                assert proxy.enabled is False and await _refused(proxy.port)
            assert proxy.enabled is True and await _rtt(proxy.port) < 1
            with pytest.raises(NotFound):
                await proxy.remove_toxic("nope")
            with pytest.raises(ToxiproxyError) as err:
                await proxy.add_toxic("walrus")
            assert err.value.status == 400 and err.value.message == "invalid toxic type"
            populated = await tp.populate([{"name": "x", "upstream": echo.addr, "listen": "127.0.0.1:0"}])
            assert [p.name for p in populated] == ["x"]
            assert set(await tp.proxies()) == {"pg", "x"}
            await proxy.disable()
            await tp.reset()
            assert (await proxy.refresh()).enabled is True
            assert (await tp.get("x")).upstream == echo.addr
            await tp.delete_all()
            assert await tp.proxies() == {}

    asyncio.run(scenario())


def test_lab_client_uses_toxiproxy_url(echo: EchoServer, monkeypatch: pytest.MonkeyPatch) -> None:
    with ToxiproxyProcess() as child:
        monkeypatch.setenv("TOXIPROXY_URL", child.url)

        async def scenario() -> None:
            async with lab_toxiproxy() as tp:
                assert tp.url == child.url
                proxy = await tp.create("pg", upstream=echo.addr)
                assert await _rtt(proxy.port) < 1
                await proxy.delete()

        asyncio.run(scenario())


def test_client_rejects_bad_urls_and_dead_servers() -> None:
    with pytest.raises(ValueError):
        FaultProxy("https://example.invalid:8474")

    async def dead() -> None:
        async with FaultProxy.connect("http://127.0.0.1:1", timeout=5):
            pass

    with pytest.raises(OSError):
        asyncio.run(dead())
