"""Storage faults (FMEA 1): the broker's PostgreSQL slow, unreachable, hung, reset, or stopped.

All but ``postgres-stop`` act on the fault proxy between the broker and
PostgreSQL (the broker's ``{dsn}`` points through it). Each proves it landed
with probes through the same proxy: a connection opened *before* the fault (what
a broker's pool holds) and a fresh one, both slowed, refused, hung or reset as
the fault says, and the toxic still listed by the proxy at the end.
``postgres-stop`` stops the server itself and probes it directly.

The probes prove the path is broken; the proxy's byte counters (where the
proxy serves them: the lab's does) prove the broker uses that path: a broker
that never sent a byte through the storage proxy does not use ``{dsn}``, and no
storage fault can reach it (the fault is then recorded as not landed).
"""

from __future__ import annotations

import asyncio
import contextlib
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, ClassVar

import asyncpg

from chaos.faults.base import Fault, Landing, register
from chaos.probes import PROBE_TIMEOUT, connect_quietly, probe_open, probe_sql
from chaos.toxiproxy.client import NotFound

if TYPE_CHECKING:
    from chaos.environment import Lab

ROUND_TRIPS = 4  # answers a fresh probe connection waits for: SSL request, start-up, parse, execute


async def storage_bytes(lab: Lab) -> int | None:
    """Bytes the broker has sent to PostgreSQL through the lab's storage proxy so far (None: unknown)."""
    if lab.proxy is None:
        return None
    counts = await lab.api.link_bytes()
    return None if counts is None else counts.get((lab.proxy.name, "upstream"), 0)


def through_proxy(sent: int | None) -> tuple[bool, dict[str, Any]]:
    """(the broker's storage goes through the proxy, or we cannot tell; evidence)."""
    if sent is None:
        return True, {"broker_storage_bytes": None}
    return sent > 0, {"broker_storage_bytes": sent}


@dataclass
class _ToxicFault(Fault):
    """A toxic on the storage proxy, probed through that proxy before it is removed."""

    family: ClassVar[str] = "storage"
    needs: ClassVar[frozenset[str]] = frozenset({"durable"})
    toxic: ClassVar[str]
    stream: ClassVar[str] = "downstream"
    expect: ClassVar[str] = "failed"  # what the probes must see: "slow" or "failed"
    _conn: asyncpg.Connection | None = field(default=None, init=False, repr=False)
    _probes: Any = field(default=None, init=False, repr=False)
    _toxic_name: str | None = field(default=None, init=False, repr=False)

    def attributes(self) -> dict[str, int]:
        return {}

    def probe_timeout(self) -> float:
        return PROBE_TIMEOUT

    async def start(self, lab: Lab) -> dict[str, Any]:
        proxy = lab.proxy
        assert proxy is not None and lab.dsn is not None
        # A connection opened before the toxic shows what the broker's pooled connections see.
        self._conn = await connect_quietly(lab.dsn)
        try:
            toxic = await proxy.add_toxic(
                self.toxic, attributes=self.attributes(), stream=self.stream, name=f"lab-{self.name}"
            )
        except BaseException:
            if self._conn is not None:
                self._conn.terminate()
            raise
        self._toxic_name = toxic["name"]
        timeout = self.probe_timeout()
        self._probes = asyncio.gather(probe_sql(lab.dsn, timeout), probe_open(self._conn, timeout))
        return {"toxic": self.toxic, "attributes": self.attributes(), "stream": self.stream}

    async def stop(self, lab: Lab) -> Landing:
        proxy = lab.proxy
        assert proxy is not None
        try:
            present = any(t.get("name") == self._toxic_name for t in await proxy.list_toxics())
            fresh, pooled = await self._probes
        finally:
            with contextlib.suppress(NotFound):
                await proxy.remove_toxic(self._toxic_name)
            if self._conn is not None:
                self._conn.terminate()
        if self.expect == "slow":
            floor = 0.9 * self.attributes().get("latency", 0)
            affected = all(p["ok"] and p["elapsed_ms"] >= floor for p in (fresh, pooled))
        else:
            affected = not fresh["ok"] and not pooled["ok"]
        used, traffic = through_proxy(await storage_bytes(lab))
        return Landing(
            present and affected and used,
            {
                "toxic_present": present,
                "probe_new_connection": fresh,
                "probe_open_connection": pooled,
                "probe_expected": self.expect,
                **traffic,
            },
        )


