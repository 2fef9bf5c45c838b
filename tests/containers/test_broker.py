"""The broker under test as a container: readiness, SIGKILL, pause, restart on the same address."""

from __future__ import annotations

import asyncio
import urllib.error
import urllib.request

import pytest

from chaos.clients import Publisher, Subscriber
from chaos.containers import BrokerContainer, BrokerContainerError, DockerBackend
from chaos.history import History
from chaos.launcher import LaunchError

pytestmark = [pytest.mark.docker, pytest.mark.integration]
NO_DSN = "postgresql://unused@127.0.0.1:1/none"  # the reference command wants one; --store memory ignores it


def healthz(b: BrokerContainer, timeout: float) -> bool:
    try:
        with urllib.request.urlopen(b.healthz_url, timeout=timeout) as resp:
            return resp.status == 200
    except (urllib.error.URLError, OSError):
        return False


def events(history: History, f: str) -> list[dict]:
    return [e.value for e in history.events if e.f == f]


def test_kill_pause_restart_on_the_same_address(backend: DockerBackend, images: dict[str, str]) -> None:
    history = History()
    b = backend.broker(history=history, port=0, store="memory", dsn=NO_DSN).start()
    assert b.alive and b.port and b.pid and healthz(b, 5.0)
    port = b.port

    b.stop()  # SIGSTOP = pause: the socket accepts, nobody answers
    assert not healthz(b, 0.5)
    b.cont()
    assert healthz(b, 10.0)

    async def clients() -> None:
        sub = Subscriber(b.url, "s1", ["t"], history=history, backoff=(0.02, 0.2))
        pub = Publisher(b.url, "p1", history=history, backoff=(0.02, 0.2))
        await sub.start()
        await pub.start()
        assert await asyncio.to_thread(b.kill) == -9  # like a SIGKILLed process
        again = await asyncio.to_thread(
            backend.broker(history=history, port=port, store="memory", dsn=NO_DSN).start
        )
        assert again.port == port
        await sub.wait_subscribed(["t"], timeout=30)  # the clients reconnected to the same address
        await pub.wait_connected(timeout=30)
        m = await pub.publish("t", "after the restart")
        await sub.wait_received([m.id], timeout=10)
        await sub.close()
        await pub.close()
        assert await asyncio.to_thread(again.terminate) == 0

    asyncio.run(asyncio.wait_for(clients(), 90))
    assert not b.alive and b.returncode == -9
    signals = [e["signal"] for e in events(history, "signal")]
    assert signals == ["SIGSTOP", "SIGCONT", "SIGKILL", "SIGTERM"]
    assert [e["exit_code"] for e in events(history, "exit")] == [-9, 0]
    assert not [c for c in backend.containers() if c.labels.get("fastport-lab.role") == "broker"]


def test_a_broker_that_exits_shows_its_stderr(backend: DockerBackend, images: dict[str, str]) -> None:
    history = History()
    cmd = ["python3", "-c", "import sys; print('no such store', file=sys.stderr); sys.exit(3)", "{port}"]
    with pytest.raises(BrokerContainerError) as err:
        backend.broker(cmd, history=history).start()
    assert isinstance(err.value, LaunchError) and err.value.result.reason == "exited"
    assert err.value.result.exit_code == 3 and "no such store" in str(err.value)
    assert err.value.container and err.value.container in str(err.value)
    assert [e.type for e in history.events if e.f == "launch"] == ["invoke", "fail"]


def test_a_broker_that_never_listens_is_a_hang(backend: DockerBackend, images: dict[str, str]) -> None:
    with pytest.raises(BrokerContainerError) as err:
        backend.broker(["sleep", "60", "{port}"], ready_timeout=1.0).start()
    assert err.value.result.reason == "hang"


def test_a_bad_image_or_command_says_what(backend: DockerBackend, images: dict[str, str]) -> None:
    with pytest.raises(BrokerContainerError) as err:
        backend.broker(image="fastport-lab/no-such-broker:0", dsn=NO_DSN).start()
    assert err.value.result.reason == "not-found" and "fastport-lab/no-such-broker:0" in str(err.value)
    with pytest.raises(BrokerContainerError) as err:
        backend.broker(["/no/such/broker", "{port}"], init=False).start()
    assert err.value.result.reason == "not-found" and "/no/such/broker" in str(err.value)
