"""``fastport-lab bench proxy``: the fault proxy's overhead beside a direct connection.

Layout (fair to both paths): an echo/sink/source server in one child process,
the embedded Toxiproxy server in another, and the measuring client (blocking
sockets, TCP_NODELAY) here.  Measured in one run, direct and through a proxy
with no toxics:

* round-trip latency of small echo messages (p50, p99) -> added latency;
* bulk throughput, client->server (upload) and server->client (download), MB/s.

Targets (issue): <= 150 us added at p50, >= 300 MB/s bulk.  Toxiproxy's own
figures: < 100 us added, ~1000 MB/s.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import socket
import statistics
import struct
import subprocess
import sys
import threading
import time
from typing import Any

from chaos.checkers.stats import percentile
from chaos.supervisor import Child
from chaos.toxiproxy.client import FaultProxy
from chaos.toxiproxy.server import ToxiproxyProcess

TARGET_ADDED_P50_US = 150.0
TARGET_MBPS = 300.0
_BLOCK = 256 * 1024


# ---------------------------------------------------------------------------- the server process


def _echo(conn: socket.socket) -> None:
    with conn:
        buf = bytearray(65536)
        view = memoryview(buf)
        while n := conn.recv_into(buf):
            conn.sendall(view[:n])


def _sink(conn: socket.socket) -> None:
    with conn:
        total = struct.unpack("!Q", _recv_exact(conn, 8))[0]
        buf = bytearray(_BLOCK)
        got = 0
        while got < total:
            n = conn.recv_into(buf)
            if not n:
                return
            got += n
        conn.sendall(b"k")


def _source(conn: socket.socket) -> None:
    with conn:
        total = struct.unpack("!Q", _recv_exact(conn, 8))[0]
        block = b"x" * _BLOCK
        sent = 0
        while sent < total:
            piece = block[: min(_BLOCK, total - sent)]
            conn.sendall(piece)
            sent += len(piece)
        conn.recv(1)  # wait for the client's close so nothing is cut short


def _recv_exact(conn: socket.socket, n: int) -> bytes:
    data = b""
    while len(data) < n:
        chunk = conn.recv(n - len(data))
        if not chunk:
            raise ConnectionError("peer closed")
        data += chunk
    return data


def _serve_forever(kind: str, listener: socket.socket) -> None:
    handler = {"echo": _echo, "sink": _sink, "source": _source}[kind]
    while True:
        conn, _ = listener.accept()
        conn.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        threading.Thread(target=handler, args=(conn,), daemon=True).start()


def serve_backends() -> int:
    """Child process: echo, sink and source servers; prints their ports, exits when stdin closes."""
    ports = {}
    for kind in ("echo", "sink", "source"):
        listener = socket.create_server(("127.0.0.1", 0))
        ports[kind] = listener.getsockname()[1]
        threading.Thread(target=_serve_forever, args=(kind, listener), daemon=True).start()
    print(json.dumps(ports), flush=True)
    sys.stdin.read()  # parent closes our stdin (or dies) -> exit
    return 0


# ---------------------------------------------------------------------------- measurements


def _connect(port: int) -> socket.socket:
    sock = socket.create_connection(("127.0.0.1", port), timeout=30)
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    return sock


def measure_rtt(port: int, count: int, size: int = 64) -> list[float]:
    """Round-trip times in microseconds of ``count`` echo exchanges of ``size`` bytes."""
    payload = b"p" * size
    times: list[float] = []
    with _connect(port) as sock:
        for i in range(count + count // 10 + 100):  # the first tenth warms up
            start = time.perf_counter_ns()
            sock.sendall(payload)
            got = 0
            while got < size:
                chunk = sock.recv(size - got)
                if not chunk:
                    raise ConnectionError("echo closed")
                got += len(chunk)
            if i >= count // 10 + 100:
                times.append((time.perf_counter_ns() - start) / 1000.0)
    return times


def measure_upload(port: int, total: int) -> float:
    block = memoryview(b"u" * _BLOCK)
    with _connect(port) as sock:
        start = time.perf_counter()
        sock.sendall(struct.pack("!Q", total))
        sent = 0
        while sent < total:
            n = min(_BLOCK, total - sent)
            sock.sendall(block[:n])
            sent += n
        if sock.recv(1) != b"k":
            raise ConnectionError("sink did not acknowledge")
        return total / (time.perf_counter() - start) / 1e6


def measure_download(port: int, total: int) -> float:
    buf = bytearray(_BLOCK)
    with _connect(port) as sock:
        start = time.perf_counter()
        sock.sendall(struct.pack("!Q", total))
        got = 0
        while got < total:
            n = sock.recv_into(buf)
            if not n:
                raise ConnectionError("source closed early")
            got += n
        return total / (time.perf_counter() - start) / 1e6


async def _create_proxies(url: str, ports: dict[str, int]) -> dict[str, int]:
    async with FaultProxy.connect(url) as tp:
        out = {}
        for kind, port in ports.items():
            proxy = await tp.create(f"bench_{kind}", upstream=f"127.0.0.1:{port}", listen="127.0.0.1:0")
            out[kind] = proxy.port
        return out


def run(round_trips: int, bulk_mb: int, repeats: int) -> dict[str, Any]:
    backend = Child(
        [sys.executable, "-m", "chaos.bench.proxy", "--serve-backends"],
        name="bench-backends",
        stdin=subprocess.PIPE,
        ready=lambda line: json.loads(line) if line.startswith("{") else None,
    ).start()
    try:
        direct = backend.ready
        with ToxiproxyProcess() as tp:
            proxied = asyncio.run(_create_proxies(tp.url, direct))
            total = bulk_mb * 1024 * 1024
            results: dict[str, Any] = {"round_trips": round_trips, "bulk_bytes": total}
            for label, ports in (("direct", direct), ("proxied", proxied)):
                rtts = measure_rtt(ports["echo"], round_trips)
                up = max(measure_upload(ports["sink"], total) for _ in range(repeats))
                down = max(measure_download(ports["source"], total) for _ in range(repeats))
                results[label] = {
                    "rtt_p50_us": percentile(rtts, 50),
                    "rtt_p99_us": percentile(rtts, 99),
                    "rtt_mean_us": statistics.fmean(rtts),
                    "upload_mbps": up,
                    "download_mbps": down,
                }
            return results
    finally:
        if backend.stdin is not None:
            backend.stdin.close()  # the backends exit when their stdin closes
        backend.wait(10)


def _verdict(ok: bool) -> str:
    return "ok" if ok else "MISS"


def format_table(r: dict[str, Any]) -> str:
    d, p = r["direct"], r["proxied"]
    added50 = p["rtt_p50_us"] - d["rtt_p50_us"]
    added99 = p["rtt_p99_us"] - d["rtt_p99_us"]
    bulk = min(p["upload_mbps"], p["download_mbps"])
    rows = [
        ("metric", "direct", "proxied", "ratio", "added / target"),
        ("echo RTT p50 (us)", f"{d['rtt_p50_us']:.1f}", f"{p['rtt_p50_us']:.1f}",
         f"{p['rtt_p50_us'] / d['rtt_p50_us']:.2f}x",
         f"+{added50:.1f} us (<= {TARGET_ADDED_P50_US:.0f}: {_verdict(added50 <= TARGET_ADDED_P50_US)})"),
        ("echo RTT p99 (us)", f"{d['rtt_p99_us']:.1f}", f"{p['rtt_p99_us']:.1f}",
         f"{p['rtt_p99_us'] / d['rtt_p99_us']:.2f}x", f"+{added99:.1f} us"),
        ("upload (MB/s)", f"{d['upload_mbps']:.0f}", f"{p['upload_mbps']:.0f}",
         f"{p['upload_mbps'] / d['upload_mbps']:.2f}x", ""),
        ("download (MB/s)", f"{d['download_mbps']:.0f}", f"{p['download_mbps']:.0f}",
         f"{p['download_mbps'] / d['download_mbps']:.2f}x",
         f"min {bulk:.0f} (>= {TARGET_MBPS:.0f}: {_verdict(bulk >= TARGET_MBPS)})"),
    ]  # fmt: skip
    widths = [max(len(row[i]) for row in rows) for i in range(5)]
    lines = ["  ".join(cell.ljust(widths[i]) for i, cell in enumerate(row)).rstrip() for row in rows]
    lines.insert(1, "  ".join("-" * w for w in widths))
    head = (
        f"fault proxy vs direct: {r['round_trips']} echo round trips of 64 B, "
        f"{r['bulk_bytes'] // (1024 * 1024)} MiB bulk each way (best of {r.get('repeats', 1)})"
    )
    return head + "\n" + "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="fastport-lab bench proxy", description=__doc__.split("\n\n")[0])
    parser.add_argument("--round-trips", type=int, default=20000, help="echo round trips (default 20000)")
    parser.add_argument("--bulk-mb", type=int, default=256, help="MiB per bulk transfer (default 256)")
    parser.add_argument("--repeats", type=int, default=2, help="bulk runs per direction, best kept")
    parser.add_argument("--json", action="store_true", help="print the raw results as JSON too")
    parser.add_argument("--serve-backends", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args(sys.argv[1:] if argv is None else argv)
    if args.serve_backends:
        return serve_backends()
    if args.round_trips < 100 or args.bulk_mb < 1 or args.repeats < 1:
        print("fastport-lab bench proxy: need --round-trips >= 100, --bulk-mb >= 1, --repeats >= 1",
              file=sys.stderr)  # fmt: skip
        return 2
    results = run(args.round_trips, args.bulk_mb, args.repeats)
    results["repeats"] = args.repeats
    print(format_table(results))
    if args.json:
        print(json.dumps(results))
    added = results["proxied"]["rtt_p50_us"] - results["direct"]["rtt_p50_us"]
    bulk = min(results["proxied"]["upload_mbps"], results["proxied"]["download_mbps"])
    return 0 if added <= TARGET_ADDED_P50_US and bulk >= TARGET_MBPS else 1


if __name__ == "__main__":
    os.environ.setdefault("PYTHONUNBUFFERED", "1")
    sys.exit(main())
