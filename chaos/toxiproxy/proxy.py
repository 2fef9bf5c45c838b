"""Proxies: a listening socket, the upstream it dials per client, and its open connections.

Address handling follows Go's ``net.Listen`` as Toxiproxy clients observe it: a
hostname binds its first IPv4 address (``localhost:N`` is reported as
``127.0.0.1:N``); a wildcard binds one dual-stack IPv6 socket reported as
``[::]:N``.  Errors carry Go-like texts since clients surface them verbatim.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import ipaddress
import logging
import os
import random
import socket
import struct
from collections.abc import Callable
from dataclasses import dataclass, field

from chaos.toxiproxy.link import Link
from chaos.toxiproxy.toxics import Toxic

log = logging.getLogger(__name__)


class ProxyError(Exception):
    """An API-visible failure with its HTTP status (500 for listen/bind errors)."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.message = message


# ---------------------------------------------------------------------------- addresses


def split_host_port(address: str) -> tuple[str, str]:
    """Go's net.SplitHostPort (the subset that matters): ``host:port``, ``[v6]:port``, ``:port``."""
    if address.startswith("["):
        end = address.find("]")
        if end < 0:
            raise ValueError(f"address {address}: missing ']' in address")
        host, rest = address[1:end], address[end + 1 :]
        if not rest.startswith(":"):
            raise ValueError(f"address {address}: missing port in address")
        return host, rest[1:]
    if ":" not in address:
        raise ValueError(f"address {address}: missing port in address")
    host, _, port = address.rpartition(":")
    if ":" in host:
        raise ValueError(f"address {address}: too many colons in address")
    return host, port


def parse_port(address: str, port: str) -> int:
    if port == "":
        return 0
    if not port.isdigit():
        try:
            return socket.getservbyname(port, "tcp")
        except OSError:
            raise ValueError(f"lookup tcp/{port}: unknown port") from None
    value = int(port)
    if value > 65535:
        raise ValueError(f"address {address}: invalid port")
    return value


def join_host_port(host: str, port: int) -> str:
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


def _is_wildcard(host: str) -> bool:
    return host in ("", "0.0.0.0", "::")


@dataclass(frozen=True)
class BindTarget:
    family: int
    host: str
    port: int


async def resolve_listen(address: str) -> BindTarget:
    """Resolve a listen address the way Go would (IPv4 first), without binding."""
    try:
        host, port_s = split_host_port(address) if address else ("", "0")
        port = parse_port(address, port_s)
    except ValueError as exc:
        raise ProxyError(500, f"listen tcp: {exc}") from None
    if _is_wildcard(host):
        return BindTarget(socket.AF_INET6 if socket.has_ipv6 else socket.AF_INET, host or "::", port)
    try:
        ip = ipaddress.ip_address(host.split("%")[0])
        return BindTarget(socket.AF_INET6 if ip.version == 6 else socket.AF_INET, host, port)
    except ValueError:
        pass
    loop = asyncio.get_running_loop()
    try:
        infos = await loop.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    except OSError:
        raise ProxyError(500, f"listen tcp: lookup {host}: no such host") from None
    infos.sort(key=lambda info: info[0] != socket.AF_INET)
    family, _, _, _, sockaddr = infos[0]
    return BindTarget(family, sockaddr[0], port)


def bind_socket(target: BindTarget, shown: str) -> socket.socket:
    """A listening socket with SO_REUSEADDR; a wildcard gets a dual-stack IPv6 socket."""
    family, host = target.family, target.host
    if _is_wildcard(host):
        family, host = (socket.AF_INET6, "::") if socket.has_ipv6 else (socket.AF_INET, "0.0.0.0")
    sock = socket.socket(family, socket.SOCK_STREAM)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        if family == socket.AF_INET6 and _is_wildcard(target.host):
            sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 0)
        sock.bind((host, target.port))
        sock.listen(1024)
        sock.setblocking(False)
    except OSError as exc:
        sock.close()
        if family == socket.AF_INET6 and _is_wildcard(target.host) and exc.errno == errno.EAFNOSUPPORT:
            return bind_socket(BindTarget(socket.AF_INET, "0.0.0.0", target.port), shown)
        reason = os.strerror(exc.errno).lower() if exc.errno else str(exc)
        raise ProxyError(500, f"listen tcp {shown}: bind: {reason}") from None
    return sock


