"""Toxics and connection handling over real sockets (TOXIPROXY.md sections 2 and 3).

Timing: lower bounds are tight (a toxic must delay at least this much); upper
bounds are generous because the machine is shared, but still far below what the
wrong behaviour (cumulative delays, no close, ...) would take.
"""

from __future__ import annotations

import contextlib
import socket
import struct
import threading
import time

import pytest

from tests.toxiproxy.conftest import (
    Api,
    EchoServer,
    Upstream,
    connect,
    is_listening,
    pair,
    port_of,
    recv_exact,
    recv_until_eof,
)

pytestmark = pytest.mark.integration

SLACK = 0.25  # upper-bound slack for a loaded 2-core machine


def _proxy(api: Api, upstream: str) -> int:
    return port_of(api.create("p", upstream)["listen"])


def _rtt(sock: socket.socket, payload: bytes = b"ping") -> float:
    start = time.monotonic()
    sock.sendall(payload)
    assert recv_exact(sock, len(payload)) == payload
    return time.monotonic() - start


# --- plain relaying ----------------------------------------------------------------------------------------


def test_bytes_arrive_intact_then_close(api: Api, upstream: Upstream) -> None:
    port = _proxy(api, upstream.addr)
    big = bytes(range(256)) * 256  # 64 KiB
    with pair(port, upstream) as (client, server):
        client.sendall(b"hello ")
        client.sendall(b"world")
        assert recv_exact(server, 11) == b"hello world"
        client.sendall(big)
        assert recv_exact(server, len(big)) == big
        server.sendall(big)
        assert recv_exact(client, len(big)) == big
        client.close()
        assert recv_until_eof(server) == b""


def test_half_close_tears_down_both_directions(api: Api, upstream: Upstream) -> None:
    port = _proxy(api, upstream.addr)
    with pair(port, upstream) as (client, server):
        client.sendall(b"last words")
        client.shutdown(socket.SHUT_WR)
        assert recv_until_eof(server) == b"last words"
        assert recv_until_eof(client) == b""  # no half-close, as in Toxiproxy


def test_dead_upstream_gives_eof_quickly(api: Api) -> None:
    with socket.create_server(("127.0.0.1", 0)) as s:
        dead = f"127.0.0.1:{s.getsockname()[1]}"
    port = _proxy(api, dead)
    start = time.monotonic()
    with connect(port) as client:
        assert client.recv(10) == b""
    assert time.monotonic() - start < 0.5


def test_disable_closes_connections_and_enable_reuses_port(api: Api, echo: EchoServer) -> None:
    port = _proxy(api, echo.addr)
    with connect(port) as client:
        _rtt(client)
        api("POST", "/proxies/p", {"enabled": False})
        with pytest.raises(ConnectionRefusedError):
            socket.create_connection(("127.0.0.1", port), timeout=5)
        # a close with unread data may surface as a reset; either way it is closed
        with contextlib.suppress(ConnectionResetError):
            assert client.recv(10) == b""
    api("POST", "/proxies/p", {"enabled": True})
    with connect(port) as client:
        _rtt(client)


def test_persistent_connection_survives_resets(api: Api, echo: EchoServer) -> None:
    port = _proxy(api, echo.addr)
    with connect(port) as client:
        for _ in range(2):
            api.toxic("p", "noop")
            api("POST", "/reset")
            _rtt(client)


# --- latency -----------------------------------------------------------------------------------------------


@pytest.mark.parametrize(("up_ms", "down_ms"), [(100, 0), (0, 100), (100, 100), (200, 50)])
def test_latency_each_direction(api: Api, echo: EchoServer, up_ms: int, down_ms: int) -> None:
    port = _proxy(api, echo.addr)
    if up_ms:
        api.toxic("p", "latency", "upstream", latency=up_ms)
    if down_ms:
        api.toxic("p", "latency", "downstream", latency=down_ms, jitter=10)
    jitter = 0.01 if down_ms else 0.0
    want = (up_ms + down_ms) / 1000
    with connect(port) as client:
        for _ in range(3):
            took = _rtt(client)
            assert want - jitter - 0.002 <= took <= want + jitter + SLACK


def test_stacked_latency_adds_up(api: Api, echo: EchoServer) -> None:
    port = _proxy(api, echo.addr)
    api("POST", "/proxies/p/toxics", {"type": "latency", "name": "a", "attributes": {"latency": 150}})
    api("POST", "/proxies/p/toxics", {"type": "latency", "name": "b", "attributes": {"latency": 150}})
    with connect(port) as client:
        took = _rtt(client)
    assert 0.3 - 0.002 <= took <= 0.3 + SLACK


