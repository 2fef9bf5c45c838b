"""The nemesis: fault actions on a running lab, each recorded with its start, its end and its evidence.

Every fault is an async context manager, so it is always healed, also when the
body fails or is cancelled::

    async with nemesis.storage_down():
        ...  # publish while PostgreSQL is unreachable

Each records ``fault-start`` / ``fault-stop`` events of process ``"nemesis"``
into the lab's history (``value["name"]`` names the fault). A fault is only
worth judging if it landed, so the nemesis checks that it did and writes the
proof into the stop event with ``"effective": true|false``:

* storage faults: the toxic is listed by the proxy *and* a probe connection
  through the proxy is affected (slowed, refused, hung or reset); PostgreSQL stop:
  the server is down and a direct probe is refused;
* broker kill: the old pid died of SIGKILL and a new pid listens on the same port;
  SIGSTOP: ``/healthz`` stops answering, and answers again after SIGCONT;
* port squat: a second bind of the port is really refused with EADDRINUSE;
* subscriber cut: the connection was aborted while a fan-out to it was under way
  (some but not all of a burst had reached it).

Names follow the checkers' conventions (docs/checkers.md): storage faults start
with ``storage``, crash windows are ``kill``, the port squat is ``port-squat``
and faults aimed at one subscriber carry ``targets``.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import json
import socket
import struct
import time
from collections.abc import AsyncIterator, Collection
from dataclasses import dataclass
from typing import Any

import asyncpg
from websockets.asyncio.client import connect
from websockets.exceptions import ConnectionClosed

from chaos.clients import Subscriber
from chaos.environment import Lab
from chaos.toxiproxy.client import NotFound

PROBE_TIMEOUT = 1.0  # a probe still blocked after this long counts as hung


class FaultUnsupported(RuntimeError):
    """The environment cannot inject this fault (e.g. stopping an external PostgreSQL)."""


async def probe_sql(dsn: str, timeout: float = PROBE_TIMEOUT) -> dict[str, Any]:
    """Connect and ``SELECT 1``; returns ``{"ok", "elapsed_ms", "error"}`` and never raises."""
    t0 = time.monotonic()
    conn = None
    try:
        async with asyncio.timeout(timeout):
            conn = await asyncpg.connect(dsn, timeout=timeout, command_timeout=timeout)
            await conn.fetchval("SELECT 1")
        out: dict[str, Any] = {"ok": True, "error": None}
    except TimeoutError:
        out = {"ok": False, "error": f"hung: no answer within {timeout}s"}
    except Exception as exc:  # refused, reset, EOF, protocol error: all mean "affected"
        out = {"ok": False, "error": f"{type(exc).__name__}: {exc}"[:200]}
    finally:
        if conn is not None:
            conn.terminate()
    out["elapsed_ms"] = round((time.monotonic() - t0) * 1000, 1)
    return out


async def probe_healthz(port: int, timeout: float = PROBE_TIMEOUT) -> dict[str, Any]:
    """``GET /healthz`` (PROTOCOL.md section 4.5); ``{"ok", "status", "error"}``, never raises."""
    t0 = time.monotonic()
    writer = None
    try:
        async with asyncio.timeout(timeout):
            reader, writer = await asyncio.open_connection("127.0.0.1", port)
            writer.write(b"GET /healthz HTTP/1.0\r\nHost: 127.0.0.1\r\n\r\n")
            raw = await reader.read()
        head, _, body = raw.partition(b"\r\n\r\n")
        code = int(head.split(b" ", 2)[1])
        try:
            status = json.loads(body).get("status")
        except (ValueError, AttributeError):
            status = None
        out: dict[str, Any] = {"ok": code == 200, "http": code, "status": status, "error": None}
    except TimeoutError:
        out = {"ok": False, "error": f"no answer within {timeout}s"}
    except (OSError, ValueError, IndexError) as exc:
        out = {"ok": False, "error": f"{type(exc).__name__}: {exc}"[:200]}
    finally:
        if writer is not None:
            writer.close()
    out["elapsed_ms"] = round((time.monotonic() - t0) * 1000, 1)
    return out


async def _connect_quietly(dsn: str) -> asyncpg.Connection | None:
    try:
        return await asyncpg.connect(dsn, timeout=5.0)
    except Exception:
        return None


async def _probe_open(conn: asyncpg.Connection | None, timeout: float) -> dict[str, Any]:
    """``SELECT 1`` on an already open connection (as a broker's pool holds them); never raises."""
    if conn is None:
        return {"ok": False, "error": "could not open the probe connection before the fault", "elapsed_ms": 0}
    t0 = time.monotonic()
    try:
        async with asyncio.timeout(timeout):
            await conn.fetchval("SELECT 1")
        out: dict[str, Any] = {"ok": True, "error": None}
    except TimeoutError:
        out = {"ok": False, "error": f"hung: no answer within {timeout}s"}
    except Exception as exc:
        out = {"ok": False, "error": f"{type(exc).__name__}: {exc}"[:200]}
    out["elapsed_ms"] = round((time.monotonic() - t0) * 1000, 1)
    return out


async def _reset_connection(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    sock = writer.get_extra_info("socket")
    if sock is not None:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))  # RST on close
    writer.transport.abort()


