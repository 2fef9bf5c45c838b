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
4. ``subscriber-slow``: four subscribers stop reading while large incompressible
   messages go out (more than any socket buffers hold, whatever the broker's
   compression), so the broker's sends to them back up.

Judged: the healthy subscribers get everything as fast as in the baseline
(isolation, per fault window), every subscriber, the faulty ones included,
gets every message in the end (at-least-once: the cut ones after they
reconnect), payloads intact, duplicates within bounds, delivery back to normal
after each fault.
"""

from __future__ import annotations

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
from chaos.nemesis import Nemesis
from chaos.workload import answers, incompressible, publish_paced, published_ids, settle

TOPIC = "fmea2.prices"
BIG_TOPIC = "fmea2.reports"  # large messages: what a stalled reader's buffers fill up with
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
        else:
            subs[name] = lab.subscriber(name, [TOPIC, BIG_TOPIC])
    pub = lab.publisher("p")
    for name in names:
        await subs[name].start()
    await pub.start()
    everyone = list(subs.values())
    healthy = [subs[n] for n in HEALTHY]
    on_big = [subs[n] for n in (*HEALTHY, *SLOW)]

    def big(_i: int) -> str:
        return incompressible(load.big_bytes)

    # Baseline with the shapes of the fault phases (small and large messages), so the bound
    # compares like with like.
    small = published_ids(await answers(await publish_paced(pub, TOPIC, load.per_phase, load.rate)))
    big_rate = max(50.0, load.rate / 4)
    large = published_ids(
        await answers(await publish_paced(pub, BIG_TOPIC, load.big_messages // 2, big_rate, big, timeout=60))
    )
    await settle(lab.history, everyone, small, timeout=30)
    await settle(lab.history, on_big, large, timeout=30)

    for make, group in ((LinkReset, RESET), (LinkCut, CUT), (LinkBlackhole, BLACKHOLE)):
        small += await _burst_with(
            lab, nemesis, pub, [subs[n] for n in group], make, load.per_phase, load.rate
        )
        await settle(lab.history, everyone, small, timeout=30)

    # The stall: four subscribers stop reading while large messages go out to them.
    first = pub.seq
    big_ids = [f"{pub.client_id}-{first + i}" for i in range(load.big_messages)]
    async with nemesis.inject(SubscriberSlow([subs[n] for n in SLOW], big_ids)):
        tasks = await publish_paced(pub, BIG_TOPIC, load.big_messages, big_rate, big, timeout=60)
        # The healthy ones get all of it while the slow ones are stalled, unless stuck behind them
        # (then the window ends after this wait: short enough for no keepalive to end the stall).
        await settle(lab.history, [s for s in on_big if s in healthy], big_ids, timeout=5.0)
    await answers(tasks)
    rec = await answers(await publish_paced(pub, TOPIC, max(20, load.per_phase // 3), load.rate))  # recovery
    await settle(lab.history, everyone, small + published_ids(rec), timeout=30)
    await settle(lab.history, on_big, large + big_ids, timeout=30)
    facts = Facts(lab.history)
    return [
        check_isolation(facts, factor=FACTOR, slack=SLACK),
        check_at_least_once(facts),
        check_integrity(facts),
        check_duplicates(facts),
        check_recovery(facts),
    ]
