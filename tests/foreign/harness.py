"""Test helpers for the foreign broker: its process, a plain websockets peer, a cuttable storage link.

Nothing here sleeps to synchronise: the broker is ready when it prints its listening
line, a peer waits on the frames it received, and every timeout (``HANG``) only
fires when something hangs.
"""

from __future__ import annotations

import asyncio
import base64
import json
import os
import signal
import sys
import urllib.parse
import urllib.request
from collections.abc import Callable, Coroutine, Sequence
from pathlib import Path
from typing import Any

from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import ConnectionClosed

from chaos.launcher import listening_line
from chaos.supervisor import Child, ChildStartError

ROOT = Path(__file__).resolve().parents[2]
HANG = 10.0


def drive(coro: Coroutine[Any, Any, Any], timeout: float = 90.0) -> Any:
    """Run one async test body under an overall deadline."""

    async def bounded() -> Any:
        async with asyncio.timeout(timeout):
            return await coro

    return asyncio.run(bounded())


class Foreign:
    """``python -m tests.foreign`` as a supervised child (``chaos.supervisor.Child``, its own process
    group); killed on exit whatever happens, and with pytest however pytest ends."""

    def __init__(
        self, store: str = "memory", dsn: str | None = None, mutant: str | None = None, *extra: str
    ) -> None:
        self.store, self.dsn, self.mutant, self.extra = store, dsn, mutant, extra
        self.port = 0
        self.child: Child | None = None

    def argv(self, port: int) -> list[str]:
        argv = [sys.executable, "-m", "tests.foreign", "--host", "127.0.0.1", "--port", str(port)]
        argv += ["--store", self.store, *(["--dsn", self.dsn] if self.dsn else [])]
        argv += [*(["--mutant", self.mutant] if self.mutant else []), "--log-level", "info", *self.extra]
        return argv

    @property
    def stderr(self) -> list[str]:
        return [] if self.child is None else list(self.child.stderr_lines)

    async def spawn(self, port: int | None = None) -> Child:
        """Start it without waiting for the listening line (a start expected to fail)."""
        self.child = Child(self.argv(self.port if port is None else port), name="foreign", cwd=str(ROOT))
        await asyncio.to_thread(self.child.start)
        return self.child

    async def exit_code(self, timeout: float) -> int | None:
        """Its exit code once it exited by itself within *timeout*; None while it still runs."""
        assert self.child is not None
        return self.child.returncode if await asyncio.to_thread(self.child.exited, timeout) else None

    async def start(self) -> Foreign:
        self.child = Child(
            self.argv(self.port), name="foreign", cwd=str(ROOT), ready=listening_line, ready_timeout=HANG
        )
        try:
            await asyncio.to_thread(self.child.start)
        except ChildStartError as exc:
            raise AssertionError(
                f"no listening line ({exc.failure.reason}); stderr: {self.stderr[-10:]}"
            ) from None
        event = self.child.ready
        assert event["event"] == "listening" and event["pid"] == self.child.pid, event
        self.port = event["port"]
        return self

    async def kill(self) -> None:
        if self.child is not None:
            await asyncio.to_thread(self.child.kill)

    async def terminate(self, timeout: float = 12.0) -> int:
        assert self.child is not None
        self.child.signal(signal.SIGTERM)
        code = await self.exit_code(timeout)
        if code is None:
            raise TimeoutError(f"the foreign broker did not exit within {timeout}s of SIGTERM")
        return code

    async def restart(self) -> Foreign:
        await self.kill()
        return await self.start()

    def url(self, client_id: str | None = None) -> str:
        query = f"?client_id={client_id}" if client_id else ""
        return f"ws://127.0.0.1:{self.port}/{query}"

    async def http(self, path: str) -> tuple[int, str]:
        def get() -> tuple[int, str]:
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{self.port}{path}", timeout=HANG) as r:
                    return r.status, r.read().decode()
            except urllib.error.HTTPError as exc:
                return exc.code, exc.read().decode()

        return await asyncio.to_thread(get)

    async def metric(self, name: str) -> float:
        _, text = await self.http("/metrics")
        values = dict(line.split(" ", 1) for line in text.splitlines() if line)
        return float(values.get(f"foreign_{name}", 0))

    async def until(self, check: Callable[[], Coroutine[Any, Any, bool]], what: str) -> None:
        """Poll an endpoint until *check* holds; the deadline only fires on a hang."""
        async with asyncio.timeout(HANG):
            while True:
                if await check():
                    return
                await asyncio.sleep(0.05)  # polling interval of an HTTP endpoint, not synchronisation

    async def __aenter__(self) -> Foreign:
        return await self.start()

    async def __aexit__(self, *exc: object) -> None:
        await self.kill()


