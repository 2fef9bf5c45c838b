"""Subscriber faults (FMEA 2): a subscriber's connection dies, fails or stops reading; nobody else may notice.

Each is aimed at subscribers (their ``targets``): the isolation checker holds
everyone else to the baseline. Two kinds:

* **Its network fails** (the subscriber made with ``lab.linked_subscriber``, its
  connection running through a fault-proxy link of its own), so the broker meets
  a failing send mid fan-out, whatever it notices from the client:

  - ``link-blackhole``: a half-open connection: data in both directions is
    dropped and the connection stays open (``timeout`` toxics), so the broker
    writes into a dead link. Landed when the broker kept writing into the link
    (the proxy's byte counters, where it has them) and the subscriber got none of
    the messages published meanwhile. Removing the toxics closes the link (as
    Toxiproxy does); the subscriber reconnects.
  - ``link-reset``: the link is reset (RST, ``reset_peer``) on the broker's next
    write, mid-burst. Landed when the subscriber lost its connection mid fan-out.
  - ``link-cut``: the link is closed after *cut_after* more bytes from the broker
    (``limit_data``), in the middle of a frame. Landed when the broker wrote
    those bytes and the subscriber lost its connection.

* **It stops reading** (``subscriber-slow``, one or several subscribers at
  once): the subscriber pauses reading its socket, so the broker's sends to it
  back up. Landed only when that is seen for at least one of them: when it
  resumes, its receive queue holds data *and* the broker's end of the
  connection has bytes it cannot send (its kernel send queue, read from
  /proc/net/tcp: the broker's writes are backed up at the socket), or more bytes
  arrive after the resume than its receive queue and any kernel send buffer can
  hold (``beyond_socket_buffers_bytes`` > 0: the broker held them itself), or the
  broker closed it (it noticed the backpressure). Payloads that compress away
  (permessage-deflate shrinks ``"x" * 300_000`` to a few hundred bytes) do not
  get there: use incompressible ones (``chaos.workload.incompressible``).
* ``subscriber-cut``: the lab's client aborts its own TCP connection (no close
  frame) mid fan-out; most brokers notice before their next send, so this tests
  reconnect and replay more than a failing send.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Collection, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar

from chaos.clients import wait_for
from chaos.faults.base import Fault, Landing, register
from chaos.toxiproxy.client import NotFound

if TYPE_CHECKING:
    from chaos.clients import Subscriber
    from chaos.environment import Lab
    from chaos.toxiproxy.client import Proxy

DRAIN_TIMEOUT = 60.0  # after resume: only a hang lasts this long


def kernel_send_buffer_max() -> int:
    """The most a TCP socket's send buffer can hold here (what a broker's kernel may absorb)."""
    try:
        auto = int(Path("/proc/sys/net/ipv4/tcp_wmem").read_text().split()[2])
        fixed = 2 * int(Path("/proc/sys/net/core/wmem_max").read_text())  # SO_SNDBUF is doubled
    except (OSError, IndexError, ValueError):
        return 8 << 20
    return max(auto, fixed)


def tcp_send_queue(local_port: int, remote_port: int) -> int | None:
    """Bytes in the send queue of the loopback TCP socket *local_port* -> *remote_port* (/proc/net/tcp*).

    The broker's end of a subscriber's connection lives in another process, but in
    the same network namespace: its kernel send queue says whether the broker's
    writes towards that subscriber are backed up. None when it cannot be read.
    """
    want = f":{local_port:04X}", f":{remote_port:04X}"
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        try:
            lines = Path(table).read_text().splitlines()[1:]
        except OSError:
            continue
        for line in lines:
            f = line.split()
            if len(f) > 4 and f[1].endswith(want[0]) and f[2].endswith(want[1]):
                try:
                    return int(f[4].split(":")[0], 16)
                except ValueError:
                    return None
    return None


BACKED_UP = 3 << 20  # bytes the broker's kernel could not send to a reader: its socket is about full


class BackedUp:
    """Whether the broker's writes to stalled *readers* have backed up: its end of one connection
    holds megabytes it cannot send (where the broker's socket cannot be seen: the reader's own
    buffer is full), or it closed the reader. A condition for ``wait_for``; it reads /proc, so it
    looks no more often than every 50 ms.

    A fan-out that waits on a stalled reader shows only once the broker's socket is full: traffic
    judged before that proves nothing about it.
    """

    def __init__(self, lab: Lab, readers: Sequence[Subscriber]) -> None:
        self.lab, self.readers = lab, readers
        self._at = -1.0
        self._seen = False

    def __call__(self) -> bool:
        now = self.lab.history.now()
        if not self._seen and now - self._at >= 0.05:
            self._at = now
            self._seen = any(self._one(r) for r in self.readers)
        return self._seen

    def _one(self, reader: Subscriber) -> bool:
        ws = reader.ws
        if ws is None:
            return True  # the broker closed it: it noticed the backpressure
        here = ws.transport.get_extra_info("sockname")
        if here is None or self.lab.port is None:
            return False
        queued = tcp_send_queue(self.lab.port, here[1])
        if queued is None:
            return (reader.socket_backlog() or 0) >= (reader.rcvbuf or 64 << 10)
        return queued >= BACKED_UP


def _disconnects(lab: Lab, client: str, since: float) -> list[dict[str, Any]]:
    # By kind, not by client: a fault's stop runs on the event loop while traffic flows, and a
    # subscriber's own events in a long soak are tens of thousands (materialising them stalled
    # everyone for 0.3 s per reader, inside the window being judged).
    return [
        {"t_s": lab.history.rel(ev.time), **(ev.value or {})}
        for ev in lab.history.by_f("disconnect")
        if ev.process == client and ev.time >= since
    ]


@dataclass
class _LinkFault(Fault):
    """A toxic on the subscriber's own link; proven from the link's traffic and the subscriber's view.

    A *one-shot* fault (reset, cut) is taken off the link as soon as it has cut the
    connection that was open: a toxic applies to new connections too, and a
    subscriber reconnecting into it again and again would only burn the broker's
    delivery attempts (PROTOCOL.md lets it dead-letter after them) instead of
    testing the fan-out.
    """

    family: ClassVar[str] = "subscriber"
    toxics: ClassVar[tuple[tuple[str, str], ...]]  # (toxic type, stream)
    one_shot: ClassVar[bool] = False
    sub: Subscriber
    burst: Collection[str] = ()
    resubscribe_timeout: float = 30.0
    _names: list[str] = field(default_factory=list, init=False, repr=False)
    _t0: float = field(default=0.0, init=False, repr=False)
    _t_on: float = field(default=0.0, init=False, repr=False)
    _conn0: int = field(default=0, init=False, repr=False)
    _bytes0: int | None = field(default=None, init=False, repr=False)
    _mid: bool | None = field(default=None, init=False, repr=False)
    _present: bool | None = field(default=None, init=False, repr=False)
    _healed_at: float | None = field(default=None, init=False, repr=False)
    _watch: asyncio.Task[None] | None = field(default=None, init=False, repr=False)

    def targets(self) -> list[str]:
        return [self.sub.client_id]

    def attributes(self, toxic: str) -> dict[str, int]:
        return {}

    def unsupported(self, lab: Lab) -> str | None:
        if self.sub.client_id not in lab.links:
            return f"{self.sub.client_id} has no link of its own: make it with lab.linked_subscriber()"
        return super().unsupported(lab)

    def _link(self, lab: Lab) -> Proxy:
        return lab.links[self.sub.client_id]

    async def _broker_bytes(self, lab: Lab) -> int | None:
        counts = await lab.api.link_bytes()
        if counts is None:
            return None
        return counts.get((self._link(lab).name, "downstream"), 0)

    async def start(self, lab: Lab) -> dict[str, Any]:
        link = self._link(lab)
        got = sum(1 for i in self.burst if i in self.sub.received)
        self._mid = (0 < got < len(self.burst)) if self.burst else None
        self._conn0 = self.sub.connections
        self._bytes0 = await self._broker_bytes(lab)
        # before the toxic goes on: it may cut the connection while add_toxic is still awaiting its answer
        self._t0 = lab.history.now()
        for kind, stream in self.toxics:
            t = await link.add_toxic(
                kind, attributes=self.attributes(kind), stream=stream, name=f"lab-{kind}-{stream}"
            )
            self._names.append(t["name"])
        self._t_on = lab.history.now()  # every toxic in place: what is published from now on is cut off
        if self.one_shot:
            self._watch = asyncio.create_task(self._take_off_after_cut(lab))
        return {"link": link.name, "burst": len(self.burst), "received_before": got, "mid_fanout": self._mid}

    async def _take_off_after_cut(self, lab: Lab) -> None:
        sub = self.sub
        with contextlib.suppress(TimeoutError):
            await wait_for(
                lab.history,
                lambda: not sub.connected or sub.connections > self._conn0,
                timeout=DRAIN_TIMEOUT,
                what=f"{sub.client_id}'s link to be cut",
            )
            await self._remove(lab)

    async def _remove(self, lab: Lab) -> None:
        if self._healed_at is not None:
            return
        link = self._link(lab)
        with contextlib.suppress(NotFound, OSError):
            names = {t.get("name") for t in await link.list_toxics()}
            self._present = all(n in names for n in self._names)
        for name in self._names:
            with contextlib.suppress(NotFound):
                await link.remove_toxic(name)
        self._healed_at = lab.history.now()

    async def _heal(self, lab: Lab) -> tuple[bool, int | None]:
        if self._watch is not None and not self._watch.done():
            self._watch.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._watch
        wrote = await self._broker_bytes(lab)
        await self._remove(lab)
        written = None if wrote is None or self._bytes0 is None else wrote - self._bytes0
        return bool(self._present), written

    async def _resubscribed(self) -> bool:
        try:
            await self.sub.wait_resubscribed(self._conn0, timeout=self.resubscribe_timeout)
        except Exception:
            return False
        return True


@register
@dataclass
class LinkBlackhole(_LinkFault):
    name: ClassVar[str] = "link-blackhole"
    summary: ClassVar[str] = "a subscriber's link goes half-open: data dropped both ways, connection kept"
    toxics: ClassVar[tuple[tuple[str, str], ...]] = (("timeout", "downstream"), ("timeout", "upstream"))

    def attributes(self, toxic: str) -> dict[str, int]:
        return {"timeout": 0}

    async def stop(self, lab: Lab) -> Landing:
        topics = set(self.sub.topics)
        invoked_after = {
            ev.id
            for ev in lab.history.by_f("publish", type="invoke")
            if ev.time > self._t_on and ev.topic in topics
        }
        got_during = sum(1 for mid in invoked_after if mid in self.sub.received)
        present, written = await self._heal(lab)
        resubscribed = await self._resubscribed()
        effective = present and bool(invoked_after) and got_during == 0 and (written is None or written > 0)
        return Landing(
            effective,
            {
                "toxics_present": present,
                "published_meanwhile": len(invoked_after),
                "received_meanwhile": got_during,
                "broker_wrote_into_link_bytes": written,
                "resubscribed": resubscribed,
            },
        )


@register
@dataclass
class LinkReset(_LinkFault):
    name: ClassVar[str] = "link-reset"
    summary: ClassVar[str] = "a subscriber's link is reset (RST) on the broker's next write, mid-burst"
    toxics: ClassVar[tuple[tuple[str, str], ...]] = (("reset_peer", "downstream"),)
    one_shot: ClassVar[bool] = True

    def attributes(self, toxic: str) -> dict[str, int]:
        return {"timeout": 0}

    async def stop(self, lab: Lab) -> Landing:
        present, written = await self._heal(lab)
        resubscribed = await self._resubscribed()
        lost = _disconnects(lab, self.sub.client_id, self._t0)
        return Landing(
            present and bool(lost) and self._mid is not False,
            {
                "toxics_present": present,
                "broker_wrote_into_link_bytes": written,
                "connection_lost": lost[:3],
                "resubscribed": resubscribed,
            },
        )


@register
@dataclass
class LinkCut(_LinkFault):
    name: ClassVar[str] = "link-cut"
    summary: ClassVar[str] = "a subscriber's link is closed after N more bytes from the broker, mid-frame"
    toxics: ClassVar[tuple[tuple[str, str], ...]] = (("limit_data", "downstream"),)
    one_shot: ClassVar[bool] = True
    cut_after: int = 1500

    def attributes(self, toxic: str) -> dict[str, int]:
        return {"bytes": self.cut_after}

    async def stop(self, lab: Lab) -> Landing:
        present, written = await self._heal(lab)
        resubscribed = await self._resubscribed()
        lost = _disconnects(lab, self.sub.client_id, self._t0)
        wrote_enough = written is None or written >= self.cut_after
        return Landing(
            present and bool(lost) and wrote_enough and self._mid is not False,
            {
                "toxics_present": present,
                "broker_wrote_into_link_bytes": written,
                "connection_lost": lost[:3],
                "resubscribed": resubscribed,
            },
        )


@register
@dataclass
class SubscriberCut(Fault):
    name: ClassVar[str] = "subscriber-cut"
    family: ClassVar[str] = "subscriber"
    summary: ClassVar[str] = "a subscriber's TCP connection is aborted mid fan-out; it reconnects"
    sub: Subscriber
    burst: Collection[str] = ()
    resubscribe_timeout: float = 30.0
    _was_connected: bool = field(default=False, init=False, repr=False)
    _mid: bool | None = field(default=None, init=False, repr=False)

    def targets(self) -> list[str]:
        return [self.sub.client_id]

    async def start(self, lab: Lab) -> dict[str, Any]:
        got = sum(1 for i in self.burst if i in self.sub.received)
        self._mid = (0 < got < len(self.burst)) if self.burst else None
        self._was_connected = self.sub.abort()
        return {"burst": len(self.burst), "received_before_cut": got, "mid_fanout": self._mid}

    async def stop(self, lab: Lab) -> Landing:
        resubscribed = True
        try:
            await self.sub.wait_subscribed(self.sub.topics, timeout=self.resubscribe_timeout)
        except Exception:
            resubscribed = False
        return Landing(
            self._was_connected and self._mid is not False,
            {"was_connected": self._was_connected, "resubscribed": resubscribed},
        )


@register
@dataclass
class SubscriberSlow(Fault):
    """*subs* (one or several, at once) stop reading; they resume together when the window ends."""

    name: ClassVar[str] = "subscriber-slow"
    family: ClassVar[str] = "subscriber"
    summary: ClassVar[str] = "subscribers stop reading their sockets, so the broker's sends to them back up"
    subs: Subscriber | Sequence[Subscriber]
    burst: Collection[str] = ()  # ids sent towards them while paused: they wait for them after resuming
    _t0: float = field(default=0.0, init=False, repr=False)
    _conn0: dict[str, int] = field(default_factory=dict, init=False, repr=False)

    @property
    def readers(self) -> list[Subscriber]:
        return [self.subs] if not isinstance(self.subs, Sequence) else list(self.subs)

    def targets(self) -> list[str]:
        return [s.client_id for s in self.readers]

    async def start(self, lab: Lab) -> dict[str, Any]:
        for sub in self.readers:
            self._conn0[sub.client_id] = sub.connections
            if not sub.pause_reading():
                raise RuntimeError(f"{sub.client_id} is not connected (or already paused): cannot stall it")
        self._t0 = lab.history.now()
        return {"burst": len(self.burst)}

    def _measure(self, lab: Lab, sub: Subscriber) -> dict[str, Any]:
        ws = sub.ws
        here = None if ws is None else ws.transport.get_extra_info("sockname")
        return {
            "client": sub.client_id,
            "queued": sub.socket_backlog(),  # what its own kernel buffer holds at resume
            "broker_queue": None if here is None or lab.port is None else tcp_send_queue(lab.port, here[1]),
            "wire0": sub.wire_bytes,
            "got_paused": sum(1 for i in self.burst if i in sub.received),
        }

    async def stop(self, lab: Lab) -> Landing:
        readers = self.readers
        seen = [self._measure(lab, sub) for sub in readers]  # all before any resumes
        for sub in readers:
            sub.resume_reading()

        def drained() -> bool:
            return all(
                all(i in sub.received for i in self.burst) or sub.connections > self._conn0[sub.client_id]
                for sub in readers
            )

        complete = True
        try:
            await wait_for(lab.history, drained, timeout=DRAIN_TIMEOUT, what="the stalled readers to drain")
        except TimeoutError:
            complete = False
        limit = kernel_send_buffer_max()
        per: list[dict[str, Any]] = []
        for sub, m in zip(readers, seen, strict=True):
            closed = [
                d for d in _disconnects(lab, sub.client_id, self._t0) if d.get("cause") == "closed-by-broker"
            ]
            after = sub.wire_bytes - m["wire0"]
            beyond = None if m["queued"] is None else after - m["queued"] - limit
            # Landed: the broker's writes towards the stalled reader backed up, at its socket (bytes it
            # could not send, with the reader's buffer holding data) or beyond (bytes it had to hold
            # itself), or the broker noticed and closed the reader.
            at_socket = bool(m["broker_queue"]) and bool(m["queued"])
            held = beyond is not None and beyond > 0
            per.append(
                {
                    "client": sub.client_id,
                    "landed": at_socket or held or bool(closed),
                    "received_while_paused": m["got_paused"],
                    "receive_queue_at_resume_bytes": m["queued"],
                    "broker_send_queue_at_resume_bytes": m["broker_queue"],
                    "received_after_resume_bytes": after,
                    "beyond_socket_buffers_bytes": beyond,
                    "closed_by_broker": closed[:3],
                }
            )
        effective = any(r["landed"] for r in per)
        return Landing(
            effective,
            {
                "burst": len(self.burst),
                "kernel_send_buffer_max_bytes": limit,
                "drained": complete,
                "readers": per,
            },
        )
