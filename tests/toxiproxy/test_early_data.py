"""Bytes a client sends before the upstream is dialled still reach the upstream.

The client side is paused in ``connection_made`` until the dial completes, but CPython
before 3.11.3 (Debian bookworm's python3 is 3.11.2, so the proxy container's) starts
reading right after ``connection_made`` anyway. The proxy then got a PostgreSQL client's
first message before its link existed and dropped it: the connection hung.
"""

from __future__ import annotations

import asyncio
import random
import socket

import pytest

from chaos.toxiproxy.proxy import Proxy

pytestmark = pytest.mark.integration


def test_bytes_read_before_the_dial_are_forwarded() -> None:
    async def main() -> bytes:
        loop = asyncio.get_running_loop()
        got: asyncio.Future[bytes] = loop.create_future()

        async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            got.set_result(await reader.readexactly(5))
            writer.close()

        upstream = await asyncio.start_server(handle, "127.0.0.1", 0)
        port = upstream.sockets[0].getsockname()[1]
        proxy = Proxy("p", "127.0.0.1:0", f"127.0.0.1:{port}", random.Random(0))
        side = proxy._accept()  # what the proxy's listener does for each client
        ours, theirs = socket.socketpair()
        try:
            await loop.connect_accepted_socket(lambda: side, ours)  # connection_made: pause, dial
            side.data_received(b"hello")  # as old CPython delivers it while the dial is under way
            return await asyncio.wait_for(got, 5)
        finally:
            proxy.stop()
            upstream.close()
            theirs.close()

    assert asyncio.run(main()) == b"hello"
