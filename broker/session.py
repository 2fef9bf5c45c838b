"""Sessions: one client_id on one live connection, with its rights and a bounded send queue.

A frame for a session is written straight into its connection's output when
nothing is queued ahead of it and the socket is not backed up (the usual
case); otherwise it waits in the session's queue, which the connection drains
when its socket is writable again. A queue that reaches its bound means a
consumer that does not keep up: the session is closed with 1013 and its
deliveries stay outstanding, so one slow or broken socket never holds up the
others and never costs unbounded memory.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Callable

from .auth import Rights
from .connection import Connection

SESSION_REPLACED = 4000  # close code: a newer connection took over this client_id
SLOW_CONSUMER = 1013  # "try again later": the send queue overflowed


class Session:
    __slots__ = ("conn", "client_id", "rights", "queue", "limit", "closed", "on_overflow")

    def __init__(
        self,
        conn: Connection,
        client_id: str,
        rights: Rights,
        limit: int,
        on_overflow: Callable[[Session], None],
    ) -> None:
        self.conn = conn
        self.client_id = client_id
        self.rights = rights
        self.queue: deque[tuple[bytes, bytes | None]] = deque()
        self.limit = limit
        self.closed = False
        self.on_overflow = on_overflow
        conn.on_writable = self._drain

    def send(self, data: bytes, frame: bytes | None = None, bounded: bool = True) -> bool:
        """Hand one text message to this session without awaiting; False if it could not take it.

        ``frame`` is the message's wire frame when it was built once for a fan-out
        (see :func:`broker.connection.text_frame`). ``bounded=False`` skips the
        slow-consumer bound: a subscribe replay is queued whole (it is bounded by
        the client's outstanding deliveries).
        """
        if self.closed:
            return False
        conn = self.conn
        if not self.queue and conn.writable and conn.open:
            try:
                conn.send_text(data, frame)
            except Exception:  # a broken connection fails only itself
                self.fail(1011, "write failed")
                return False
            return True
        if not conn.open:
            self.closed = True  # closing: nothing more goes out
            self.queue.clear()
            return False
        if bounded and len(self.queue) >= self.limit:
            self.on_overflow(self)
            return False
        self.queue.append((data, frame))
        return True

    def _drain(self) -> None:
        """The socket drained below its low-water mark: move queued frames out until it backs up again."""
        queue, conn = self.queue, self.conn
        limit = conn.settings.write_limit
        while queue and conn.writable and not self.closed:
            size = 0
            while queue and size < limit:
                data, frame = queue.popleft()
                try:
                    conn.send_text(data, frame)
                except Exception:
                    self.fail(1011, "write failed")
                    return
                size += len(data)
            conn.flush()  # may pause writing again at once (conn.writable becomes False)

    def fail(self, code: int, reason: str) -> None:
        """Start closing; the connection's close callback does the bookkeeping."""
        if self.closed:
            return
        self.closed = True
        self.queue.clear()
        self.conn.close(code, reason)

    def stop(self) -> None:
        self.closed = True
        self.queue.clear()
        self.conn.on_writable = None
