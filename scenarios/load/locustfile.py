"""FastPort load with Locust: publishers and subscribers against a broker you already run.

    python -m broker --port 8765 &
    locust -f scenarios/load/locustfile.py --headless -u 200 -r 50 -t 60s --host ws://127.0.0.1:8765

One user in five publishes (``--fp-publishers N`` fixes the number), the rest
subscribe, ten connections to a topic. Tune with the ``--fp-*`` options
(chaos/load/settings.py; Locust's ``--help`` does not list a locustfile's own), for example
``--fp-rate 50 --fp-payload-size 1024 --fp-incompressible --fp-ack-mix always=8,late=1,never=1``.
Locust's own ``--processes K`` and ``--master`` / ``--worker`` work as usual;
``--fp-summary FILE`` writes the merged counters and exact percentiles.
"""

from chaos.load.users import FastPortPublisher, FastPortSubscriber

__all__ = ["FastPortPublisher", "FastPortSubscriber"]
