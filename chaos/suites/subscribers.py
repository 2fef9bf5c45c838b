"""FMEA 2: subscribers whose network fails or who stop reading must not stop or delay anyone else.

The failure as first seen: one subscriber's ``send`` failed or hung mid fan-out,
and the loop never reached the subscribers after it. A broker may visit
recipients in any order (insertion, sorted by client id either way, hash,
per-topic shard), so healthy subscribers sit on both sides of the faulty ones
in every common order: the client ids are spread over the alphabet and subscribe
in that order, and several subscribers are faulted at once (a loop that meets
any of them first has healthy ones after it whatever the order; with a hash
order the chance that every faulty one comes last is 1 in C(n, k)).

Under a paced workload of hundreds of messages per phase:

1. ``link-reset``: two subscribers' links are reset (RST) mid-burst, by the
   fault proxy in front of them, so the broker's next writes to them fail;
2. ``link-cut``: two links are closed in the middle of a frame;
3. ``link-blackhole``: one link goes half-open, and the broker writes into it;
4. ``subscriber-slow``: four subscribers (with small socket receive buffers) stop
   reading while large incompressible messages go out to them on a topic of their
   own (more than their sockets hold, whatever the broker's compression), so the
   broker's sends to them back up; meanwhile the usual traffic goes on, to them
   and to everyone else: a fan-out that waits on (or trips over) a stalled
   reader delays the healthy subscribers after it.

Judged: the healthy subscribers get everything as fast as in the baseline
(isolation, per fault window), every subscriber, the faulty ones included,
gets every message in the end (at-least-once: the cut ones after they
reconnect), payloads intact, duplicates within bounds, delivery back to normal
after each fault.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Sequence

from chaos.checkers import (
    Facts,
    check_at_least_once,
    check_duplicates,
    check_integrity,
    check_isolation,
    check_recovery,
)
from chaos.checkers.verdict import Verdict
from chaos.clients import Publisher, Subscriber, wait_for
from chaos.environment import Lab
from chaos.faults import Fault, LinkBlackhole, LinkCut, LinkReset, SubscriberSlow
from chaos.faults.subscriber import BackedUp
from chaos.nemesis import Nemesis
from chaos.workload import answers, incompressible, publish_paced, published_ids, settle

TOPIC = "fmea2.prices"
BIG_TOPIC = "fmea2.reports"  # large messages, to the slow readers only: what their buffers fill up with
SLOW_RCVBUF = 64 << 10  # the slow readers' socket receive buffer: a few MiB back the broker up
FACTOR, SLACK = 3.0, 0.5  # generous for 2 shared cores; a stalled fan-out delays the healthy for seconds
HEALTHY = ("a-h1", "d-h2", "h-h3", "p-h4", "u-h5", "z-h6")
SLOW = ("c-slow", "j-slow", "q-slow", "x-slow")
RESET = ("f-reset", "t-reset")
CUT = ("k-cut", "w-cut")
BLACKHOLE = ("n-blackhole",)


async def _burst_with(
    lab: Lab,
    nemesis: Nemesis,
    pub: Publisher,
    targets: Sequence[Subscriber],
    make: type[Fault],
    count: int,
    rate: float,
) -> list[str]:
    """Publish *count* messages and inject *make* on each target a third of the way in (mid fan-out)."""
    first = pub.seq
    burst = [f"{pub.client_id}-{first + i}" for i in range(count)]
    lead = max(2, count // 3)
    tasks = await publish_paced(pub, TOPIC, lead, rate)
    await wait_for(
        lab.history,
        lambda: all(sum(i in t.received for i in burst) >= 2 for t in targets),
        timeout=10,
        what=f"{', '.join(t.client_id for t in targets)} to get the start of the burst",
    )
    async with contextlib.AsyncExitStack() as stack:
        for t in targets:
            await stack.enter_async_context(nemesis.inject(make(t, burst)))  # type: ignore[call-arg]
        tasks += await publish_paced(pub, TOPIC, count - lead, rate)
    return published_ids(await answers(tasks))


async def subscriber_faults(lab: Lab, nemesis: Nemesis) -> list[Verdict]:
    load = lab.config.load
    names = sorted((*HEALTHY, *SLOW, *RESET, *CUT, *BLACKHOLE))  # subscribe in name order too
    linked = {*RESET, *CUT, *BLACKHOLE}
    subs: dict[str, Subscriber] = {}
    for name in names:
        if name in linked:
            subs[name] = await lab.linked_subscriber(name, [TOPIC])
        elif name in SLOW:
            subs[name] = lab.subscriber(name, [TOPIC, BIG_TOPIC], rcvbuf=SLOW_RCVBUF)
        else:
            subs[name] = lab.subscriber(name, [TOPIC])
    pub = lab.publisher("p")
    bulk = lab.publisher("bulk")  # the large messages, on a connection of their own
    for name in names:
        await subs[name].start()
    for p in (pub, bulk):
        await p.start()
    everyone = list(subs.values())
    slow = [subs[n] for n in SLOW]

    def big(_i: int) -> str:
        return incompressible(load.big_bytes)

    small = published_ids(
        await answers(await publish_paced(pub, TOPIC, load.per_phase, load.rate))
    )  # baseline
    await settle(lab.history, everyone, small, timeout=15)

    for make, group in ((LinkReset, RESET), (LinkCut, CUT), (LinkBlackhole, BLACKHOLE)):
        small += await _burst_with(
            lab, nemesis, pub, [subs[n] for n in group], make, load.per_phase, load.rate
        )
        await settle(lab.history, everyone, small, timeout=15)

    # The stall: the slow readers stop reading while large messages fill their sockets, and the
    # usual traffic goes on to everyone.
    first = bulk.seq
    big_ids = [f"{bulk.client_id}-{first + i}" for i in range(load.big_messages)]
    big_rate = max(50.0, load.rate / 4)
    async with nemesis.inject(SubscriberSlow(slow, big_ids)):
        heavy = asyncio.create_task(
            publish_paced(bulk, BIG_TOPIC, load.big_messages, big_rate, big, timeout=60), name="big"
        )
        # The usual traffic is judged once the stalled readers' sockets are full (the event, not a
        # time: a broker that compresses takes longer to fill them).
        backed_up = BackedUp(lab, slow)
        with contextlib.suppress(TimeoutError):
            await wait_for(
                lab.history,
                lambda: heavy.done() or backed_up(),
                timeout=30,
                what="the broker's writes to a stalled reader to back up",
            )
        tasks = await publish_paced(pub, TOPIC, load.per_phase, load.rate)
        tasks += await heavy
        # The healthy ones get the usual traffic as fast as ever, unless a fan-out is stuck behind (or
        # tripped over) a stalled reader: then the window ends after this wait, short enough for no
        # keepalive to end the stall.
        during = [f"{pub.client_id}-{pub.seq - 1}"]
        await settle(lab.history, [s for s in everyone if s not in slow], during, timeout=5.0)
    done = await answers(tasks)
    rec = await answers(await publish_paced(pub, TOPIC, max(20, load.per_phase // 3), load.rate))  # recovery
    small += [a.id for a in done if a.ok and not a.id.startswith(bulk.client_id)] + published_ids(rec)
    await settle(lab.history, everyone, small, timeout=15)
    await settle(lab.history, slow, big_ids, timeout=15)
    facts = Facts(lab.history)
    return [
        check_isolation(facts, factor=FACTOR, slack=SLACK),
        check_at_least_once(facts),
        check_integrity(facts),
        check_duplicates(facts),
        check_recovery(facts),
    ]
