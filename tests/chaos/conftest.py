"""Fixtures for the clients/launcher integration tests: the reference broker, when it exists."""

from __future__ import annotations

import asyncio
import sys
from collections.abc import Awaitable, Callable, Iterator
from pathlib import Path

import pytest

from chaos.history import History
from chaos.launcher import BrokerUnderTest, launch

ROOT = Path(__file__).resolve().parents[2]
BROKER_MAIN = ROOT / "broker" / "__main__.py"
BROKER_CMD = f"{sys.executable} -m broker --host {{host}} --port {{port}} --store {{store}}"
needs_broker = pytest.mark.skipif(
    not BROKER_MAIN.exists(), reason="reference broker not written yet (broker/__main__.py is missing)"
)


def run(coro_fn: Callable[[], Awaitable[None]], timeout: float = 60.0) -> None:
    """Run one async scenario on a fresh loop; the timeout only fires on a hang."""

    async def main() -> None:
        async with asyncio.timeout(timeout):
            await coro_fn()

    asyncio.run(main())


@pytest.fixture
def history() -> History:
    return History()


@pytest.fixture
def ref_broker(history: History) -> Iterator[BrokerUnderTest]:
    b = launch(BROKER_CMD, history=history, cwd=str(ROOT), ready_timeout=30.0)
    try:
        yield b
    finally:
        b.terminate()
