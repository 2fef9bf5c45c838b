"""FMEA 4: with its port taken at restart, the broker fails fast and clearly; freed, it comes back.

The broker is stopped with SIGTERM, a squatter takes its port, and a start on that
port must exit non-zero within 5 s with ``address already in use`` and the port on
stderr (PROTOCOL.md section 4.2), not hang or run half-started. Once the squatter
lets go, the broker starts on the same port and its clients carry on: nothing
published before the restart is lost (with a durable store, the unacked deliveries
come back on resubscribe).
"""

from __future__ import annotations

import asyncio

from chaos.checkers import Facts, check_at_least_once, check_integrity, check_recovery, check_startup
from chaos.checkers.verdict import Verdict
from chaos.environment import Lab
from chaos.faults import PortSquat
from chaos.launcher import LaunchError
from chaos.nemesis import Nemesis
from chaos.workload import answers, publish_paced, published_ids, settle, wait_outcomes

TOPIC = "fmea4.events"
SQUATTED_START_S = 10.0  # twice PROTOCOL.md's 5 s: a start on a taken port still up by then hangs


async def port_conflict(lab: Lab, nemesis: Nemesis) -> list[Verdict]:
    load = lab.config.load
    s = lab.subscriber("s", [TOPIC], ack="never" if lab.config.durable else "always")
    pub = lab.publisher("p")
    for c in (s, pub):
        await c.start()
    base = published_ids(await answers(await publish_paced(pub, TOPIC, load.per_phase, load.rate)))
    await settle(lab.history, [s], base, timeout=30)
    if lab.config.durable:
        await wait_outcomes(lab, pub, base, timeout=30)
    port = lab.port
    assert lab.broker is not None and port is not None
    await asyncio.to_thread(lab.broker.terminate)

    async with nemesis.inject(PortSquat(port)):
        try:
            await lab.start_broker(port=port, ready_timeout=SQUATTED_START_S)
        except LaunchError as exc:
            lab.notes["refused_start"] = str(exc).splitlines()[0]
    if lab.broker is None or not lab.broker.alive:
        await lab.start_broker(port=port)
    await s.wait_subscribed([TOPIC], timeout=30)
    await pub.wait_connected(timeout=30)
    after = published_ids(await answers(await publish_paced(pub, TOPIC, load.per_phase, load.rate)))
    await settle(lab.history, [s], after, timeout=30)
    await s.ack_all()
    facts = Facts(lab.history)
    return [
        check_startup(lab.history),
        check_at_least_once(facts),
        check_integrity(facts),
        check_recovery(facts),
    ]
