"""One container session of the lab: the engine client, its images, its parts and their cleanup.

:class:`DockerBackend` is the factory the lab's environment plugs in::

    backend = DockerBackend.from_env()              # engine check, session id, reaper; nothing built yet
    pg = backend.postgres()                          # a chaos.postgres.PostgresServer (not started)
    proxy = backend.fault_proxy().start()            # proxy.url is the TOXIPROXY_URL of the session
    broker = backend.broker(cmd, history=..., port=..., dsn=..., store=...).start()  # a BrokerUnderTest twin
    backend.save_logs(run_dir)                       # every part's log lines into the run folder
    backend.close()                                  # removes every container and volume of the session

Every container and volume it creates carries the session's labels (see
:mod:`chaos.containers.engine`), and is removed by ``close()``, at interpreter exit, by a
finalizer, or, when the lab is killed, by the session's watchdog process.
"""

from __future__ import annotations

import os
import re
import secrets
import threading
import weakref
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any, Protocol

import docker
import docker.errors

from chaos.containers.broker import CONTAINER_REFERENCE_BROKER_CMD, BrokerContainer
from chaos.containers.engine import (
    LABEL_SESSION,
    ContainerError,
    Reaper,
    connect,
    reap_stale,
    remove_session,
    session_labels,
)
from chaos.containers.images import Images
from chaos.containers.postgres import ContainerPostgres
from chaos.containers.proxy import ProxyContainer
from chaos.history import History

__all__ = ["ENV_BROKER_IMAGE", "ENV_PG_IMAGE", "ENV_PROXY_IMAGE", "DockerBackend"]

ENV_PG_IMAGE = "FASTPORT_LAB_PG_IMAGE"
ENV_PROXY_IMAGE = "FASTPORT_LAB_PROXY_IMAGE"
ENV_BROKER_IMAGE = "FASTPORT_LAB_BROKER_IMAGE"
_NOT_FOR_CONTAINERS = ("FASTPORT_LAB_PG_BIN", "FASTPORT_LAB_PG_DIR", "FASTPORT_LAB_PG_DSN")


class _Part(Protocol):
    name: str

    def logs(self) -> list[str]: ...

    def close(self) -> None: ...


def _finalize(client: docker.DockerClient, session_id: str, reaper: Reaper) -> None:
    """Last resort at garbage collection or interpreter exit: remove whatever the session left."""
    try:
        remove_session(client, session_id)
    finally:
        reaper.close()


