"""Fixtures: an embedded server in its own thread, an HTTP helper, and raw socket pairs through a proxy."""

from __future__ import annotations

import contextlib
import socket
import threading
import time
from collections.abc import Iterator
from typing import Any

import pytest
import requests

from chaos.toxiproxy import ToxiproxyServer

IO_TIMEOUT = 10.0  # only fires on a hang


class Api:
    """Thin ``requests`` wrapper bound to one server URL."""

    def __init__(self, url: str) -> None:
        self.url = url
        self.session = requests.Session()

    def __call__(self, method: str, path: str, json: Any = None, **kw: Any) -> requests.Response:
        return self.session.request(method, self.url + path, json=json, timeout=IO_TIMEOUT, **kw)

    def create(self, name: str, upstream: str, listen: str = "127.0.0.1:0", **extra: Any) -> dict[str, Any]:
        resp = self("POST", "/proxies", {"name": name, "upstream": upstream, "listen": listen, **extra})
        assert resp.status_code == 201, resp.text
        return resp.json()

    def toxic(self, proxy: str, type_: str, stream: str = "downstream", **attrs: Any) -> dict[str, Any]:
        body = {"type": type_, "stream": stream, "attributes": attrs}
        resp = self("POST", f"/proxies/{proxy}/toxics", body)
        assert resp.status_code == 200, resp.text
        return resp.json()


@pytest.fixture
def server() -> Iterator[ToxiproxyServer]:
    with ToxiproxyServer(seed=1) as srv:
        yield srv


@pytest.fixture
def api(server: ToxiproxyServer) -> Iterator[Api]:
    client = Api(server.url)
    yield client
    client.session.close()


class Upstream:
    """A listening socket the test accepts from itself, so it controls both ends of a connection."""

    def __init__(self) -> None:
        self.sock = socket.create_server(("127.0.0.1", 0))
        self.sock.settimeout(IO_TIMEOUT)
        self.port = self.sock.getsockname()[1]
        self.addr = f"127.0.0.1:{self.port}"
        self.accepted: list[socket.socket] = []

    def accept(self) -> socket.socket:
        conn, _ = self.sock.accept()
        conn.settimeout(IO_TIMEOUT)
        self.accepted.append(conn)
        return conn

    def close(self) -> None:
        for conn in self.accepted:
            conn.close()
        self.sock.close()


@pytest.fixture
def upstream() -> Iterator[Upstream]:
    up = Upstream()
    yield up
    up.close()


class EchoServer:
    """A threaded echo upstream."""

    def __init__(self) -> None:
        self.sock = socket.create_server(("127.0.0.1", 0))
        self.port = self.sock.getsockname()[1]
        self.addr = f"127.0.0.1:{self.port}"
        self._conns: list[socket.socket] = []
        self._thread = threading.Thread(target=self._accept, daemon=True)
        self._thread.start()

    def _accept(self) -> None:
        while True:
            try:
                conn, _ = self.sock.accept()
            except OSError:
                return
            self._conns.append(conn)
            threading.Thread(target=self._echo, args=(conn,), daemon=True).start()

    @staticmethod
    def _echo(conn: socket.socket) -> None:
        with contextlib.suppress(OSError), conn:
            while data := conn.recv(65536):
                conn.sendall(data)

    def close(self) -> None:
        with contextlib.suppress(OSError):
            self.sock.shutdown(socket.SHUT_RDWR)  # wakes the blocked accept()
        self.sock.close()
        for conn in self._conns:
            with contextlib.suppress(OSError):
                conn.shutdown(socket.SHUT_RDWR)
            conn.close()
        self._thread.join(5)


@pytest.fixture
def echo() -> Iterator[EchoServer]:
    srv = EchoServer()
    yield srv
    srv.close()


def port_of(listen: str) -> int:
    return int(listen.rsplit(":", 1)[1])


def connect(port: int) -> socket.socket:
    sock = socket.create_connection(("127.0.0.1", port), timeout=IO_TIMEOUT)
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    return sock


@contextlib.contextmanager
def pair(port: int, upstream: Upstream) -> Iterator[tuple[socket.socket, socket.socket]]:
    """(client socket, server socket) joined through the proxy on ``port``."""
    client = connect(port)
    try:
        server = upstream.accept()
        yield client, server
    finally:
        client.close()


def recv_exact(sock: socket.socket, n: int) -> bytes:
    data = bytearray()
    while len(data) < n:
        chunk = sock.recv(n - len(data))
        if not chunk:
            raise EOFError(f"EOF after {len(data)} of {n} bytes")
        data += chunk
    return bytes(data)


def recv_until_eof(sock: socket.socket) -> bytes:
    data = bytearray()
    while chunk := sock.recv(65536):
        data += chunk
    return bytes(data)


def wait_for(predicate: Any, timeout: float = IO_TIMEOUT, interval: float = 0.005) -> None:
    """Poll a condition with a timeout that only fires on a hang."""
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise TimeoutError("condition not met")
        time.sleep(interval)


def is_listening(port: int) -> bool:
    try:
        socket.create_connection(("127.0.0.1", port), timeout=2).close()
    except ConnectionRefusedError:
        return False
    return True
