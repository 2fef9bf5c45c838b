"""The storage contract between the broker core and its stores.

The broker never awaits storage on the delivery path. It appends *operations*
to an ordered log; a background writer hands them to a store in batches with
:meth:`Store.apply`. Because the log is ordered, a message's ``SaveMessage``
always reaches the store before any ``SaveAck`` for it, so a store never has to
reconcile an ack that beat its insert. Every operation is idempotent so that a
batch retried after a timeout cannot duplicate anything.

On start-up a durable store returns a :class:`Snapshot` from :meth:`Store.load`
and the broker rebuilds its delivery obligations from it (hydration).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Protocol


class StoreError(Exception):
    """Storage is unavailable or refused a batch; the caller may retry later."""


# StoredMessage, SaveMessage and SaveAck are built on the delivery hot path (one per publish or ack),
# so they are plain slotted records: a frozen __init__ costs about 4x as much (see frames.py).
# Treat every record here as immutable all the same.
@dataclass(slots=True)
class StoredMessage:
    id: str
    topic: str
    payload: Any  # any JSON value
    published_at: float  # unix seconds
    publisher: str  # client_id of the publisher


@dataclass(slots=True)  # plain, like StoredMessage: the memory store builds one per recipient per message
class StoredDelivery:
    """One (message, recipient) obligation that is not acked yet."""

    message_id: str
    client_id: str
    attempt: int  # deliveries attempted so far (0 = never sent)
    dead: bool = False  # dead-lettered: kept and counted, no longer retried


# --- operations -----------------------------------------------------------


@dataclass(slots=True)
class SaveMessage:
    """Store a message and one pending delivery per recipient (insert, ignore conflicts)."""

    message: StoredMessage
    recipients: tuple[str, ...]


@dataclass(slots=True)
class SaveAck:
    """Delivery done: remove it; remove the message once no delivery of it is left."""

    message_id: str
    client_id: str


@dataclass(frozen=True, slots=True)
class SaveAttempt:
    """Record the attempt count of a delivery (so hydration resumes the backoff)."""

    message_id: str
    client_id: str
    attempt: int


@dataclass(frozen=True, slots=True)
class SaveDeadLetter:
    """Mark a delivery dead: kept and counted, never retried again."""

    message_id: str
    client_id: str
    reason: str


@dataclass(frozen=True, slots=True)
class SaveSubscription:
    client_id: str
    topic: str


@dataclass(frozen=True, slots=True)
class DropSubscription:
    """Remove a subscription and the client's outstanding deliveries on that topic."""

    client_id: str
    topic: str


Op = SaveMessage | SaveAck | SaveAttempt | SaveDeadLetter | SaveSubscription | DropSubscription


@dataclass(slots=True)
class Snapshot:
    """Everything a durable store holds, for hydration at start-up."""

    subscriptions: list[tuple[str, str]]  # (client_id, topic)
    messages: list[StoredMessage]  # every message with at least one delivery left
    deliveries: list[StoredDelivery]  # pending and dead deliveries


class Store(Protocol):
    """What the broker needs from storage. Every call is bounded by a timeout."""

    durable: bool  # survives a broker restart (hydration makes sense)

    async def open(self) -> None:
        """Connect and create or migrate the schema. Raises StoreError."""

    async def close(self) -> None:
        """Release connections; never hangs longer than the store's timeout."""

    async def apply(self, ops: Sequence[Op]) -> None:
        """Apply a batch in order, atomically. Raises StoreError or TimeoutError."""

    async def load(self) -> Snapshot:
        """Read back everything needed to hydrate. Raises StoreError."""

    async def ping(self) -> None:
        """Cheap health probe. Raises StoreError when storage is unavailable."""
