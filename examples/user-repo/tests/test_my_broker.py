"""Our broker's own chaos tests, written only against FastPort Lab's public API.

Each test drives traffic with the lab's recording clients, injects one fault with
the nemesis, and hands the checkers' verdicts to ``judge``, which fails the test
with the evidence unless every verdict passed (and keeps them for the lab's
report and gate).
"""

import pytest

from chaos.checkers import check_at_least_once, check_availability, check_hydration, check_integrity
from chaos.workload import answers, publish_paced, published_ids, settle, wait_outcomes

TOPIC = "orders"


async def test_slow_storage_does_not_slow_delivery(lab, nemesis, judge):
    if not lab.config.durable:
        pytest.skip("a storage fault needs --store postgres")
    subs = [lab.subscriber(f"shop-{i}", [TOPIC]) for i in (1, 2)]
    pub = lab.publisher("checkout")
    for client in (*subs, pub):
        await client.start()
    tasks = await publish_paced(pub, TOPIC, 20, rate=40)  # baseline
    async with nemesis.inject("storage-latency", latency_ms=400):  # PostgreSQL answers 400 ms late
        tasks += await publish_paced(pub, TOPIC, 20, rate=40)
    tasks += await publish_paced(pub, TOPIC, 10, rate=40)  # recovery
    ids = published_ids(await answers(tasks))
    await settle(lab.history, subs, ids)
    facts = lab.facts()
    judge(
        check_availability(facts, factor=3.0, slack=0.2),  # p99 during the fault <= 3 x baseline + 200 ms
        check_at_least_once(facts),
        check_integrity(facts),
    )


async def test_killed_broker_redelivers_what_it_persisted(lab, nemesis, judge):
    if not lab.config.durable:
        pytest.skip("hydration needs --store postgres")
    keeper = lab.subscriber("warehouse", [TOPIC], ack="never")  # keeps its deliveries outstanding
    pub = lab.publisher("checkout")
    for client in (keeper, pub):
        await client.start()
    ids = published_ids(await answers(await publish_paced(pub, TOPIC, 10, rate=50)))
    await settle(lab.history, [keeper], ids)
    await wait_outcomes(lab, pub, ids)  # the broker said "persisted": now it owes them
    async with nemesis.inject("broker-kill"):  # SIGKILL, then a restart on the same port
        pass
    await keeper.wait_subscribed([TOPIC], timeout=30)
    marker = published_ids([await pub.publish(TOPIC, "after-restart")])
    await settle(lab.history, [keeper], marker)  # replays come before it on the same connection
    await keeper.ack_all()
    judge(check_hydration(lab.facts()), check_integrity(lab.facts()))
