"""No container or volume outlives the lab: normal end, SIGKILL of the lab, and stale sessions."""

from __future__ import annotations

import contextlib
import os
import select
import signal
import subprocess
import sys
import textwrap
from pathlib import Path

import docker
import pytest

from chaos.containers import DockerBackend, reap_stale
from chaos.containers.engine import LABEL_SESSION, session_labels

pytestmark = [pytest.mark.docker, pytest.mark.integration]

ROOT = Path(__file__).resolve().parents[2]


def leftovers(client: docker.DockerClient, session_id: str) -> list[str]:
    flt = {"label": f"{LABEL_SESSION}={session_id}"}
    return [c.name for c in client.containers.list(all=True, filters=flt)] + [
        v.name for v in client.volumes.list(filters=flt)
    ]


def wait_exit(pid: int, timeout: float) -> bool:
    """Whether ``pid`` (not our child) exits within ``timeout``: a pidfd becomes readable, no polling."""
    try:
        fd = os.pidfd_open(pid)
    except ProcessLookupError:
        return True
    try:
        readable, _, _ = select.select([fd], [], [], timeout)
        return bool(readable)
    finally:
        os.close(fd)


def test_close_removes_every_container_and_volume(docker_client: docker.DockerClient, images: dict) -> None:
    be = DockerBackend(client=docker_client)
    pg = be.postgres().start()
    be.fault_proxy().start()
    be.broker(port=0, store="postgres", dsn=pg.dsn()).start()
    assert len(leftovers(docker_client, be.session_id)) == 4  # postgres, its volume, proxy, broker
    reaper = be.reaper.pid
    be.close()
    assert leftovers(docker_client, be.session_id) == []
    assert reaper is not None and wait_exit(reaper, 30)


def test_sigkill_of_the_lab_leaves_nothing(docker_client: docker.DockerClient, images: dict) -> None:
    """The lab is SIGKILLed with PostgreSQL, the proxy and a broker running: its watchdog removes them."""
    script = textwrap.dedent(
        """
        import sys
        from chaos.containers import DockerBackend
        be = DockerBackend()
        pg = be.postgres().start()
        be.fault_proxy().start()
        be.broker(port=0, store="postgres", dsn=pg.dsn()).start()
        print(be.session_id, be.reaper.pid, flush=True)
        sys.stdin.read()  # until killed
        """
    )
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    lab = subprocess.Popen(
        [sys.executable, "-c", script], stdin=subprocess.PIPE, stdout=subprocess.PIPE, cwd=ROOT, env=env
    )
    try:
        assert lab.stdout is not None
        line = lab.stdout.readline().decode()
        assert line, "the lab process died before it was ready"
        session_id, reaper = line.split()
        assert len(leftovers(docker_client, session_id)) == 4
        lab.send_signal(signal.SIGKILL)
        lab.wait(30)
        assert wait_exit(int(reaper), 60), "the watchdog did not finish its sweep"
        assert leftovers(docker_client, session_id) == []
    finally:
        if lab.poll() is None:
            lab.kill()
            lab.wait()


def test_sessions_of_dead_labs_are_reaped(docker_client: docker.DockerClient, images: dict) -> None:
    """Lab and watchdog both gone (say, the machine's cgroup was killed): the next backend sweeps."""
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    labels = {**session_labels("deadbeef0001", "postgres"), "fastport-lab.pid": str(dead.pid)}
    labels["fastport-lab.pid-start"] = "1"  # not what a live process with that pid would show
    container = docker_client.containers.create(images["postgres"], command=["true"], labels=labels)
    alive = docker_client.containers.create(
        images["postgres"], command=["true"], labels=session_labels("live01")
    )
    try:
        removed = reap_stale(docker_client)
        assert container.name in removed and alive.name not in removed
        assert leftovers(docker_client, "deadbeef0001") == [] and leftovers(docker_client, "live01") != []
    finally:
        for c in (container, alive):
            with contextlib.suppress(docker.errors.NotFound):
                c.remove(force=True)
