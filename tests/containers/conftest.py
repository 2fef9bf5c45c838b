"""Fixtures for the container backend's tests (marked ``docker``).

Without an engine they skip with the reason (a user with only Python); with ``CI=true``
they fail instead, since CI starts one (``.ci/docker-engine``). The images are resolved
once per session (built on first use, then cached by tag: a second run costs seconds);
the terminal summary says how each was obtained and how long it took.

``docker_client`` (session)   a checked client of the engine
``backend`` (session)         one ``DockerBackend`` for tests that only need parts of it;
                              at its end no container or volume of its session may remain
``images`` (session)          {kind: image} for postgres, toxiproxy, broker, resolved up front
``pg`` (module)               a running ``ContainerPostgres`` of ``backend`` (shared: restart-safe
                              tests only stop, kill and restart it, and leave it running)
"""

from __future__ import annotations

import os
import time
from collections.abc import Iterator

import pytest

docker = pytest.importorskip("docker", reason="the docker package is not installed (pip install docker)")

from chaos.containers import DockerBackend, engine_status  # noqa: E402
from chaos.containers.engine import LABEL_SESSION, connect  # noqa: E402
from chaos.containers.images import BuildReport  # noqa: E402
from chaos.containers.postgres import ContainerPostgres  # noqa: E402

_REPORTS: list[BuildReport] = []
_TIMES: dict[str, float] = {}


def in_ci() -> bool:
    return os.environ.get("CI", "").strip().lower() in ("1", "true", "yes")


@pytest.fixture(scope="session")
def docker_client() -> Iterator[docker.DockerClient]:
    ok, why = engine_status()
    if not ok:
        if in_ci():
            pytest.fail(f"CI=true but {why}", pytrace=False)
        pytest.skip(why)
    client = connect()
    yield client
    client.close()


@pytest.fixture(scope="session")
def backend(docker_client: docker.DockerClient) -> Iterator[DockerBackend]:
    be = DockerBackend.from_env(client=docker_client)
    try:
        yield be
    finally:
        _REPORTS.extend(be.images.reports)
        be.close()
    flt = {"label": f"{LABEL_SESSION}={be.session_id}"}
    left = [c.name for c in docker_client.containers.list(all=True, filters=flt)]
    left += [v.name for v in docker_client.volumes.list(filters=flt)]
    assert not left, f"the session's containers/volumes survived its close: {left}"


@pytest.fixture(scope="session")
def images(backend: DockerBackend) -> dict[str, str]:
    t0 = time.monotonic()
    resolved = {kind: backend.image(kind) for kind in ("postgres", "toxiproxy", "broker")}
    _TIMES["images"] = time.monotonic() - t0
    return resolved


@pytest.fixture(scope="module")
def pg(backend: DockerBackend, images: dict[str, str]) -> Iterator[ContainerPostgres]:
    server = backend.postgres()
    with server:
        yield server


def pytest_terminal_summary(terminalreporter: pytest.TerminalReporter) -> None:
    if not _REPORTS and "images" not in _TIMES:
        return
    terminalreporter.section("docker images")
    for r in _REPORTS:
        terminalreporter.write_line(f"{r.kind:10} {r.how:8} {r.seconds:7.1f} s  {r.image}")
    if "images" in _TIMES:
        terminalreporter.write_line(f"all images resolved in {_TIMES['images']:.1f} s")
