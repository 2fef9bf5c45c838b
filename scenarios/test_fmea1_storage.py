"""FMEA 1: storage slow, down, hung, reset or restarted must not stop or slow real-time delivery.

Two subscribers and a publisher run a paced workload through a baseline phase,
then one phase per storage fault (latency, proxy down, hang, connection reset,
PostgreSQL stopped and started), then a recovery phase. The availability checker
compares publish-to-deliver latency per fault window with the baseline; every
published message must also reach both subscribers (at-least-once) unaltered, and
once storage is back the publisher must learn each message's fate: exactly one
``persisted`` or ``persist_failed`` (persistence-outcome).
"""

from __future__ import annotations

import pytest

from chaos.checkers import Facts, check_at_least_once, check_availability, check_integrity
from chaos.checkers.verdict import Verdict
from chaos.environment import Lab
from chaos.nemesis import FaultUnsupported, Nemesis
from chaos.scenario import (
    answers,
    assert_all_pass,
    check_persistence_outcomes,
    not_applicable,
    publish_paced,
    published_ids,
    settle,
    wait_outcomes,
)

TOPIC = "fmea1.orders"
PER_PHASE = 15  # messages per phase; x2 subscribers = 30 latency samples per window
RATE = 40.0  # publishes per second
OUTCOME_TIMEOUT = 30.0  # hang timeout for persisted/persist_failed after recovery
FACTOR, SLACK = 3.0, 0.2  # p99 during a fault <= 3 x baseline p99 + 200 ms (generous on 2 shared cores)


async def storage_faults(lab: Lab, nemesis: Nemesis) -> list[Verdict]:
    if not lab.config.durable:
        return [not_applicable("availability-under-storage-faults", "the broker runs with --store memory")]
    subs = [lab.subscriber(f"s{i}", [TOPIC]) for i in (1, 2)]
    pub = lab.publisher("p")
    for c in (*subs, pub):
        await c.start()
    tasks = await publish_paced(pub, TOPIC, PER_PHASE, RATE)  # baseline
    faults = [
        nemesis.storage_latency(300),
        nemesis.storage_down(),
        nemesis.storage_hang(),
        nemesis.storage_reset(),
    ]
    if lab.session.pg.can_restart:
        faults.append(nemesis.postgres_stopped())
    else:
        lab.notes["skipped"] = "postgres stop/start: the PostgreSQL is external (FASTPORT_LAB_PG_DSN)"
    for fault in faults:
        try:
            async with fault:
                tasks += await publish_paced(pub, TOPIC, PER_PHASE, RATE)
        except FaultUnsupported as exc:
            lab.notes.setdefault("unsupported", []).append(str(exc))
        tasks += await publish_paced(pub, TOPIC, 3, RATE)  # a breath of normal operation between faults
    tasks += await publish_paced(pub, TOPIC, PER_PHASE, RATE)  # recovery
    results = await answers(tasks)
    ids = published_ids(results)
    await settle(lab.history, subs, ids)
    await wait_outcomes(lab, pub, ids, timeout=OUTCOME_TIMEOUT)
    facts = Facts(lab.history)
    return [
        check_availability(facts, factor=FACTOR, slack=SLACK),
        check_at_least_once(facts),
        check_integrity(facts),
        check_persistence_outcomes(lab.history),
    ]


@pytest.mark.integration
@pytest.mark.fmea(1)
def test_storage_faults_do_not_stop_delivery(run_lab, lab_config):
    if not lab_config.durable:
        pytest.skip("storage faults need --store postgres: a memory store has no storage to break")
    assert_all_pass(run_lab(storage_faults))
