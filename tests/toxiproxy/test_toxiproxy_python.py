"""The unchanged toxiproxy-python client (0.1.1, blocking ``requests``) against the embedded server.

Every call the client offers is exercised; the server runs in its own thread, so
the client's blocking calls never stall it.
"""

from __future__ import annotations

import socket
import time
from collections.abc import Iterator

import pytest
from toxiproxy import Toxiproxy
from toxiproxy.api import APIConsumer
from toxiproxy.exceptions import InvalidToxic, NotFound, ProxyExists

from chaos.toxiproxy import ToxiproxyServer
from tests.toxiproxy.conftest import EchoServer, connect, is_listening, port_of, recv_exact

pytestmark = pytest.mark.integration


@pytest.fixture
def tp(server: ToxiproxyServer) -> Iterator[Toxiproxy]:
    saved = (APIConsumer.host, APIConsumer.port)
    client = Toxiproxy()
    client.update_api_consumer(server.host, server.port)
    yield client
    APIConsumer.host, APIConsumer.port = saved


def test_every_toxiproxy_python_call(tp: Toxiproxy, echo: EchoServer) -> None:
    assert tp.running() is True
    assert tp.version() == b'{"version": "2.12.0"}\n'
    assert tp.proxies() == {}

    proxy = tp.create(upstream=echo.addr, name="pg")
    assert proxy.name == "pg" and proxy.enabled is True and proxy.listen.startswith("127.0.0.1:")
    with pytest.raises(ProxyExists):
        tp.create(upstream=echo.addr, name="pg")
    disabled = tp.create(upstream=echo.addr, name="off", listen="127.0.0.1:0", enabled=False)
    assert disabled.enabled is False
    assert set(tp.proxies()) == {"pg", "off"}
    assert tp.get_proxy("pg").listen == proxy.listen
    assert tp.get_proxy("missing") is None

    port = port_of(proxy.listen)
    with connect(port) as s:
        start = time.monotonic()
        s.sendall(b"hi")
        assert recv_exact(s, 2) == b"hi"
        assert time.monotonic() - start < 0.1

    proxy.add_toxic(type="latency", attributes={"latency": 100, "jitter": 5})
    proxy.add_toxic(type="bandwidth", stream="upstream", name="bw", toxicity=0.5, attributes={"rate": 50})
    toxics = proxy.toxics()
    assert set(toxics) == {"latency_downstream", "bw"}
    lat = proxy.get_toxic("latency_downstream")
    assert lat.type == "latency" and lat.stream == "downstream" and lat.attributes["latency"] == 100
    assert proxy.get_toxic("nope") is None
    with pytest.raises(ProxyExists):
        proxy.add_toxic(type="latency")  # same default name -> 409
    with pytest.raises(InvalidToxic):
        proxy.add_toxic(type="walrus")
    with connect(port) as s:
        start = time.monotonic()
        s.sendall(b"hi")
        assert recv_exact(s, 2) == b"hi"
        assert time.monotonic() - start >= 0.095 - 0.002
    assert proxy.destroy_toxic("bw") is True
    with pytest.raises(NotFound):
        proxy.destroy_toxic("bw")

    with proxy.down():
        assert proxy.enabled is False
        with pytest.raises(ConnectionRefusedError):
            socket.create_connection(("127.0.0.1", port), timeout=5)
    assert proxy.enabled is True and is_listening(port)  # re-enabled on the same port
    proxy.disable()
    assert tp.get_proxy("pg").enabled is False
    proxy.enable()
    assert tp.get_proxy("pg").enabled is True

    assert tp.reset() is True
    assert proxy.toxics() == {} and tp.get_proxy("off").enabled is True

    # client-side populate: keeps identical proxies, recreates changed ones, returns new ones only
    same = {"name": "pg", "upstream": echo.addr, "listen": proxy.listen}
    fresh = {"name": "new", "upstream": echo.addr, "listen": "127.0.0.1:0"}
    created = tp.populate([same, fresh])
    assert [p.name for p in created] == ["new"]

    assert tp.destroy("pg") is False  # a str is not a Proxy: no request
    assert tp.destroy(tp.get_proxy("pg")) is True
    assert disabled.destroy() is True
    with pytest.raises(NotFound):
        disabled.destroy()
    tp.destroy_all()
    assert tp.proxies() == {}
