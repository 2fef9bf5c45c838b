"""``fastport-lab bench broker``: the reference broker beside a bare websockets relay.

Both servers run in their own process, started from a launch command, and the
same client workload (this process) drives them, so the ratios compare servers
in one process layout. For each fan-out N it measures:

* capacity: delivered messages per second with the publisher kept just ahead
  of the slowest subscriber (a bounded in-flight window);
* latency: publish-to-deliver p50 and p99 while publishing open-loop at half
  the relay's capacity;
* the server's CPU use during the capacity phase, and deliveries per second of
  server CPU: on two cores the client process can be the bottleneck (a server
  below 100 % CPU says so), and then this efficiency figure is the fairer
  comparison of the two servers;
* with PostgreSQL: whether persistence kept up (``persisted`` replies per
  second against publishes per second, and the backlog when publishing ended).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import sys
import time
from collections.abc import AsyncIterator
from dataclasses import asdict, dataclass

import psutil

from chaos.bench.workload import Workload
from chaos.checkers.stats import percentile
from chaos.launcher import BrokerUnderTest, launch


@dataclass
class Row:
    target: str  # relay | memory | postgres
    subscribers: int
    deliveries_per_s: float
    server_cpu: float  # fraction of one core during the capacity phase
    p50_ms: float
    p99_ms: float
    persisted_per_s: float | None = None
    published_per_s: float | None = None
    backlog_at_end: int | None = None

    @property
    def per_cpu_second(self) -> float:
        """Deliveries per second of server CPU: the server's efficiency, whoever was the bottleneck."""
        return self.deliveries_per_s / self.server_cpu if self.server_cpu > 0 else float("nan")


def _command(target: str, dsn: str | None) -> list[str]:
    if target == "relay":
        return [sys.executable, "-m", "chaos.bench.relay", "--host", "127.0.0.1", "--port", "{port}"]
    cmd = [sys.executable, "-m", "broker", "--host", "127.0.0.1", "--port", "{port}", "--store", target,
           "--log-level", "warning"]
    if target == "postgres":
        cmd += ["--dsn", "{dsn}"]
    return cmd


@contextlib.asynccontextmanager
async def _server(target: str, dsn: str | None) -> AsyncIterator[BrokerUnderTest]:
    """Start a server in its own process and always reap it."""
    proc = await asyncio.to_thread(launch, _command(target, dsn), dsn=dsn,
                                  store="memory" if target == "relay" else target, name=target)
    try:
        yield proc
    finally:
        await asyncio.to_thread(proc.terminate)


async def _measure(target: str, n: int, seconds: float, half_rate: float | None,
                   dsn: str | None) -> tuple[Row, float]:
    """Run both phases against one fresh server; return the row and its capacity in msgs/s."""
    flavour = "relay" if target == "relay" else "broker"
    async with _server(target, dsn) as proc, Workload(proc.url.rstrip("/"), flavour, n) as load:
        cpu = psutil.Process(proc.pid)
        window = max(8, 2000 // n)
        before_cpu, before = sum(cpu.cpu_times()[:2]), time.perf_counter()
        published_before = load.pub.published
        persisted_before = load.pub.persisted
        rate = await load.saturate(seconds, window)
        wall = time.perf_counter() - before
        used = (sum(cpu.cpu_times()[:2]) - before_cpu) / wall
        row = Row(target, n, rate, used, 0.0, 0.0)
        if target == "postgres":
            row.published_per_s = (load.pub.published - published_before) / wall
            row.persisted_per_s = (load.pub.persisted - persisted_before) / wall
            row.backlog_at_end = load.pub.published - load.pub.persisted
        capacity = rate / n
        latencies = await load.paced(seconds, (half_rate or capacity / 2))
        if latencies:  # drain() waited for every delivery, so there are some unless nothing was sent
            row.p50_ms = percentile(latencies, 50) * 1000
            row.p99_ms = percentile(latencies, 99) * 1000
        else:
            row.p50_ms = row.p99_ms = float("nan")
        if target == "postgres":
            await load.wait_until(lambda: load.pub.persisted + load.pub.persist_failed >= load.pub.sent,
                                  60, "the broker did not report every message persisted")
        return row, capacity


async def run(fanouts: list[int], targets: list[str], seconds: float) -> list[Row]:
    rows: list[Row] = []
    pg = None
    try:
        if "postgres" in targets:
            from chaos.postgres import postgres_from_env

            pg = postgres_from_env()
            pg.start()
        for n in fanouts:
            relay_row, relay_capacity = await _measure("relay", n, seconds, None, None)
            rows.append(relay_row)
            for target in targets:
                db = None
                if target == "postgres" and pg is not None:
                    db = pg.create_database(f"fastport_bench_{n}_{target}")
                row, _ = await _measure(target, n, seconds, relay_capacity / 2, db)
                rows.append(row)
    finally:
        if pg is not None:
            pg.close()
    return rows


def _table(rows: list[Row]) -> None:
    from rich.console import Console
    from rich.table import Table

    table = Table(title="fastport-lab bench broker (ratios against the relay at the same fan-out)")
    for col in ("subs", "server", "deliveries/s", "ratio", "server CPU", "per CPU-s", "ratio", "p50 ms",
                "p99 ms", "p99 ratio", "persisted/s", "backlog"):
        table.add_column(col, justify="right")
    relay = {r.subscribers: r for r in rows if r.target == "relay"}
    for r in rows:
        base = relay[r.subscribers]
        table.add_row(
            str(r.subscribers), r.target, f"{r.deliveries_per_s:,.0f}",
            f"{r.deliveries_per_s / base.deliveries_per_s:.2f}", f"{r.server_cpu:.0%}",
            f"{r.per_cpu_second:,.0f}", f"{r.per_cpu_second / base.per_cpu_second:.2f}",
            f"{r.p50_ms:.2f}", f"{r.p99_ms:.2f}", f"{r.p99_ms / base.p99_ms:.2f}",
            "" if r.persisted_per_s is None else f"{r.persisted_per_s:,.0f} of {r.published_per_s:,.0f}",
            "" if r.backlog_at_end is None else str(r.backlog_at_end),
        )
    Console(width=160).print(table)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="fastport-lab bench broker", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--subscribers", default="1,10,100", help="fan-outs to measure (default 1,10,100)")
    parser.add_argument("--store", default="memory,postgres", help="broker stores (default memory,postgres)")
    parser.add_argument("--seconds", type=float, default=3.0, help="length of each phase (default 3)")
    parser.add_argument("--json", metavar="FILE", help="also write the rows as JSON")
    args = parser.parse_args(argv)
    try:
        fanouts = [int(x) for x in args.subscribers.split(",") if x]
        if not fanouts or min(fanouts) < 1:
            raise ValueError
    except ValueError:
        parser.error("--subscribers takes positive integers separated by commas, e.g. 1,10,100")
    targets = [t for t in args.store.split(",") if t]
    if not targets or set(targets) - {"memory", "postgres"}:
        parser.error("--store takes memory, postgres or both, separated by commas")
    if args.seconds <= 0:
        parser.error("--seconds must be positive")
    rows = asyncio.run(run(fanouts, targets, args.seconds))
    _table(rows)
    if args.json:
        with open(args.json, "w") as fh:
            json.dump([{**asdict(r), "per_cpu_second": r.per_cpu_second} for r in rows], fh, indent=2)
    return 0