def port_bind_refused(port: int) -> bool:
    """True when binding 127.0.0.1:*port* (with SO_REUSEADDR, as servers do) fails with EADDRINUSE."""
    s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    try:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        s.bind(("127.0.0.1", port))
        s.listen(1)
    except OSError as exc:
        return exc.errno == errno.EADDRINUSE
    finally:
        s.close()
    return False


@dataclass(frozen=True)
class BadFrame:
    """One malformed frame and the error codes PROTOCOL.md allows as its answer."""

    case: str
    text: str
    codes: tuple[str, ...]
    may_close: bool = False  # too_large: the broker may close with 1009


def default_bad_frames(max_frame: int = 1 << 20) -> list[BadFrame]:
    return [
        BadFrame("not-json", "{this is not json", ("bad_request",)),
        BadFrame("not-an-object", "[1, 2, 3]", ("bad_request",)),
        BadFrame("no-type", json.dumps({"topic": "t"}), ("bad_request",)),
        BadFrame("type-not-string", json.dumps({"type": 7}), ("bad_request", "unknown_type")),
        BadFrame("unknown-type", json.dumps({"type": "explode"}), ("unknown_type",)),
        BadFrame("subscribe-no-topic", json.dumps({"type": "subscribe"}), ("bad_request",)),
        BadFrame("subscribe-bad-topic", json.dumps({"type": "subscribe", "topic": "a b!"}), ("bad_request",)),
        BadFrame("publish-no-topic", json.dumps({"type": "publish", "payload": 1}), ("bad_request",)),
        BadFrame(
            "publish-topic-too-long",
            json.dumps({"type": "publish", "topic": "x" * 300, "payload": 1}),
            ("bad_request",),
        ),
        BadFrame(
            "publish-id-not-string", json.dumps({"type": "publish", "topic": "t", "id": 5}), ("bad_request",)
        ),
        BadFrame("ack-no-id", json.dumps({"type": "ack"}), ("bad_request",)),
        BadFrame(
            "too-large", json.dumps({"type": "ping", "pad": "x" * (max_frame + 16)}), ("too_large",), True
        ),
    ]


