"""The locustfile of ``fastport-lab bench load``: closed-loop groups built from the load users' sessions.

Each ``BenchGroup`` user is one publisher and ``--fp-subs-per-user`` subscribers
on a topic of its own (the relay has no topics: its subscribers get every
group's messages). Like the lean client of ``bench broker``, the publisher
stays at most a window of messages ahead of its slowest subscriber, counted in
this process, so the rig runs at its own capacity without piling up in the
broker's send queues. The per-frame work is that of the ordinary users
(:class:`~chaos.load.sessions.SubscriberSession`), so the figure is the rig's.

Flavour: ``--fp-bench-relay`` talks to ``python -m chaos.bench.relay``.
"""

from __future__ import annotations

import itertools
import time
from typing import Any

from gevent.event import Event
from locust import events, task
from locust.exception import StopUser

from chaos.load.sessions import PublisherSession, SubscriberSession
from chaos.load.users import FastPortUser, log

_groups = itertools.count()


@events.init_command_line_parser.add_listener
def _bench_arguments(parser: Any) -> None:
    parser.add_argument("--fp-bench-relay", action="store_true", help="the server is the bench relay")
    parser.add_argument(
        "--fp-bench-window",
        type=int,
        default=0,
        help="messages a group's publisher may be ahead of its slowest subscriber "
        "(default max(8, 2000 // subscribers), as bench broker)",
    )


class BenchGroup(FastPortUser):
    """One publisher and its subscribers, flow-controlled by their deliveries."""

    def on_start(self) -> None:
        ctx = self.ctx
        s = ctx.settings
        options = self.environment.parsed_options
        relay = bool(getattr(options, "fp_bench_relay", False))
        url = self._url()
        n = next(_groups)
        index, _ = ctx.workers
        self.topic = f"bench-{s.run_id or 'fp'}-{index}.{n}"
        self.m = s.subs_per_user
        self.window = getattr(options, "fp_bench_window", 0) or max(8, 2000 // self.m)
        self.complete = 0
        self.counts: dict[int, int] = {}
        self.progress = Event()
        pub_id = ctx.client_id("bpub", n)
        self.pub_id = pub_id
        self.subs = [
            SubscriberSession(
                url,
                ctx.client_id(f"bsub{n}x", i),
                [self.topic],
                ctx.sink,
                ack_mode="always",
                relay=relay,
                on_delivery=self._seen,
            )
            for i in range(self.m)
        ]
        self.pub = PublisherSession(
            url,
            pub_id,
            ctx.sink,
            payload_size=s.payload_size,
            incompressible=s.incompressible,
            window=1_000_000,
            relay=relay,
        )
        for sub in self.subs:
            ctx.subscribers.add(sub)
            sub.start()
        ctx.publishers.add(self.pub)
        self.pub.start()

    def _seen(self, publisher: str, seq: int) -> None:
        if publisher != self.pub_id:
            return
        seen = self.counts.get(seq, 0) + 1
        if seen >= self.m:
            self.counts.pop(seq, None)
            self.complete += 1
            self.progress.set()
        else:
            self.counts[seq] = seen

    @task
    def saturate(self) -> None:
        """Publish whenever the window has room, for up to a second, then hand back to Locust."""
        ctx, pub, topic, window = self.ctx, self.pub, self.topic, self.window
        end = time.monotonic() + 1.0
        while not ctx.quiet and time.monotonic() < end:
            if pub.seq - self.complete < window:
                pub.publish(topic)
                continue
            self.progress.clear()
            if not self.progress.wait(30):
                log.error("bench: deliveries stopped for 30 s")
                raise StopUser()

    def on_stop(self) -> None:
        ctx = self.ctx
        ctx.publishers.discard(self.pub)
        self.pub.close(0.5)
        for sub in self.subs:
            ctx.subscribers.discard(sub)
            sub.close(0.5, unsubscribe=False)
