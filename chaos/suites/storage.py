"""FMEA 1: storage slow, down, hung, reset or restarted must not stop or slow real-time delivery.

Three subscribers and a publisher run a paced workload (``--intensity``: by
default hundreds of messages a second, hundreds per phase, so the broker's
persistence backlog grows during each fault) through a baseline phase, then one
phase per storage fault (latency, proxy down, hang, connection reset, PostgreSQL
stopped and started), then a recovery phase. The availability checker
compares publish-to-deliver latency per fault window with the baseline; every
published message must also reach both subscribers (at-least-once) unaltered, and
once storage is back the publisher must learn each message's fate: exactly one
``persisted`` or ``persist_failed`` (persistence-outcome).
"""

from __future__ import annotations

import math

import numpy as np

from chaos.checkers import (
    Facts,
    check_at_least_once,
    check_availability,
    check_integrity,
    check_persistence_outcomes,
    check_recovery,
)
from chaos.checkers.availability import NAME as AVAILABILITY
from chaos.checkers.latency import samples
from chaos.checkers.verdict import Verdict, not_applicable
from chaos.environment import Lab
from chaos.faults import FaultUnsupported
from chaos.nemesis import Nemesis
from chaos.workload import answers, publish_paced, published_ids, settle, wait_outcomes

TOPIC = "fmea1.orders"
SUBSCRIBERS = ("a-s1", "m-s2", "z-s3")
OUTCOME_TIMEOUT = 60.0  # hang timeout for persisted/persist_failed after recovery (a backlog to write)
FACTOR, SLACK = 3.0, 0.2  # p99 during a fault <= 3 x baseline p99 + 200 ms (generous on 2 shared cores)
FAULTS = ("storage-latency", "storage-down", "storage-hang", "storage-reset", "postgres-stop")
MIN_LATENCY_MS, MAX_LATENCY_MS = 300, 5000  # the storage latency injected, scaled to the baseline


def storage_latency_ms(facts: Facts) -> int:
    """The latency to inject: 3x the baseline's p99 delivery latency, 300 ms at least (5 s at most).

    A broker that writes before it fans out is slow at baseline too when storage is its bottleneck
    (every publish queues behind an INSERT); a fixed 300 ms would hide under that, and the
    availability checker's ceiling (a delivery as slow as the injected latency waited on storage)
    applies only to a latency well above the baseline. So the fault grows with what the broker
    under test showed, whatever its speed or the machine's load.
    """
    lat = samples(facts).latency
    done = lat[np.isfinite(lat)]
    if not len(done):
        return MIN_LATENCY_MS
    return int(min(MAX_LATENCY_MS, max(MIN_LATENCY_MS, math.ceil(3000 * float(np.percentile(done, 99))))))


async def storage_faults(lab: Lab, nemesis: Nemesis) -> list[Verdict]:
    if not lab.config.durable:
        return [not_applicable(AVAILABILITY, "the broker runs with --store memory")]
    load = lab.config.load
    per_phase, rate = load.per_phase, load.rate
    subs = [lab.subscriber(name, [TOPIC]) for name in SUBSCRIBERS]
    pub = lab.publisher("p")
    for c in (*subs, pub):
        await c.start()
    tasks = await publish_paced(pub, TOPIC, per_phase, rate)  # baseline
    base = published_ids(await answers(tasks))
    await settle(lab.history, subs, base, timeout=30)  # the baseline in, to size the latency fault
    latency_ms = storage_latency_ms(Facts(lab.history))
    lab.notes["storage_latency_ms"] = latency_ms
    for name in FAULTS:
        fault = (
            nemesis.fault(name, latency_ms=latency_ms) if name == "storage-latency" else nemesis.fault(name)
        )
        why = fault.unsupported(lab)
        if why is not None:
            lab.notes.setdefault("unsupported", []).append(f"{name}: {why}")
            continue
        try:
            async with nemesis.inject(fault):
                tasks += await publish_paced(pub, TOPIC, per_phase, rate)
        except FaultUnsupported as exc:
            lab.notes.setdefault("unsupported", []).append(str(exc))
        tasks += await publish_paced(pub, TOPIC, max(3, per_phase // 10), rate)  # a breath between faults
    tasks += await publish_paced(pub, TOPIC, per_phase, rate)  # recovery
    results = await answers(tasks)
    ids = published_ids(results)
    await settle(lab.history, subs, ids, timeout=30)
    await wait_outcomes(lab, pub, ids, timeout=OUTCOME_TIMEOUT)
    facts = Facts(lab.history)
    return [
        check_availability(facts, factor=FACTOR, slack=SLACK),
        check_at_least_once(facts),
        check_integrity(facts),
        check_persistence_outcomes(lab.history),
        check_recovery(facts),
    ]
