"""FastPort load with Locust: publishers and subscribers against a broker you already run.

    python -m broker --port 8765 &
    locust -f scenarios/load/locustfile.py --headless -u 200 -r 50 -t 60s --host ws://127.0.0.1:8765

One user in five publishes (``--fp-publishers N`` fixes the number), the rest
subscribe, ten connections to a topic. Tune with the ``--fp-*`` options
(chaos/load/settings.py; Locust's ``--help`` does not list a locustfile's own), for example
``--fp-rate 50 --fp-payload-size 1024 --fp-incompressible --fp-ack-mix always=8,late=1,never=1``.
Locust's own ``--processes K`` and ``--master`` / ``--worker`` work as usual;
``--fp-summary FILE`` writes the merged counters and exact percentiles.

Faults are not injected here: they need the lab's control of the broker process,
PostgreSQL and the fault proxy, which a broker you started yourself does not
give. The run says so when it starts; ``fastport-lab load`` runs the same users
with a fault schedule and judges every message.
"""

import logging

from locust import events

from chaos.load.users import FastPortPublisher, FastPortSubscriber, is_controller

__all__ = ["FastPortPublisher", "FastPortSubscriber"]

NO_FAULTS = (
    "fastport: load only, no faults: storage, subscriber-link and process faults need the lab's "
    "control of the broker, PostgreSQL and the fault proxy; run `fastport-lab load` for a fault "
    "schedule judged by the lab's checkers"
)


@events.test_start.add_listener
def _say_faults_are_skipped(environment, **_kwargs) -> None:  # noqa: ANN001
    if is_controller(environment):
        logging.getLogger("fastport").warning(NO_FAULTS)
