"""FMEA 3: after SIGKILL and restart the broker redelivers what it persisted; SIGSTOP loses nothing.

``keeper`` never acks during the run, so its deliveries stay outstanding; ``acker``
acks at once. After the baseline is delivered and persisted, the broker is killed
with SIGKILL and restarted on the same port. When ``keeper`` reconnects and
subscribes, every persisted unacked delivery must come again (hydration; no retry
timer needed: the broker replays outstanding deliveries on subscribe). Then the
broker is frozen with SIGSTOP while messages are published, and thawed: all of
them must arrive. Finally ``keeper`` acks everything and, for the reference broker,
the store must hold no acked or stranded delivery (no zombie).
"""

from __future__ import annotations

from chaos.checkers import (
    Facts,
    check_at_least_once,
    check_duplicates,
    check_hydration,
    check_integrity,
    check_no_zombies,
    check_recovery,
)
from chaos.checkers.hydration import HYDRATION, NO_ZOMBIE
from chaos.checkers.verdict import Verdict, not_applicable
from chaos.clients import Publisher, Subscriber
from chaos.environment import Lab
from chaos.nemesis import Nemesis
from chaos.workload import answers, publish_paced, published_ids, settle, wait_outcomes

TOPIC = "fmea3.jobs"
FLUSH = "fmea3.flush"  # no subscribers: its `persisted` means the writes queued before it are done


async def crash_and_restart(lab: Lab, nemesis: Nemesis) -> list[Verdict]:
    keeper = lab.subscriber("keeper", [TOPIC], ack="never")
    acker = lab.subscriber("acker", [TOPIC])
    pub = lab.publisher("p")
    for c in (keeper, acker, pub):
        await c.start()
    base = published_ids(await answers(await publish_paced(pub, TOPIC, 10, 50.0)))
    await settle(lab.history, [keeper, acker], base)
    if lab.config.durable:  # only what the broker said it persisted before the crash is owed after it
        await wait_outcomes(lab, pub, base, timeout=20)

    async with nemesis.inject("broker-kill"):
        pass
    for s in (keeper, acker):
        await s.wait_subscribed([TOPIC], timeout=30)
    await pub.wait_connected(timeout=30)
    # Replays follow `subscribed` on the same connection; a message published after the
    # resubscription arrives after them, so once it is in, the replays are too.
    marker = await pub.publish(TOPIC, "after-restart")
    await settle(lab.history, [keeper, acker], published_ids([marker]))

    async with nemesis.inject("broker-pause"):
        tasks = await publish_paced(pub, TOPIC, 10, 50.0)
    frozen = published_ids(await answers(tasks))
    await settle(lab.history, [keeper, acker], frozen)

    await keeper.ack_all()
    facts = Facts(lab.history)
    verdicts = [
        check_hydration(facts) if lab.config.durable else not_applicable(HYDRATION, "--store memory"),
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
