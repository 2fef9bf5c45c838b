"""Bad input: malformed frames get an error with the right code, and nobody else notices.

One client sends every kind of malformed frame PROTOCOL.md names (not JSON, not an
object, missing or ill-typed fields, unknown type, bad topic, over the size limit),
each followed by a ``ping`` that must still be answered, while a publisher keeps
publishing to two healthy subscribers. Checked: every frame answered as allowed
and the sender still served (bad-input-answered), the healthy subscribers as fast
as in the baseline (isolation), nothing lost or altered.
"""

from __future__ import annotations

from chaos.checkers import (
    Facts,
    check_at_least_once,
    check_bad_input,
    check_integrity,
    check_isolation,
    check_recovery,
)
from chaos.checkers.verdict import Verdict
from chaos.environment import Lab
from chaos.faults import MalformedFrames
from chaos.nemesis import Nemesis
from chaos.workload import answers, publish_paced, published_ids, settle

TOPIC = "bad.input"


async def bad_input(lab: Lab, nemesis: Nemesis) -> list[Verdict]:
    load = lab.config.load
    subs = [lab.subscriber(name, [TOPIC]) for name in ("a-h1", "z-h2")]
    pub = lab.publisher("p")
    for c in (*subs, pub):
        await c.start()
    tasks = await publish_paced(pub, TOPIC, load.per_phase, load.rate)  # baseline
    chunk = max(5, int(load.rate // 10))
    async with nemesis.inject(MalformedFrames(pace=0.05)) as attack:
        while not attack.done:  # keep publishing for as long as the bad frames keep coming
            tasks += await publish_paced(pub, TOPIC, chunk, load.rate)
    tasks += await publish_paced(pub, TOPIC, max(10, load.per_phase // 3), load.rate)  # recovery
    await settle(lab.history, subs, published_ids(await answers(tasks)), timeout=30)
    facts = Facts(lab.history)
    return [
        check_bad_input(lab.history),
        check_isolation(facts, factor=3.0, slack=0.2),
        check_at_least_once(facts),
        check_integrity(facts),
        check_recovery(facts),
    ]