class Peer:
    """A plain websockets client that records every frame it receives, in order."""

    def __init__(self, ws: ClientConnection) -> None:
        self.ws = ws
        self.frames: list[dict[str, Any]] = []
        self.closed: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
        self._news = asyncio.Event()
        self._reader = asyncio.create_task(self._read())

    @classmethod
    async def open(cls, url: str, **kwargs: Any) -> Peer:
        return cls(await connect(url, open_timeout=HANG, **kwargs))

    async def _read(self) -> None:
        try:
            async for raw in self.ws:
                self.frames.append(json.loads(raw))
                self._news.set()
        except ConnectionClosed:
            pass
        finally:
            if not self.closed.done():
                self.closed.set_result(self.ws.close_code)
            self._news.set()

    async def send(self, **frame: Any) -> None:
        await self.ws.send(json.dumps(frame))

    async def wait(
        self, pred: Callable[[dict[str, Any]], bool], what: str, timeout: float = HANG
    ) -> dict[str, Any]:
        """The first received frame satisfying *pred*, waiting for it; AssertionError on a hang."""
        try:
            async with asyncio.timeout(timeout):
                while True:
                    for f in self.frames:
                        if pred(f):
                            return f
                    if self.closed.done():
                        raise AssertionError(f"connection closed ({self.closed.result()}) before {what}")
                    self._news.clear()
                    await self._news.wait()
        except TimeoutError:
            raise AssertionError(f"no {what} within {timeout}s; got {self.frames[-5:]}") from None

    async def expect(self, kind: str, timeout: float = HANG, **fields: Any) -> dict[str, Any]:
        return await self.wait(
            lambda f: f.get("type") == kind and all(f.get(k) == v for k, v in fields.items()),
            f"{kind} {fields}",
            timeout,
        )

    def got(self, kind: str, **fields: Any) -> list[dict[str, Any]]:
        return [
            f for f in self.frames if f.get("type") == kind and all(f.get(k) == v for k, v in fields.items())
        ]

    async def subscribe(self, topic: str) -> None:
        await self.send(type="subscribe", topic=topic)
        await self.expect("subscribed", topic=topic)

    async def publish(self, topic: str, payload: Any, msg_id: str, **extra: Any) -> None:
        await self.send(type="publish", topic=topic, payload=payload, id=msg_id, **extra)

    async def ack_all(self) -> None:
        for f in self.got("message"):
            await self.send(type="ack", id=f["id"])

    def pause(self) -> None:
        self.ws.transport.pause_reading()

    async def close(self) -> None:
        await self.ws.close()
        await self._reader


async def flush(pub: Peer, tag: str) -> None:
    """Wait until every write queued before now is in the store: the writer keeps order, so the
    ``persisted`` of a message nobody subscribes to comes after them."""
    await pub.publish("flush.nobody", None, tag)
    await pub.expect("persisted", id=tag)


def noise(n: int) -> str:
    return base64.b64encode(os.urandom(n)).decode()  # does not compress, so socket buffers really fill


async def slow_reader_stalls(b: Foreign, count: int = 250) -> bool:
    """True when a healthy reader is held up by one that stopped reading (the slow one comes first in
    the fan-out). Closed loop: each message is published once the healthy reader got the last one, so
    only the paused reader's backlog grows (its socket buffers, then the broker's queue for it)."""
    slow = await Peer.open(b.url("zz-slow"))
    fast = await Peer.open(b.url("aa-fast"))
    pub = await Peer.open(b.url("pub"))
    for p in (slow, fast):
        await p.subscribe("wide")
    slow.pause()
    for i in range(count):
        try:
            async with asyncio.timeout(4.0):  # a stalled broker also stops reading the publisher
                await pub.publish("wide", noise(48 << 10), f"w{i}")
                first = await fast.expect("message", id=f"w{i}")
                await fast.send(type="ack", id=first["id"])
        except (TimeoutError, AssertionError):
            return True
        if first["attempt"] != 1:  # it missed the fan-out and only came with a retry
            return True
    return False


class Relay:
    """A TCP relay in front of PostgreSQL: ``down()`` refuses and cuts, ``freeze()`` holds every byte."""

    def __init__(self, dsn: str) -> None:
        self.target = urllib.parse.urlsplit(dsn)
        self.mode = "pass"
        self._flowing = asyncio.Event()
        self._flowing.set()
        self._links: set[asyncio.StreamWriter] = set()
        self.server: asyncio.Server | None = None

    async def start(self) -> str:
        self.server = await asyncio.start_server(self._link, "127.0.0.1", 0)
        port = self.server.sockets[0].getsockname()[1]
        netloc = self.target.netloc.rsplit("@", 1)
        host = f"{netloc[0]}@127.0.0.1:{port}" if len(netloc) == 2 else f"127.0.0.1:{port}"
        return urllib.parse.urlunsplit(self.target._replace(netloc=host))

    async def _link(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        if self.mode == "down":
            writer.transport.abort()
            return
        up_r, up_w = await asyncio.open_connection(self.target.hostname, self.target.port)
        self._links |= {writer, up_w}
        await asyncio.gather(self._pipe(reader, up_w), self._pipe(up_r, writer), return_exceptions=True)
        for w in (writer, up_w):
            self._links.discard(w)
            w.transport.abort()

    async def _pipe(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            while data := await reader.read(65536):
                await self._flowing.wait()
                writer.write(data)
                await writer.drain()
        finally:
            writer.transport.abort()

    def down(self) -> None:
        self.mode = "down"
        for w in list(self._links):
            w.transport.abort()

    def freeze(self) -> None:
        self.mode = "freeze"
        self._flowing.clear()

    def heal(self) -> None:
        self.mode = "pass"
        self._flowing.set()

    async def close(self) -> None:
        self.heal()
        for w in list(self._links):
            w.transport.abort()
        if self.server is not None:
            self.server.close()
            await self.server.wait_closed()


async def table(dsn: str, sql: str, *args: Any) -> Sequence[Any]:
    import asyncpg

    conn = await asyncpg.connect(dsn, timeout=HANG)
    try:
        return await conn.fetch(sql, *args)
    finally:
        await conn.close()
