"""The broker as a process: exit codes, the listening line, signals (PROTOCOL.md section 4)."""

from __future__ import annotations

import asyncio
import errno
import json
import os
import signal
import sys

from .auth import AuthFileError
from .config import Config
from .logs import event
from .server import Broker
from .startup import StartupError

EXIT_OK, EXIT_FAILURE, EXIT_USAGE, EXIT_ADDRESS_IN_USE = 0, 1, 2, 3


def _say(text: str) -> None:
    print(f"fastport broker: {text}", file=sys.stderr, flush=True)


def listening_line(broker: Broker) -> str:
    host, port = broker.cfg.host, broker.port
    return json.dumps({"event": "listening", "host": host, "port": port, "pid": os.getpid()})


async def run(cfg: Config) -> int:
    """Bind first (a taken port fails before the store is touched), open the store, serve until a signal."""
    try:
        broker = Broker(cfg)
    except (AuthFileError, StartupError) as exc:
        _say(str(exc))
        return EXIT_USAGE if isinstance(exc, AuthFileError) else EXIT_FAILURE
    try:
        await broker.bind()
    except OSError as exc:
        if exc.errno == errno.EADDRINUSE:
            _say(f"cannot listen on {cfg.host}:{cfg.port}: address already in use (port {cfg.port})")
            return EXIT_ADDRESS_IN_USE
        _say(f"cannot listen on {cfg.host}:{cfg.port}: {exc.strerror or exc}")
        return EXIT_FAILURE
    loop = asyncio.get_running_loop()
    stop = asyncio.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    try:
        try:
            await broker.open_store()
        except StartupError as exc:
            _say(str(exc))
            await broker.unbind()
            return EXIT_FAILURE
        if stop.is_set():
            await broker.unbind()
            return EXIT_OK
        await broker.start()
        print(listening_line(broker), flush=True)
        event(
            "listening",
            host=cfg.host,
            port=broker.port,
            store=cfg.store,
            flaws=sorted(cfg.flaws),
            auth="file" if cfg.auth else "open",
            loop="uvloop" if type(loop).__module__.startswith("uvloop") else "asyncio",
        )
        await stop.wait()
        event("stopping", reason="signal")
        await broker.shutdown()
        return EXIT_OK
    finally:
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.remove_signal_handler(sig)
