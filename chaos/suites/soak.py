"""The soak: steady traffic through a long run of fault cycles drawn, with a seed, from the fault registry.

A broker earns trust by surviving the same faults a hundred times under traffic,
not once. A publisher publishes without pause; durable subscribers take every
ack mode (``always``, ``late``, and ``batch``: it acks everything it holds at the
end of each cycle, so its deliveries stay outstanding across the cycle's fault);
one subscriber's connection runs through a fault-proxy link, two read through
small buffers they can stop reading. Each cycle draws a fault (SIGKILL and restart,
SIGSTOP/SIGCONT, storage down, hung or slow, PostgreSQL stopped and started, the
linked subscriber's link reset, the slow readers stalled under large messages),
holds it while a number of messages is published, heals it, and waits until a
marker message published afterwards reached every subscriber: the cycle's
recovery. Then it samples the broker's memory (RSS, ``/proc``).

The stall proves FMEA 2 whatever order a broker visits recipients in: healthy
subscribers sit before and after both slow readers in insertion order and in
client-id order either way; the large messages overflow the kernel's socket
buffers (sized from them), and the traffic judged is published once the broker's
sockets are full, then waited for at every healthy subscriber: a fan-out stuck
behind a stalled reader holds the window open and shows as seconds of latency.

Judged over the whole run: at-least-once; hydration after every kill; nothing
acked came back (resurrection); availability during storage faults and isolation
during subscriber faults; integrity; recovery after each fault; the memory bound
(``chaos.checkers.memory``); and, for the reference broker, no zombie rows left in
its store. ``lab.notes["cycles"]`` has one row per cycle for the report.
"""

from __future__ import annotations

import asyncio
import contextlib
import random
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from chaos.checkers import (
    Facts,
    check_at_least_once,
    check_availability,
    check_hydration,
    check_integrity,
    check_isolation,
    check_no_zombies,
    check_recovery,
    check_resurrection,
)
from chaos.checkers.hydration import HYDRATION, NO_ZOMBIE
from chaos.checkers.memory import check_memory_bound
from chaos.checkers.resurrection import NAME as RESURRECTION
from chaos.checkers.verdict import Verdict, not_applicable
from chaos.clients import HangError, PublishAnswer, Publisher, Subscriber, wait_for
from chaos.environment import Lab
from chaos.faults import REGISTRY, Fault, FaultUnsupported, LinkReset, SubscriberSlow
from chaos.faults.subscriber import BackedUp, kernel_send_buffer_max
from chaos.nemesis import Nemesis
from chaos.workload import incompressible, publish_paced, published_ids, settle, store_barrier

TOPIC = "soak.events"
BIG_TOPIC = "soak.bulk"  # large messages to the slow readers only, while they are stalled
BIG_BYTES = 64 << 10  # each of them (incompressible)
BIG_RATE = 120.0  # of them, per second
SLOW_RCVBUF = 64 << 10  # the slow readers' socket receive buffer
STALL_WAIT = 5.0  # how long the healthy may take to get the stall's traffic (a stuck fan-out: longer)
RATE = 150.0  # publishes per second of the steady traffic
RECOVERY_TIMEOUT = 20.0  # a cycle whose marker has not reached everyone by then did not recover
# How often each fault is drawn (the registry names them; only the durable-store ones need postgres).
MENU: dict[str, int] = {
    "broker-kill": 4,
    "broker-pause": 2,
    "storage-down": 2,
    "storage-hang": 2,
    "storage-latency": 2,
    "postgres-stop": 1,
    "link-reset": 2,
    "subscriber-slow": 1,
}


@dataclass(frozen=True)
class SoakPlan:
    cycles: int = 100
    seed: int = 1
    per_cycle: int = 60  # messages published while each fault holds
    big_messages: int | None = None  # towards the stalled readers; None: more than the sockets hold
    draws: tuple[str, ...] | None = None  # replay these faults instead of drawing (a failing soak's list)
    duration: float | None = None  # seconds: no new cycle starts after this (a time budget)
    calm_before_kill: float = 2.5  # seconds of healthy traffic before a kill (see soak_scenario)

    def faults(self, durable: bool, restartable_pg: bool) -> list[str]:
        """The seeded draw, one fault name per cycle: every fault of the menu once (in a seeded order),
        then weighted draws."""
        if self.draws is not None:
            return list(self.draws)
        menu = {
            name: weight
            for name, weight in MENU.items()
            if (durable or "durable" not in REGISTRY.get(name).needs)
            and (restartable_pg or "restartable-postgres" not in REGISTRY.get(name).needs)
        }
        rng = random.Random(self.seed)
        names = list(menu)
        first = rng.sample(names, k=len(names))
        rest = rng.choices(names, weights=[menu[n] for n in names], k=max(0, self.cycles - len(first)))
        return (first + rest)[: self.cycles]


