"""``fastport-lab bench load``: deliveries per second the Locust rig drives, beside the lean client.

For each fan-out N and server (the bare relay, the reference broker with the
memory store) it measures, each against a fresh server in its own process:

* ``lean``: the asyncio sans-I/O client of ``bench broker``
  (chaos/bench/workload.py) in this process, saturating with a bounded window;
* ``rig xK``: real Locust (``python -m locust``, ``--processes K`` when K > 1)
  running the load users' sessions in closed-loop groups
  (chaos/load/bench_locustfile.py), K groups of N/K subscribers, the same
  window rule, the deliveries counted by the users themselves after a warm-up.

The figure that matters is rig / lean measured in the same run: the issue's
goal is at least 0.5, so that Locust's overhead does not hide the broker's
limit. Server and client CPU are shown so a reader sees who was saturated. The
machine is shared, so repeat (``--repeat``) and read the spread.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import signal
import socket
import statistics
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import asdict, dataclass
from pathlib import Path

import psutil

from chaos.bench.workload import Workload
from chaos.launcher import BrokerUnderTest, launch
from chaos.supervisor import Child, scratch_dir

LOCUSTFILE = Path(__file__).with_name("bench_locustfile.py")
_ROOT = Path(__file__).resolve().parents[2]  # the tree holding the chaos package


@dataclass
class Row:
    round: int
    target: str  # relay | memory
    subscribers: int
    client: str  # lean | rig x1 | rig x2 ...
    deliveries_per_s: float
    server_cpu: float  # fraction of one core
    client_cpu: float  # fraction of one core, all client processes
    push_p50_ms: float | None = None
    push_p99_ms: float | None = None

    @property
    def per_client_cpu_s(self) -> float:
        """Deliveries per CPU-second of the client: its cost per delivery, steadier on a shared machine."""
        return self.deliveries_per_s / self.client_cpu if self.client_cpu > 0 else float("nan")


def _server_command(target: str) -> list[str]:
    if target == "relay":
        return [sys.executable, "-m", "chaos.bench.relay", "--host", "127.0.0.1", "--port", "{port}"]
    return [
        sys.executable,
        "-m",
        "broker",
        "--host",
        "127.0.0.1",
        "--port",
        "{port}",
        "--store",
        target,
        "--log-level",
        "warning",
    ]


@contextlib.contextmanager
def _server(target: str) -> Iterator[BrokerUnderTest]:
    proc = launch(_server_command(target), store="memory", name=target)
    try:
        yield proc
    finally:
        proc.terminate()


def _cpu(proc: psutil.Process) -> float:
    with contextlib.suppress(psutil.Error):
        t = proc.cpu_times()
        return t.user + t.system + t.children_user + t.children_system
    return 0.0


def _tree_cpu(root: psutil.Process) -> float:
    with contextlib.suppress(psutil.Error):
        return sum(_cpu(p) for p in [root, *root.children(recursive=True)])
    return 0.0


def measure_lean(target: str, n: int, seconds: float, rnd: int) -> Row:
    with _server(target) as server:
        flavour = "relay" if target == "relay" else "broker"
        srv, me = psutil.Process(server.pid), psutil.Process()

        async def run() -> tuple[float, float, float, float]:
            async with Workload(server.url.rstrip("/"), flavour, n) as load:
                c0, m0, t0 = _cpu(srv), _cpu(me), time.perf_counter()
                rate = await load.saturate(seconds, max(8, 2000 // n))
                wall = time.perf_counter() - t0
                return rate, (_cpu(srv) - c0) / wall, (_cpu(me) - m0) / wall, wall

        rate, server_cpu, client_cpu, _ = asyncio.run(run())
    return Row(rnd, target, n, "lean", rate, server_cpu, client_cpu)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def locust_command(
    locustfile: Path | str,
    host: str,
    *,
    users: int,
    seconds: float,
    processes: int = 1,
    extra: list[str] | None = None,
) -> list[str]:
    """A headless Locust command line; with ``processes`` > 1 its master port is a free one, not 5557."""
    cmd = [
        sys.executable,
        "-m",
        "locust",
        "-f",
        str(locustfile),
        "--headless",
        "-u",
        str(users),
        "-r",
        str(max(users, 1)),
        "-t",
        f"{seconds:g}s",
        "--host",
        host,
    ]
    if processes > 1:
        port = free_port()
        cmd += [
            "--processes",
            str(processes),
            "--master-bind-host",
            "127.0.0.1",
            "--master-bind-port",
            str(port),
            "--master-host",
            "127.0.0.1",
            "--master-port",
            str(port),
        ]
    return cmd + list(extra or [])


def locust_env() -> dict[str, str]:
    """This environment with this tree first on PYTHONPATH (Locust puts only the locustfile's dir there)."""
    env = dict(os.environ, PYTHONUNBUFFERED="1")
    env["PYTHONPATH"] = os.pathsep.join(p for p in (str(_ROOT), env.get("PYTHONPATH", "")) if p)
    return env


def stop_group(proc: Child | subprocess.Popen[bytes], grace: float = 10.0) -> None:
    """Ctrl-C for a Locust started in its own group, then SIGKILL of the group if it lingers."""
    if isinstance(proc, Child):
        if proc.alive:
            proc.signal(signal.SIGINT)
            if not proc.exited(grace):
                proc.kill()
        return
    if proc.poll() is None:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGINT)
        with contextlib.suppress(subprocess.TimeoutExpired):
            proc.wait(grace)
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(proc.pid, signal.SIGKILL)  # forked workers left behind, if any
    with contextlib.suppress(subprocess.TimeoutExpired):
        proc.wait(5)


