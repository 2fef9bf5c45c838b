"""A minimal, careful HTTP/1.1 server connection loop on asyncio streams.

Enough for every Toxiproxy client (requests, Go net/http, axios, curl): keep-alive,
Content-Length and chunked request bodies, ``Expect: 100-continue``, HTTP/1.0.
Timeouts follow Toxiproxy's server (read 15 s, idle 60 s).
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from http import HTTPStatus

MAX_HEAD = 64 * 1024
MAX_BODY = 16 * 1024 * 1024
READ_TIMEOUT = 15.0
IDLE_TIMEOUT = 60.0


@dataclass
class Request:
    method: str
    target: str
    version: str
    headers: dict[str, str]
    body: bytes = b""

    @property
    def path(self) -> str:
        return self.target.split("?", 1)[0].split("#", 1)[0]


@dataclass
class Response:
    status: int
    body: bytes = b""
    headers: dict[str, str] = field(default_factory=dict)


Handler = Callable[[Request], Awaitable[Response]]


class HttpError(Exception):
    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status


def _parse_head(head: bytes) -> tuple[str, str, str, dict[str, str]]:
    try:
        text = head.decode("latin-1")
    except UnicodeDecodeError:  # pragma: no cover - latin-1 decodes anything
        raise HttpError(400, "bad request") from None
    lines = text.split("\r\n")
    while lines and lines[0] == "":
        lines.pop(0)  # RFC 9112: ignore empty lines before the request line
    if not lines:
        raise HttpError(400, "empty request")
    parts = lines[0].split(" ")
    if len(parts) != 3 or not parts[2].startswith("HTTP/1."):
        raise HttpError(400, "malformed request line")
    method, target, version = parts
    headers: dict[str, str] = {}
    for line in lines[1:]:
        if not line:
            continue
        name, sep, value = line.partition(":")
        if not sep or not name or name != name.strip():
            raise HttpError(400, "malformed header")
        key = name.lower()
        value = value.strip()
        headers[key] = f"{headers[key]}, {value}" if key in headers else value
    return method, target, version, headers


async def _read_chunked(reader: asyncio.StreamReader) -> bytes:
    body = bytearray()
    while True:
        line = await reader.readuntil(b"\r\n")
        try:
            size = int(line.split(b";", 1)[0].strip(), 16)
        except ValueError:
            raise HttpError(400, "bad chunk size") from None
        if size == 0:
            while (await reader.readuntil(b"\r\n")) != b"\r\n":  # trailers
                pass
            return bytes(body)
        if len(body) + size > MAX_BODY:
            raise HttpError(413, "request body too large")
        body += await reader.readexactly(size)
        if await reader.readexactly(2) != b"\r\n":
            raise HttpError(400, "bad chunk terminator")


async def _read_request(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> Request:
    try:
        head = await reader.readuntil(b"\r\n\r\n")
    except asyncio.LimitOverrunError:
        raise HttpError(431, "request header fields too large") from None
    method, target, version, headers = _parse_head(head[:-4])
    if headers.get("expect", "").lower() == "100-continue" and version == "HTTP/1.1":
        writer.write(b"HTTP/1.1 100 Continue\r\n\r\n")
    if "chunked" in headers.get("transfer-encoding", "").lower():
        body = await _read_chunked(reader)
    elif "content-length" in headers:
        raw = headers["content-length"]
        if not raw.isdigit():
            raise HttpError(400, "bad content-length")
        length = int(raw)
        if length > MAX_BODY:
            raise HttpError(413, "request body too large")
        body = await reader.readexactly(length)
    else:
        body = b""
    return Request(method, target, version, headers, body)


def _keep_alive(req: Request) -> bool:
    conn = req.headers.get("connection", "").lower()
    if req.version == "HTTP/1.0":
        return "keep-alive" in conn
    return "close" not in conn


def encode_response(resp: Response, keep_alive: bool, head_only: bool = False) -> bytes:
    reason = HTTPStatus(resp.status).phrase if resp.status in HTTPStatus._value2member_map_ else ""
    lines = [f"HTTP/1.1 {resp.status} {reason}"]
    for name, value in resp.headers.items():
        lines.append(f"{name}: {value}")
    if resp.status != 204 and resp.status >= 200:
        lines.append(f"Content-Length: {len(resp.body)}")
    if not keep_alive:
        lines.append("Connection: close")
    head = ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1")
    return head if head_only or resp.status == 204 else head + resp.body


async def serve_connection(
    reader: asyncio.StreamReader, writer: asyncio.StreamWriter, handler: Handler
) -> None:
    """Answer requests on one connection until the client closes, asks to close, or idles out."""
    first = True
    try:
        while True:
            try:
                async with asyncio.timeout(READ_TIMEOUT if first else IDLE_TIMEOUT + READ_TIMEOUT):
                    req = await _read_request(reader, writer)
            except (asyncio.IncompleteReadError, ConnectionError, TimeoutError):
                return
            except HttpError as exc:
                body = f"{exc}\n".encode()
                writer.write(
                    encode_response(
                        Response(exc.status, body, {"Content-Type": "text/plain; charset=utf-8"}), False
                    )
                )
                await writer.drain()
                return
            first = False
            resp = await handler(req)
            keep = _keep_alive(req)
            writer.write(encode_response(resp, keep, head_only=req.method == "HEAD"))
            await writer.drain()
            if not keep:
                return
    except ConnectionError:
        pass
    finally:
        writer.close()
        with contextlib.suppress(Exception):
            await writer.wait_closed()