@register
@dataclass
class StorageLatency(_ToxicFault):
    """Every answer from PostgreSQL is delayed by *latency_ms* (a slow database)."""

    name: ClassVar[str] = "storage-latency"
    summary: ClassVar[str] = "every answer from PostgreSQL is delayed (a slow database)"
    toxic: ClassVar[str] = "latency"
    expect: ClassVar[str] = "slow"
    latency_ms: int = 300
    jitter_ms: int = 0

    def attributes(self) -> dict[str, int]:
        return {"latency": self.latency_ms, "jitter": self.jitter_ms}

    def probe_timeout(self) -> float:
        # A fresh asyncpg connection and SELECT 1 wait four answers (SSL request, start-up, parse,
        # execute), each delayed; one more for a loaded machine.
        return PROBE_TIMEOUT + (ROUND_TRIPS + 1) * self.latency_ms / 1000


@register
@dataclass
class StorageHang(_ToxicFault):
    """Data to and from PostgreSQL is dropped and connections stay open (a hung database)."""

    name: ClassVar[str] = "storage-hang"
    summary: ClassVar[str] = "data to and from PostgreSQL is dropped, connections stay open (a hang)"
    toxic: ClassVar[str] = "timeout"

    def attributes(self) -> dict[str, int]:
        return {"timeout": 0}


@register
@dataclass
class StorageReset(_ToxicFault):
    """Every connection to PostgreSQL is reset (RST) on its next request."""

    name: ClassVar[str] = "storage-reset"
    summary: ClassVar[str] = "every connection to PostgreSQL is reset (RST) on its next request"
    toxic: ClassVar[str] = "reset_peer"
    stream: ClassVar[str] = "upstream"

    def attributes(self) -> dict[str, int]:
        return {"timeout": 0}


@register
@dataclass
class StorageDown(Fault):
    """The storage proxy is disabled: new connections refused, open ones closed (database unreachable)."""

    name: ClassVar[str] = "storage-down"
    family: ClassVar[str] = "storage"
    summary: ClassVar[str] = "PostgreSQL unreachable: new connections refused, open ones closed"
    needs: ClassVar[frozenset[str]] = frozenset({"durable"})

    async def start(self, lab: Lab) -> dict[str, Any]:
        proxy = lab.proxy
        assert proxy is not None
        await proxy.disable()
        return {"proxy": proxy.name}

    async def stop(self, lab: Lab) -> Landing:
        proxy = lab.proxy
        assert proxy is not None and lab.dsn is not None
        try:
            enabled = (await proxy.refresh()).enabled  # read before enable(): refresh() returns the proxy
            result = await probe_sql(lab.dsn)
        finally:
            await proxy.enable()
        used, traffic = through_proxy(await storage_bytes(lab))
        return Landing(
            (not enabled) and not result["ok"] and used,
            {"proxy_enabled": enabled, "probe": result, "probe_expected": "failed", **traffic},
        )


@register
@dataclass
class PostgresStop(Fault):
    """PostgreSQL itself is stopped, then started again on the same port."""

    name: ClassVar[str] = "postgres-stop"
    family: ClassVar[str] = "storage"
    summary: ClassVar[str] = "PostgreSQL itself is stopped, then started again on the same port"
    needs: ClassVar[frozenset[str]] = frozenset({"durable", "restartable-postgres"})
    _evidence: dict[str, Any] = field(default_factory=dict, init=False, repr=False)

    async def start(self, lab: Lab) -> dict[str, Any]:
        pg = lab.session.pg
        assert lab.dsn_direct is not None
        await asyncio.to_thread(pg.stop)
        self._evidence = {"stopped": not pg.is_running}
        self._evidence["probe"] = await probe_sql(lab.dsn_direct)
        return {"pg_port": pg.port}

    async def stop(self, lab: Lab) -> Landing:
        """Start it again; landed only if it was down and then accepts connections again (a window that
        never healed would leave the rest of the run on a dead store while claiming a clean fault)."""
        pg = lab.session.pg
        assert lab.dsn_direct is not None
        ev = self._evidence
        await asyncio.to_thread(pg.start)
        ev["restarted"] = pg.is_running
        ev["probe_after"] = after = await probe_sql(lab.dsn_direct, timeout=5.0)
        down = bool(ev.get("stopped")) and not ev.get("probe", {"ok": True})["ok"]
        if not down:
            ev["why"] = f"PostgreSQL did not go down: stopped={ev.get('stopped')}, probe {ev.get('probe')}"
        elif not after["ok"]:
            ev["why"] = f"PostgreSQL did not accept connections again after the restart: {after['error']}"
        return Landing(down and after["ok"], ev)
