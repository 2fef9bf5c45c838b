"""The lab's async Toxiproxy client: same calls against the embedded server and a real one.

It speaks plain HTTP/1.0 over asyncio streams (one short connection per call, so
no pooling state and no chunked responses from Go), and only uses the standard
Toxiproxy API, so ``TOXIPROXY_URL`` can point it at a real ``toxiproxy-server``::

    async with lab_toxiproxy() as tp:              # TOXIPROXY_URL, else embedded
        proxy = await tp.create("pg", upstream="127.0.0.1:5432")
        await proxy.add_toxic("latency", attributes={"latency": 200})
        async with proxy.down():
            ...                                       # connections refused / closed
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import quote, urlsplit

DEFAULT_TIMEOUT = 30.0


class ToxiproxyError(Exception):
    """A non-2xx answer: ``status`` and the server's ``error`` message."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(f"HTTP {status}: {message}")
        self.status = status
        self.message = message


class NotFound(ToxiproxyError):
    pass


class Conflict(ToxiproxyError):
    pass


def _raise_for(status: int, body: bytes) -> None:
    if 200 <= status < 300:
        return
    try:
        message = json.loads(body)["error"]
    except (ValueError, KeyError, TypeError):
        message = body.decode("utf-8", "replace").strip()
    cls = {404: NotFound, 409: Conflict}.get(status, ToxiproxyError)
    raise cls(status, message)


class FaultProxy:
    """A connection to a Toxiproxy API (``http://host:port``)."""

    def __init__(self, url: str, timeout: float = DEFAULT_TIMEOUT) -> None:
        parts = urlsplit(url if "://" in url else f"http://{url}")
        if parts.scheme != "http" or not parts.hostname:
            raise ValueError(f"unsupported Toxiproxy URL {url!r} (expected http://host:port)")
        self.url = url.rstrip("/")
        self.host = parts.hostname
        self.port = parts.port or 8474
        self.timeout = timeout

    @classmethod
    @contextlib.asynccontextmanager
    async def connect(cls, url: str, timeout: float = DEFAULT_TIMEOUT) -> AsyncIterator[FaultProxy]:
        """``async with FaultProxy.connect(url) as tp``: checks the server answers ``/version``."""
        client = cls(url, timeout)
        await client.version()
        yield client

    async def request(self, method: str, path: str, body: Any = None) -> tuple[int, Any]:
        """One HTTP call; returns (status, decoded JSON or None); raises ToxiproxyError on non-2xx."""
        payload = b"" if body is None else json.dumps(body).encode()
        host = f"[{self.host}]" if ":" in self.host else self.host
        head = (
            f"{method} {path} HTTP/1.0\r\nHost: {host}:{self.port}\r\nUser-Agent: fastport-lab\r\n"
            f"Accept: application/json\r\nContent-Type: application/json\r\n"
            f"Content-Length: {len(payload)}\r\n\r\n"
        )
        async with asyncio.timeout(self.timeout):
            reader, writer = await asyncio.open_connection(self.host, self.port)
            try:
                writer.write(head.encode() + payload)
                raw = await reader.read()
            finally:
                writer.close()
                with contextlib.suppress(OSError):
                    await writer.wait_closed()
        status, resp_body = _parse_response(raw)
        _raise_for(status, resp_body)
        if not resp_body.strip():
            return status, None
        try:
            return status, json.loads(resp_body)
        except ValueError:
            return status, resp_body.decode("utf-8", "replace")

    # --- server-wide -----------------------------------------------------------------------------

    async def version(self) -> str:
        _, body = await self.request("GET", "/version")
        return body["version"] if isinstance(body, dict) else str(body).strip()

    async def proxies(self) -> dict[str, Proxy]:
        _, body = await self.request("GET", "/proxies")
        return {name: Proxy.from_json(self, value) for name, value in body.items()}

    async def get(self, name: str) -> Proxy:
        _, body = await self.request("GET", f"/proxies/{quote(name, safe='')}")
        return Proxy.from_json(self, body)

    async def create(
        self, name: str, upstream: str, listen: str = "127.0.0.1:0", enabled: bool = True
    ) -> Proxy:
        body = {"name": name, "upstream": upstream, "listen": listen, "enabled": enabled}
        _, resp = await self.request("POST", "/proxies", body)
        return Proxy.from_json(self, resp)

    async def populate(self, proxies: list[dict[str, Any]]) -> list[Proxy]:
        _, body = await self.request("POST", "/populate", proxies)
        return [Proxy.from_json(self, p) for p in (body or {}).get("proxies") or []]

    async def reset(self) -> None:
        await self.request("POST", "/reset")

    async def link_bytes(self) -> dict[tuple[str, str], int] | None:
        """Bytes each proxy received per direction, ``{(proxy, "upstream"|"downstream"): n}``, from
        ``/metrics`` (a server started with ``--proxy-metrics``, as the lab's is); None without it."""
        try:
            status, body = await self.request("GET", "/metrics")
        except (NotFound, ToxiproxyError, OSError):
            return None
        if status != 200 or not isinstance(body, str):
            return None
        return parse_link_bytes(body)

    async def delete_all(self) -> None:
        for proxy in (await self.proxies()).values():
            with contextlib.suppress(NotFound):
                await proxy.delete()