def test_latency_pipelines_instead_of_accumulating(api: Api, upstream: Upstream) -> None:
    port = _proxy(api, upstream.addr)
    api.toxic("p", "latency", "upstream", latency=300)
    with pair(port, upstream) as (client, server):
        start = time.monotonic()
        for i in range(10):  # ten chunks 20 ms apart: cumulative delays would take 3 s
            client.sendall(struct.pack("!I", i))
            time.sleep(0.02)
        got = recv_exact(server, 40)
        took = time.monotonic() - start
    assert got == b"".join(struct.pack("!I", i) for i in range(10))
    assert 0.3 + 0.18 <= took <= 0.5 + 2 * SLACK


# --- bandwidth, slicer, limit_data -------------------------------------------------------------------------


def test_bandwidth_limits_rate_and_keeps_bytes(api: Api, upstream: Upstream) -> None:
    port = _proxy(api, upstream.addr)
    api.toxic("p", "bandwidth", rate=1000)  # 1000 KB/s
    payload = bytes(range(256)) * 1875  # 480 000 bytes
    with pair(port, upstream) as (client, server):
        start = time.monotonic()
        server.sendall(payload)
        got = recv_exact(client, len(payload))
        took = time.monotonic() - start
    assert got == payload
    assert 0.45 <= took <= 0.48 + 2 * SLACK


def test_bandwidth_zero_stalls_until_removed(api: Api, upstream: Upstream) -> None:
    port = _proxy(api, upstream.addr)
    api.toxic("p", "bandwidth", rate=0)
    with pair(port, upstream) as (client, server):
        server.sendall(b"frozen")
        client.settimeout(0.3)
        with pytest.raises(TimeoutError):
            client.recv(10)
        client.settimeout(10)
        api("DELETE", "/proxies/p/toxics/bandwidth_downstream")
        assert recv_exact(client, 6) == b"frozen"  # held, not dropped


def test_slicer_splits_and_delays(api: Api, upstream: Upstream) -> None:
    port = _proxy(api, upstream.addr)
    body = {"type": "slicer", "attributes": {"average_size": 1, "size_variation": 0, "delay": 20000}}
    assert api("POST", "/proxies/p/toxics", body).status_code == 200
    with pair(port, upstream) as (client, server):
        start = time.monotonic()
        server.sendall(b"abcdefghij")
        reads = []
        while sum(map(len, reads)) < 10:
            reads.append(client.recv(10))
        took = time.monotonic() - start
    assert b"".join(reads) == b"abcdefghij"
    assert len(reads) > 1 and took >= 9 * 0.02 - 0.005  # ten one-byte pieces, 20 ms apart


@pytest.mark.parametrize(
    ("writes", "expected"),
    [([50], [50]), ([100], [100]), ([150], [100]), ([25, 25, 25, 25], [100]), ([90, 20], [90, 10])],
)
def test_limit_data(api: Api, upstream: Upstream, writes: list[int], expected: list[int]) -> None:
    port = _proxy(api, upstream.addr)
    api.toxic("p", "limit_data", "upstream", bytes=100)
    with pair(port, upstream) as (client, server):
        sent = b""
        for n in writes:
            chunk = bytes([len(sent) % 251]) * n
            client.sendall(chunk)
            sent += chunk
            time.sleep(0.02)
        total = sum(expected)
        assert recv_exact(server, total) == sent[:total]
        if total < 100:
            server.settimeout(0.2)
            with pytest.raises(TimeoutError):
                server.recv(1)  # still open below the limit
        else:
            assert recv_until_eof(server) == b""  # closed after exactly `bytes`


def test_limit_data_zero_closes_on_first_chunk(api: Api, upstream: Upstream) -> None:
    port = _proxy(api, upstream.addr)
    api.toxic("p", "limit_data", "upstream", bytes=0)
    with pair(port, upstream) as (client, server):
        client.sendall(b"x")
        assert recv_until_eof(server) == b""


