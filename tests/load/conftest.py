"""Fixtures of the load tests: a real reference broker per test, and a frame inbox for gevent clients.

The broker is started from its launch command on a dynamic port (the
listening line, never a sleep) and always terminated. Tests here use gevent
without monkey-patching in the pytest process (the client uses
``gevent.socket`` itself); the monkey-patched runs are real Locust
subprocesses and ``patched_client_check``.
"""

from __future__ import annotations

import sys
from collections.abc import Callable, Iterator
from typing import Any

import pytest

from chaos.launcher import BrokerUnderTest, launch

HANG = 15.0  # seconds; only fires when something hangs


def broker_command(*extra: str) -> list[str]:
    return [
        sys.executable,
        "-m",
        "broker",
        "--host",
        "127.0.0.1",
        "--port",
        "{port}",
        "--store",
        "memory",
        "--log-level",
        "warning",
        *extra,
    ]


@pytest.fixture
def start_broker() -> Iterator[Callable[..., BrokerUnderTest]]:
    """Start brokers (extra CLI args, optional fixed port for a restart); all are reaped after the test."""
    started: list[BrokerUnderTest] = []

    def start(*extra: str, port: int = 0) -> BrokerUnderTest:
        proc = launch(broker_command(*extra), port=port, store="memory")
        started.append(proc)
        return proc

    yield start
    for proc in started:
        proc.kill()


@pytest.fixture
def broker(start_broker: Callable[..., BrokerUnderTest]) -> BrokerUnderTest:
    return start_broker()


def connects_in(line: str) -> int:
    """Successful connects (requests - fails) in a ``fastport  connect`` row of Locust's console, else 0."""
    fields = line.split()
    if fields[:2] == ["fastport", "connect"] and len(fields) > 3 and fields[2].isdigit():
        return int(fields[2]) - int(fields[3].split("(")[0])
    return 0


class Inbox:
    """Frames a gevent client received, with event-driven waits (gevent Event, timeout only on hangs)."""

    def __init__(self) -> None:
        from gevent.event import Event

        self.frames: list[dict[str, Any]] = []
        self._changed = Event()

    def __call__(self, frame: dict[str, Any], size: int) -> None:
        self.frames.append(frame)
        self._changed.set()

    def of(self, kind: str, **match: Any) -> list[dict[str, Any]]:
        return [
            f for f in self.frames if f.get("type") == kind and all(f.get(k) == v for k, v in match.items())
        ]

    def wait(self, until: Callable[[], bool], what: str, timeout: float = HANG) -> None:
        import gevent

        with gevent.Timeout(timeout, TimeoutError(f"nothing after {timeout}s waiting for {what}")):
            while not until():
                self._changed.clear()
                self._changed.wait()

    def expect(self, kind: str, count: int = 1, **match: Any) -> list[dict[str, Any]]:
        self.wait(lambda: len(self.of(kind, **match)) >= count, f"{count} {kind} {match}")
        return self.of(kind, **match)
