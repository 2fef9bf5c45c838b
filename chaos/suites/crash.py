"""FMEA 3: a crash loses nothing reported persisted and brings nothing acked back; SIGSTOP loses nothing.

Three subscribers: ``keeper`` never acks (its deliveries stay outstanding),
``acker`` acks at once, ``away`` is a durable subscriber that goes offline while
a backlog (1,200 messages at default intensity, ``offline_backlog``) is
published to it, and must get all of it when it comes back. Then, while the
publisher runs at 1,000 publishes a second (``kill_rate``), the broker is
killed with SIGKILL in the middle of the burst (everything it said
``persisted`` is owed after the restart) and restarted on the same port; the
publisher carries on (it resends what got no answer, with the same ids). When
``keeper`` reconnects, every persisted, unacked delivery must
come again (hydration), and nothing ``acker`` acked well before the crash may
come back (resurrection). Then the broker is frozen with SIGSTOP while messages
are published, and thawed: all of them must arrive. Finally ``keeper`` acks
everything and, for the reference broker, the store must hold no acked or
stranded delivery (no zombie).
"""

from __future__ import annotations

import asyncio

from chaos.checkers import (
    Facts,
    check_at_least_once,
    check_duplicates,
    check_hydration,
    check_integrity,
    check_no_zombies,
    check_recovery,
    check_resurrection,
)
from chaos.checkers.hydration import HYDRATION, NO_ZOMBIE
from chaos.checkers.resurrection import GRACE_S
from chaos.checkers.resurrection import NAME as RESURRECTION
from chaos.checkers.verdict import Verdict, not_applicable
from chaos.clients import Publisher, Subscriber, wait_for
from chaos.environment import Lab
from chaos.nemesis import Nemesis
from chaos.workload import answers, publish_paced, published_ids, settle, wait_outcomes

TOPIC = "fmea3.jobs"
FLUSH = "fmea3.flush"  # no subscribers: its `persisted` means the writes queued before it are done


async def crash_and_restart(lab: Lab, nemesis: Nemesis) -> list[Verdict]:
    load = lab.config.load
    durable = lab.config.durable
    keeper = lab.subscriber("keeper", [TOPIC], ack="never")
    acker = lab.subscriber("acker", [TOPIC])
    away = lab.subscriber("away", [TOPIC])
    pub = lab.publisher("p")
    for c in (keeper, acker, away, pub):
        await c.start()
    base = published_ids(await answers(await publish_paced(pub, TOPIC, load.per_phase, load.rate)))
    await settle(lab.history, [keeper, acker, away], base, timeout=30)

    # A durable subscriber away while a backlog is published to it: all of it when it is back.
    await away.close()
    backlog = published_ids(
        await answers(await publish_paced(pub, TOPIC, load.offline_backlog, load.kill_rate, timeout=30))
    )
    away = lab.subscriber("away", [TOPIC])
    await away.start(timeout=30)
    await settle(lab.history, [keeper, acker, away], backlog, timeout=30)
    if durable:  # only what the broker said it persisted is owed after the crash
        await wait_outcomes(lab, pub, base + backlog, timeout=60)
        # The kill must come after acks old enough for the resurrection check (GRACE_S before it):
        # at small intensities the baseline's are not yet. This paces the suite; it synchronises nothing.
        acked = [ev.time for ev in lab.history.by_process(acker.client_id) if ev.f == "ack"]
        if acked:
            await asyncio.sleep(max(0.0, GRACE_S + 0.3 - (lab.history.now() - acked[0])))

    # SIGKILL in the middle of a burst of publishes being persisted.
    first = pub.seq
    burst = asyncio.create_task(
        publish_paced(pub, TOPIC, load.kill_messages, load.kill_rate, timeout=60), name="kill-burst"
    )
    half = [f"{pub.client_id}-{first + i}" for i in range(load.kill_messages // 2)]
    if durable:
        await wait_for(
            lab.history,
            lambda: sum(i in pub.persisted for i in half) >= len(half) // 2 or burst.done(),
            timeout=60,
            what="half of the burst's first half to be persisted",
        )
    else:  # a memory store loses what it holds: kill it only once everything was delivered
        await settle(
            lab.history, [keeper, acker, away], published_ids(await answers(await burst)), timeout=30
        )
    async with nemesis.inject("broker-kill"):
        pass
    tasks = await burst
    for s in (keeper, acker, away):
        await s.wait_subscribed([TOPIC], timeout=30)
    await pub.wait_connected(timeout=30)
    during = published_ids(await answers(tasks))
    # Replays follow `subscribed` on the same connection; a message published after the
    # resubscription arrives after them, so once it is in, the replays are too.
    marker = published_ids([await pub.publish(TOPIC, "after-restart")])
    # 10 s outlasts PROTOCOL.md's first retry (5 s) twice: what has not come by then was not replayed.
    await settle(lab.history, [keeper, acker, away], during + marker, timeout=10)

    async with nemesis.inject("broker-pause"):
        tasks = await publish_paced(pub, TOPIC, max(10, load.per_phase // 10), load.rate)
    frozen = published_ids(await answers(tasks))
    await settle(lab.history, [keeper, acker, away], frozen, timeout=30)

    await keeper.ack_all()
    facts = Facts(lab.history)
    verdicts = [
        check_hydration(facts) if durable else not_applicable(HYDRATION, "--store memory"),
        check_resurrection(facts) if durable else not_applicable(RESURRECTION, "--store memory"),
        check_at_least_once(facts),
        check_integrity(facts),
        check_duplicates(facts),
        check_recovery(facts),
    ]
    verdicts.append(await _no_zombie(lab, keeper, pub))
    return verdicts


async def _no_zombie(lab: Lab, keeper: Subscriber, pub: Publisher) -> Verdict:
    listing, why = await lab.store_listing()
    if listing is None:
        return not_applicable(NO_ZOMBIE, why)
    # The acks went out before this subscribe on the same connection, and FLUSH is published after
    # its answer; the reference broker writes in order, so FLUSH persisted means the acks are written.
    await keeper.subscribe("fmea3.barrier")
    flush = await pub.publish(FLUSH, "flush")
    await wait_outcomes(lab, pub, [flush.id], timeout=20)
    listing, why = await lab.store_listing()
    if listing is None:
        return not_applicable(NO_ZOMBIE, why)
    return check_no_zombies(lab.history, listing)