def test_limit_data_added_to_live_link_counts_from_then(api: Api, upstream: Upstream) -> None:
    port = _proxy(api, upstream.addr)
    with pair(port, upstream) as (client, server):
        client.sendall(b"a" * 500)
        assert recv_exact(server, 500) == b"a" * 500
        api.toxic("p", "limit_data", "upstream", bytes=10)
        api.toxic("p", "noop", "upstream")  # restarting the stage keeps its count
        client.sendall(b"b" * 8)
        assert recv_exact(server, 8) == b"b" * 8
        client.sendall(b"c" * 8)
        assert recv_exact(server, 2) == b"cc"
        assert recv_until_eof(server) == b""


# --- timeout, slow_close, reset_peer, limit_time -----------------------------------------------------------


def test_timeout_drops_then_closes(api: Api, upstream: Upstream) -> None:
    port = _proxy(api, upstream.addr)
    api.toxic("p", "timeout", timeout=200)
    with pair(port, upstream) as (client, server):
        start = time.monotonic()
        server.sendall(b"dropped")
        assert recv_until_eof(client) == b""
        took = time.monotonic() - start
    assert 0.2 - 0.002 <= took <= 0.2 + SLACK


def test_removing_timeout_closes_both_sides(api: Api, upstream: Upstream) -> None:
    port = _proxy(api, upstream.addr)
    api.toxic("p", "latency", latency=100)
    api.toxic("p", "timeout", timeout=0)
    with pair(port, upstream) as (client, server):
        server.sendall(b"lost")
        api("DELETE", "/proxies/p/toxics/latency_downstream")  # bug #159: must not hang
        assert api("DELETE", "/proxies/p/toxics/timeout_downstream").status_code == 204
        start = time.monotonic()
        assert recv_until_eof(client) == b""
        assert recv_until_eof(server) == b""
        assert time.monotonic() - start < 1.0


def test_toxicity_zero_then_one(api: Api, upstream: Upstream) -> None:
    port = _proxy(api, upstream.addr)
    api("POST", "/proxies/p/toxics", {"type": "timeout", "toxicity": 0, "attributes": {"timeout": 100}})
    with pair(port, upstream) as (client, server):
        server.sendall(b"ok")
        assert recv_exact(client, 2) == b"ok"  # lost the draw: pass-through
        api("POST", "/proxies/p/toxics/timeout_downstream", {"toxicity": 1})
        start = time.monotonic()
        assert recv_until_eof(client) == b""
        assert time.monotonic() - start < 0.1 + SLACK


def test_slow_close_delays_only_the_close(api: Api, upstream: Upstream) -> None:
    port = _proxy(api, upstream.addr)
    api.toxic("p", "slow_close", delay=300)
    with pair(port, upstream) as (client, server):
        start = time.monotonic()
        server.sendall(b"bye")
        assert recv_exact(client, 3) == b"bye"
        assert time.monotonic() - start < SLACK
        server.close()
        assert recv_until_eof(client) == b""
        assert time.monotonic() - start >= 0.3 - 0.002


@pytest.mark.parametrize(("stream", "timeout_ms"), [("upstream", 0), ("upstream", 100), ("downstream", 100)])
def test_reset_peer_sends_rst(api: Api, upstream: Upstream, stream: str, timeout_ms: int) -> None:
    port = _proxy(api, upstream.addr)
    api.toxic("p", "reset_peer", stream, timeout=timeout_ms)
    with pair(port, upstream) as (client, server):
        start = time.monotonic()
        (client if stream == "upstream" else server).sendall(b"trigger")
        with pytest.raises(ConnectionResetError):
            client.recv(10)
        assert client.recv(10) == b""
        assert time.monotonic() - start >= timeout_ms / 1000 - 0.002
        with pytest.raises(ConnectionResetError):
            server.recv(10)


def test_reset_peer_idle_connection_is_not_reset(api: Api, upstream: Upstream) -> None:
    port = _proxy(api, upstream.addr)
    api.toxic("p", "reset_peer", timeout=0)
    with pair(port, upstream) as (client, _server):
        client.settimeout(0.3)
        with pytest.raises(TimeoutError):
            client.recv(10)


def test_limit_time_cuts_a_busy_connection(api: Api, echo: EchoServer) -> None:
    port = _proxy(api, echo.addr)
    assert api("POST", "/proxies/p/toxics", {"type": "limit_time", "attributes": {"time": 400}}).ok
    with connect(port) as client:
        start = time.monotonic()
        with pytest.raises((EOFError, ConnectionError)):
            while time.monotonic() - start < 5:
                _rtt(client, b"tick")  # never idle
                time.sleep(0.01)
        took = time.monotonic() - start
    assert 0.4 - 0.002 <= took <= 0.4 + SLACK


