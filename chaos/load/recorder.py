"""What load users observed, reported one call per event, so the lab's checkers can judge a load run.

Every FastPort user reports to one :class:`Recorder` per process (a Locust
worker, or the single local process). :class:`HistoryRecorder` is the lab's
history writer: it appends straight into a :class:`~chaos.history.History`'s
columns, one file per worker, merged at the end (``History.merge``), so the
lab's checkers judge a load run as they judge a suite. :class:`NullRecorder`
discards (benchmarks), and :class:`MemoryRecorder` keeps plain tuples (tests,
short runs) and can ship them to the Locust master in batches.

The protocol is shaped for the hot path, which runs millions of times a run:
positional arguments only, strings the client already holds (ids, topics and
client ids come straight out of the parsed frame, nothing is formatted), a
float wall-clock time (``time.time()``: publishers and subscribers may live
in different processes), small ints for the rest, no return value. ``digest``
is the CRC-32 of the payload's data string (``zlib.crc32``), ``length`` its
length: cheap enough per delivery, and enough for an integrity checker to tell a
changed payload from the published one.

Event vocabulary (one method each):

========================  ===============================================================
``connect_invoked``       a connection attempt starts (``attempt`` counts since the last success)
``connected``             the handshake succeeded (``connection`` counts this client's connections)
``connect_failed``        the attempt failed (``error`` says why)
``disconnected``          the connection ended (``cause``: close, closed-by-broker,
                          connection-lost, abort; ``code``: the close code or None)
``subscribe_invoked``     a subscribe frame was sent
``subscribed``            the broker answered ``subscribed``
``unsubscribed``          the broker answered ``unsubscribed``
``publish_invoked``       a publish frame was sent (also again after a reconnect: same id)
``published``             ``published`` with its ``recipients`` count
``persisted``             ``persisted``
``persist_failed``        ``persist_failed`` with its ``reason``
``refused``               an ``error`` answering a publish (``code``: overloaded, forbidden, ...)
``delivered``             a ``message`` frame (``attempt`` as the broker numbered it)
``acked``                 an ack frame was sent for ``msg_id``
``error``                 any other ``error`` frame (``code``, ``message``)
========================  ===============================================================
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any, Protocol, runtime_checkable

from chaos.history import FAIL, INFO, INVOKE, OK, History


@runtime_checkable
class Recorder(Protocol):
    """Receives every observation of every user of one process. Calls must be cheap and never block."""

    def connect_invoked(self, client: str, t: float, attempt: int) -> None: ...

    def connected(self, client: str, t: float, connection: int) -> None: ...

    def connect_failed(self, client: str, t: float, error: str) -> None: ...

    def disconnected(self, client: str, t: float, cause: str, code: int | None) -> None: ...

    def subscribe_invoked(self, client: str, topic: str, t: float) -> None: ...

    def subscribed(self, client: str, topic: str, t: float) -> None: ...

    def unsubscribed(self, client: str, topic: str, t: float) -> None: ...

    def publish_invoked(
        self, client: str, msg_id: str, topic: str, t: float, digest: int, length: int
    ) -> None: ...

    def published(self, client: str, msg_id: str, t: float, recipients: int) -> None: ...

    def persisted(self, client: str, msg_id: str, t: float) -> None: ...

    def persist_failed(self, client: str, msg_id: str, t: float, reason: str) -> None: ...

    def refused(self, client: str, msg_id: str, t: float, code: str) -> None: ...

    def delivered(
        self, client: str, msg_id: str, topic: str, t: float, attempt: int, digest: int
    ) -> None: ...

    def acked(self, client: str, msg_id: str, t: float) -> None: ...

    def error(self, client: str, t: float, code: str, message: str) -> None: ...

    def close(self) -> None:
        """End of the run in this process: flush and release whatever the recorder holds."""


class NullRecorder:
    """Discards everything: for benchmarks of the rig itself."""

    def _discard(self, *args: Any) -> None:
        pass

    connect_invoked = connected = connect_failed = disconnected = _discard
    subscribe_invoked = subscribed = unsubscribed = _discard
    publish_invoked = published = persisted = persist_failed = refused = _discard
    delivered = acked = error = _discard

    def close(self) -> None:
        pass


class HistoryRecorder:
    """Records every call into a :class:`History`'s columns: no Event, no dict per event.

    Each call is one :class:`~chaos.history.ColumnWriter` append (about a
    microsecond; see docs/checkers.md for the bytes per delivery). The events
    are the suites' vocabulary (docs/checkers.md), so the same checkers judge
    them: ``publish_invoked`` is ``publish invoke {digest, bytes}`` (the
    digest an int, the CRC-32 of the payload's data, ``bytes`` the data's
    length), ``delivered`` is ``deliver ok {digest, attempt}``, ``refused`` a
    ``publish fail {code}``, and so on. Times are the wall clock the rig
    stamps (``time.time()``), the history's start when this recorder was made.

    With *path*, :meth:`close` writes the history there (compact for ``.npz``):
    one file per Locust worker, merged on the master with ``History.merge``.
    """

    def __init__(self, history: History | None = None, path: str | Path | None = None) -> None:
        self.history = history if history is not None else History(clock=time.time)
        self.path = Path(path) if path is not None else None
        self._w = self.history.writer()
        self.closed = False

    def connect_invoked(self, client: str, t: float, attempt: int) -> None:
        self._w.connection(client, t, INVOKE, attempt=attempt)

    def connected(self, client: str, t: float, connection: int) -> None:
        self._w.connection(client, t, OK, connection=connection)

    def connect_failed(self, client: str, t: float, error: str) -> None:
        self._w.connection(client, t, FAIL, error=error)

    def disconnected(self, client: str, t: float, cause: str, code: int | None) -> None:
        self._w.connection(client, t, INFO, disconnect=True, cause=cause, code=code)

    def subscribe_invoked(self, client: str, topic: str, t: float) -> None:
        self._w.subscription(client, topic, t, INVOKE)

    def subscribed(self, client: str, topic: str, t: float) -> None:
        self._w.subscription(client, topic, t, OK)

    def unsubscribed(self, client: str, topic: str, t: float) -> None:
        self._w.subscription(client, topic, t, OK, unsubscribe=True)

    def publish_invoked(
        self, client: str, msg_id: str, topic: str, t: float, digest: int, length: int
    ) -> None:
        self._w.publish(client, INVOKE, msg_id, topic, t, digest=digest, length=length)

    def published(self, client: str, msg_id: str, t: float, recipients: int) -> None:
        self._w.publish(client, OK, msg_id, None, t, recipients=recipients)

    def persisted(self, client: str, msg_id: str, t: float) -> None:
        self._w.persist(client, msg_id, t)

    def persist_failed(self, client: str, msg_id: str, t: float, reason: str) -> None:
        self._w.persist(client, msg_id, t, failed=True, reason=reason)

    def refused(self, client: str, msg_id: str, t: float, code: str) -> None:
        self._w.publish(client, FAIL, msg_id, None, t, code=code)

    def delivered(self, client: str, msg_id: str, topic: str, t: float, attempt: int, digest: int) -> None:
        self._w.deliver(client, msg_id, topic, t, attempt, digest)

    def acked(self, client: str, msg_id: str, t: float) -> None:
        self._w.ack(client, msg_id, t)

    def error(self, client: str, t: float, code: str, message: str) -> None:
        self.history.append(client, "info", "error", value={"code": code, "message": message}, time=t)

    def close(self) -> None:
        """Write the history to *path*, if given (once; the Locust quit hook may call it again)."""
        if self.path is not None and not self.closed:
            self.history.write(self.path)
        self.closed = True


Event = tuple[Any, ...]  # (kind, *the method's arguments)


class MemoryRecorder:
    """Keeps every call as a tuple ``(kind, *args)`` in one list, in call order.

    :meth:`drain` hands out what was recorded since the last drain, so a Locust
    worker can ship its events to the master in batches; :meth:`extend` takes
    such a batch in on the other side. The query helpers are for tests.
    """

    def __init__(self) -> None:
        self.events: list[Event] = []
        self._shipped = 0

    def connect_invoked(self, client: str, t: float, attempt: int) -> None:
        self.events.append(("connect_invoked", client, t, attempt))

    def connected(self, client: str, t: float, connection: int) -> None:
        self.events.append(("connected", client, t, connection))

    def connect_failed(self, client: str, t: float, error: str) -> None:
        self.events.append(("connect_failed", client, t, error))

    def disconnected(self, client: str, t: float, cause: str, code: int | None) -> None:
        self.events.append(("disconnected", client, t, cause, code))

    def subscribe_invoked(self, client: str, topic: str, t: float) -> None:
        self.events.append(("subscribe_invoked", client, topic, t))

    def subscribed(self, client: str, topic: str, t: float) -> None:
        self.events.append(("subscribed", client, topic, t))

    def unsubscribed(self, client: str, topic: str, t: float) -> None:
        self.events.append(("unsubscribed", client, topic, t))

    def publish_invoked(
        self, client: str, msg_id: str, topic: str, t: float, digest: int, length: int
    ) -> None:
        self.events.append(("publish_invoked", client, msg_id, topic, t, digest, length))

    def published(self, client: str, msg_id: str, t: float, recipients: int) -> None:
        self.events.append(("published", client, msg_id, t, recipients))

    def persisted(self, client: str, msg_id: str, t: float) -> None:
        self.events.append(("persisted", client, msg_id, t))

    def persist_failed(self, client: str, msg_id: str, t: float, reason: str) -> None:
        self.events.append(("persist_failed", client, msg_id, t, reason))

    def refused(self, client: str, msg_id: str, t: float, code: str) -> None:
        self.events.append(("refused", client, msg_id, t, code))

    def delivered(self, client: str, msg_id: str, topic: str, t: float, attempt: int, digest: int) -> None:
        self.events.append(("delivered", client, msg_id, topic, t, attempt, digest))

    def acked(self, client: str, msg_id: str, t: float) -> None:
        self.events.append(("acked", client, msg_id, t))

    def error(self, client: str, t: float, code: str, message: str) -> None:
        self.events.append(("error", client, t, code, message))

    def close(self) -> None:
        pass

    def drain(self) -> list[Event]:
        """Events recorded since the previous drain (all of them the first time)."""
        batch = self.events[self._shipped :]
        self._shipped = len(self.events)
        return batch

    def extend(self, events: list[Event] | list[list[Any]]) -> None:
        """Take in a batch drained elsewhere (msgpack turns tuples into lists on the way)."""
        self.events.extend(tuple(e) for e in events)
        self._shipped = len(self.events)

    # --- queries for tests ---------------------------------------------------

    def of(self, kind: str) -> Iterator[Event]:
        return (e for e in self.events if e[0] == kind)

    def count(self, kind: str) -> int:
        return sum(1 for e in self.events if e[0] == kind)