def measure_rig(target: str, n: int, processes: int, seconds: float, warmup: float, rnd: int) -> Row:
    with _server(target) as server, scratch_dir("fastport-bench-") as tmp:
        summary = tmp / "summary.json"
        extra = [
            "--fp-subs-per-user",
            str(n // processes),
            "--fp-warmup",
            f"{warmup:g}",
            "--fp-summary",
            str(summary),
            "--fp-drain-timeout",
            "2",
            "--only-summary",
            "--loglevel",
            "WARNING",
            "--stop-timeout",
            "0",
        ]
        if target == "relay":
            extra.append("--fp-bench-relay")
        cmd = locust_command(
            LOCUSTFILE,
            server.url.rstrip("/"),
            users=processes,
            seconds=warmup + seconds,
            processes=processes,
            extra=extra,
        )
        srv = psutil.Process(server.pid)
        c0, t0 = _cpu(srv), time.perf_counter()
        log_path = tmp / "locust.log"
        with open(log_path, "wb") as log_file:  # a file, not a pipe: a full pipe would stall Locust
            # A supervised child: its own group, killed with the bench however the bench ends.
            proc = Child(
                cmd,
                name="locust",
                env=locust_env(),
                inherit_env=False,
                stdout=log_file,
                stderr=subprocess.STDOUT,
            ).start()
        client_cpu = 0.0
        try:
            root = psutil.Process(proc.pid)
            # Sample the rig's CPU at the end of its measured window (before its processes exit).
            deadline = time.monotonic() + warmup + seconds + 60
            marks: list[tuple[float, float]] = []
            while not proc.exited(0.25) and time.monotonic() < deadline:  # sampling CPU periodically
                marks.append((time.perf_counter(), _tree_cpu(root)))
            if proc.alive:
                raise RuntimeError(f"locust did not finish within {warmup + seconds + 60:g}s")
        finally:
            stop_group(proc)
        wall = time.perf_counter() - t0
        server_cpu = (_cpu(srv) - c0) / wall
        window = [(t, c) for t, c in marks if t0 + warmup + 1 <= t <= t0 + warmup + seconds]
        if len(window) >= 2:
            client_cpu = (window[-1][1] - window[0][1]) / (window[-1][0] - window[0][0])
        out = log_path.read_text(errors="replace")
        if proc.returncode not in (0, 1) or not summary.exists():
            raise RuntimeError(f"locust exited {proc.returncode}:\n{out[-3000:]}")
        doc = json.loads(summary.read_text())
    push = doc["latency_ms"]["push"]
    return Row(
        rnd,
        target,
        n,
        f"rig x{processes}",
        doc["deliveries_per_s"] or 0.0,
        server_cpu,
        client_cpu,
        push.get("p50"),
        push.get("p99"),
    )


def run(
    fanouts: list[int], targets: list[str], processes: list[int], seconds: float, warmup: float, repeat: int
) -> list[Row]:
    rows: list[Row] = []
    for rnd in range(1, repeat + 1):
        for n in fanouts:
            for target in targets:
                rows.append(measure_lean(target, n, seconds, rnd))
                _progress(rows[-1])
                for k in processes:
                    if n % k == 0:
                        rows.append(measure_rig(target, n, k, seconds, warmup, rnd))
                        _progress(rows[-1])
    return rows


def _progress(row: Row) -> None:
    print(
        f"  round {row.round} {row.target:6} N={row.subscribers:<4} {row.client:7} "
        f"{row.deliveries_per_s:>9,.0f} deliveries/s",
        file=sys.stderr,
        flush=True,
    )


def _table(rows: list[Row]) -> None:
    from rich.console import Console
    from rich.table import Table

    table = Table(title="fastport-lab bench load: the Locust rig against the lean client, same run")
    for col in (
        "round",
        "server",
        "subs",
        "client",
        "deliveries/s",
        "rig / lean",
        "server CPU",
        "client CPU",
        "per client CPU-s",
        "ratio",
        "push p50 ms",
        "push p99 ms",
    ):
        table.add_column(col, justify="right")
    lean = {(r.round, r.target, r.subscribers): r for r in rows if r.client == "lean"}
    for r in rows:
        base = lean[(r.round, r.target, r.subscribers)]
        table.add_row(
            str(r.round),
            r.target,
            str(r.subscribers),
            r.client,
            f"{r.deliveries_per_s:,.0f}",
            "" if r is base else f"{r.deliveries_per_s / base.deliveries_per_s:.2f}",
            f"{r.server_cpu:.0%}",
            f"{r.client_cpu:.0%}",
            f"{r.per_client_cpu_s:,.0f}",
            "" if r is base else f"{r.per_client_cpu_s / base.per_client_cpu_s:.2f}",
            "" if r.push_p50_ms is None else f"{r.push_p50_ms:.1f}",
            "" if r.push_p99_ms is None else f"{r.push_p99_ms:.1f}",
        )
    Console(width=150).print(table)
    ratios: dict[tuple[str, int, str], list[tuple[float, float]]] = {}
    for r in rows:
        if r.client != "lean":
            base = lean[(r.round, r.target, r.subscribers)]
            ratios.setdefault((r.target, r.subscribers, r.client), []).append(
                (r.deliveries_per_s / base.deliveries_per_s, r.per_client_cpu_s / base.per_client_cpu_s)
            )
    for (target, n, client), pairs in sorted(ratios.items()):
        rate, eff = [p[0] for p in pairs], [p[1] for p in pairs]
        print(
            f"{target:6} N={n:<4} {client}: deliveries/s rig/lean median {statistics.median(rate):.2f} "
            f"(min {min(rate):.2f}, max {max(rate):.2f}); per client CPU-s {statistics.median(eff):.2f}; "
            f"{len(pairs)} rounds"
        )


def _ints(text: str, what: str, parser: argparse.ArgumentParser) -> list[int]:
    try:
        values = [int(x) for x in text.split(",") if x]
        if not values or min(values) < 1:
            raise ValueError
    except ValueError:
        parser.error(f"{what} takes positive integers separated by commas, e.g. 1,2")
    return values


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="fastport-lab bench load",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--subscribers", default="10,100", help="fan-outs to measure (default 10,100)")
    parser.add_argument("--servers", default="relay,memory", help="relay, memory or both (default both)")
    parser.add_argument("--processes", default="1,2", help="Locust process counts of the rig (default 1,2)")
    parser.add_argument("--seconds", type=float, default=4.0, help="measured seconds of each run (default 4)")
    parser.add_argument("--warmup", type=float, default=2.0, help="rig warm-up before counting (default 2)")
    parser.add_argument("--repeat", type=int, default=2, help="rounds of the whole set (default 2)")
    parser.add_argument("--json", metavar="FILE", help="also write the rows as JSON")
    args = parser.parse_args(argv)
    fanouts = _ints(args.subscribers, "--subscribers", parser)
    processes = _ints(args.processes, "--processes", parser)
    targets = [t for t in args.servers.split(",") if t]
    if not targets or set(targets) - {"relay", "memory"}:
        parser.error("--servers takes relay, memory or both, separated by commas")
    if args.seconds <= 0 or args.warmup < 0 or args.repeat < 1:
        parser.error("--seconds must be positive, --warmup >= 0, --repeat >= 1")
    rows = run(fanouts, targets, processes, args.seconds, args.warmup, args.repeat)
    _table(rows)
    if args.json:
        Path(args.json).write_text(json.dumps([asdict(r) for r in rows], indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
