"""docker-compose.yml as documented: brought up by .ci/compose-lab, then the FMEA 1 and 3 suites against it.

The local override builds the images (no registry here); the project name and both ports are
the test's own, so it never meets a user's compose stack. The containers carry the labels of
this test's backend session, so its watchdog removes them if the test process is killed.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import docker
import pytest

from chaos.containers import DockerBackend
from chaos.containers.engine import LABEL_SESSION, free_port, session_labels
from tests.containers.conftest import in_ci

pytestmark = [pytest.mark.docker, pytest.mark.integration]

ROOT = Path(__file__).resolve().parents[2]
SCRIPT = ROOT / ".ci" / "compose-lab"


def _compose_available() -> bool:
    if shutil.which("docker-compose"):
        return True
    if shutil.which("docker") is None:
        return False
    return subprocess.run(["docker", "compose", "version"], capture_output=True).returncode == 0


@pytest.mark.timeout(600)  # a first local build of both images; cached it is seconds
def test_compose_file_up_and_the_suites_pass_against_it(
    docker_client: docker.DockerClient, backend: DockerBackend, images: dict[str, str], tmp_path: Path
) -> None:
    if not _compose_available():
        why = "neither `docker compose` (v2) nor docker-compose (v1) is installed"
        if in_ci():
            pytest.fail(f"CI=true but {why}", pytrace=False)
        pytest.skip(why)
    labels = session_labels(backend.session_id)
    env = {
        **os.environ,
        "PYTHON": sys.executable,
        "PYTHONPATH": str(ROOT),
        "COMPOSE_PROJECT_NAME": f"fastport-lab-test-{backend.session_id}",
        "FASTPORT_COMPOSE_PG_PORT": str(free_port()),
        "FASTPORT_COMPOSE_TOXIPROXY_PORT": str(free_port()),
        "FASTPORT_LAB_SESSION": labels[LABEL_SESSION],
        "FASTPORT_LAB_PID": labels["fastport-lab.pid"],
        "FASTPORT_LAB_PID_START": labels["fastport-lab.pid-start"],
        "FASTPORT_LAB_HOST": labels["fastport-lab.host"],
    }
    try:
        up = subprocess.run(
            ["bash", str(SCRIPT), "up", "--local"], env=env, capture_output=True, text=True, timeout=540
        )
        assert up.returncode == 0, f"compose-lab up failed:\n{up.stderr[-3000:]}"
        lab_env = dict(line.split("=", 1) for line in up.stdout.split() if "=" in line)
        assert set(lab_env) == {"FASTPORT_LAB_PG_DSN", "TOXIPROXY_URL"}
        roles = {c.labels.get("com.docker.compose.service") for c in backend.containers()}
        assert roles >= {"postgres", "toxiproxy"}  # labelled with this session: reaped if we die

        suites = subprocess.run(
            [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider",
             "scenarios/test_fmea1_storage.py", "scenarios/test_fmea3_crash.py",
             "--run-dir", str(tmp_path / "runs")],
            cwd=ROOT, env={**env, **lab_env}, capture_output=True, text=True, timeout=300,
        )  # fmt: skip
        assert suites.returncode == 0, f"the suites failed against compose:\n{suites.stdout[-4000:]}"
        assert "2 passed" in suites.stdout
    finally:
        down = subprocess.run(
            ["bash", str(SCRIPT), "down"], env=env, capture_output=True, text=True, timeout=120
        )
        assert down.returncode == 0, down.stderr[-2000:]
    project = {"label": f"com.docker.compose.project={env['COMPOSE_PROJECT_NAME']}"}
    assert docker_client.containers.list(all=True, filters=project) == []
