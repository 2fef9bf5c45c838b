"""Toxiproxy's HTTP API on asyncio, and three ways to run it: in a loop, in a thread, in a process.

``ToxiproxyApp`` serves the API inside the caller's event loop.  ``ToxiproxyServer``
runs one in its own thread and loop, so blocking clients (toxiproxy-python uses
``requests``) never stall the proxies.  ``ToxiproxyProcess`` runs
``python -m chaos.toxiproxy.cli`` and reads the JSON line it prints when listening.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import json
import logging
import os
import random
import re
import sys
import threading
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any
from urllib.parse import unquote

from chaos.supervisor import Child
from chaos.toxiproxy import api_model as m
from chaos.toxiproxy.collection import ProxyCollection
from chaos.toxiproxy.http11 import MAX_HEAD, Request, Response, serve_connection
from chaos.toxiproxy.proxy import ProxyError, bind_socket, resolve_listen, shown_target

log = logging.getLogger(__name__)

HANDLER_TIMEOUT = 25.0
_JSON = {"Content-Type": "application/json"}
_TEXT = {"Content-Type": "text/plain; charset=utf-8"}

Params = tuple[str, ...]
Endpoint = Callable[["ToxiproxyApp", Request, Params], Awaitable[Response]]


def _json(status: int, value: Any) -> Response:
    return Response(status, json.dumps(value, separators=(",", ":")).encode(), dict(_JSON))


def _error(exc: m.ApiError) -> Response:
    body = json.dumps({"error": exc.message, "status": exc.status}, separators=(",", ":")) + "\n"
    return Response(exc.status, body.encode(), {**_TEXT, "X-Content-Type-Options": "nosniff"})


def _request_id() -> str:
    return base64.b32hexencode(os.urandom(12)).decode().lower().rstrip("=")


class ConfigError(Exception):
    """The ``--config`` file could not be read or applied."""


def load_config(path: str | Path) -> list[m.ProxySpec]:
    """A config file is a populate body (a JSON array of proxies, toxics allowed)."""
    try:
        body = Path(path).read_bytes()
    except OSError as exc:
        raise ConfigError(f"cannot read config {path}: {exc.strerror or exc}") from None
    try:
        specs = m.parse_populate(m.decode_body(body))
        for index, spec in enumerate(specs, start=1):
            m.require_proxy_fields(spec, f" at proxy {index}")
    except m.ApiError as exc:
        raise ConfigError(f"invalid config {path}: {exc.message}") from None
    return specs


class ToxiproxyApp:
    """The API server plus its proxies, living in the running event loop."""

    def __init__(
        self,
        host: str = "127.0.0.1",
        port: int = 8474,
        *,
        seed: int | None = None,
        proxy_metrics: bool = False,
        runtime_metrics: bool = False,
    ) -> None:
        self.requested = (host, port)
        self.collection = ProxyCollection(random.Random(seed))
        self.metrics = proxy_metrics or runtime_metrics
        self.runtime_metrics = runtime_metrics
        self.host = host
        self.port = port
        self._server: asyncio.base_events.Server | None = None
        self._clients: set[asyncio.Task[None]] = set()
        self._started = time.time()

    @property
    def url(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"http://{host}:{self.port}"

    async def start(self, config: list[m.ProxySpec] | None = None) -> None:
        """Listen, then populate from ``config`` (raises ConfigError if that fails)."""
        host, port = self.requested
        try:
            target = await resolve_listen(m_join(host, port))
            sock = bind_socket(target, shown_target(target))
        except ProxyError as exc:
            raise OSError(exc.message) from None
        self.host, self.port = sock.getsockname()[:2]
        if self.host == "::":
            self.host = "::1"
        elif self.host == "0.0.0.0":
            self.host = "127.0.0.1"
        self._server = await asyncio.start_server(self._on_client, sock=sock, limit=MAX_HEAD)
        if config:
            _, error = await self.collection.populate(config)
            if error is not None:
                await self.close()
                raise ConfigError(f"config: {error.message}")

    async def close(self) -> None:
        if self._server is not None:
            self._server.close()
            self._server = None
        for task in list(self._clients):
            task.cancel()
        if self._clients:
            await asyncio.wait(list(self._clients), timeout=5)
        self.collection.close_all()
        for _ in range(3):  # let aborted transports run connection_lost and close their sockets
            await asyncio.sleep(0)

    async def _on_client(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        self._clients.add(task)
        try:
            await serve_connection(reader, writer, self.handle)
        except asyncio.CancelledError:
            pass  # we cancel idle keep-alive connections on close; nothing to report
        finally:
            self._clients.discard(task)

    # --- routing ---------------------------------------------------------------------------------

    async def handle(self, req: Request) -> Response:
        path = unquote(req.path)
        for pattern, methods in ROUTES:
            match = pattern.fullmatch(path)
            if match is None:
                continue
            if pattern is _METRICS and not self.metrics:
                break
            endpoint = methods.get(req.method) or methods.get("*")
            if endpoint is None:
                return Response(405)  # gorilla/mux: known path, wrong method, no middleware, no body
            resp = await self._routed(endpoint, req, match.groups())
            resp.headers["X-Toxiproxy-Request-Id"] = _request_id()
            return resp
        return Response(404, b"404 page not found\n", dict(_TEXT))

    async def _routed(self, endpoint: Endpoint, req: Request, params: Params) -> Response:
        if req.headers.get("user-agent", "").startswith("Mozilla/"):
            return Response(403, b"User agent not allowed\n", dict(_TEXT))
        try:
            async with asyncio.timeout(HANDLER_TIMEOUT):
                return await endpoint(self, req, params)
        except m.ApiError as exc:
            return _error(exc)
        except TimeoutError:
            return Response(503)
        except Exception as exc:  # never crash the server on a request
            log.exception("unexpected error handling %s %s", req.method, req.path)
            return _error(m.ApiError(500, str(exc) or type(exc).__name__))

    # --- endpoints -------------------------------------------------------------------------------

    async def proxies_list(self, req: Request, p: Params) -> Response:
        return _json(200, self.collection.list())

    async def proxies_create(self, req: Request, p: Params) -> Response:
        spec = m.parse_proxy_create(m.decode_body(req.body))
        return _json(201, await self.collection.create(spec))

    async def populate(self, req: Request, p: Params) -> Response:
        try:
            specs = m.parse_populate(m.decode_body(req.body))
            done, error = await self.collection.populate(specs)
        except m.ApiError as exc:
            done, error = None, exc
        if error is not None:
            body = {"error": error.message, "status": error.status, "proxies": done}
            return Response(error.status, (json.dumps(body) + "\n").encode(), dict(_JSON))
        return _json(201, {"proxies": done})

    async def proxy_get(self, req: Request, p: Params) -> Response:
        return _json(200, self.collection.get(p[0]))

    async def proxy_update(self, req: Request, p: Params) -> Response:
        self.collection.get(p[0])  # 404 before 400, as Go looks the proxy up first
        upd = m.parse_proxy_update(m.decode_body(req.body))
        return _json(200, await self.collection.update(p[0], upd))

    async def proxy_delete(self, req: Request, p: Params) -> Response:
        self.collection.delete(p[0])
        return Response(204)

    async def toxics_list(self, req: Request, p: Params) -> Response:
        return _json(200, self.collection.list_toxics(p[0]))

    async def toxic_create(self, req: Request, p: Params) -> Response:
        self.collection.get(p[0])
        return _json(200, self.collection.add_toxic(p[0], m.decode_body(req.body)))

    async def toxic_get(self, req: Request, p: Params) -> Response:
        return _json(200, self.collection.get_toxic(p[0], p[1]))

    async def toxic_update(self, req: Request, p: Params) -> Response:
        self.collection.get_toxic(p[0], p[1])
        return _json(200, self.collection.update_toxic(p[0], p[1], m.decode_body(req.body)))

    async def toxic_delete(self, req: Request, p: Params) -> Response:
        self.collection.delete_toxic(p[0], p[1])
        return Response(204)

    async def reset(self, req: Request, p: Params) -> Response:
        await self.collection.reset()
        return Response(204)

    async def version(self, req: Request, p: Params) -> Response:
        body = json.dumps({"version": m.VERSION}) + "\n"
        return Response(200, body.encode(), {"Content-Type": "application/json;charset=utf-8"})

    async def metrics_text(self, req: Request, p: Params) -> Response:
        text = self.collection.metrics_text()
        if self.runtime_metrics:
            text += (
                "# HELP process_start_time_seconds Start time of the process since unix epoch.\n"
                "# TYPE process_start_time_seconds gauge\n"
                f"process_start_time_seconds {self._started}\n"
                "# HELP python_info Python platform information.\n# TYPE python_info gauge\n"
                f'python_info{{version="{sys.version.split()[0]}"}} 1\n'
            )
        return Response(200, text.encode(), {"Content-Type": "text/plain; version=0.0.4; charset=utf-8"})


def m_join(host: str, port: int) -> str:
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


_METRICS = re.compile(r"/metrics")
_A = ToxiproxyApp
ROUTES: list[tuple[re.Pattern[str], dict[str, Endpoint]]] = [
    (re.compile(r"/proxies"), {"GET": _A.proxies_list, "POST": _A.proxies_create}),
    (re.compile(r"/populate"), {"POST": _A.populate}),
    (
        re.compile(r"/proxies/([^/]+)"),
        {"GET": _A.proxy_get, "POST": _A.proxy_update, "PATCH": _A.proxy_update, "DELETE": _A.proxy_delete},
    ),
    (re.compile(r"/proxies/([^/]+)/toxics"), {"GET": _A.toxics_list, "POST": _A.toxic_create}),
    (
        re.compile(r"/proxies/([^/]+)/toxics/([^/]+)"),
        {"GET": _A.toxic_get, "POST": _A.toxic_update, "PATCH": _A.toxic_update, "DELETE": _A.toxic_delete},
    ),
    (re.compile(r"/reset"), {"POST": _A.reset}),
    (re.compile(r"/version"), {"GET": _A.version}),
    (_METRICS, {"*": _A.metrics_text}),
]


# ---------------------------------------------------------------------------- in a thread


class ToxiproxyServer:
    """The server in its own thread and event loop; a context manager.

    >>> with ToxiproxyServer() as tp:  # doctest: +SKIP
    ...     requests.post(f"{tp.url}/proxies", json={...})
    """

    def __init__(
        self,
        host: str = "127.0.0.1",
        port: int = 0,
        *,
        config: str | Path | list[m.ProxySpec] | None = None,
        seed: int | None = None,
        proxy_metrics: bool = False,
        runtime_metrics: bool = False,
    ) -> None:
        self.app = ToxiproxyApp(
            host, port, seed=seed, proxy_metrics=proxy_metrics, runtime_metrics=runtime_metrics
        )
        self._config = load_config(config) if isinstance(config, str | Path) else config
        self._thread: threading.Thread | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._stop: asyncio.Event | None = None
        self._ready = threading.Event()
        self._error: BaseException | None = None

    @property
    def host(self) -> str:
        return self.app.host

    @property
    def port(self) -> int:
        return self.app.port

    @property
    def url(self) -> str:
        return self.app.url

    def start(self, timeout: float = 30.0) -> ToxiproxyServer:
        if self._thread is not None:
            raise RuntimeError("already started")
        self._thread = threading.Thread(target=self._run, name="toxiproxy", daemon=True)
        self._thread.start()
        if not self._ready.wait(timeout):
            raise TimeoutError("toxiproxy server did not start")
        if self._error is not None:
            self._thread.join(5)
            raise self._error
        return self

    def _run(self) -> None:
        loop = self._loop = asyncio.new_event_loop()
        try:
            loop.run_until_complete(self._main())
        except BaseException as exc:  # reported to start()
            self._error = exc
        finally:
            self._ready.set()
            with contextlib.suppress(Exception):
                loop.run_until_complete(loop.shutdown_asyncgens())
            loop.close()

    async def _main(self) -> None:
        self._stop = asyncio.Event()
        await self.app.start(self._config)
        self._ready.set()
        try:
            await self._stop.wait()
        finally:
            await self.app.close()

    def call(self, fn: Callable[[], Any], timeout: float = 10.0) -> Any:
        """Run ``fn`` on the server's loop (e.g. to inspect state) and return its result."""
        assert self._loop is not None

        async def run() -> Any:
            return fn()

        return asyncio.run_coroutine_threadsafe(run(), self._loop).result(timeout)

    def stop(self, timeout: float = 10.0) -> None:
        thread, self._thread = self._thread, None
        if thread is None:
            return
        if self._loop is not None and self._stop is not None and not self._loop.is_closed():
            with contextlib.suppress(RuntimeError):
                self._loop.call_soon_threadsafe(self._stop.set)
        thread.join(timeout)

    def __enter__(self) -> ToxiproxyServer:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()