@dataclass
class Proxy:
    """A proxy's last known state; methods act on the server and refresh it."""

    api: FaultProxy
    name: str
    listen: str
    upstream: str
    enabled: bool
    toxics: list[dict[str, Any]] = field(default_factory=list)

    @classmethod
    def from_json(cls, api: FaultProxy, body: dict[str, Any]) -> Proxy:
        toxics = body.get("toxics") or []
        return cls(api, body["name"], body["listen"], body["upstream"], body["enabled"], toxics)

    def _update(self, body: dict[str, Any]) -> Proxy:
        self.listen, self.upstream, self.enabled = body["listen"], body["upstream"], body["enabled"]
        self.toxics = body.get("toxics") or []
        return self

    @property
    def path(self) -> str:
        return f"/proxies/{quote(self.name, safe='')}"

    @property
    def host(self) -> str:
        host = self.listen.rsplit(":", 1)[0].strip("[]")
        return {"::": "127.0.0.1", "0.0.0.0": "127.0.0.1", "": "127.0.0.1"}.get(host, host)

    @property
    def port(self) -> int:
        return int(self.listen.rsplit(":", 1)[1])

    async def refresh(self) -> Proxy:
        _, body = await self.api.request("GET", self.path)
        return self._update(body)

    async def update(self, **fields: Any) -> Proxy:
        """Change ``listen``/``upstream``/``enabled`` (POST, which every server version accepts)."""
        _, body = await self.api.request("POST", self.path, fields)
        return self._update(body)

    async def disable(self) -> Proxy:
        return await self.update(enabled=False)

    async def enable(self) -> Proxy:
        return await self.update(enabled=True)

    @contextlib.asynccontextmanager
    async def down(self) -> AsyncIterator[Proxy]:
        """Disabled inside the block: listener closed, open connections closed."""
        await self.disable()
        try:
            yield self
        finally:
            await self.enable()

    async def delete(self) -> None:
        await self.api.request("DELETE", self.path)

    async def list_toxics(self) -> list[dict[str, Any]]:
        _, body = await self.api.request("GET", f"{self.path}/toxics")
        return body

    async def add_toxic(
        self,
        type: str,
        *,
        attributes: dict[str, int] | None = None,
        stream: str = "downstream",
        toxicity: float = 1.0,
        name: str | None = None,
    ) -> dict[str, Any]:
        body = {
            "name": name or f"{type}_{stream}",
            "type": type,
            "stream": stream,
            "toxicity": toxicity,
            "attributes": attributes or {},
        }
        _, resp = await self.api.request("POST", f"{self.path}/toxics", body)
        return resp

    async def update_toxic(
        self, name: str, *, attributes: dict[str, int] | None = None, toxicity: float | None = None
    ) -> dict[str, Any]:
        body: dict[str, Any] = {"attributes": attributes or {}}
        if toxicity is not None:
            body["toxicity"] = toxicity
        _, resp = await self.api.request("POST", f"{self.path}/toxics/{quote(name, safe='')}", body)
        return resp

    async def remove_toxic(self, name: str) -> None:
        await self.api.request("DELETE", f"{self.path}/toxics/{quote(name, safe='')}")

    @contextlib.asynccontextmanager
    async def toxic(self, type: str, **kwargs: Any) -> AsyncIterator[dict[str, Any]]:
        """The toxic is active inside the block and removed after it (even on error)."""
        toxic = await self.add_toxic(type, **kwargs)
        try:
            yield toxic
        finally:
            with contextlib.suppress(NotFound):
                await self.remove_toxic(toxic["name"])


_METRIC = "toxiproxy_proxy_received_bytes_total"


def parse_link_bytes(text: str) -> dict[tuple[str, str], int]:
    """``toxiproxy_proxy_received_bytes_total{direction=..,proxy=..}`` lines summed per (proxy, direction)."""
    out: dict[tuple[str, str], int] = {}
    for line in text.splitlines():
        if not line.startswith(_METRIC + "{"):
            continue
        labels, _, value = line[len(_METRIC) + 1 :].rpartition("} ")
        fields = dict(
            part.split("=", 1) for part in labels.split(",") if "=" in part
        )
        proxy = fields.get("proxy", '""').strip('"')
        direction = fields.get("direction", '""').strip('"')
        try:
            n = int(float(value))
        except ValueError:
            continue
        out[(proxy, direction)] = out.get((proxy, direction), 0) + n
    return out


def _parse_response(raw: bytes) -> tuple[int, bytes]:
    head, sep, body = raw.partition(b"\r\n\r\n")
    if not sep:
        raise ToxiproxyError(0, f"malformed HTTP response ({len(raw)} bytes)")
    lines = head.decode("latin-1").split("\r\n")
    try:
        status = int(lines[0].split(" ", 2)[1])
    except (IndexError, ValueError):
        raise ToxiproxyError(0, f"malformed status line {lines[0]!r}") from None
    headers = {k.strip().lower(): v.strip() for k, _, v in (ln.partition(":") for ln in lines[1:])}
    if "chunked" in headers.get("transfer-encoding", "").lower():
        body = _dechunk(body)
    elif headers.get("content-length", "").isdigit():
        body = body[: int(headers["content-length"])]
    return status, body


def _dechunk(data: bytes) -> bytes:
    out = bytearray()
    while data:
        line, _, data = data.partition(b"\r\n")
        size = int(line.split(b";")[0] or b"0", 16)
        if size == 0:
            break
        out += data[:size]
        data = data[size + 2 :]
    return bytes(out)


@contextlib.asynccontextmanager
async def lab_toxiproxy(url: str | None = None) -> AsyncIterator[FaultProxy]:
    """A Toxiproxy for the lab: ``url`` or ``$TOXIPROXY_URL`` if set, else an embedded server.

    The embedded server runs in its own thread, so a stalled test loop never stalls the proxy.
    """
    url = url or os.environ.get("TOXIPROXY_URL")
    if url:
        async with FaultProxy.connect(url) as tp:
            yield tp
        return
    from chaos.toxiproxy.server import ToxiproxyServer

    server = await asyncio.to_thread(ToxiproxyServer().start)
    try:
        async with FaultProxy.connect(server.url) as tp:
            yield tp
    finally:
        await asyncio.to_thread(server.stop)
