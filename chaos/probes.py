"""Probes: small, bounded, never-raising looks at the world, the evidence that a fault landed.

A probe answers "what does a client see right now?": a fresh SQL connection
through the fault proxy, a query on a connection opened before the fault (as a
broker's pool holds them), the broker's ``/healthz``, a second bind of a port.
Each returns a dict of plain JSON values (``ok``, ``error``, ``elapsed_ms``)
for the evidence, and gives up after its timeout (a hang is an answer too).
"""

from __future__ import annotations

import asyncio
import errno
import json
import socket
import struct
import time
from typing import Any

import asyncpg

PROBE_TIMEOUT = 1.0  # a probe still blocked after this long counts as hung


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


async def connect_quietly(dsn: str) -> asyncpg.Connection | None:
    try:
        return await asyncpg.connect(dsn, timeout=5.0)
    except Exception:
        return None


async def probe_open(conn: asyncpg.Connection | None, timeout: float) -> dict[str, Any]:
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


async def reset_connection(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
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
