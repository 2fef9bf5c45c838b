"""FMEA 2: a subscriber that disconnects mid fan-out or stops reading must not affect the others.

Four subscribers share a topic; ``slow`` and ``cut`` subscribe first, so a broker
that fans out in a plain loop meets them before the healthy ones. After a
baseline, ``cut`` is aborted (TCP cut, no close frame) while a burst is being
fanned out to it, and reconnects; then ``slow`` stops reading while large
messages are published. The healthy subscribers must get everything as fast as
in the baseline (isolation), and every subscriber, the faulty ones included, must
get every message in the end (at-least-once: the cut one via the replay on resubscribe).
"""

from __future__ import annotations

from chaos.checkers import (
    Facts,
    check_at_least_once,
    check_duplicates,
    check_integrity,
    check_isolation,
    check_recovery,
)
from chaos.checkers.verdict import Verdict
from chaos.clients import wait_for
from chaos.environment import Lab
from chaos.faults import SubscriberCut, SubscriberSlow
from chaos.nemesis import Nemesis
from chaos.workload import answers, publish_paced, published_ids, settle

TOPIC = "fmea2.prices"
BIG = "x" * 300_000  # 40 of these overflow the socket buffers between the broker and a paused reader
FACTOR, SLACK = 3.0, 0.5  # generous for 2 shared cores; the flaw stalls healthy ones for seconds


async def subscriber_faults(lab: Lab, nemesis: Nemesis) -> list[Verdict]:
    slow = lab.subscriber("slow", [TOPIC])
    cut = lab.subscriber("cut", [TOPIC])
    healthy = [lab.subscriber(f"h{i}", [TOPIC]) for i in (1, 2)]
    everyone = [slow, cut, *healthy]
    pub = lab.publisher("p")
    for c in (*everyone, pub):
        await c.start()

    # Baseline with the same shapes as the fault phases (small and large messages), so the
    # latency bound compares like with like.
    base = await answers(await publish_paced(pub, TOPIC, 20, 50.0))
    base += await answers(await publish_paced(pub, TOPIC, 20, 100.0, payload=BIG, timeout=60))
    await settle(lab.history, everyone, published_ids(base))

    # Cut `cut` while a burst is being fanned out to it: some, not all, of the burst has reached it.
    first = pub.seq
    burst = [f"p-{first + i}" for i in range(30)]
    tasks = [*await publish_paced(pub, TOPIC, 4, 60.0)]
    await wait_for(
        lab.history,
        lambda: sum(i in cut.received for i in burst) >= 2,
        timeout=10,
        what="cut to get 2 of the burst",
    )
    async with nemesis.inject(SubscriberCut(cut, burst)):
        tasks += await publish_paced(pub, TOPIC, 26, 60.0)
    results = await answers(tasks)
    await settle(lab.history, everyone, published_ids(results))

    # `slow` stops reading while large messages go out; the others must not wait for it.
    ids = [f"p-{pub.seq + i}" for i in range(40)]
    async with nemesis.inject(SubscriberSlow(slow, ids)):
        tasks = await publish_paced(pub, TOPIC, 40, 100.0, payload=BIG, timeout=60)
        # Healthy subscribers get all of it while `slow` is paused, unless they are stuck behind it.
        await settle(lab.history, [cut, *healthy], ids, timeout=4.0)
    results = await answers(tasks)
    rec = await answers(await publish_paced(pub, TOPIC, 20, 50.0))  # recovery
    await settle(lab.history, everyone, published_ids(results + rec), timeout=30)
    facts = Facts(lab.history)
    return [
        check_isolation(facts, factor=FACTOR, slack=SLACK),
        check_at_least_once(facts),
        check_integrity(facts),
        check_duplicates(facts),
        check_recovery(facts),
    ]
