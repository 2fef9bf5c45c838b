"""The benchmark's baseline: a bare ``websockets`` broadcast relay.

It has no delivery semantics at all (no store, no acks, no retries): every text
frame a publisher sends is pushed unchanged to every subscriber with
``websockets.broadcast()``. It follows the broker launch contract (listening
line on stdout, ``--port 0``) so that the benchmark starts it exactly as it
starts the broker, in the same process layout.

Run: ``python -m chaos.bench.relay --port 0``. A client connects to
``/?role=sub`` to receive and to ``/?role=pub`` to publish.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import signal
import sys
from urllib.parse import parse_qs, urlsplit

from websockets.asyncio.server import ServerConnection, broadcast, serve


async def _relay(host: str, port: int) -> None:
    subscribers: set[ServerConnection] = set()

    async def handler(ws: ServerConnection) -> None:
        role = parse_qs(urlsplit(ws.request.path).query).get("role", ["sub"])[0]
        if role == "sub":
            subscribers.add(ws)
            try:
                await ws.wait_closed()
            finally:
                subscribers.discard(ws)
            return
        async for frame in ws:
            broadcast(subscribers, frame)

    stop = asyncio.get_running_loop().create_future()
    asyncio.get_running_loop().add_signal_handler(signal.SIGTERM, stop.set_result, None)
    async with serve(handler, host, port, compression=None, max_queue=None) as server:
        bound = next(iter(server.sockets)).getsockname()
        print(json.dumps({"event": "listening", "host": bound[0], "port": bound[1], "pid": os.getpid()}),
              flush=True)
        await stop


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m chaos.bench.relay", description=__doc__)
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=0)
    args = parser.parse_args(argv)
    try:
        asyncio.run(_relay(args.host, args.port))
    except OSError as exc:
        print(f"relay: cannot listen on {args.host}:{args.port}: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 130
    return 0


if __name__ == "__main__":
    sys.exit(main())
