"""FMEA 1 and FMEA 3 on the container backend: PostgreSQL, the fault proxy and the broker all containers.

Until the environment has ``--backend docker``, the wiring is here: a ``LabSession`` over a
``ContainerPostgres`` and a ``ProxyContainer``, and a ``Lab`` whose ``start_broker`` starts a
``BrokerContainer`` (the same four lines the environment will need). The scenario functions
are the suites' own, unchanged: the PostgreSQL stop fault stops the container, the crash is
``container.kill("SIGKILL")``, SIGSTOP is ``pause()``, and the restarted broker keeps its port.
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterator

import pytest

import chaos.runner
from chaos.config import LabConfig
from chaos.containers import CONTAINER_REFERENCE_BROKER_CMD, BrokerContainer, DockerBackend
from chaos.environment import Lab, LabSession
from chaos.runner import assert_all_pass, run_scenario
from chaos.suites.crash import crash_and_restart
from chaos.suites.storage import storage_faults

pytestmark = [pytest.mark.docker, pytest.mark.integration]


class ContainerLab(Lab):
    """A Lab whose broker is a container of the session's backend."""

    backend: DockerBackend

    async def start_broker(self, port: int | None = None, name: str = "broker") -> BrokerContainer:  # type: ignore[override]
        want = port if port is not None else (self.port or 0)
        b = self.backend.broker(
            self.config.broker_cmd, history=self.history, name=name, port=want, dsn=self.dsn,
            store=self.config.store, ready_timeout=self.config.ready_timeout,
        )  # fmt: skip
        self.brokers.append(b)  # type: ignore[arg-type]
        try:
            await asyncio.to_thread(b.start)
        finally:
            if b.pid is not None:
                self.session.started_pids.add(b.pid)
        self.broker = b  # type: ignore[assignment]
        self.port = b.port
        return b


@pytest.fixture(scope="module")
def docker_session(
    backend: DockerBackend, images: dict[str, str], tmp_path_factory: pytest.TempPathFactory
) -> Iterator[LabSession]:
    pg = backend.postgres().start()
    proxy = backend.fault_proxy().start()
    run_dir = tmp_path_factory.mktemp("docker-runs")
    session = LabSession(pg, proxy.url, run_dir, owned_server=proxy, keep_runs=False)
    try:
        yield session
    finally:
        backend.save_logs(run_dir / "containers")
        session.close()


@pytest.fixture
def run_on_docker(
    docker_session: LabSession, backend: DockerBackend, monkeypatch: pytest.MonkeyPatch
) -> Iterator[object]:
    ContainerLab.backend = backend
    monkeypatch.setattr(chaos.runner, "Lab", ContainerLab)
    config = LabConfig(broker_cmd=CONTAINER_REFERENCE_BROKER_CMD, store="postgres")

    def run(scenario: object) -> object:
        return run_scenario(scenario, docker_session, config)  # type: ignore[arg-type]

    yield run
    assert docker_session.leaked_processes() == []
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