# ---------------------------------------------------------------------------- in a process


def json_line(line: str) -> dict[str, Any] | None:
    """A JSON object printed on one line (the CLI's ``listening`` line), or None."""
    if not line.lstrip().startswith("{"):
        return None
    try:
        obj = json.loads(line)
    except ValueError:
        return None
    return obj if isinstance(obj, dict) and "port" in obj else None


class ToxiproxyProcess:
    """``fastport-lab toxiproxy`` in a child process (a :class:`chaos.supervisor.Child`); ``.url`` once it
    listens. It dies with the lab however the lab ends."""

    def __init__(self, host: str = "127.0.0.1", port: int = 0, *, args: list[str] | None = None) -> None:
        self.cmd = [sys.executable, "-m", "chaos.toxiproxy.cli", "--host", host, "--port", str(port)]
        self.cmd += args or []
        self.child: Child | None = None
        self.host = host
        self.port = port
        self.info: dict[str, Any] = {}

    @property
    def url(self) -> str:
        return self.info["url"]

    def start(self, timeout: float = 30.0) -> ToxiproxyProcess:
        self.child = Child(self.cmd, name="toxiproxy", ready=json_line, ready_timeout=timeout).start()
        self.info = self.child.ready
        self.host, self.port = self.info["host"], self.info["port"]
        return self

    def stop(self, timeout: float = 10.0) -> int | None:
        child, self.child = self.child, None
        return None if child is None else child.terminate(timeout)

    def __enter__(self) -> ToxiproxyProcess:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()
