"""Locust users for FastPort: publishers and subscribers, their metrics, and the run's drain and merge.

Import this module from a locustfile (``from chaos.load.users import
FastPortPublisher, FastPortSubscriber``) and Locust picks the users up; the
``--fp-*`` options (chaos/load/settings.py) tune them. Importing it imports
Locust, which monkey-patches the process for gevent: never import it into
asyncio code.

What every process does (local, master, or each worker of ``--processes K`` /
``--worker``):

* ``init``: a :class:`LoadContext` on ``environment.fastport``; the recorder
  comes from :func:`configure`'s factory, called once per process.
* Metrics are Locust request events of type ``fastport``: ``connect``,
  ``published`` (publish -> published), ``persisted`` (publish -> persisted;
  ``persist_failed`` is its failure), ``push`` (publish -> first delivery at
  each subscriber, from the send time in the payload) and ``redelivery`` (the
  same for attempts > 1), so Locust's UI, CSV and HTML show them. Exact
  percentiles come from HDR histograms, shipped with each worker report
  (``report_to_master``) and merged on the master (``worker_report``),
  together with the delivery accounting.
* End of run: on the master (or the local runner) ``test_stopping`` drains
  before Locust stops the users: every publisher stops and waits for its
  answers, then every subscriber connection does a ping/pong barrier, so that
  what was published was delivered before anyone disconnects (custom messages
  ``fastport:quiesce`` / ``fastport:barrier`` reach the workers). Ctrl-C skips it.
* ``quitting``: the merged summary is logged and written to ``--fp-summary``.

Code that must run once per run (a fault schedule, the judgement) belongs on
the master: check :func:`is_controller` in a ``test_start`` or ``quitting``
listener, and read ``environment.fastport.stats`` / ``.summary()`` there.
"""

from __future__ import annotations

import itertools
import json
import logging
import math
import secrets
import signal
import sys
import time
from collections.abc import Callable
from typing import Any, ClassVar

import gevent
import greenlet
from gevent.event import Event
from gevent.pool import Group
from locust import User, constant, events, task
from locust.env import Environment
from locust.exception import StopUser
from locust.runners import STATE_RUNNING, STATE_SPAWNING, LocalRunner, MasterRunner, WorkerRunner

from chaos.load.recorder import NullRecorder, Recorder
from chaos.load.sessions import PublisherSession, Sink, SubscriberSession
from chaos.load.settings import Settings, add_arguments
from chaos.load.stats import LoadStats, RateWindow

log = logging.getLogger(__name__)
_current: LoadContext | None = None

RecorderFactory = Callable[[Environment], Recorder]


def configure(*, recorder_factory: RecorderFactory | None = None) -> None:
    """Plug in the recorder (called once per process at test start; default :class:`NullRecorder`)."""
    if recorder_factory is not None:
        LoadContext.recorder_factory = staticmethod(recorder_factory)  # type: ignore[assignment]


def is_controller(environment: Environment) -> bool:
    """True on the one process that runs once-per-run code: the master, or the only process."""
    return isinstance(environment.runner, (MasterRunner, LocalRunner))


def ws_url(host: str) -> str:
    """Locust's ``--host``: ws:// as is, http(s):// mapped to ws(s):// (users often type http)."""
    if host.startswith("http://"):
        return "ws://" + host[len("http://") :]
    if host.startswith("https://"):
        return "wss://" + host[len("https://") :]
    return host


