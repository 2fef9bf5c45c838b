"""Hydration after SIGKILL: what a publisher was told ``persisted`` is in PostgreSQL (real broker, real PG).

The pattern of the two lab hydration failures of 26 Nov (schedule and FMEA 3 runs): the broker is
SIGSTOPped while publishes queue up, resumed, fans out to a subscriber that acks at once
and one that never acks, says ``persisted``, and is SIGKILLed right after. Every message
must then still be outstanding for the subscriber that never acked.
``FASTPORT_PERSIST_CRASH_ROUNDS`` runs more rounds (for stressing it under CPU load).
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal

import pytest

from broker.store_postgres import outstanding

from .harness import Client, RunningBroker, run_async

ROUNDS = int(os.environ.get("FASTPORT_PERSIST_CRASH_ROUNDS", "3"))
TOPIC = "crash.t"


async def _auto_ack(client: Client) -> None:
    while True:
        frame = await client.expect("message", timeout=3600)
        await client.ack(frame["id"])


async def _round(dsn: str, n: int, pause: bool) -> list[str]:
    ids = [f"r{n}-{i}" for i in range(3)]
    broker = await RunningBroker("--store", "postgres", "--dsn", dsn).start()
    clients: list[Client] = []
    acker: asyncio.Task[None] | None = None
    try:
        s1 = await Client.connect(broker.url("s1"))
        s2 = await Client.connect(broker.url("s2"))
        p = await Client.connect(broker.url("p"))
        clients += [s1, s2, p]
        await s1.subscribe(TOPIC)
        await s2.subscribe(TOPIC)
        acker = asyncio.create_task(_auto_ack(s1))
        if pause:
            broker.signal(signal.SIGSTOP)
        try:
            for mid in ids:
                await p.send({"type": "publish", "topic": TOPIC, "payload": {"id": mid}, "id": mid})
        finally:
            if pause:
                broker.signal(signal.SIGCONT)
        for mid in ids:
            await p.expect("persisted", id=mid)
        broker.signal(signal.SIGKILL)
        await broker.wait()
    finally:
        if acker is not None:
            acker.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await acker
        for c in clients:
            await c.close()
        await broker.kill()
    held = {(d.message_id, d.client_id) for d in await outstanding(dsn, dead=False)}
    return [mid for mid in ids if (mid, "s2") not in held]


@pytest.mark.integration
@pytest.mark.timeout(300)
@pytest.mark.parametrize("pause", [True, False], ids=["paused", "live"])
@run_async(timeout=280)
async def test_persisted_messages_survive_sigkill(pg_dsn: str, pause: bool) -> None:
    lost: dict[int, list[str]] = {}
    for n in range(ROUNDS):
        missing = await _round(pg_dsn, n, pause)
        if missing:
            lost[n] = missing
    assert not lost, f"told persisted, unacked by s2, not in the store after SIGKILL: {lost}"
