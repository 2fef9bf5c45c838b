"""``fastport-lab toxiproxy``: a drop-in for the ``toxiproxy-server`` binary.

Accepts Toxiproxy's own flags (``-host``, ``-port``, ``-config``, ``-seed``,
``-proxy-metrics``, ``-runtime-metrics``, ``-version``) in single- or double-dash
form.  When listening it prints one JSON line on stdout,
``{"event": "listening", "host": ..., "port": ..., "url": ...}``, so callers can
pass ``--port 0`` and learn the port without racing.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import logging
import os
import signal
import sys

from chaos.toxiproxy.api_model import VERSION
from chaos.toxiproxy.server import ConfigError, ToxiproxyApp, load_config


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="fastport-lab toxiproxy",
        description="Run the embedded Toxiproxy-compatible fault proxy (Toxiproxy 2.12 HTTP API).",
    )
    p.add_argument("--host", "-host", default="127.0.0.1", help="API host (default 127.0.0.1)")
    p.add_argument("--port", "-port", type=int, default=8474, help="API port, 0 = ephemeral (default 8474)")
    p.add_argument("--config", "-config", metavar="FILE", help="JSON array of proxies to populate at start")
    p.add_argument("--seed", "-seed", type=int, default=None, help="seed for toxicity draws and jitter")
    p.add_argument("--proxy-metrics", "-proxy-metrics", action="store_true", help="serve /metrics counters")
    p.add_argument("--runtime-metrics", "-runtime-metrics", action="store_true", help="add process metrics")
    p.add_argument("--version", "-version", action="store_true", help="print the version and exit")
    return p


async def _serve(args: argparse.Namespace) -> int:
    config = load_config(args.config) if args.config else None
    app = ToxiproxyApp(
        args.host,
        args.port,
        seed=args.seed,
        proxy_metrics=args.proxy_metrics,
        runtime_metrics=args.runtime_metrics,
    )
    await app.start(config)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        with contextlib.suppress(NotImplementedError):
            loop.add_signal_handler(sig, stop.set)
    line = {"event": "listening", "host": app.host, "port": app.port, "url": app.url, "version": VERSION}
    print(json.dumps(line), flush=True)
    try:
        await stop.wait()
    finally:
        await app.close()
    return 0


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(sys.argv[1:] if argv is None else argv)
    if args.version:
        print(VERSION)
        return 0
    if not 0 <= args.port <= 65535:
        print(f"fastport-lab toxiproxy: invalid port {args.port}", file=sys.stderr)
        return 2
    level = os.environ.get("LOG_LEVEL", "warning").upper()
    logging.basicConfig(level=getattr(logging, level, logging.WARNING), stream=sys.stderr)
    try:
        return asyncio.run(_serve(args))
    except ConfigError as exc:
        print(f"fastport-lab toxiproxy: {exc}", file=sys.stderr)
        return 2
    except OSError as exc:
        print(f"fastport-lab toxiproxy: cannot listen on {args.host}:{args.port}: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())