def test_declared_toxics_affect_the_first_connection(api: Api, echo: EchoServer) -> None:
    items = [{"name": "p", "upstream": echo.addr, "listen": "127.0.0.1:0",
              "toxics": [{"type": "latency", "attributes": {"latency": 150}}]}]  # fmt: skip
    port = port_of(api("POST", "/populate", items).json()["proxies"][0]["listen"])
    with connect(port) as client:
        assert _rtt(client) >= 0.15 - 0.002


# --- live add/remove without loss or reordering ------------------------------------------------------------


@pytest.mark.parametrize("stream", ["upstream", "downstream"])
def test_no_data_dropped_or_reordered_while_toxics_flap(api: Api, upstream: Upstream, stream: str) -> None:
    port = _proxy(api, upstream.addr)
    chunks = 160
    payload = [struct.pack("!I", i) * 16384 for i in range(chunks)]  # numbered 64 KiB chunks
    with pair(port, upstream) as (client, server):
        src, dst = (client, server) if stream == "upstream" else (server, client)
        received: list[bytes] = []
        done = threading.Event()

        def reader() -> None:
            received.append(recv_until_eof(dst))
            done.set()

        def writer() -> None:
            for chunk in payload:
                src.sendall(chunk)
                time.sleep(0.001)
            src.shutdown(socket.SHUT_WR)

        threads = [threading.Thread(target=reader, daemon=True), threading.Thread(target=writer, daemon=True)]
        for t in threads:
            t.start()
        kinds = [
            ("latency", {"latency": 1000}),
            ("bandwidth", {"rate": 100}),
            ("slicer", {"average_size": 1000, "size_variation": 500, "delay": 100}),
            ("noop", {}),
        ]
        flaps = 0
        while not done.is_set() and flaps < 2000:
            type_, attrs = kinds[flaps % len(kinds)]
            body = {"type": type_, "name": "flap", "stream": stream, "attributes": attrs}
            assert api("POST", "/proxies/p/toxics", body).status_code == 200
            assert api("DELETE", "/proxies/p/toxics/flap").status_code == 204
            flaps += 1
        for t in threads:
            t.join(30)
        assert done.is_set()
    data = received[0]
    assert len(data) == chunks * 65536
    assert data == b"".join(payload)
    assert flaps > 4


def test_echo_round_trips_while_noop_toxics_flap(api: Api, echo: EchoServer) -> None:
    port = _proxy(api, echo.addr)
    stop = threading.Event()

    def flap() -> None:
        i = 0
        while not stop.is_set():
            stream = ("upstream", "downstream")[i % 2]
            api("POST", "/proxies/p/toxics", {"type": "noop", "name": f"n{i}", "stream": stream})
            api("DELETE", f"/proxies/p/toxics/n{i}")
            i += 1

    t = threading.Thread(target=flap, daemon=True)
    t.start()
    try:
        with connect(port) as client:
            for i in range(100):
                msg = struct.pack("!I", i) * 8
                client.sendall(msg)
                assert recv_exact(client, len(msg)) == msg
    finally:
        stop.set()
        t.join(10)


def test_metrics_count_bytes_per_link(echo: EchoServer) -> None:
    from chaos.toxiproxy import ToxiproxyServer

    with ToxiproxyServer(proxy_metrics=True) as srv:
        api = Api(srv.url)
        body = api.create("m", echo.addr)
        with connect(port_of(body["listen"])) as client:
            client.sendall(b"12345")
            assert recv_exact(client, 5) == b"12345"
        labels = f'listener="{body["listen"]}",proxy="m",upstream="{echo.addr}"'
        want = f'toxiproxy_proxy_received_bytes_total{{direction="upstream",{labels}}} 5'

        def ready() -> bool:
            return want in api("GET", "/metrics").text

        deadline = time.monotonic() + 10
        while not ready():
            assert time.monotonic() < deadline
            time.sleep(0.01)
        assert (
            f'toxiproxy_proxy_sent_bytes_total{{direction="downstream",{labels}}} 5'
            in api("GET", "/metrics").text
        )
        api.session.close()
    assert not is_listening(port_of(body["listen"]))


# --- proxy updates on live connections ---------------------------------------------------------------------


