"""WebSocket connections: websockets' sans-I/O ``ServerProtocol`` under a plain ``asyncio.Protocol``.

websockets' asyncio server queues every incoming message in an assembler and
wakes a handler task for it: a task switch per frame, for every publish and
every ack. Here each TCP read is fed to the protocol and the messages it
parses are handed to the application right in the read callback, in order.
Outgoing bytes are collected per connection and written once per loop
iteration (one syscall however many frames a fan-out or a batch of replies
produced). The application talks to a :class:`Connection`; the
:class:`Listener` accepts them, answers plain HTTP on the same port through
the application's ``process_request`` and closes them all at shutdown.

Everything RFC 6455 is websockets' job: handshake checks (400, 426...), frame
parsing, size limits (1009), control frames, the closing handshake,
permessage-deflate. This module adds what its asyncio layer added: message
assembly, UTF-8 checks (1007), keepalive pings, open and close timeouts, flow
control in both directions.
"""

from __future__ import annotations

import asyncio
import contextlib
import http
import logging
import os
from collections import deque
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any, Protocol

from websockets.extensions.permessage_deflate import enable_server_permessage_deflate
from websockets.frames import CloseCode, Frame, Opcode
from websockets.http11 import Request, Response
from websockets.protocol import State
from websockets.server import ServerProtocol

log = logging.getLogger("broker")

OPEN, CLOSED = State.OPEN, State.CLOSED
TEXT, BINARY, CONT, PONG = Opcode.TEXT, Opcode.BINARY, Opcode.CONT, Opcode.PONG

#: What the application does with one complete message: nothing to wait for (the usual
#: case), or an awaitable; then later messages of this connection wait for it, in order.
MessageHandler = Callable[[str | bytes], Awaitable[None] | None]


class Application(Protocol):
    """What a :class:`Listener` needs from the code above it."""

    def process_request(self, conn: Connection, request: Request) -> Response | None:
        """Answer the request with a plain HTTP response, or None to go on with the WebSocket handshake."""

    def connection_open(self, conn: Connection) -> None:
        """The handshake succeeded; set ``conn.on_message``."""

    def connection_closed(self, conn: Connection) -> None:
        """The connection is gone and no handler of it is running any more."""


@dataclass(frozen=True, slots=True)
class Settings:
    max_size: int | None = 2**20  # largest incoming message; websockets closes with 1009 above it
    compression: bool = False  # permessage-deflate (per connection: frames cannot be shared then)
    ping_interval: float | None = 20.0  # keepalive ping every interval; no pong by the next one: 1011
    open_timeout: float = 10.0  # a TCP connection that sends no request within it is dropped
    close_timeout: float = 2.0  # after our close frame or EOF, how long the peer may take to hang up
    max_queue: int = 64  # messages held while an awaited handler runs, before reading pauses
    write_limit: int = 2**15  # transport buffer high-water mark: above it the connection is not writable


_headers: dict[int, bytes] = {}  # payload length -> header of an uncompressed, final server text frame


def text_frame(data: bytes) -> bytes:
    """The wire bytes of an uncompressed server text frame, as ``ServerProtocol.send_text`` writes them.

    A fan-out builds them once and writes the same buffer to every recipient.
    The header depends only on the payload's length, so websockets' serializer
    builds it once per length (up to 64 KiB); that makes a frame a dict lookup
    and a concatenation instead of a ``Frame`` object and a serialization each,
    which on the broker's hot path (a message, a ``published`` and a ``persisted``
    per delivery) was measurable.
    """
    size = len(data)
    header = _headers.get(size)
    if header is None:
        if size >= 65536:
            return Frame(TEXT, data).serialize(mask=False)
        header = _headers[size] = Frame(TEXT, bytes(size)).serialize(mask=False)[:-size or None]
    return header + data


