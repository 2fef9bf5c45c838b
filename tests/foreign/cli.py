"""Start-up and the process contract (PROTOCOL.md section 4): bind, open the store, hydrate, serve.

The port is bound before anything else, so a taken port fails in milliseconds with
the line the contract asks for, without touching the store; the socket only starts
listening once hydration is done, so no client is served half-started.
"""

from __future__ import annotations

import asyncio
import errno
import json
import logging
import os
import signal
import socket
import sys
import threading
import time
from collections.abc import Sequence

from websockets.asyncio.server import serve

from tests.foreign.access import Access
from tests.foreign.mutants import Bugs
from tests.foreign.server import Broker
from tests.foreign.settings import Settings, parse
from tests.foreign.stores import MemoryStore, PostgresStore, Store

log = logging.getLogger("foreign")
EXIT_STARTUP, EXIT_PORT_TAKEN = 1, 3
SHUTDOWN_HARD_LIMIT = 9.5  # SIGTERM must end in exit 0 within 10 s, even if a drain step hangs


def bind(host: str, port: int, bugs: Bugs) -> socket.socket:
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    while True:
        sock = socket.socket(family, socket.SOCK_STREAM)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # restart over TIME_WAIT, like asyncio
        try:
            sock.bind((host, port))
            return sock
        except OSError as exc:
            sock.close()
            if exc.errno != errno.EADDRINUSE or not bugs.on("bind-retry"):
                raise
            time.sleep(0.5)  # the previous broker is probably still exiting


def _store(s: Settings, bugs: Bugs) -> Store:
    if s.store == "memory":
        return MemoryStore()
    assert s.dsn is not None
    return PostgresStore(s.dsn, bugs, connect_timeout=max(1.0, min(5.0, s.db_timeout * 2)))


def _hard_exit_later() -> None:
    def bail() -> None:
        time.sleep(SHUTDOWN_HARD_LIMIT)
        print("foreign broker: shutdown overran, exiting", file=sys.stderr, flush=True)
        os._exit(0)

    threading.Thread(target=bail, daemon=True).start()


async def run(s: Settings, sock: socket.socket, bugs: Bugs) -> int:
    loop = asyncio.get_running_loop()
    stop = asyncio.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, lambda: (_hard_exit_later(), stop.set()) if not stop.is_set() else None)
    store = _store(s, bugs)
    broker = Broker(s, store, bugs, Access.from_file(s.auth))
    deadline = loop.time() + s.startup_timeout
    while True:
        try:
            await store.open()
            await broker.hydrate()
            break
        except Exception as exc:
            if loop.time() > deadline or stop.is_set():
                print(f"foreign broker: cannot open the {s.store} store: {exc}", file=sys.stderr, flush=True)
                return 0 if stop.is_set() else EXIT_STARTUP
            log.warning("store not ready (%s), retrying", exc)
            await asyncio.sleep(0.5)
    broker.start()
    server = await serve(broker.serve, sock=sock, process_request=broker.http)
    host, port = sock.getsockname()[:2]
    print(json.dumps({"event": "listening", "host": host, "port": port, "pid": os.getpid()}), flush=True)
    await stop.wait()
    await broker.shutdown(server)
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    s = parse(argv)
    logging.basicConfig(
        stream=sys.stderr, level=s.log_level.upper(), format="%(asctime)s %(levelname)s %(name)s %(message)s"
    )
    bugs = Bugs(s.mutant)
    try:
        sock = bind(s.host, s.port, bugs)
    except OSError as exc:
        if exc.errno == errno.EADDRINUSE:
            print(
                f"foreign broker: cannot listen on {s.host}:{s.port}: address already in use (port {s.port})",
                file=sys.stderr,
                flush=True,
            )
            return EXIT_PORT_TAKEN
        print(f"foreign broker: cannot listen on {s.host}:{s.port}: {exc}", file=sys.stderr, flush=True)
        return EXIT_STARTUP
    try:
        return asyncio.run(run(s, sock, bugs))
    finally:
        sock.close()
