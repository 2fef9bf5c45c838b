"""The fault proxy (a Toxiproxy server) as a container on the host's network.

Host networking, not port publishing: the lab creates a proxy per scenario through the
API (``listen 127.0.0.1:0``) and hands its port to the broker, so those listeners appear
at run time on ports nobody can publish in advance. On the host's network they are on the
host's loopback as they are with the embedded server, the upstream (PostgreSQL's published
port on 127.0.0.1) is reachable, and nothing in the lab changes but ``TOXIPROXY_URL``.
(Linux only: Docker Desktop's "host" is its VM.)

Port: the local image (label ``fastport-lab.listening-line=json``) starts with ``-port 0``
and says in its first stdout line which port it took: no race. Other images (the official
``ghcr.io/shopify/toxiproxy``) get a port that was free a moment ago, retried on a clash.
Readiness: that line (local image), then ``GET /version`` answering 200 (every image).
"""

from __future__ import annotations

import contextlib
import json
import queue
import time
import urllib.error
import urllib.request
from typing import TYPE_CHECKING, Any

import docker.errors
from docker.models.containers import Container

from chaos.containers.engine import (
    LABEL_LISTENING_LINE,
    ContainerError,
    ContainerStartError,
    LogFollower,
    free_port,
    log_lines,
)

if TYPE_CHECKING:
    from chaos.containers.backend import DockerBackend

__all__ = ["ProxyContainer"]


class ProxyContainer:
    """A Toxiproxy-compatible server in a container; ``start()`` returns self, ``url`` is its API.

    The same surface as ``chaos.toxiproxy.ToxiproxyServer`` where the lab uses it:
    ``start()``, ``stop()``, ``url``, ``host``, ``port``, context manager.
    """

    def __init__(
        self,
        backend: DockerBackend,
        *,
        image: str | None = None,
        host: str = "127.0.0.1",
        port: int = 0,
        startup_timeout: float = 30.0,
        name: str = "toxiproxy",
    ) -> None:
        self.backend = backend
        self.image_spec = image
        self.image: str | None = None
        self.host = host
        self.requested_port = port
        self.port: int | None = None
        self.startup_timeout = startup_timeout
        self.name = name
        self._container: Container | None = None
        self._logs: list[str] = []
        backend._register(self)

    @property
    def url(self) -> str:
        if self.port is None:
            raise RuntimeError("the fault proxy container is not started")
        return f"http://{self.host}:{self.port}"

    @property
    def container_name(self) -> str | None:
        return None if self._container is None else self._container.name

    def start(self) -> ProxyContainer:
        if self._container is not None:
            return self
        self.backend._register(self)  # again, after a stop()
        try:
            self.image = self.backend.image("toxiproxy", self.image_spec)
        except ContainerError as exc:  # not found, not pullable, build failed
            raise ContainerStartError(f"no fault proxy image: {exc}") from exc
        labels = self.backend.client.images.get(self.image).labels or {}
        reports_port = labels.get(LABEL_LISTENING_LINE) == "json"
        attempts = 1 if self.requested_port or reports_port else 5
        for attempt in range(attempts):
            port = self.requested_port or (0 if reports_port else free_port(self.host))
            try:
                self._run(port, reports_port)
                return self
            except ContainerStartError as exc:
                clash = any("address already in use" in line for line in exc.logs)
                if not clash or attempt == attempts - 1:
                    raise
        raise AssertionError("unreachable")

    def stop(self) -> None:
        """Stop and remove the container (its logs are kept for :meth:`logs`)."""
        container, self._container = self._container, None
        if container is not None:
            with contextlib.suppress(docker.errors.DockerException):
                container.stop(timeout=5)
            self._logs = log_lines(container, tail="all")
            with contextlib.suppress(docker.errors.NotFound):
                container.remove(force=True)
        self.backend._unregister(self)

    close = stop

    def logs(self) -> list[str]:
        return log_lines(self._container, tail="all") if self._container is not None else list(self._logs)

    def __enter__(self) -> ProxyContainer:
        try:
            return self.start()
        except BaseException:
            self.stop()
            raise

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def __repr__(self) -> str:
        where = self.url if self.port else "not started"
        return f"<ProxyContainer {where} image={self.image or self.image_spec}>"

    # --- internals ------------------------------------------------------------------------------

    def _run(self, port: int, reports_port: bool) -> None:
        assert self.image is not None
        try:
            container = self.backend.client.containers.run(
                self.image,
                # proxy metrics: the byte counters that show a fault met the broker's traffic
                command=["-host", self.host, "-port", str(port), "-proxy-metrics"],
                name=self.backend.resource_name(self.name),
                labels=self.backend.labels("toxiproxy"),
                network_mode="host",
                detach=True,
            )
        except docker.errors.ImageNotFound as exc:
            raise ContainerStartError(f"fault proxy image {self.image!r} not found: {exc}") from exc
        except docker.errors.APIError as exc:
            raise ContainerStartError(
                f"cannot start the fault proxy container ({self.image}): {exc}"
            ) from exc
        self._container = container
        try:
            self.port = self._wait_listening(container) if reports_port else port
            self._wait_version(container)
        except BaseException:
            self._logs = log_lines(container, tail="all")
            with contextlib.suppress(docker.errors.DockerException):
                container.remove(force=True)
            self._container = None
            self.port = None
            raise

    def _exited(self, container: Container, what: str) -> ContainerStartError:
        container.reload()
        code = container.attrs.get("State", {}).get("ExitCode")
        return ContainerStartError(
            f"fault proxy container {container.name} ({self.image}) exited with code {code} {what}",
            logs=log_lines(container), container=container.name,
        )  # fmt: skip

    def _wait_listening(self, container: Container) -> int:
        """The port from the server's ``{"event": "listening", ...}`` stdout line."""
        events: queue.Queue[tuple[str, Any]] = queue.Queue()

        def on_line(line: str) -> None:
            if line.lstrip().startswith("{"):
                with contextlib.suppress(ValueError):
                    event = json.loads(line)
                    if isinstance(event, dict) and event.get("event") == "listening":
                        events.put(("port", int(event["port"])))

        follower = LogFollower(
            container, stdout=True, on_line=on_line, on_end=lambda: events.put(("end", None)), name=self.name
        )
        try:
            kind, value = events.get(timeout=self.startup_timeout)
        except queue.Empty:
            raise ContainerStartError(
                f"fault proxy container {container.name} printed no listening line in "
                f"{self.startup_timeout:.0f} s",
                logs=log_lines(container), container=container.name,
            ) from None  # fmt: skip
        finally:
            follower.close()
        if kind == "port":
            return int(value)
        raise self._exited(container, "before it listened")

    def _wait_version(self, container: Container) -> None:
        """``GET /version`` answers 200: the API is up (the only readiness signal a foreign image gives)."""
        deadline = time.monotonic() + self.startup_timeout
        delay = 0.01
        while True:
            try:
                with urllib.request.urlopen(f"http://{self.host}:{self.port}/version", timeout=2) as resp:
                    if resp.status == 200:
                        return
            except (urllib.error.URLError, OSError):
                pass
            container.reload()
            if container.status != "running":
                raise self._exited(container, "during start-up")
            if time.monotonic() > deadline:
                raise ContainerStartError(
                    f"fault proxy {container.name} did not answer GET /version in "
                    f"{self.startup_timeout:.0f} s",
                    logs=log_lines(container), container=container.name,
                )  # fmt: skip
            time.sleep(delay)  # polling for readiness (the HTTP API has no event to wait on)
            delay = min(delay * 2, 0.1)