class Connection(asyncio.Protocol):
    """One client connection. The application sends through it and sets ``on_message``."""

    def __init__(self, app: Application, settings: Settings, listener: Listener) -> None:
        self.app = app
        self.settings = settings
        self.listener = listener
        extensions = enable_server_permessage_deflate(None) if settings.compression else None
        self.ws = ServerProtocol(extensions=extensions, max_size=settings.max_size)
        self.transport: asyncio.Transport | None = None
        self.request: Request | None = None
        self.context: Any = None  # the application's own state for this connection
        self.on_message: MessageHandler | None = None
        self.on_writable: Callable[[], None] | None = None  # called when a backed-up socket drains
        self.writable = True  # False while the transport's buffer is over the high-water mark
        self.open = False  # ws.state is OPEN, kept as a plain attribute: it is read on every send
        self.shared_frames = not settings.compression  # text_frame() bytes may be written as they are
        self.lost: asyncio.Future[None] = listener.loop.create_future()  # gone, and no handler running
        self._transport_lost: asyncio.Future[None] = listener.loop.create_future()
        self._out: list[bytes] = []
        self._eof = False  # the protocol asked to half-close once _out is written
        self._fragments: list[bytes] | None = None
        self._fragments_text = False
        self._inbox: deque[str | bytes] = deque()
        self._busy: asyncio.Task[None] | None = None
        self._reading_paused = False
        self._opened = False
        self._failed = False
        self._gone = False  # connection_lost() was called
        self._marked = False  # on the listener's list of connections to flush
        self._drain_waiters: list[asyncio.Future[None]] = []
        self._ping: bytes | None = None  # payload of the keepalive ping awaiting its pong
        self._timer: asyncio.TimerHandle | None = None  # open, keepalive or close deadline

    # --- asyncio callbacks ---------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        self.transport = transport
        transport.set_write_buffer_limits(self.settings.write_limit, self.settings.write_limit // 4)
        self.listener.connections.add(self)
        self._timer = self.listener.loop.call_later(self.settings.open_timeout, transport.abort)

    def data_received(self, data: bytes) -> None:
        ws = self.ws
        ws.receive_data(data)
        events = ws.events_received()
        out = ws.data_to_send()
        if out:  # the protocol answered something itself (pong, close echo, EOF)
            self._push(out)
            self.open = ws.state is OPEN  # a close frame came, or the protocol failed
        for event in events:
            if type(event) is Frame:
                op = event.opcode
                if op is TEXT and event.fin and self._busy is None and not self._failed:
                    # The usual frame, as _message() would handle it, without the call.
                    handler = self.on_message
                    if handler is None:
                        continue
                    try:
                        text = event.data.decode()
                    except UnicodeDecodeError as exc:
                        self.fail(CloseCode.INVALID_DATA, f"{exc.reason} at position {exc.start}")
                        continue
                    try:
                        pending = handler(text)
                    except Exception:  # the handler catches its own errors; never break the read callback
                        log.exception("internal error handling a frame")
                        continue
                    if pending is not None:
                        self._busy = self.listener.loop.create_task(self._work(pending))
                elif op is TEXT or op is BINARY:
                    if event.fin:
                        self._message(event.data, op is TEXT)
                    else:
                        self._fragments, self._fragments_text = [event.data], op is TEXT
                elif op is CONT:
                    if self._fragments is not None:  # the protocol refuses a CONT without a start
                        self._fragments.append(event.data)
                        if event.fin:
                            data, self._fragments = b"".join(self._fragments), None
                            self._message(data, self._fragments_text)
                elif op is PONG and self._ping is not None and event.data == self._ping:
                    self._ping = None
            else:
                assert isinstance(event, Request)
                self._handshake(event)

    def eof_received(self) -> None:
        self.ws.receive_eof()
        self.open = False
        self._pull()
        self.flush()
        # Returning None closes the transport: a WebSocket never writes after the peer's EOF.

    def connection_lost(self, exc: Exception | None) -> None:
        self.ws.receive_eof()  # idempotent; makes the state CLOSED
        self.open = False
        self.ws.data_to_send()
        self._out.clear()
        self.writable = False
        self._gone = True
        self._transport_lost.set_result(None)
        self._wake_drain_waiters()
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        if self._busy is None:
            self._closed()
        # else: the running handler calls _closed() when it is done, as a handler task would.

    def pause_writing(self) -> None:
        self.writable = False

    def resume_writing(self) -> None:
        self.writable = True
        self._wake_drain_waiters()
        if self.on_writable is not None and self.ws.state is not CLOSED:
            self.on_writable()

    def _wake_drain_waiters(self) -> None:
        waiters, self._drain_waiters = self._drain_waiters, []
        for w in waiters:
            if not w.done():
                w.set_result(None)

    # --- incoming --------------------------------------------------------------------

    def _handshake(self, request: Request) -> None:
        ws = self.ws
        self.request = request
        try:
            response = self.app.process_request(self, request)
        except Exception:
            log.exception("process_request failed")
            response = ws.reject(
                http.HTTPStatus.INTERNAL_SERVER_ERROR,
                "Failed to open a WebSocket connection.\nSee server log for more information.\n",
            )
        if response is None:
            response = ws.accept(request)  # 101, or 400 / 426 ... for a bad WebSocket request
        if response.status_code == 101 and not self.listener.serving:
            response = ws.reject(http.HTTPStatus.SERVICE_UNAVAILABLE, "Server is shutting down.\n")
        ws.send_response(response)
        self._pull()
        self.flush()
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        if ws.state is OPEN:
            self._opened = self.open = True
            self._keepalive(first=True)
            self.app.connection_open(self)
        else:
            self._close_deadline()

    def _message(self, payload: bytes, text: bool) -> None:
        if self._failed:
            return  # failed on an earlier message of the same read: nothing after it counts
        data: str | bytes
        if text:
            try:
                data = payload.decode()
            except UnicodeDecodeError as exc:
                self.fail(CloseCode.INVALID_DATA, f"{exc.reason} at position {exc.start}")
                return
        else:
            data = bytes(payload)
        if self._busy is not None:
            self._inbox.append(data)
            if len(self._inbox) >= self.settings.max_queue and not self._reading_paused:
                self._reading_paused = True
                assert self.transport is not None
                self.transport.pause_reading()  # TCP backpressure until the handler catches up
            return
        handler = self.on_message
        if handler is None:
            return
        try:
            pending = handler(data)
        except Exception:  # the handler catches its own errors; never break the read callback
            log.exception("internal error handling a frame")
            return
        if pending is not None:
            self._busy = self.listener.loop.create_task(self._work(pending))

    async def _work(self, pending: Awaitable[None]) -> None:
        """Run an awaited handler, then every message that arrived meanwhile, in order."""
        try:
            while True:
                try:
                    await pending
                except Exception:
                    log.exception("internal error handling a frame")
                while True:
                    if not self._inbox:
                        return
                    data = self._inbox.popleft()
                    if self._reading_paused and len(self._inbox) <= self.settings.max_queue // 4:
                        self._reading_paused = False
                        if self.transport is not None and not self.transport.is_closing():
                            self.transport.resume_reading()
                    handler = self.on_message
                    try:
                        result = handler(data) if handler is not None else None
                    except Exception:
                        log.exception("internal error handling a frame")
                        continue
                    if result is not None:
                        pending = result
                        break
        finally:
            self._busy = None
            if self._gone:
                self._closed()

    def _closed(self) -> None:
        if self.lost.done():
            return
        try:
            if self._opened:
                self.app.connection_closed(self)
        finally:
            self.listener.connections.discard(self)
            self.lost.set_result(None)

    # --- outgoing --------------------------------------------------------------------

    def _pull(self) -> None:
        """Move what the protocol wrote into this connection's output, keeping the order."""
        self._push(self.ws.data_to_send())

    def _push(self, chunks: list[bytes]) -> None:
        for chunk in chunks:
            if chunk:
                self._out.append(chunk)
            else:
                self._eof = True  # websockets' SEND_EOF: half-close once the rest is written
        self._mark()

    def _mark(self) -> None:
        if not self._marked:
            self._marked = True
            self.listener.dirty(self)

    def send_text(self, data: bytes, frame: bytes | None = None) -> None:
        """Queue one text message (UTF-8 ``data``) for this iteration's write.

        ``frame`` is ``text_frame(data)`` when the caller built it once for many
        connections. Without compression a frame is exactly what the protocol
        would write, so it goes straight into the output, in order with what the
        protocol wrote itself; with compression the protocol deflates it.
        Raises websockets' ``InvalidState`` once the connection is closing.
        """
        if self.shared_frames and self.open:
            self._out.append(frame or text_frame(data))
            if not self._marked:
                self._marked = True
                self.listener.dirty(self)
            return
        self.ws.send_text(data)
        self._pull()

    async def send_and_wait(self, data: bytes) -> None:
        """Send, then wait while the socket is backed up; raise ``ConnectionClosed`` like ``ws.send()``."""
        if self.ws.state is not OPEN:
            # As websockets' send(): wait for the close to finish (bounded by the close deadline), then raise.
            await asyncio.shield(self._transport_lost)
            raise self.ws.close_exc
        self.send_text(data)
        self.flush()
        if not self.writable and not self._gone:
            drained = self.listener.loop.create_future()
            self._drain_waiters.append(drained)
            await drained  # resume_writing() or connection_lost()
        if self.ws.state is CLOSED:
            raise self.ws.close_exc

    def flush(self) -> None:
        """Write everything collected so far, in one call."""
        self._marked = False
        transport = self.transport
        if transport is None or transport.is_closing():
            self._out.clear()
            return
        out = self._out
        if out:
            self._out = []
            try:
                transport.write(out[0] if len(out) == 1 else b"".join(out))
            except Exception:  # a broken socket fails only this connection
                log.debug("write failed", exc_info=True)
                transport.abort()
                return
        if self._eof:
            self._eof = False
            if transport.can_write_eof():
                with contextlib.suppress(Exception):  # uvloop may raise here
                    transport.write_eof()
            else:
                transport.close()

    def close(self, code: int = CloseCode.NORMAL_CLOSURE, reason: str = "") -> None:
        """Start the closing handshake; the peer has ``close_timeout`` to finish it."""
        ws = self.ws
        if ws.state is not OPEN:
            return
        ws.send_close(code, reason)
        self.open = False
        self._pull()
        self._close_deadline()

    def fail(self, code: int, reason: str = "") -> None:
        """Fail the connection (RFC 6455 7.1.7): close frame, EOF, nothing more is read."""
        if self._failed or self.ws.state is CLOSED:
            return
        self._failed = True
        self.open = False
        self.ws.fail(code, reason)
        self._pull()
        self.flush()
        self._close_deadline()

    def abort(self) -> None:
        if self.transport is not None:
            self.transport.abort()

    def _close_deadline(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
        self._timer = self.listener.loop.call_later(self.settings.close_timeout, self.abort)

    def _keepalive(self, first: bool = False) -> None:
        interval = self.settings.ping_interval
        if not interval:
            return
        if not first:
            if self.ws.state is not OPEN:
                return  # closing: the close deadline is running
            if self._ping is not None:
                self.fail(CloseCode.INTERNAL_ERROR, "keepalive ping timeout")
                return
            self._ping = os.urandom(4)
            self.ws.send_ping(self._ping)
            self._pull()
        self._timer = self.listener.loop.call_later(interval, self._keepalive)

    # --- introspection ---------------------------------------------------------------

    @property
    def close_code(self) -> int | None:
        return self.ws.close_code

    @property
    def state(self) -> State:
        return self.ws.state

    async def wait_closed(self) -> None:
        await asyncio.shield(self.lost)


class Listener:
    """The listening socket and its connections; flushes every connection written to, once per iteration."""

    def __init__(self, app: Application, settings: Settings) -> None:
        self.app = app
        self.settings = settings
        self.loop = asyncio.get_running_loop()
        self.connections: set[Connection] = set()
        self.server: asyncio.Server | None = None
        self.serving = False
        self._dirty: list[Connection] = []

    async def bind(self, host: str, port: int) -> int:
        """Bind without accepting yet, so that a taken port fails before anything else starts."""
        self.server = await self.loop.create_server(
            lambda: Connection(self.app, self.settings, self), host, port, start_serving=False
        )
        return int(self.server.sockets[0].getsockname()[1])

    async def start_serving(self) -> None:
        assert self.server is not None
        self.serving = True
        await self.server.start_serving()

    def stop_accepting(self) -> None:
        """No new connections; a handshake still in progress is refused with 503."""
        self.serving = False
        if self.server is not None:
            self.server.close()

    def dirty(self, conn: Connection) -> None:
        """``conn`` has output: flush it at the end of this iteration (one call_soon for all of them)."""
        if not self._dirty:
            self.loop.call_soon(self._flush)
        self._dirty.append(conn)

    def _flush(self) -> None:
        dirty, self._dirty = self._dirty, []
        for conn in dirty:
            if conn._marked:
                conn.flush()

    def close(self, code: int = CloseCode.GOING_AWAY, reason: str = "") -> None:
        """Stop accepting and close every connection (1001 by default); see :meth:`wait_closed`."""
        self.stop_accepting()
        for conn in list(self.connections):
            if conn.ws.state is OPEN:
                conn.close(code, reason)
            elif conn.request is None:
                conn.abort()  # no request yet: nothing to answer

    async def wait_closed(self) -> None:
        """Until every connection is gone and its handler done (each close is bounded by close_timeout)."""
        while self.connections:
            await asyncio.wait([c.lost for c in self.connections])


__all__ = ["Application", "Connection", "Listener", "Settings", "text_frame"]
