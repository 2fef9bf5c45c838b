"""Fixtures for the container backend's tests (marked ``docker``).

Without an engine they skip with the reason (a user with only Python); with ``CI=true``
they fail instead, since CI starts one (``.ci/docker-engine``). The images are resolved
once, before the first test runs (built on first use, then cached by tag: a second run
costs seconds), and the terminal summary says how each was obtained and how long it took.

``docker_client`` (session)   a checked client of the engine
``backend`` (session)         one ``DockerBackend`` for tests that only need parts of it;
                              at its end no container or volume of its session may remain
``images`` (session)          {kind: image} for postgres, toxiproxy, broker
``pg`` (session)              a running ``ContainerPostgres`` of ``backend``; shared: tests may
                              stop, kill and restart it but leave it running
"""

from __future__ import annotations

import os
import time
from collections.abc import Iterator

import docker
import pytest

from chaos.containers import (
    ENV_BROKER_IMAGE,
    ENV_PG_IMAGE,
    ENV_PROXY_IMAGE,
    ContainerError,
    DockerBackend,
    Images,
    engine_status,
)
from chaos.containers.engine import LABEL_SESSION, connect
from chaos.containers.images import BuildReport
from chaos.containers.postgres import ContainerPostgres

_SPECS = (
    ("postgres", ENV_PG_IMAGE, "auto"),
    ("toxiproxy", ENV_PROXY_IMAGE, "auto"),
    ("broker", ENV_BROKER_IMAGE, "local"),
)
_REPORTS: list[BuildReport] = []
_BUILD_ERRORS: list[str] = []
_TIMES: dict[str, float] = {}


def in_ci() -> bool:
    return os.environ.get("CI", "").strip().lower() in ("1", "true", "yes")


def pytest_collection_finish(session: pytest.Session) -> None:
    """Resolve (build) the images before any test runs, when docker tests are selected.

    A cold build takes a minute or more; done here it counts against no test's hang timeout
    (the builder bounds its own steps). A failure is reported by the ``images`` fixture.
    """
    if session.config.option.collectonly or not any(i.get_closest_marker("docker") for i in session.items):
        return
    if not engine_status()[0]:
        return  # the docker_client fixture skips (or fails, under CI) with the reason
    t0 = time.monotonic()
    client = connect()
    try:
        images = Images(client)
        for kind, variable, default in _SPECS:
            images.resolve(kind, os.environ.get(variable, "").strip() or default)
        _REPORTS.extend(images.reports)
    except ContainerError as exc:
        _BUILD_ERRORS.append(str(exc))
    finally:
        client.close()
    _TIMES["images"] = time.monotonic() - t0


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
        be.close()
    flt = {"label": f"{LABEL_SESSION}={be.session_id}"}
    left = [c.name for c in docker_client.containers.list(all=True, filters=flt)]
    left += [v.name for v in docker_client.volumes.list(filters=flt)]
    assert not left, f"the session's containers/volumes survived its close: {left}"


@pytest.fixture(scope="session")
def images(backend: DockerBackend) -> dict[str, str]:
    if _BUILD_ERRORS:
        pytest.fail(f"the images could not be built: {_BUILD_ERRORS[0]}", pytrace=False)
    return {kind: backend.image(kind) for kind, _, _ in _SPECS}


@pytest.fixture(scope="session")
def pg(backend: DockerBackend, images: dict[str, str]) -> Iterator[ContainerPostgres]:
    with backend.postgres() as server:
        yield server


def pytest_terminal_summary(terminalreporter: pytest.TerminalReporter) -> None:
    if not _REPORTS:
        return
    terminalreporter.section("docker images")
    for r in _REPORTS:
        terminalreporter.write_line(f"{r.kind:10} {r.how:8} {r.seconds:7.1f} s  {r.image}")
    terminalreporter.write_line(f"all images resolved in {_TIMES.get('images', 0.0):.1f} s")