def bound_address(sock: socket.socket) -> str:
    host, port = sock.getsockname()[:2]
    if sock.family == socket.AF_INET6 and host == "::":
        return f"[::]:{port}"
    return join_host_port(host, port)


def shown_target(target: BindTarget) -> str:
    if _is_wildcard(target.host):
        return f"[::]:{target.port}"
    return join_host_port(target.host, target.port)


async def open_listener(address: str) -> socket.socket:
    target = await resolve_listen(address)
    return bind_socket(target, shown_target(target))


async def same_listen(a: str, b: str) -> bool:
    """Go 2.12 compares listen addresses after resolution (``localhost:P`` == ``127.0.0.1:P``)."""
    if a == b:
        return True
    try:
        ta, tb = await resolve_listen(a), await resolve_listen(b)
    except ProxyError:
        return False
    if _is_wildcard(ta.host) and _is_wildcard(tb.host):
        return ta.port == tb.port and ta.host == tb.host
    return (ta.host, ta.port) == (tb.host, tb.port)


# ---------------------------------------------------------------------------- connections


_LINGER_RST = struct.pack("ii", 1, 0)


def _set_rst(transport: asyncio.BaseTransport) -> None:
    sock = transport.get_extra_info("socket")
    if sock is not None:
        with contextlib.suppress(OSError):
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, _LINGER_RST)


class _Side(asyncio.Protocol):
    """One socket of a connection; ``out`` is the link it feeds, ``into`` the link writing to it."""

    def __init__(self, conn: Connection, is_client: bool) -> None:
        self.conn = conn
        self.is_client = is_client
        self.transport: asyncio.Transport | None = None
        self.out: Link | None = None
        self.into: Link | None = None
        # Read before the links exist. The client side is paused in connection_made until the
        # upstream is dialled, but CPython before 3.11.3 adds the reader after connection_made
        # regardless, so data can arrive early; it is kept and fed once the link is there.
        self.early: list[bytes] = []
        self.early_eof = False

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]
        if self.is_client:
            self.conn.accepted()

    def data_received(self, data: bytes) -> None:
        out = self.out
        if out is not None:
            out.feed(data)
        else:
            self.early.append(data)

    def eof_received(self) -> bool:
        if self.out is not None:
            self.out.feed_eof()
        else:
            self.early_eof = True
        return True  # keep the socket: data may still flow the other way until the EOF lands

    def connection_lost(self, exc: Exception | None) -> None:
        self.conn.side_lost(self)

    def pause_writing(self) -> None:
        if self.into is not None:
            self.into.set_dst_full(True)

    def resume_writing(self) -> None:
        if self.into is not None:
            self.into.set_dst_full(False)


class Connection:
    """A client and its upstream, joined by an upstream and a downstream link."""

    def __init__(self, proxy: Proxy) -> None:
        self.proxy = proxy
        self.client = _Side(self, True)
        self.server = _Side(self, False)
        self.links: dict[str, Link] = {}
        self.closed = False
        self._dial: asyncio.Task[None] | None = None
        self._reset_handle: asyncio.TimerHandle | None = None
        self._lost = 0
        self.reported = False

    def accepted(self) -> None:
        assert self.client.transport is not None
        self.client.transport.pause_reading()
        self._dial = asyncio.get_running_loop().create_task(self._connect())

    async def _connect(self) -> None:
        loop = asyncio.get_running_loop()
        client = self.client.transport
        assert client is not None
        try:
            host, port_s = split_host_port(self.proxy.upstream)
            port = parse_port(self.proxy.upstream, port_s)
            await loop.create_connection(lambda: self.server, host or "localhost", port)
        except (OSError, ValueError) as exc:
            log.info("proxy %s: upstream %s unreachable: %s", self.proxy.name, self.proxy.upstream, exc)
            self.closed = True
            client.close()  # the client sees EOF, as with Toxiproxy
            return
        server = self.server.transport
        assert server is not None
        if self.closed:
            server.abort()
            return
        rng = self.proxy.rng
        up = Link(self, "upstream", client, server, self.proxy.toxics_for("upstream"), rng)
        down = Link(self, "downstream", server, client, self.proxy.toxics_for("downstream"), rng)
        self.links = {"upstream": up, "downstream": down}
        self.client.out, self.client.into = up, down
        self.server.out, self.server.into = down, up
        early, self.client.early = self.client.early, []
        for chunk in early:
            up.feed(chunk)
        if self.client.early_eof:
            up.feed_eof()
        client.resume_reading()

    def link_finished(self, link: Link) -> None:
        """EOF reached ``link``'s destination: close it; the other link then ends too (no half-close)."""
        link.dst.close()
        other = self.links["downstream" if link.direction == "upstream" else "upstream"]
        other.feed_eof()

    def side_lost(self, side: _Side) -> None:
        self._lost += 1
        if side.out is not None:
            side.out.feed_eof()  # data already read from this socket still goes through
        if side.into is not None and not side.into.done:
            side.into.finish()  # nothing can be written to it any more
        other = self.server if side is self.client else self.client
        if self._lost >= 2 or other.transport is None:
            self._cleanup()

    def _cleanup(self) -> None:
        self.closed = True
        if self._reset_handle is not None:
            self._reset_handle.cancel()
        for link in self.links.values():
            link.stop()
        self.proxy.connection_done(self)

    def abort(self, rst: bool = False) -> None:
        """Tear down both sockets now (proxy disabled/deleted, or reset_peer firing)."""
        if self._dial is not None and not self._dial.done():
            self._dial.cancel()
        self.closed = True
        for link in self.links.values():
            link.stop()
        for side in (self.client, self.server):
            if side.transport is not None:
                if rst:
                    _set_rst(side.transport)
                side.transport.abort()

    def reset_at(self, when: float) -> None:
        if self._reset_handle is None and not self.closed:
            self._reset_handle = asyncio.get_running_loop().call_at(when, self.abort, True)


