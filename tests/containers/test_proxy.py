"""The fault proxy as a container, driven by the lab's own client (chaos/toxiproxy/client.py)."""

from __future__ import annotations

import asyncio
import socket
import time
from collections.abc import Iterator

import asyncpg
import pytest

from chaos.containers import ContainerPostgres, ContainerStartError, DockerBackend, ProxyContainer
from chaos.toxiproxy.client import FaultProxy

pytestmark = [pytest.mark.docker, pytest.mark.integration]


@pytest.fixture(scope="module")
def proxy(backend: DockerBackend, images: dict[str, str]) -> Iterator[ProxyContainer]:
    with backend.fault_proxy() as server:
        yield server


async def _select_one(port: int, database: str = "postgres", timeout: float = 5.0) -> int:
    conn = await asyncpg.connect(f"postgresql://postgres@127.0.0.1:{port}/{database}", timeout=timeout)
    try:
        return await conn.fetchval("SELECT 1")
    finally:
        await conn.close()


def test_the_lab_client_faults_postgres_through_the_container(
    proxy: ProxyContainer, pg: ContainerPostgres
) -> None:
    async def main() -> None:
        async with FaultProxy.connect(proxy.url) as api:
            assert await api.version() == "2.12.0"
            p = await api.create("pg-docker-test", upstream=f"{pg.host}:{pg.port}")
            try:
                assert p.host == "127.0.0.1" and p.port > 0  # a per-test listener, reachable from the host
                assert await _select_one(p.port) == 1
                async with p.toxic("latency", attributes={"latency": 300}):
                    t0 = time.monotonic()
                    assert await _select_one(p.port) == 1
                    assert time.monotonic() - t0 >= 0.3
                async with p.down():
                    with pytest.raises(OSError):
                        await _select_one(p.port, timeout=2.0)
                assert await _select_one(p.port) == 1  # enabled again, on the same port
            finally:
                await p.delete()

    asyncio.run(main())


def test_a_taken_api_port_fails_with_the_servers_words(
    backend: DockerBackend, images: dict[str, str]
) -> None:
    squatter = socket.socket()
    squatter.bind(("127.0.0.1", 0))
    squatter.listen(1)
    try:
        with pytest.raises(ContainerStartError) as err, backend.fault_proxy(port=squatter.getsockname()[1]):
            pass
    finally:
        squatter.close()
    text = str(err.value)
    assert "exited with code" in text and "address already in use" in text


def test_a_bad_image_says_which(backend: DockerBackend) -> None:
    with pytest.raises(ContainerStartError) as err, backend.fault_proxy(image="fastport-lab/no-such-proxy:0"):
        pass
    assert "fastport-lab/no-such-proxy:0" in str(err.value)