class DockerBackend:
    """Creates the lab's containers on one engine, all labelled with one session id."""

    def __init__(
        self,
        *,
        client: docker.DockerClient | None = None,
        session_id: str | None = None,
        pg_image: str = "auto",
        proxy_image: str = "auto",
        broker_image: str = "local",
        pg_port: int = 0,
        pg_fsync: bool = True,
        reap_stale_sessions: bool = True,
    ) -> None:
        self.client = client or connect()
        self.session_id = session_id or secrets.token_hex(6)
        if not re.fullmatch(r"[a-z0-9][a-z0-9_-]{0,40}", self.session_id):
            raise ContainerError(f"bad session id {self.session_id!r}: use [a-z0-9_-], at most 41 characters")
        self.image_specs = {"postgres": pg_image, "toxiproxy": proxy_image, "broker": broker_image}
        self.pg_port = pg_port
        self.pg_fsync = pg_fsync
        self.images = Images(self.client)
        self.stale_removed = reap_stale(self.client) if reap_stale_sessions else []
        self._parts: list[_Part] = []
        self._lock = threading.RLock()
        self._counter = 0
        self._closed = False
        self.reaper = Reaper(self.session_id)
        # Runs at garbage collection or, at the latest, at interpreter exit (weakref.finalize's atexit).
        self._finalizer = weakref.finalize(self, _finalize, self.client, self.session_id, self.reaper)

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None, **kwargs: Any) -> DockerBackend:
        """A backend configured by the environment (explicit ``kwargs`` win).

        ``FASTPORT_LAB_PG_IMAGE`` / ``FASTPORT_LAB_PROXY_IMAGE``: ``auto`` (default: the official
        image if present or pullable, else the local build), ``local``, or an image reference.
        ``FASTPORT_LAB_BROKER_IMAGE``: ``local`` (default, the reference broker) or a reference.
        ``FASTPORT_LAB_PG_PORT`` (fixed host port), ``FASTPORT_LAB_PG_FSYNC`` (on|off) as for the
        embedded server; ``FASTPORT_LAB_PG_BIN``, ``_DIR`` and ``_DSN`` do not apply (an error).
        ``DOCKER_HOST`` and friends select the engine, as for the docker CLI.
        """
        env = os.environ if env is None else env
        wrong = [k for k in _NOT_FOR_CONTAINERS if env.get(k, "").strip()]
        if wrong:
            raise ContainerError(
                f"the docker backend runs its own PostgreSQL container; unset {', '.join(wrong)} "
                "(they apply to the embedded or external server only)"
            )
        port_text = env.get("FASTPORT_LAB_PG_PORT", "0").strip() or "0"
        if not port_text.isdigit() or int(port_text) > 65535:
            raise ContainerError(f"FASTPORT_LAB_PG_PORT={port_text!r} is not a port number (0..65535)")
        fsync_text = env.get("FASTPORT_LAB_PG_FSYNC", "on").strip().lower() or "on"
        if fsync_text not in ("on", "off", "1", "0", "true", "false"):
            raise ContainerError(f"FASTPORT_LAB_PG_FSYNC={fsync_text!r}: use on or off")
        options: dict[str, Any] = {
            "pg_image": env.get(ENV_PG_IMAGE, "").strip() or "auto",
            "proxy_image": env.get(ENV_PROXY_IMAGE, "").strip() or "auto",
            "broker_image": env.get(ENV_BROKER_IMAGE, "").strip() or "local",
            "pg_port": int(port_text),
            "pg_fsync": fsync_text in ("on", "1", "true"),
        }
        options.update(kwargs)
        return cls(**options)

    # --- the parts -------------------------------------------------------------------------------

    def postgres(self, **kwargs: Any) -> ContainerPostgres:
        """A PostgreSQL container (``start()`` or ``with``); kwargs as :class:`ContainerPostgres`."""
        kwargs.setdefault("image", self.image_specs["postgres"])
        kwargs.setdefault("port", self.pg_port)
        kwargs.setdefault("fsync", self.pg_fsync)
        return ContainerPostgres(self, **kwargs)

    def fault_proxy(self, **kwargs: Any) -> ProxyContainer:
        """A Toxiproxy-compatible server container (host network); kwargs as :class:`ProxyContainer`."""
        kwargs.setdefault("image", self.image_specs["toxiproxy"])
        return ProxyContainer(self, **kwargs)

    def broker(
        self,
        command: str | Sequence[str] | None = None,
        *,
        image: str | None = None,
        history: History | None = None,
        **kwargs: Any,
    ) -> BrokerContainer:
        """A broker container (the ``BrokerUnderTest`` signature plus ``image``); not started.

        ``command`` defaults to the reference broker's command inside the local image.
        """
        return BrokerContainer(
            self,
            command or CONTAINER_REFERENCE_BROKER_CMD,
            image=image or self.image_specs["broker"],
            history=history,
            **kwargs,
        )

    def image(self, kind: str, spec: str | None = None) -> str:
        """The image reference to run for ``kind`` (building or pulling it on first use)."""
        return self.images.resolve(kind, spec or self.image_specs[kind])

    # --- session ------------------------------------------------------------------------------

    def labels(self, role: str) -> dict[str, str]:
        return session_labels(self.session_id, role)

    def resource_name(self, what: str) -> str:
        """A unique, readable container/volume name: ``fastport-lab-<session>-<what>-<n>``."""
        with self._lock:
            self._counter += 1
            n = self._counter
        return f"fastport-lab-{self.session_id}-{re.sub(r'[^a-zA-Z0-9_.-]', '-', what)}-{n}"

    def containers(self) -> list[Any]:
        """The session's containers as the engine sees them (the truth for leak checks)."""
        return self.client.containers.list(all=True, filters={"label": f"{LABEL_SESSION}={self.session_id}"})

    def save_logs(self, directory: str | Path) -> list[Path]:
        """Write each live part's log lines to ``directory/<container-name>.log``; the files written."""
        directory = Path(directory)
        directory.mkdir(parents=True, exist_ok=True)
        written = []
        with self._lock:
            parts = list(self._parts)
        for part in parts:
            if isinstance(part, BrokerContainer):
                written.append(part.save_logs(directory / f"{part.container_name or part.name}.log"))
                continue
            lines = part.logs()
            label = getattr(part, "container_name", None) or part.name
            path = directory / f"{label}.log"
            path.write_text("\n".join(lines) + ("\n" if lines else ""))
            written.append(path)
        return written

    def close(self) -> None:
        """Close every part, remove whatever else carries the session label, stop the watchdog."""
        with self._lock:
            if self._closed:
                return
            self._closed = True
            parts = list(self._parts)
        try:
            for part in reversed(parts):  # brokers first, PostgreSQL last
                try:
                    if isinstance(part, BrokerContainer):
                        part.kill()
                    else:
                        part.close()
                except Exception:  # noqa: BLE001 - the sweep below removes what is left anyway
                    pass
        finally:
            remove_session(self.client, self.session_id)
            self.reaper.close()
            self._finalizer.detach()

    def __enter__(self) -> DockerBackend:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"<DockerBackend session={self.session_id} parts={len(self._parts)}>"

    # --- registry (used by the parts) ------------------------------------------------------------

    def _register(self, part: Any) -> None:
        with self._lock:
            if self._closed:
                raise ContainerError("this DockerBackend was closed; create a new one")
            if part not in self._parts:
                self._parts.append(part)

    def _unregister(self, part: Any) -> None:
        with self._lock:
            if part in self._parts:
                self._parts.remove(part)