# ---------------------------------------------------------------------------- proxy


@dataclass
class Proxy:
    """A named proxy; toxics are kept per direction in insertion order."""

    name: str
    listen: str
    upstream: str
    rng: random.Random
    on_link_done: Callable[[Proxy, Link], None] | None = None
    enabled: bool = False
    toxics: list[Toxic] = field(default_factory=list)
    connections: set[Connection] = field(default_factory=set)
    _server: asyncio.base_events.Server | None = None

    def toxics_for(self, direction: str) -> list[Toxic]:
        return [t for t in self.toxics if t.direction == direction]

    def find_toxic(self, name: str) -> Toxic | None:
        return next((t for t in self.toxics if t.name == name), None)

    def to_json(self) -> dict[str, object]:
        ordered = self.toxics_for("upstream") + self.toxics_for("downstream")
        return {
            "name": self.name,
            "listen": self.listen,
            "upstream": self.upstream,
            "enabled": self.enabled,
            "toxics": [t.to_json() for t in ordered],
        }

    # --- start / stop ----------------------------------------------------------------------------

    async def start(self) -> None:
        if self._server is not None:
            raise ProxyError(500, "already started")
        sock = await open_listener(self.listen)
        self.listen = bound_address(sock)
        loop = asyncio.get_running_loop()
        self._server = await loop.create_server(self._accept, sock=sock)
        self.enabled = True

    def _accept(self) -> _Side:
        conn = Connection(self)
        self.connections.add(conn)
        return conn.client

    def stop(self) -> None:
        """Close the listener and every open connection (new connects are refused)."""
        if self._server is not None:
            self._server.close()
            self._server = None
        self.enabled = False
        for conn in list(self.connections):
            conn.abort()
        self.connections.clear()

    def connection_done(self, conn: Connection) -> None:
        self.connections.discard(conn)
        if conn.reported:
            return
        conn.reported = True
        if self.on_link_done is not None:
            for link in conn.links.values():
                self.on_link_done(self, link)

    # --- toxics on live connections ---------------------------------------------------------------

    def add_toxic(self, toxic: Toxic) -> None:
        self.toxics.append(toxic)
        for conn in self.connections:
            link = conn.links.get(toxic.direction)
            if link is not None:
                link.add_toxic(toxic)

    def update_toxic(self, toxic: Toxic) -> None:
        for conn in self.connections:
            link = conn.links.get(toxic.direction)
            if link is not None:
                link.update_toxic(toxic)

    def remove_toxic(self, toxic: Toxic) -> None:
        self.toxics.remove(toxic)
        for conn in list(self.connections):
            link = conn.links.get(toxic.direction)
            if link is not None:
                link.remove_toxic(toxic)
