"""The lab's environment: PostgreSQL, the fault proxy in front of it, and the broker under test.

Two scopes, because starting PostgreSQL costs seconds and a scenario must not
inherit another's state:

* :class:`LabSession` (one per pytest session / xdist worker, or per CLI run):
  one PostgreSQL (``postgres_from_env()``: embedded by default) and one fault
  proxy server (``$TOXIPROXY_URL`` or the embedded Toxiproxy-compatible server).
* :class:`Lab` (one per scenario, ``async with``): a fresh database, a fresh proxy
  to it, and the broker started from the launch command with ``{dsn}`` pointing
  through that proxy. Everything it made is torn down on exit, also on failure or
  Ctrl-C, and the exit checks that no broker process survived.

What is tested (the broker command, the store, the intensity) is a
:class:`chaos.config.LabConfig`.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import secrets
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit, urlunsplit

from chaos.checkers.facts import Facts
from chaos.clients import Publisher, Subscriber
from chaos.config import ENV_RUN_DIR, LabConfig, run_root
from chaos.history import History
from chaos.launcher import BrokerUnderTest
from chaos.postgres import EmbeddedPostgres, PostgresServer, postgres_from_env
from chaos.progress import ProgressWriter
from chaos.progress import attach as attach_progress
from chaos.supervisor import REAPER
from chaos.toxiproxy.client import FaultProxy, NotFound, Proxy


class LabSession:
    """One PostgreSQL and one fault-proxy server shared by every scenario of a run."""

    def __init__(
        self,
        pg: PostgresServer,
        toxiproxy_url: str,
        run_dir: Path,
        owned_server: Any = None,
        keep_runs: bool = False,
    ) -> None:
        self.pg = pg
        self.toxiproxy_url = toxiproxy_url
        self.run_dir = run_dir
        self.keep_runs = keep_runs  # keep the folders of passing runs too (the user chose the run dir)
        self._server = owned_server
        self.started_pids: set[int] = set()  # every broker the labs of this session started
        self.backend: Any = None  # the DockerBackend when PostgreSQL and the proxy are containers
        if not keep_runs:  # a killed lab leaves no empty run dir behind either (the reaper removes it)
            for d in self._own_dirs():
                REAPER.watch_dir(d, only_if_empty=True)

    def _own_dirs(self) -> list[Path]:
        """The run dir (and an xdist worker's parent) when the lab made them: temp dirs of its own."""
        return [d for d in (self.run_dir, self.run_dir.parent) if d.name.startswith(("fastport-lab-", "gw"))]

    @classmethod
    def open(
        cls,
        run_dir: Path | None = None,
        keep_runs: bool | None = None,
        *,
        backend: str = "embedded",
        broker_image: str | None = None,
    ) -> LabSession:
        """Start PostgreSQL and the fault proxy; *run_dir* defaults to :func:`run_root`.

        Folders of passing runs are removed unless *keep_runs* (default: a run dir was given).
        *backend* ``docker`` runs both as containers (docs/containers.md), and brokers too when a
        *broker_image* is given.
        """
        if keep_runs is None:
            keep_runs = run_dir is not None or bool(os.environ.get(ENV_RUN_DIR, "").strip())
        if backend == "docker":
            return cls._open_docker(run_dir or run_root(), keep_runs, broker_image)
        pg = postgres_from_env()
        pg.__enter__()
        server = None
        try:
            url = os.environ.get("TOXIPROXY_URL", "").strip()
            if not url:
                # Its own process (as a real Toxiproxy is): relaying subscriber links and storage
                # traffic must not compete with the lab's clients for one interpreter. Proxy metrics
                # on: they show that a fault met the broker's traffic.
                from chaos.toxiproxy.server import ToxiproxyProcess

                server = ToxiproxyProcess(args=["--proxy-metrics"]).start()
                url = server.url
            return cls(pg, url, run_dir or run_root(), server, keep_runs)
        except BaseException:
            if server is not None:
                server.stop()
            pg.close()
            raise

    @classmethod
    def _open_docker(cls, run_dir: Path, keep_runs: bool, broker_image: str | None) -> LabSession:
        from chaos.containers import DockerBackend

        kwargs = {"broker_image": broker_image} if broker_image else {}
        backend = DockerBackend.from_env(**kwargs)
        try:
            pg = backend.postgres()
            pg.__enter__()
            proxy = backend.fault_proxy().start()
        except BaseException:
            backend.close()
            raise
        session = cls(pg, proxy.url, run_dir, proxy, keep_runs)
        session.backend = backend
        return session

    @property
    def pg_pids(self) -> list[int]:
        return self.pg.processes() if isinstance(self.pg, EmbeddedPostgres) else []

    def close(self) -> None:
        try:
            if self.backend is not None:
                with contextlib.suppress(Exception):  # the logs are a courtesy: never fail the close
                    self.backend.save_logs(self.run_dir / "containers")
            if self._server is not None:
                self._server.stop()
                self._server = None
        finally:
            self.pg.close()
            if self.backend is not None:
                self.backend.close()
                self.backend = None
            if not self.keep_runs:  # leave nothing behind but the folders of failed runs
                for d in self._own_dirs():
                    with contextlib.suppress(OSError):
                        d.rmdir()  # only when empty

    def leaked_processes(self) -> list[int]:
        """Pids of brokers started in this session that are still alive (should be none)."""
        leaked = []
        for pid in sorted(self.started_pids):
            try:
                os.killpg(pid, 0)  # the broker ran in its own process group (pgid == pid)
            except (ProcessLookupError, PermissionError):
                continue
            leaked.append(pid)
        return leaked

    def __enter__(self) -> LabSession:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def _dsn_via(dsn: str, host: str, port: int) -> str:
    parts = urlsplit(dsn)
    userinfo = parts.netloc.rpartition("@")[0]
    netloc = f"{userinfo}@{host}:{port}" if userinfo else f"{host}:{port}"
    return urlunsplit((parts.scheme, netloc, parts.path, parts.query, parts.fragment))


@dataclass
class Lab:
    """One scenario's world: database, proxy, broker, clients and history; ``async with Lab(...)``."""

    session: LabSession
    config: LabConfig
    name: str = "scenario"
    history: History = field(default_factory=History)
    client_backoff: tuple[float, float] = (0.02, 0.25)

    def __post_init__(self) -> None:
        self.token = secrets.token_hex(4)
        worker = os.environ.get("PYTEST_XDIST_WORKER", "main")
        self.db_name = f"lab_{worker}_{self.token}"
        self.dsn_direct: str | None = None  # the database itself (for the lab's own reads)
        self.dsn: str | None = None  # through the fault proxy (what the broker gets)
        self.proxy: Proxy | None = None
        self.api = FaultProxy(self.session.toxiproxy_url)
        self.broker: BrokerUnderTest | None = None
        self.brokers: list[BrokerUnderTest] = []
        self.port: int | None = None
        self.clients: list[Publisher | Subscriber] = []
        self.notes: dict[str, Any] = {}  # free-form facts a scenario wants in its run folder
        self.progress: ProgressWriter | None = None
        self.links: dict[str, Proxy] = {}  # client_id -> its fault-proxy link to the broker

    def attach_progress(self) -> ProgressWriter | None:
        """Report this lab's progress to ``fastport-lab run``'s live display, when it asked for it."""
        self.progress = attach_progress(self.history, self.name)
        return self.progress

    def facts(self) -> Facts:
        """What the checkers derive from the history so far (build once, pass to several checkers)."""
        return Facts(self.history)

    # --- lifecycle -------------------------------------------------------------------------------

    async def __aenter__(self) -> Lab:
        try:
            self.dsn_direct = await asyncio.to_thread(self.session.pg.create_database, self.db_name)
            pg = self.session.pg
            self.proxy = await self.api.create(f"pg-{self.db_name}", upstream=f"{pg.host}:{pg.port}")
            self.dsn = _dsn_via(self.dsn_direct, self.proxy.host, self.proxy.port)
            await self.start_broker()
        except BaseException:
            await self.aclose()
            raise
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.aclose()

    async def aclose(self) -> None:
        """Close clients, stop brokers, delete the proxy, drop the database; then check nothing leaked."""
        for c in self.clients:
            with contextlib.suppress(Exception):
                await c.close()
        for b in self.brokers:
            await asyncio.to_thread(b.terminate, 5.0)
        for link in self.links.values():
            with contextlib.suppress(NotFound, OSError):
                await link.delete()
        if self.proxy is not None:
            # Deleting the proxy also drops any toxic a failing nemesis left; never POST /reset,
            # which would heal the faults of other runs sharing a real Toxiproxy (TOXIPROXY_URL).
            with contextlib.suppress(NotFound, OSError):
                await self.proxy.delete()
        pg = self.session.pg
        if pg.can_restart and not pg.is_running:
            await asyncio.to_thread(pg.start)  # a PostgreSQL-stop fault that did not heal
        if self.dsn_direct is not None and pg.is_running:
            with contextlib.suppress(Exception):
                await asyncio.to_thread(pg.drop_database, self.db_name)
        alive = [b.pid for b in self.brokers if b.alive]
        if alive:
            raise RuntimeError(f"broker process(es) {alive} survived the lab's teardown")

    # --- broker ----------------------------------------------------------------------------------

    async def start_broker(
        self, port: int | None = None, name: str = "broker", ready_timeout: float | None = None
    ) -> BrokerUnderTest:
        """Start (or restart, on the same port by default) the broker; raises LaunchError if it fails.

        *ready_timeout* (default the config's): how long a start that neither listens nor exits
        may take before the lab calls it a hang and kills it.
        """
        want = port if port is not None else (self.port or 0)
        if self.config.broker_image:  # the broker as a container: same surface, same history events
            if self.session.backend is None:
                raise RuntimeError("a broker image needs a lab session opened with backend='docker'")
            b = self.session.backend.broker(
                self.config.broker_cmd,
                image=None if self.config.broker_image == "local" else self.config.broker_image,
                history=self.history,
                name=name,
                port=want,
                dsn=self.dsn,
                store=self.config.store,
                ready_timeout=ready_timeout or self.config.ready_timeout,
            )
        else:
            b = BrokerUnderTest(
                self.config.broker_cmd,
                history=self.history,
                name=name,
                port=want,
                dsn=self.dsn,
                store=self.config.store,
                cwd=self.config.cwd,
                ready_timeout=ready_timeout or self.config.ready_timeout,
            )
        self.brokers.append(b)
        try:
            await asyncio.to_thread(b.start)
        finally:
            if b.pid is not None:
                self.session.started_pids.add(b.pid)
        self.broker = b
        moved = self.port is not None and b.port != self.port
        self.port = b.port
        if moved:  # the subscriber links follow the broker to its new port
            for link in self.links.values():
                await link.update(upstream=f"127.0.0.1:{self.port}")
        return b

    @property
    def url(self) -> str:
        if self.port is None:
            raise RuntimeError("no broker has listened yet")
        return f"ws://127.0.0.1:{self.port}/"

    # --- clients ---------------------------------------------------------------------------------

    def subscriber(self, client_id: str, topics: list[str], **kwargs: Any) -> Subscriber:
        kwargs.setdefault("backoff", self.client_backoff)
        s = Subscriber(self.url, client_id, topics, history=self.history, **kwargs)
        self.clients.append(s)
        return s

    async def linked_subscriber(self, client_id: str, topics: list[str], **kwargs: Any) -> Subscriber:
        """A subscriber whose connection runs through a fault-proxy link of its own.

        The link faults (``chaos.faults.subscriber``) act on that link, so the network
        itself fails under the broker's writes: a half-open connection, a reset, a cut.
        """
        if self.port is None:
            raise RuntimeError("no broker has listened yet")
        link = await self.api.create(f"link-{self.db_name}-{client_id}", upstream=f"127.0.0.1:{self.port}")
        self.links[client_id] = link
        kwargs.setdefault("backoff", self.client_backoff)
        s = Subscriber(f"ws://{link.host}:{link.port}/", client_id, topics, history=self.history, **kwargs)
        self.clients.append(s)
        return s

    def publisher(self, client_id: str = "pub", **kwargs: Any) -> Publisher:
        kwargs.setdefault("backoff", self.client_backoff)
        p = Publisher(self.url, client_id, history=self.history, **kwargs)
        self.clients.append(p)
        return p

    # --- the store (reference broker only) -------------------------------------------------------

    async def store_listing(self) -> tuple[list[Any] | None, str]:
        """(deliveries left in the store, why not) — readable only for the reference broker's schema."""
        if not self.config.durable:
            return None, "the broker runs with --store memory: there is no store to look for zombies in"
        if not self.config.is_reference:
            return None, (
                "the broker under test is not the reference broker, and PROTOCOL.md does not define a "
                "store schema, so the lab cannot read its store"
            )
        from broker.store_postgres import StoreError, outstanding

        try:
            return list(await outstanding(self.dsn_direct, timeout=5.0)), ""
        except StoreError as exc:
            return None, f"cannot read the reference store: {exc}"