def test_update_to_equivalent_listen_keeps_connections(api: Api, upstream: Upstream) -> None:
    port = _proxy(api, upstream.addr)
    with pair(port, upstream) as (client, server):
        got = api("PATCH", "/proxies/p", {"listen": f"localhost:{port}", "upstream": upstream.addr}).json()
        assert got["listen"] == f"127.0.0.1:{port}"
        client.sendall(b"still here")
        assert recv_exact(server, 10) == b"still here"


def test_update_upstream_restarts_and_drops_connections(
    api: Api, upstream: Upstream, echo: EchoServer
) -> None:
    port = _proxy(api, upstream.addr)
    with pair(port, upstream) as (client, server):
        got = api("PATCH", "/proxies/p", {"upstream": echo.addr}).json()
        assert got["upstream"] == echo.addr and got["enabled"] is True
        with contextlib.suppress(ConnectionResetError):
            assert client.recv(10) == b""
        with contextlib.suppress(ConnectionResetError):
            assert server.recv(10) == b""
    with connect(port) as client:
        client.sendall(b"echo")
        assert recv_exact(client, 4) == b"echo"


def test_delete_proxy_closes_connections(api: Api, upstream: Upstream) -> None:
    port = _proxy(api, upstream.addr)
    with pair(port, upstream) as (client, server):
        assert api("DELETE", "/proxies/p").status_code == 204
        with contextlib.suppress(ConnectionResetError):
            assert client.recv(10) == b""
        with contextlib.suppress(ConnectionResetError):
            assert server.recv(10) == b""


def test_removing_a_stall_while_the_writer_is_blocked(api: Api, upstream: Upstream) -> None:
    """Backpressure holds a blocked writer; removing the toxic releases every byte, in order."""
    port = _proxy(api, upstream.addr)
    api.toxic("p", "bandwidth", "upstream", rate=0)
    total = 48 * 1024 * 1024  # more than the proxy holds before it stops reading
    block = bytes(range(256)) * 4096  # 1 MiB
    sent = []

    def writer(sock: socket.socket) -> None:
        for _ in range(total // len(block)):
            sock.sendall(block)
        sent.append(True)
        sock.shutdown(socket.SHUT_WR)

    with pair(port, upstream) as (client, server):
        t = threading.Thread(target=writer, args=(client,), daemon=True)
        t.start()
        t.join(1.0)
        assert t.is_alive()  # blocked: the proxy stopped reading
        start = time.monotonic()
        assert api("DELETE", "/proxies/p/toxics/bandwidth_upstream").status_code == 204
        assert time.monotonic() - start < 1.0  # the API never waits for the data path
        data = recv_until_eof(server)
        t.join(30)
    assert sent and len(data) == total and data == block * (total // len(block))


def test_latency_does_not_cap_throughput(api: Api, upstream: Upstream) -> None:
    port = _proxy(api, upstream.addr)
    api.toxic("p", "latency", "upstream", latency=100)
    total = 64 * 1024 * 1024
    block = b"t" * (1024 * 1024)

    def writer(sock: socket.socket) -> None:
        for _ in range(total // len(block)):
            sock.sendall(block)

    with pair(port, upstream) as (client, server):
        t = threading.Thread(target=writer, args=(client,), daemon=True)
        start = time.monotonic()
        t.start()
        got = 0
        while got < total:
            chunk = server.recv(1 << 20)
            assert chunk
            got += len(chunk)
        took = time.monotonic() - start
        t.join(10)
    # Delaying each chunk after the previous one would take ~25 s here (256+ chunks x 100 ms).
    assert total / took / 1e6 >= 30, f"{total / took / 1e6:.0f} MB/s"


def test_connect_write_close_cycles_while_latency_flaps(api: Api, echo: EchoServer) -> None:
    port = _proxy(api, echo.addr)
    stop = threading.Event()
    errors: list[int] = []

    def flap() -> None:
        while not stop.is_set():
            body = {"type": "latency", "name": "l", "attributes": {"latency": 5}}
            if api("POST", "/proxies/p/toxics", body).status_code != 200:
                errors.append(1)
            if api("DELETE", "/proxies/p/toxics/l").status_code != 204:
                errors.append(2)

    t = threading.Thread(target=flap, daemon=True)
    t.start()
    try:
        for i in range(200):
            with connect(port) as client:
                client.sendall(struct.pack("!I", i))
                assert recv_exact(client, 4) == struct.pack("!I", i)
    finally:
        stop.set()
        t.join(10)
    assert errors == []
    assert api("GET", "/proxies/p").json()["enabled"] is True