class Nemesis:
    """Fault actions on one :class:`~chaos.environment.Lab`; every one is an ``async with`` block."""

    def __init__(self, lab: Lab) -> None:
        self.lab = lab
        self.history = lab.history

    def _start(self, name: str, **evidence: Any) -> None:
        self.history.append("nemesis", "info", "fault-start", value={"name": name, **evidence})

    def _stop(self, name: str, effective: bool, **evidence: Any) -> None:
        self.history.append(
            "nemesis", "info", "fault-stop", value={"name": name, "effective": bool(effective), **evidence}
        )

    # --- storage (FMEA 1) ------------------------------------------------------------------------

    @contextlib.asynccontextmanager
    async def _toxic(
        self, name: str, toxic_type: str, attributes: dict[str, int], stream: str, expect: str
    ) -> AsyncIterator[None]:
        proxy = self.lab.proxy
        assert proxy is not None and self.lab.dsn is not None
        # A connection opened before the toxic shows what the broker's pooled connections see.
        conn = await _connect_quietly(self.lab.dsn)
        try:
            toxic = await proxy.add_toxic(
                toxic_type, attributes=attributes, stream=stream, name=f"lab-{name}"
            )
        except BaseException:
            if conn is not None:
                conn.terminate()
            raise
        self._start(name, kind="storage", toxic=toxic_type, attributes=attributes, stream=stream)
        timeout = PROBE_TIMEOUT + 3 * attributes.get("latency", 0) / 1000
        probes = asyncio.gather(probe_sql(self.lab.dsn, timeout), _probe_open(conn, timeout))
        try:
            yield
        finally:
            try:
                present = any(t.get("name") == toxic["name"] for t in await proxy.list_toxics())
                fresh, pooled = await probes
            finally:
                with contextlib.suppress(NotFound):
                    await proxy.remove_toxic(toxic["name"])
                if conn is not None:
                    conn.terminate()
            if expect == "slow":
                floor = 0.9 * attributes.get("latency", 0)
                affected = all(p["ok"] and p["elapsed_ms"] >= floor for p in (fresh, pooled))
            else:
                affected = not fresh["ok"] and not pooled["ok"]
            self._stop(
                name,
                present and affected,
                toxic_present=present,
                probe_new_connection=fresh,
                probe_open_connection=pooled,
                probe_expected=expect,
            )

    def storage_latency(
        self, latency_ms: int = 300, jitter_ms: int = 0
    ) -> contextlib.AbstractAsyncContextManager:
        """Every answer from PostgreSQL is delayed by *latency_ms* (a slow database)."""
        return self._toxic(
            "storage-latency", "latency", {"latency": latency_ms, "jitter": jitter_ms}, "downstream", "slow"
        )

    def storage_hang(self) -> contextlib.AbstractAsyncContextManager:
        """Data to and from PostgreSQL is dropped and connections stay open (a hung database)."""
        return self._toxic("storage-hang", "timeout", {"timeout": 0}, "downstream", "failed")

    def storage_reset(self) -> contextlib.AbstractAsyncContextManager:
        """Every connection to PostgreSQL is reset (RST) on its next request."""
        return self._toxic("storage-reset", "reset_peer", {"timeout": 0}, "upstream", "failed")

    @contextlib.asynccontextmanager
    async def storage_down(self) -> AsyncIterator[None]:
        """The proxy is disabled: new connections refused, open ones closed (database unreachable)."""
        proxy = self.lab.proxy
        assert proxy is not None and self.lab.dsn is not None
        await proxy.disable()
        self._start("storage-down", kind="storage", proxy=proxy.name)
        try:
            yield
        finally:
            enabled = (await proxy.refresh()).enabled  # read before enable(): refresh() returns proxy itself
            result = await probe_sql(self.lab.dsn)
            await proxy.enable()
            self._stop(
                "storage-down",
                (not enabled) and not result["ok"],
                proxy_enabled=enabled,
                probe=result,
                probe_expected="failed",
            )

    @contextlib.asynccontextmanager
    async def postgres_stopped(self) -> AsyncIterator[None]:
        """PostgreSQL itself is stopped, then started again on the same port."""
        pg = self.lab.session.pg
        if not pg.can_restart:
            raise FaultUnsupported(
                "stopping PostgreSQL needs the embedded server; FASTPORT_LAB_PG_DSN points at an external one"
            )
        assert self.lab.dsn_direct is not None
        self._start("storage-pg-stop", kind="storage", pg_port=pg.port)
        await asyncio.to_thread(pg.stop)
        evidence: dict[str, Any] = {"stopped": not pg.is_running}
        try:
            evidence["probe"] = await probe_sql(self.lab.dsn_direct)
            yield
        finally:
            await asyncio.to_thread(pg.start)
            evidence["restarted"] = pg.is_running
            evidence["probe_after"] = await probe_sql(self.lab.dsn_direct, timeout=5.0)
            effective = evidence["stopped"] and not evidence.get("probe", {"ok": True})["ok"]
            self._stop("storage-pg-stop", effective, **evidence)

    # --- subscribers (FMEA 2) --------------------------------------------------------------------

    @contextlib.asynccontextmanager
    async def subscriber_cut(
        self, sub: Subscriber, burst: Collection[str] = (), *, resubscribe_timeout: float = 30.0
    ) -> AsyncIterator[None]:
        """Abort *sub*'s TCP connection (no close frame) now; the window ends when it is resubscribed.

        With *burst* (ids being fanned out), the evidence says how many had reached
        it at the cut; the cut counts as effective only mid fan-out (some, not all).
        """
        ws = sub.ws
        got = sum(1 for i in burst if i in sub.received)
        mid = (0 < got < len(burst)) if burst else None
        self._start(
            "subscriber-cut",
            targets=[sub.client_id],
            burst=len(burst),
            received_before_cut=got,
            mid_fanout=mid,
        )
        if ws is not None:
            ws.transport.abort()
        try:
            yield
        finally:
            resubscribed = True
            try:
                await sub.wait_subscribed(sub.topics, timeout=resubscribe_timeout)
            except Exception:
                resubscribed = False
            self._stop(
                "subscriber-cut",
                ws is not None and mid is not False,
                was_connected=ws is not None,
                resubscribed=resubscribed,
            )

    @contextlib.asynccontextmanager
    async def slow_consumer(self, sub: Subscriber, burst: Collection[str] = ()) -> AsyncIterator[None]:
        """*sub* stops reading its socket (the broker's sends to it back up) until the block ends.

        The client records the window itself (``slow-consumer`` with ``targets``); with
        *burst*, a ``fault-evidence`` event says how much of it reached *sub* while paused.
        """
        before = set(sub.received)
        if not sub.pause_reading():
            raise RuntimeError(f"{sub.client_id} is not connected (or already paused): cannot make it slow")
        try:
            yield
        finally:
            got = sum(1 for i in burst if i in sub.received and i not in before)
            self.history.append(
                "nemesis",
                "info",
                "fault-evidence",
                value={
                    "name": "slow-consumer",
                    "targets": [sub.client_id],
                    "burst": len(burst),
                    "received_while_paused": got,
                    "backed_up": bool(burst) and got < len(burst),
                },
            )
            sub.resume_reading()

    # --- the broker process (FMEA 3, 4) ----------------------------------------------------------

    @contextlib.asynccontextmanager
    async def broker_killed(self) -> AsyncIterator[None]:
        """SIGKILL the broker; on exit restart it on the same port (window: kill .. listening again)."""
        old = self.lab.broker
        assert old is not None
        port, pid = self.lab.port, old.pid
        self._start("kill", signal="SIGKILL", pid=pid, port=port)
        code = await asyncio.to_thread(old.kill)
        evidence: dict[str, Any] = {"old_pid": pid, "exit_code": code}
        try:
            yield
        finally:
            new = await self.lab.start_broker(port=port)
            evidence.update(new_pid=new.pid, new_port=new.port)
            self._stop("kill", code == -9 and new.pid != pid and new.port == port, **evidence)

    @contextlib.asynccontextmanager
    async def broker_paused(self) -> AsyncIterator[None]:
        """SIGSTOP the broker (frozen with its sockets open), SIGCONT on exit."""
        b = self.lab.broker
        assert b is not None and self.lab.port is not None
        self._start("sigstop", signal="SIGSTOP", pid=b.pid)
        b.stop()
        evidence: dict[str, Any] = {}
        try:
            evidence["healthz_while_stopped"] = await probe_healthz(self.lab.port, timeout=0.5)
            yield
        finally:
            b.cont()
            evidence["healthz_after"] = await probe_healthz(self.lab.port, timeout=10.0)
            frozen = not evidence.get("healthz_while_stopped", {"ok": True})["ok"]
            self._stop("sigstop", frozen and evidence["healthz_after"]["ok"], pid=b.pid, **evidence)

    @contextlib.asynccontextmanager
    async def port_squat(self, port: int) -> AsyncIterator[socket.socket]:
        """Hold *port* with a listening socket of our own, so a broker start on it must fail.

        The squatter resets every connection it accepts, so clients reconnecting meanwhile
        fail fast instead of waiting out a WebSocket handshake nobody will answer.
        """
        s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        server: asyncio.Server | None = None
        try:
            s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # bind over TIME_WAIT leftovers
            s.bind(("127.0.0.1", port))
            s.listen(16)
            server = await asyncio.start_server(_reset_connection, sock=s)
            refused = port_bind_refused(port)
            self._start("port-squat", port=port, effective=refused, bind_refused=refused)
            try:
                yield s
            finally:
                self._stop("port-squat", refused, port=port)
        finally:
            if server is not None:
                server.close()
                await server.wait_closed()
            s.close()

    # --- bad input -------------------------------------------------------------------------------

    async def malformed_frames(
        self,
        client_id: str = "bad-client",
        frames: list[BadFrame] | None = None,
        answer_timeout: float = 5.0,
        pace: float = 0.0,
    ) -> None:
        """Send each malformed frame on one connection, recording the answer (``bad-frame`` events).

        After every frame that may not close the connection, a ``ping`` must still be
        answered with a ``pong``: the broker keeps serving the sender too.
        """
        frames = frames if frames is not None else default_bad_frames()
        h = self.history
        url = f"ws://127.0.0.1:{self.lab.port}/?client_id={client_id}"
        self._start("malformed-frames", targets=[client_id], frames=[f.case for f in frames])
        answered = 0
        try:
            async with connect(url, max_size=None, open_timeout=10) as ws:
                for n, f in enumerate(frames):
                    if pace:
                        await asyncio.sleep(pace)  # spread over the workload (pacing, not synchronisation)
                    h.append(
                        client_id, "invoke", "bad-frame", value={"case": f.case, "expect": list(f.codes)}
                    )
                    try:
                        await ws.send(f.text)
                        answer = await self._next_frame(ws, answer_timeout)
                    except (TimeoutError, ConnectionClosed) as exc:
                        h.append(client_id, "fail", "bad-frame", value={"case": f.case, "reason": repr(exc)})
                        if f.may_close or isinstance(exc, TimeoutError):
                            continue
                        return
                    code = answer.get("code") if answer.get("type") == "error" else None
                    kind = "ok" if code in f.codes else "fail"
                    answered += kind == "ok"
                    h.append(client_id, kind, "bad-frame", value={"case": f.case, "answer": answer})
                    if f.may_close:
                        continue
                    ref = f"alive-{n}"
                    h.append(client_id, "invoke", "ping", value={"ref": ref, "after": f.case})
                    try:
                        await ws.send(json.dumps({"type": "ping", "ref": ref}))
                        pong = await self._next_frame(ws, answer_timeout)
                        ok = pong.get("type") == "pong" and pong.get("ref") == ref
                    except (TimeoutError, ConnectionClosed) as exc:
                        pong, ok = {"error": repr(exc)}, False
                    h.append(client_id, "ok" if ok else "fail", "ping", value={"ref": ref, "answer": pong})
        finally:
            self._stop("malformed-frames", answered > 0, answered=answered, sent=len(frames))

    @staticmethod
    async def _next_frame(ws: Any, timeout: float) -> dict[str, Any]:
        async with asyncio.timeout(timeout):
            raw = await ws.recv()
        try:
            obj = json.loads(raw)
        except ValueError:
            return {"type": "?", "raw": str(raw)[:200]}
        return obj if isinstance(obj, dict) else {"type": "?", "raw": str(raw)[:200]}
