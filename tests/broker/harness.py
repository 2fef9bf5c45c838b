"""A small reusable harness for broker tests: launch it as a real process, talk to it as a client.

``RunningBroker`` runs ``python -m broker --port 0 ...``, waits for the
listening line (never a sleep), keeps stderr for diagnostics and always kills
the process on exit. ``Client`` wraps ``websockets.asyncio.client.connect``
with helpers that wait for a frame of a given type with a hang-only timeout.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import itertools
import json
import signal
import sys
import urllib.parse
from collections.abc import Awaitable, Callable, Coroutine
from pathlib import Path
from typing import Any

from websockets.asyncio.client import ClientConnection, connect

from chaos.launcher import listening_line
from chaos.supervisor import Child, ChildStartError

ROOT = Path(__file__).resolve().parents[2]
HANG = 10.0  # seconds; only fires when something hangs
_refs = itertools.count()


def run_async(
    timeout: float = 60.0,
) -> Callable[[Callable[..., Coroutine[Any, Any, None]]], Callable[..., None]]:
    """Run an async test body with asyncio.run under an overall deadline (no pytest-asyncio needed)."""

    def deco(fn: Callable[..., Coroutine[Any, Any, None]]) -> Callable[..., None]:
        @functools.wraps(fn)
        def wrapper(*args: Any, **kwargs: Any) -> None:
            async def body() -> None:
                async with asyncio.timeout(timeout):
                    await fn(*args, **kwargs)

            asyncio.run(body())

        return wrapper

    return deco


class RunningBroker:
    """``python -m broker`` as a supervised child (``chaos.supervisor.Child``): its listening line
    awaited, its output kept, killed with the test (and with pytest, however pytest ends)."""

    def __init__(self, *args: str, python: str = sys.executable) -> None:
        self.argv = [python, "-m", "broker", "--host", "127.0.0.1", *args]
        if "--port" not in args:
            self.argv += ["--port", "0"]
        self.child: Child | None = None
        self.port: int | None = None

    @property
    def stderr_lines(self) -> list[str]:
        return [] if self.child is None else list(self.child.stderr_lines)

    @property
    def stdout_lines(self) -> list[str]:
        return [] if self.child is None else list(self.child.stdout_lines)

    @property
    def stderr(self) -> str:
        return "".join(line + "\n" for line in self.stderr_lines)

    @property
    def pid(self) -> int | None:
        return None if self.child is None else self.child.pid

    async def start(self, timeout: float = 20.0) -> RunningBroker:
        """Start and wait for the listening line; raise with the broker's stderr if it exits first."""
        self.child = Child(
            self.argv,
            name="broker",
            cwd=str(ROOT),
            env={"PYTHONUNBUFFERED": "1"},
            ready=listening_line,
            ready_timeout=timeout,
        )
        try:
            await asyncio.to_thread(self.child.start)
        except ChildStartError as exc:
            raise RuntimeError(f"broker exited with {exc.failure.exit_code}: {self.stderr}") from None
        self.port = int(self.child.ready["port"])
        return self

    def signal(self, sig: signal.Signals) -> None:
        """Send *sig* to the broker's process group (SIGKILL, SIGSTOP, SIGCONT...)."""
        assert self.child is not None
        self.child.signal(sig)

    def url(self, client_id: str | None = None, token: str | None = None, path: str = "/") -> str:
        query = {k: v for k, v in (("client_id", client_id), ("token", token)) if v is not None}
        qs = f"?{urllib.parse.urlencode(query)}" if query else ""
        return f"ws://127.0.0.1:{self.port}{path}{qs}"

    @property
    def http(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    async def wait(self, timeout: float = HANG) -> int:
        assert self.child is not None
        if not await asyncio.to_thread(self.child.exited, timeout):
            raise TimeoutError(f"broker {self.pid} did not exit within {timeout}s")
        rc = self.child.returncode
        assert rc is not None
        return rc

    async def terminate(self, timeout: float = HANG) -> int:
        assert self.child is not None
        self.child.signal(signal.SIGTERM)
        return await self.wait(timeout)

    async def kill(self) -> None:
        if self.child is not None:
            await asyncio.to_thread(self.child.kill)

    async def __aenter__(self) -> RunningBroker:
        return await self.start()

    async def __aexit__(self, *exc: object) -> None:
        await self.kill()


class Client:
    """A protocol client that keeps every received frame, in order."""

    def __init__(self, ws: ClientConnection) -> None:
        self.ws = ws
        self.inbox: asyncio.Queue[dict[str, Any]] = asyncio.Queue()
        self.seen: list[dict[str, Any]] = []  # every frame received, in order
        self.unclaimed: list[dict[str, Any]] = []  # received but not returned by expect() yet
        self._reader = asyncio.create_task(self._read())

    @classmethod
    async def connect(cls, url: str, **kwargs: Any) -> Client:
        kwargs.setdefault("open_timeout", HANG)
        kwargs.setdefault("max_size", None)
        return cls(await connect(url, **kwargs))

    async def _read(self) -> None:
        with contextlib.suppress(Exception):
            async for raw in self.ws:
                frame = json.loads(raw)
                self.seen.append(frame)
                await self.inbox.put(frame)

    async def send(self, frame: dict[str, Any] | str) -> None:
        await self.ws.send(frame if isinstance(frame, str) else json.dumps(frame))

    async def expect(self, kind: str, timeout: float = HANG, **match: Any) -> dict[str, Any]:
        """Oldest not yet expected frame of type ``kind`` matching ``match``; others stay for later."""

        def fits(frame: dict[str, Any]) -> bool:
            return frame.get("type") == kind and all(frame.get(k) == v for k, v in match.items())

        for i, frame in enumerate(self.unclaimed):
            if fits(frame):
                return self.unclaimed.pop(i)
        async with asyncio.timeout(timeout):
            while True:
                frame = await self.inbox.get()
                if fits(frame):
                    return frame
                self.unclaimed.append(frame)

    async def nothing(self, kind: str, within: float, **match: Any) -> None:
        """Assert no frame of ``kind`` arrives within ``within`` seconds (used only to show an absence)."""
        with contextlib.suppress(TimeoutError):
            frame = await self.expect(kind, within, **match)
            raise AssertionError(f"unexpected {kind} frame: {frame}")

    async def subscribe(self, topic: str) -> None:
        await self.send({"type": "subscribe", "topic": topic})
        await self.expect("subscribed", topic=topic)

    async def publish(self, topic: str, payload: Any, id: str | None = None, **extra: Any) -> dict[str, Any]:
        frame = {"type": "publish", "topic": topic, "payload": payload, **extra}
        if id is not None:
            frame["id"] = id
        await self.send(frame)
        return await self.expect("published", **({"id": id} if id else {}))

    async def ack(self, mid: str) -> None:
        await self.send({"type": "ack", "id": mid})

    async def roundtrip(self) -> None:
        """A ping/pong barrier: every frame sent before it has been handled by the broker."""
        ref = f"barrier-{next(_refs)}"
        await self.send({"type": "ping", "ref": ref})
        await self.expect("pong", ref=ref)

    async def close(self) -> None:
        with contextlib.suppress(Exception):
            await asyncio.wait_for(self.ws.close(), 5)
        self._reader.cancel()
        with contextlib.suppress(asyncio.CancelledError, Exception):
            await self._reader

    async def __aenter__(self) -> Client:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()


async def gather_clients(*coros: Awaitable[Client]) -> list[Client]:
    return list(await asyncio.gather(*coros))


class HangProxy:
    """A real TCP proxy that can go silent: the honest stand-in for a hung database.

    Healthy, it forwards bytes both ways. After :meth:`hang`, it keeps every
    connection open (old and new) but forwards nothing, the way a black-holed
    server behaves; :meth:`heal` lets new connections through again.
    """

    def __init__(self, upstream_host: str, upstream_port: int) -> None:
        self.upstream = (upstream_host, upstream_port)
        self.hung = False
        self.server: asyncio.Server | None = None
        self.port: int | None = None
        self._tasks: set[asyncio.Task[None]] = set()
        self._writers: set[asyncio.StreamWriter] = set()

    async def start(self) -> HangProxy:
        self.server = await asyncio.start_server(self._serve, "127.0.0.1", 0)
        self.port = self.server.sockets[0].getsockname()[1]
        return self

    async def _pipe(self, r: asyncio.StreamReader, w: asyncio.StreamWriter) -> None:
        with contextlib.suppress(Exception):
            while data := await r.read(65536):
                if self.hung:
                    continue  # swallowed: the peer waits forever
                w.write(data)
                await w.drain()
        with contextlib.suppress(Exception):
            w.close()

    async def _serve(self, r: asyncio.StreamReader, w: asyncio.StreamWriter) -> None:
        self._writers.add(w)
        if self.hung:
            with contextlib.suppress(Exception):
                await r.read()  # accept, never answer
            return
        try:
            ur, uw = await asyncio.open_connection(*self.upstream)
        except OSError:
            w.close()
            return
        self._writers.add(uw)
        for t in (asyncio.create_task(self._pipe(r, uw)), asyncio.create_task(self._pipe(ur, w))):
            self._tasks.add(t)
            t.add_done_callback(self._tasks.discard)

    def hang(self) -> None:
        self.hung = True

    def heal(self) -> None:
        self.hung = False

    async def close(self) -> None:
        if self.server is not None:
            self.server.close()
        for w in list(self._writers):
            with contextlib.suppress(Exception):
                w.transport.abort()
        for t in list(self._tasks):
            t.cancel()
        if self.server is not None:
            with contextlib.suppress(Exception):
                await asyncio.wait_for(self.server.wait_closed(), 5)

    async def __aenter__(self) -> HangProxy:
        return await self.start()

    async def __aexit__(self, *exc: object) -> None:
        await self.close()