def broker_rss(pid: int | None) -> int | None:
    """The broker process's resident memory in bytes (its own, not its children's), or None."""
    if pid is None:
        return None
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        return None
    return None


class Traffic:
    """The steady publisher: publishes at a rate until stopped, keeping every answer's task."""

    def __init__(self, pub: Publisher, rate: float) -> None:
        self.pub, self.rate = pub, rate
        self.tasks: list[asyncio.Task[PublishAnswer]] = []
        self._stop = asyncio.Event()
        self._runner: asyncio.Task[None] | None = None

    def start(self) -> None:
        self._runner = asyncio.create_task(self._run(), name="soak-traffic")

    async def _run(self) -> None:
        while not self._stop.is_set():
            self.tasks += await publish_paced(
                self.pub, TOPIC, max(1, int(self.rate // 10)), self.rate, timeout=60
            )

    async def stop(self) -> list[str]:
        self._stop.set()
        if self._runner is not None:
            await self._runner
        done = await asyncio.gather(*self.tasks)
        return published_ids(done)


def soak_scenario(plan: SoakPlan, on_cycle: Callable[[dict[str, Any]], None] | None = None):
    """The scenario (``async (lab, nemesis) -> verdicts``) of a soak with *plan*; *on_cycle* gets each
    cycle's row as it ends (for a live display)."""

    async def soak(lab: Lab, nemesis: Nemesis) -> list[Verdict]:
        durable = lab.config.durable
        draws = plan.faults(durable, lab.session.pg.can_restart)
        lab.notes["plan"] = {"cycles": plan.cycles, "seed": plan.seed, "faults": draws}
        always = lab.subscriber("a-always", [TOPIC])
        late = lab.subscriber("l-late", [TOPIC], ack="late", ack_delay=0.3)
        batch = lab.subscriber("b-batch", [TOPIC], ack="never")
        slows = [lab.subscriber(n, [TOPIC, BIG_TOPIC], rcvbuf=SLOW_RCVBUF) for n in ("c-slow", "s-slow")]
        linked = await lab.linked_subscriber("k-linked", [TOPIC])
        tail = lab.subscriber("z-tail", [TOPIC])  # after both slow readers, however they are ordered
        subs = [always, late, batch, slows[0], slows[1], linked, tail]
        healthy = [s for s in subs if s not in slows]
        big_n = plan.big_messages or big_messages()
        pub, bulk = lab.publisher("p"), lab.publisher("bulk")
        for c in (*subs, pub, bulk):
            await c.start()
        # The soak starts from settled storage: subscriptions acknowledged but not yet written when
        # the first cycle's storage fault and a kill come would be lost with the broker (as an
        # unpersisted message is), and nothing could tell them from a broker that forgets them.
        if durable:
            await store_barrier(lab, subs, pub)
        traffic = Traffic(pub, RATE)
        traffic.start()
        cycles: list[dict[str, Any]] = []
        calm_since = lab.history.now()
        lab.notes["cycles"] = cycles
        big_tasks: list[asyncio.Task[PublishAnswer]] = []
        for n, name in enumerate(draws, 1):
            if plan.duration is not None and lab.history.now() - lab.history.start > plan.duration:
                lab.notes["stopped_early"] = f"--duration {plan.duration:g}s reached after {n - 1} cycles"
                break
            fault = _bind(name, linked, slows)
            row: dict[str, Any] = {"cycle": n, "fault": name}
            if fault.crash:
                # A kill lands on a broker that ran healthy for a while: what was acked then is
                # settled, so the resurrection checker can hold the restarted broker to it. Traffic
                # goes on meanwhile; this paces the soak, it synchronises nothing.
                await asyncio.sleep(max(0.0, plan.calm_before_kill - (lab.history.now() - calm_since)))
            seq, conns = pub.seq, linked.connections
            heavy = None
            try:
                async with nemesis.inject(fault) as f:
                    if isinstance(f, SubscriberSlow):
                        big = publish_paced(bulk, BIG_TOPIC, big_n, BIG_RATE, _big_payload, 60)
                        heavy = asyncio.create_task(big)  # answered after the window: a stall holds them
                        await _backed_up(lab, slows, heavy)
                        seq = pub.seq  # the traffic that counts goes out once the sockets are full
                    await wait_for(
                        lab.history, lambda s=seq: pub.seq - s >= plan.per_cycle, timeout=60,
                        what=f"{plan.per_cycle} publishes during {name}",
                    )  # fmt: skip
                    if heavy is not None:  # a fan-out stuck behind the stalled readers: STALL_WAIT
                        await settle(lab.history, healthy, [f"{pub.client_id}-{pub.seq - 1}"], STALL_WAIT)
                    if isinstance(f, LinkReset):  # the window holds the cut it is there to make
                        with contextlib.suppress(HangError):
                            await wait_for(
                                lab.history, lambda c=conns: linked.connections > c or not linked.connected,
                                timeout=10, what="the linked subscriber's connection to be reset",
                            )  # fmt: skip
            except FaultUnsupported as exc:
                row["skipped"] = str(exc)
                cycles.append(row)
                continue
            finally:
                if heavy is not None:
                    big_tasks += await heavy
            window = lab.history.fault_windows()[-1]
            row["effective"] = window.effective
            if fault.crash:  # the marker must find them subscribed again, or it proves nothing
                with contextlib.suppress(HangError):
                    for s in subs:
                        await s.wait_subscribed(s.topics, timeout=RECOVERY_TIMEOUT)
            marker = await pub.publish(TOPIC, {"marker": n}, timeout=60)
            t0 = lab.history.now()
            recovered = marker.ok and await _all_received(lab, subs, marker.id)
            row["recovered"] = recovered
            row["recovery_s"] = round(lab.history.now() - t0, 3) if recovered else None
            await batch.ack_all()
            rss = broker_rss(lab.broker.pid if lab.broker is not None else None)
            row["rss_mb"] = None if rss is None else round(rss / (1 << 20), 2)
            if rss is not None:
                lab.history.append(
                    "lab", "info", "rss", value={"cycle": n, "pid": lab.broker.pid, "rss_bytes": rss}
                )
            cycles.append(row)
            calm_since = lab.history.now()
            if on_cycle is not None:
                on_cycle(row)
        ids = await traffic.stop()
        big_ids = published_ids(await asyncio.gather(*big_tasks))
        await settle(lab.history, subs, ids, timeout=30)
        await settle(lab.history, slows, big_ids, timeout=30)
        await batch.ack_all()
        facts = Facts(lab.history)
        verdicts = [
            check_at_least_once(facts),
            check_hydration(facts) if durable else not_applicable(HYDRATION, "--store memory"),
            check_resurrection(facts) if durable else not_applicable(RESURRECTION, "--store memory"),
            check_availability(facts, factor=3.0, slack=0.2)
            if durable
            else not_applicable("availability-under-storage-faults", "--store memory"),
            check_isolation(facts, factor=3.0, slack=0.5),
            check_integrity(facts),
            check_recovery(facts),
            check_memory_bound(lab.history),
        ]
        listing, why = await lab.store_listing()
        if listing is not None:  # read it again once everything acked is surely written
            await store_barrier(lab, subs, pub)
            listing, why = await lab.store_listing()
        verdicts.append(
            check_no_zombies(lab.history, listing) if listing is not None else not_applicable(NO_ZOMBIE, why)
        )
        return verdicts

    return soak


async def _all_received(lab: Lab, subs: list[Subscriber], msg_id: str) -> bool:
    with contextlib.suppress(HangError):
        await wait_for(
            lab.history,
            lambda: all(msg_id in s.received for s in subs),
            timeout=RECOVERY_TIMEOUT,
            what=f"the marker {msg_id} to reach every subscriber",
        )
        return True
    return False


def _big_payload(_i: int) -> str:
    return incompressible(BIG_BYTES)


def big_messages() -> int:
    """Large messages enough to overflow a stalled reader's buffers and the broker's send buffer."""
    return -(-(kernel_send_buffer_max() + 2 * SLOW_RCVBUF + (1 << 20)) // BIG_BYTES)


async def _backed_up(lab: Lab, slows: list[Subscriber], heavy: asyncio.Task[Any]) -> None:
    """Until every large message went out (more than the sockets hold) and the broker's sockets to
    the stalled readers are full, or it closed them. The kernel takes megabytes before a broker's
    own send buffer fills and its fan-out would wait: traffic judged earlier proves nothing. A
    broker that takes them all without backing up (it drops them, or sheds the reader) gets a
    short wait, then the window goes on: the landing proof says what happened."""
    await asyncio.wait({heavy}, timeout=60)
    with contextlib.suppress(HangError):
        await wait_for(lab.history, BackedUp(lab, slows), timeout=2.0, what="the slow sockets to fill")


def _bind(name: str, linked: Subscriber, slows: list[Subscriber]) -> Fault:
    if name == "link-reset":
        return LinkReset(linked)
    if name == "subscriber-slow":
        return SubscriberSlow(slows)
    return REGISTRY.create(name)