class LoadContext:
    """Per-process state of the FastPort users: settings, stats, recorder, live sessions, the drain."""

    recorder_factory: ClassVar[RecorderFactory] = staticmethod(lambda env: NullRecorder())  # type: ignore[assignment]

    def __init__(self, environment: Environment) -> None:
        self.environment = environment
        self.settings = Settings.from_options(environment.parsed_options)
        self.stats = LoadStats()
        self.recorder: Recorder = NullRecorder()
        self.sink = Sink(self.stats, self.recorder, environment.events.request.fire)
        self.publishers: set[PublisherSession] = set()
        self.subscribers: set[SubscriberSession] = set()
        self.quiet = False  # publishers stop publishing (the drain)
        self.quitting = False
        self.window = RateWindow(self.stats, "local")
        self._pub_n = itertools.count()
        self._sub_n = itertools.count()
        self._replies: dict[str, dict[str, Any]] = {}
        self._replied = Event()
        self._recorder_made = False

    # --- run lifecycle ---------------------------------------------------------

    def begin(self) -> None:
        """``test_start``: settle the run-wide settings on the controller, then read them everywhere."""
        options = self.environment.parsed_options
        runner = self.environment.runner
        if is_controller(self.environment):
            if not getattr(options, "fp_run_id", ""):
                options.fp_run_id = secrets.token_hex(3)  # reaches the workers in the spawn message
            if not getattr(options, "fp_topics", 0):
                options.fp_topics = self._derive_topics()
        self.settings = Settings.from_options(options)
        if not self._recorder_made:
            self.recorder = LoadContext.recorder_factory(self.environment)
            self.sink.set_recorder(self.recorder)
            self._recorder_made = True
        self.sink.log_request = _direct_stats(self.environment)
        self.quiet = False
        key = runner.client_id if isinstance(runner, WorkerRunner) else "local"
        self.window = RateWindow(self.stats, key)
        if not isinstance(runner, MasterRunner):
            gevent.spawn_later(self.settings.warmup, self.window.open)

    def _derive_topics(self) -> int:
        s = Settings.from_options(self.environment.parsed_options)
        users = int(getattr(self.environment.parsed_options, "num_users", 0) or 0)
        classes = self.environment.user_classes
        pub = [c for c in classes if issubclass(c, FastPortPublisher)]
        sub = [c for c in classes if issubclass(c, FastPortSubscriber)]
        if s.publishers:
            sub_users = max(0, users - s.publishers)
        else:
            weights = sum(c.weight for c in pub + sub) or 1
            sub_users = round(users * sum(c.weight for c in sub) / weights)
        per_user = max((getattr(c, "connections_per_user", 0) or s.subs_per_user) for c in sub) if sub else 1
        return max(1, math.ceil(sub_users * per_user / s.subscribers_per_topic))

    @property
    def workers(self) -> tuple[int, int]:
        """(this worker's index, number of workers); (0, 1) when local."""
        runner = self.environment.runner
        if isinstance(runner, WorkerRunner):
            return runner.worker_index, max(
                1, int(getattr(self.environment.parsed_options, "expect_workers", 1))
            )
        return 0, 1

    def client_id(self, role: str, n: int) -> str:
        index, _ = self.workers
        return f"{self.settings.run_id or 'fp'}-{role}{index}.{n}"

    def topic(self, k: int) -> str:
        return f"{self.settings.topic_prefix}-{k % max(1, self.settings.topics)}"

    def next_subscriber(self) -> tuple[str, str, str]:
        """(client_id, topic, ack mode) of the next subscriber connection, spread evenly over workers."""
        n = next(self._sub_n)
        index, count = self.workers
        ordinal = n * count + index
        s = self.settings
        return (
            self.client_id("sub", n),
            self.topic(ordinal // s.subscribers_per_topic),
            s.ack_mix[ordinal % len(s.ack_mix)],
        )

    def next_publisher(self) -> tuple[str, int]:
        n = next(self._pub_n)
        index, count = self.workers
        return self.client_id("pub", n), n * count + index

    # --- the drain ---------------------------------------------------------------

    def quiesce(self, timeout: float) -> bool:
        """Stop this process's publishers and wait for every answer; True when all came."""
        self.quiet = True
        self.window.close()
        deadline = time.monotonic() + timeout
        ok = True
        for pub in list(self.publishers):
            pub.room.set()
            ok &= pub.wait_answered(max(0.0, deadline - time.monotonic()))
        return ok

    def barrier(self, timeout: float) -> tuple[int, int]:
        """Ping/pong barrier on every subscriber connection at once; (passed, failed)."""
        group, results = Group(), []

        def one(sub: SubscriberSession) -> None:
            try:
                sub.barrier(timeout)
                results.append(True)
            except (TimeoutError, ConnectionError):
                results.append(False)

        for sub in list(self.subscribers):
            if sub.client.connected and not sub.relay:  # the bench relay answers no ping
                group.spawn(one, sub)
        group.join(timeout + 1)
        group.kill(block=False)
        return sum(results), len(results) - sum(results)

    def drain(self) -> None:
        """``test_stopping`` on the controller: quiesce everywhere, then barrier everywhere."""
        timeout = self.settings.drain_timeout
        if timeout <= 0 or self.quitting:
            return
        started = time.monotonic()
        runner = self.environment.runner
        if isinstance(runner, MasterRunner):
            workers = [w.id for w in runner.clients.all if w.state in (STATE_RUNNING, STATE_SPAWNING)]
            expected = int(getattr(self.environment.parsed_options, "expect_workers", 1) or 1)
            if len(workers) < expected:  # a worker quit or went missing (Ctrl-C of the group): just stop
                log.info("fastport drain skipped: %d of %d workers running", len(workers), expected)
                return
            quiet = self._ask(runner, workers, "fastport:quiesce", timeout)
            drained = self._ask(runner, workers, "fastport:barrier", timeout)
            passed = sum(r.get("passed", 0) for r in drained.values())
            failed = sum(r.get("failed", 0) for r in drained.values())
            complete = len(quiet) == len(workers) == len(drained) and all(r.get("ok") for r in quiet.values())
        else:
            complete = self.quiesce(timeout)
            passed, failed = self.barrier(timeout)
        log.info(
            "fastport drain: %s in %.2fs, %d subscriber barriers passed, %d failed",
            "complete" if complete and not failed else "INCOMPLETE",
            time.monotonic() - started,
            passed,
            failed,
        )

    def _ask(self, runner: MasterRunner, workers: list[str], msg_type: str, timeout: float) -> dict[str, Any]:
        self._replies = {}
        for worker in workers:
            runner.send_message(msg_type, {"timeout": timeout}, client_id=worker)
        deadline = time.monotonic() + timeout + 2
        while len(self._replies) < len(workers) and (left := deadline - time.monotonic()) > 0:
            if self.quitting or any(w not in runner.clients for w in workers):
                break  # a worker left (or we are quitting): nobody will answer for it
            self._replied.clear()
            self._replied.wait(min(left, 0.5))  # woken by each reply; re-checks who is still there
        return dict(self._replies)

    def on_reply(self, worker: str, data: dict[str, Any]) -> None:
        if "fastport" in data:
            self.absorb(data.pop("fastport"))
        self._replies[worker] = data
        self._replied.set()

    # --- merge and summary --------------------------------------------------------

    def ship(self) -> dict[str, Any]:
        """A worker's delta for its next stats report (records too, when the recorder can drain)."""
        delta = self.stats.take_delta()
        drain = getattr(self.recorder, "drain", None)
        if callable(drain):
            delta["records"] = drain()
        return delta

    def absorb(self, delta: dict[str, Any]) -> None:
        self.stats.merge(delta)
        records = delta.get("records")
        extend = getattr(self.recorder, "extend", None)
        if records and callable(extend):
            extend(records)

    def summary(self) -> dict[str, Any]:
        out = self.stats.summary()
        out["settings"] = {k: v for k, v in vars(self.settings).items() if k != "token"}
        return out

    def report(self) -> None:
        summary = self.summary()
        c = summary["counters"]
        log.info(
            "fastport: sent %d published %d refused %d (overloaded %d) persisted %d persist_failed %d",
            c["sent"],
            c["published"],
            c["refused"],
            c["overloaded"],
            c["persisted"],
            c["persist_failed"],
        )
        log.info(
            "fastport: delivered %d duplicates %d redelivered %d corrupt %d acked %d; "
            "connects %d failed %d disconnects %d; deliveries/s %s",
            c["delivered"],
            c["duplicates"],
            c["redelivered"],
            c["corrupt"],
            c["acked"],
            c["connects"],
            c["connect_failed"],
            c["disconnects"],
            f"{summary['deliveries_per_s']:,.0f}" if summary["deliveries_per_s"] else "-",
        )
        for metric, lat in summary["latency_ms"].items():
            if lat["count"]:
                log.info(
                    "fastport %-10s n=%-8d p50 %.3f  p90 %.3f  p99 %.3f  p99.9 %.3f  max %.3f ms",
                    metric,
                    lat["count"],
                    lat["p50"],
                    lat["p90"],
                    lat["p99"],
                    lat["p99.9"],
                    lat["max"],
                )
        if self.settings.summary:
            with open(self.settings.summary, "w") as fh:
                json.dump(summary, fh, indent=2)


def _direct_stats(environment: Environment) -> Callable[[str, str, float, int], None] | None:
    """Locust's ``stats.log_request`` when its own listener is the only one on ``request``, else None.

    Then firing the event would only reach that listener; calling it directly
    skips the event's per-call copy and keyword plumbing. Any other listener
    (a plugin, OpenTelemetry, the user's own) keeps the ordinary event.
    """
    handlers = getattr(environment.events.request, "_handlers", None)
    runner = environment.runner
    if runner is None or not isinstance(handlers, list) or len(handlers) != 1:
        return None
    if getattr(handlers[0], "__qualname__", "") != "Runner.__init__.<locals>.on_request":
        return None
    return runner.stats.log_request  # type: ignore[no-any-return]


def context(environment: Environment) -> LoadContext:
    return environment.fastport  # type: ignore[attr-defined, no-any-return]


# --- Locust event wiring (global: Locust's main() uses locust.events) ------------------------------


@events.init_command_line_parser.add_listener
def _add_arguments(parser: Any) -> None:
    add_arguments(parser)


@events.init.add_listener
def _on_init(environment: Environment, runner: Any = None, **_kw: Any) -> None:
    try:
        ctx = LoadContext(environment)
    except ValueError as exc:
        log.error("fastport: %s", exc)
        sys.exit(2)
    environment.fastport = ctx  # type: ignore[attr-defined]
    global _current
    _current = ctx  # the report events carry no environment
    if ctx.settings.publishers:
        FastPortPublisher.fixed_count = ctx.settings.publishers
    _route_ctrl_c(ctx)
    if isinstance(runner, WorkerRunner):
        runner.register_message("fastport:quiesce", _worker_quiesce, concurrent=True)
        runner.register_message("fastport:barrier", _worker_barrier, concurrent=True)
    elif isinstance(runner, MasterRunner):
        runner.register_message("fastport:quiet", _master_reply)
        runner.register_message("fastport:drained", _master_reply)


def _route_ctrl_c(ctx: LoadContext) -> None:
    """Deliver Ctrl-C to the main greenlet only, where Locust's shutdown expects it.

    Python raises KeyboardInterrupt in whatever frame runs when SIGINT comes,
    and under load that is often a socket reader or one of Locust's own
    greenlets (its master's message listener, say), which then dies: seen here
    as a master that never exits after Ctrl-C of a ``--processes`` run. A
    gevent signal handler runs in a greenlet of its own and throws the
    KeyboardInterrupt into the main greenlet instead; it also marks the run as
    quitting, so the drain is skipped.
    """
    main = greenlet.getcurrent()

    def on_sigint() -> None:
        ctx.quitting = True
        if not main.dead:
            main.throw(KeyboardInterrupt)

    gevent.signal_handler(signal.SIGINT, on_sigint)


def _worker_quiesce(environment: Environment, msg: Any, **_kw: Any) -> None:
    ok = context(environment).quiesce(float(msg.data["timeout"]))
    environment.runner.send_message("fastport:quiet", {"ok": ok})  # type: ignore[union-attr]


def _worker_barrier(environment: Environment, msg: Any, **_kw: Any) -> None:
    """Barrier, then ship everything counted and recorded so far with the answer (before any stop)."""
    ctx = context(environment)
    passed, failed = ctx.barrier(float(msg.data["timeout"]))
    reply = {"passed": passed, "failed": failed, "fastport": ctx.ship()}
    environment.runner.send_message("fastport:drained", reply)  # type: ignore[union-attr]


def _master_reply(environment: Environment, msg: Any, **_kw: Any) -> None:
    context(environment).on_reply(msg.node_id, msg.data or {})


@events.test_start.add_listener
def _on_test_start(environment: Environment, **_kw: Any) -> None:
    context(environment).begin()


@events.test_stopping.add_listener
def _on_test_stopping(environment: Environment, **_kw: Any) -> None:
    if is_controller(environment):
        context(environment).drain()


@events.test_stop.add_listener
def _on_test_stop(environment: Environment, **_kw: Any) -> None:
    context(environment).window.close()


@events.report_to_master.add_listener
def _on_report_to_master(client_id: str, data: dict[str, Any], **_kw: Any) -> None:
    ctx = _current
    if ctx is not None:
        data["fastport"] = ctx.ship()


@events.worker_report.add_listener
def _on_worker_report(client_id: str, data: dict[str, Any], **_kw: Any) -> None:
    ctx = _current
    if ctx is not None and "fastport" in data:
        ctx.absorb(data["fastport"])


@events.quitting.add_listener
def _on_quitting(environment: Environment, **_kw: Any) -> None:
    ctx = context(environment)
    ctx.quitting = True  # a Ctrl-C / SIGTERM path: test_stopping comes after this, skip the drain
    if is_controller(environment):
        ctx.report()


@events.quit.add_listener
def _on_quit(exit_code: int, **_kw: Any) -> None:
    ctx = _current
    if ctx is None:
        return
    if is_controller(ctx.environment) and ctx.settings.summary:
        with open(ctx.settings.summary, "w") as fh:  # again: worker reports may have come after quitting
            json.dump(ctx.summary(), fh, indent=2)
    ctx.recorder.close()


# --- the users --------------------------------------------------------------------------------------


class FastPortUser(User):
    """Base of the FastPort users: ``--host`` is the broker's ws:// URL."""

    abstract = True

    @property
    def ctx(self) -> LoadContext:
        return context(self.environment)

    def _url(self) -> str:
        if not self.host:
            log.error("fastport: no broker URL; pass --host ws://127.0.0.1:PORT")
            raise StopUser()
        return ws_url(self.host)


class FastPortPublisher(FastPortUser):
    """Publishes ``--fp-rate`` messages a second (0: as fast as ``--fp-window`` allows) round-robin."""

    weight = 1
    wait_time = constant(0)

    def on_start(self) -> None:
        ctx = self.ctx
        s = ctx.settings
        client_id, self.ordinal = ctx.next_publisher()
        self.session = PublisherSession(
            self._url(),
            client_id,
            ctx.sink,
            payload_size=s.payload_size,
            incompressible=s.incompressible,
            window=s.window,
            token=s.token,
        )
        ctx.publishers.add(self.session)
        self.session.client.start(wait=False)
        self._k = self.ordinal
        self._interval = 1.0 / s.rate if s.rate > 0 else 0.0
        self._next = time.monotonic()

    @task
    def publish(self) -> None:
        """Publish for up to a second of schedule, then hand control back to Locust."""
        ctx, session = self.ctx, self.session
        end = time.monotonic() + 1.0
        while not ctx.quiet:
            now = time.monotonic()
            if now >= end:
                return
            if self._interval:
                if self._next > now:
                    gevent.sleep(min(self._next - now, end - now))  # pacing the load, not synchronisation
                    continue
                # Behind schedule by more than a second (an outage): restart the schedule, no burst.
                self._next = max(self._next + self._interval, now - 1.0)
            if not session.client.connected:
                try:
                    session.client.wait_open(end - now)
                except (TimeoutError, ConnectionError):
                    return
                continue
            if len(session.pending) >= session.window and not session.wait_room(end - now):
                return
            if ctx.quiet:
                return
            session.publish(ctx.topic(self._k))
            self._k += 1
        gevent.sleep(0.1 if ctx.quiet else 0)  # drained: idle until Locust stops this user

    def on_stop(self) -> None:
        self.ctx.publishers.discard(self.session)
        self.session.close()


class FastPortSubscriber(FastPortUser):
    """``--fp-subs-per-user`` subscriber connections, each on its topic and with its ack mode."""

    weight = 4
    wait_time = constant(0)
    connections_per_user: int = 0  # 0: --fp-subs-per-user

    def on_start(self) -> None:
        ctx = self.ctx
        s = ctx.settings
        url = self._url()
        self.sessions: list[SubscriberSession] = []
        self._done = Event()
        for _ in range(self.connections_per_user or s.subs_per_user):
            client_id, topic, ack = ctx.next_subscriber()
            session = SubscriberSession(
                url, client_id, [topic], ctx.sink, ack_mode=ack, ack_delay=s.ack_delay, token=s.token
            )
            self.sessions.append(session)
            ctx.subscribers.add(session)
            session.client.start(wait=False)

    @task
    def listen(self) -> None:
        """The reader greenlets do the work; this one only waits for Locust to stop the user."""
        self._done.wait()

    def on_stop(self) -> None:
        ctx = self.ctx
        for session in self.sessions:
            ctx.subscribers.discard(session)
        group = Group()
        for session in self.sessions:
            group.spawn(session.close, 1.0, not ctx.settings.keep_subscriptions)
        group.join(timeout=3)
        self._done.set()
