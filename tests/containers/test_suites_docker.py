"""FMEA 1 and FMEA 3 on the container backend: PostgreSQL, the fault proxy and the broker all containers.

The lab's own ``--backend docker --broker-image local`` (``LabSession.open(backend="docker")``
and ``LabConfig(broker_image=...)``). The scenario functions are the suites' own, unchanged: the
PostgreSQL stop fault stops the container, the crash is ``container.kill("SIGKILL")``, SIGSTOP is
``pause()``, and the restarted broker keeps its port.
"""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from chaos.config import LabConfig
from chaos.containers import CONTAINER_REFERENCE_BROKER_CMD
from chaos.environment import LabSession
from chaos.runner import assert_all_pass, run_scenario
from chaos.suites.crash import crash_and_restart
from chaos.suites.storage import storage_faults

pytestmark = [pytest.mark.docker, pytest.mark.integration]


@pytest.fixture(scope="module")
def docker_session(images: dict[str, str], tmp_path_factory: pytest.TempPathFactory) -> Iterator[LabSession]:
    run_dir = tmp_path_factory.mktemp("docker-runs")
    session = LabSession.open(run_dir, keep_runs=False, backend="docker", broker_image="local")
    try:
        yield session
    finally:
        session.close()
    assert not (run_dir / "containers").exists() or any((run_dir / "containers").iterdir())


@pytest.fixture
def run_on_docker(docker_session: LabSession) -> Iterator[object]:
    config = LabConfig.resolve(store="postgres", backend="docker", broker_image="local", env={})
    assert config.broker_cmd == CONTAINER_REFERENCE_BROKER_CMD  # the reference broker, as the image runs it

    def run(scenario: object) -> object:
        return run_scenario(scenario, docker_session, config)  # type: ignore[arg-type]

    yield run
    assert docker_session.leaked_processes() == []
    backend = docker_session.backend
    assert not [c for c in backend.containers() if c.labels.get("fastport-lab.role") == "broker"]


@pytest.mark.timeout(300)
def test_fmea1_storage_faults_on_containers(run_on_docker) -> None:  # type: ignore[no-untyped-def]
    result = run_on_docker(storage_faults)
    assert_all_pass(result)
    (stop,) = [
        e.value for e in result.history.events if e.f == "fault-stop" and e.value["name"] == "postgres-stop"
    ]
    assert stop["effective"] and stop["restarted"]  # PostgreSQL's container stopped, back on its port


@pytest.mark.timeout(300)
def test_fmea3_crash_on_containers(run_on_docker) -> None:  # type: ignore[no-untyped-def]
    result = run_on_docker(crash_and_restart)
    assert_all_pass(result)
    faults = {e.value["name"]: e.value for e in result.history.events if e.f == "fault-stop"}
    assert faults["broker-kill"]["effective"] and faults["broker-kill"]["exit_code"] == -9  # same port
    assert faults["broker-pause"]["effective"]  # pause: /healthz unanswered while frozen, answered after
