"""Clients, launcher and checkers together against real brokers: the checker must tell the fix from the flaw.

The reference broker can reproduce FMEA 3 with ``--flaw no-hydrate``; the
hydration checker has to pass on the real broker and fail on the flawed one,
from nothing but what the clients recorded.
"""

from __future__ import annotations

import asyncio

import pytest

from chaos.checkers import check_at_least_once, check_hydration, check_integrity, check_isolation
from chaos.clients import HangError, Publisher, Subscriber
from chaos.history import History
from chaos.launcher import launch
from tests.chaos.conftest import BROKER_CMD, ROOT, needs_broker, run

PG_CMD = BROKER_CMD + " --dsn {dsn}"


@needs_broker
@pytest.mark.integration
@pytest.mark.parametrize(("flaw", "expected"), [(None, "pass"), ("no-hydrate", "fail")])
def test_hydration_checker_tells_the_fix_from_the_flaw(pg_dsn, flaw, expected):
    h = History()
    cmd = PG_CMD + (f" --flaw {flaw}" if flaw else "")
    first = launch(cmd, history=h, store="postgres", dsn=pg_dsn, cwd=str(ROOT))
    port = first.port
    second = None

    async def scenario() -> None:
        nonlocal second
        s = Subscriber(first.url, "s", ["t"], history=h, ack="never", backoff=(0.02, 0.2))
        p = Publisher(first.url, "p", history=h, backoff=(0.02, 0.2))
        await s.start()
        await p.start()
        ids = [(await p.publish("t", {"n": i})).id for i in range(5)]
        await s.wait_received(ids)
        assert set((await p.wait_persisted(ids)).values()) == {"persisted"}
        h.append("nemesis", "info", "fault-start", value={"name": "kill", "pid": first.pid})
        code = await asyncio.to_thread(first.kill)
        second = await asyncio.to_thread(
            launch, cmd, history=h, store="postgres", dsn=pg_dsn, port=port, cwd=str(ROOT)
        )
        h.append("nemesis", "info", "fault-stop", value={"name": "kill", "effective": code == -9})
        await s.wait_subscribed(["t"], timeout=30)
        await p.wait_connected(timeout=30)
        # The broker answers `subscribed`, then sends the outstanding deliveries; a marker published
        # after the resubscription arrives after them, so once it is here the redeliveries are too.
        marker = await p.publish("t", "marker")
        await s.wait_received([marker.id])
        await s.close()
        await p.close()

    try:
        run(scenario)
    finally:
        first.kill()
        if second is not None:
            second.terminate()
    v = check_hydration(h)
    assert v.status == expected, v
    if expected == "fail":
        assert v.evidence["pairs_missing"] == 5 and "p-0 -> s" in v.summary
    else:
        assert v.evidence["pairs_expected"] == 5
    # both delivered everything once before the crash: only the hydration checker can see the flaw
    assert check_at_least_once(h).status == "pass" and check_integrity(h).status == "pass"


BIG = "x" * 400_000  # 40 of these overflow every buffer between the broker and a paused reader


@needs_broker
@pytest.mark.integration
@pytest.mark.parametrize(("flaw", "expected"), [(None, "pass"), ("unguarded-fanout", "fail")])
def test_isolation_checker_tells_the_fix_from_the_flaw(flaw, expected):
    h = History()
    cmd = BROKER_CMD + (f" --flaw {flaw}" if flaw else "")

    async def burst(p: Publisher, subs: list[Subscriber], *, hang_after: float | None = None) -> list:
        tasks = [asyncio.create_task(p.publish("t", BIG, timeout=120)) for _ in range(40)]
        ids = [f"p-{p.seq + i}" for i in range(40)]
        try:
            for s in subs:
                await s.wait_received(ids, timeout=hang_after or 60)
        except HangError:
            if hang_after is None:
                raise  # only the flawed broker may stall the healthy subscribers
        return tasks

    with launch(cmd, history=h, cwd=str(ROOT)) as broker:

        async def scenario() -> None:
            slow = Subscriber(
                broker.url, "slow", ["t"], history=h
            )  # first: the flawed loop sends to it first
            healthy = [Subscriber(broker.url, f"h{i}", ["t"], history=h) for i in (1, 2)]
            p = Publisher(broker.url, "p", history=h)
            for c in (slow, *healthy, p):
                await c.start()
            await asyncio.gather(*await burst(p, [slow, *healthy]))  # baseline under the same load
            # The window a subscriber-slow fault records (chaos.faults.subscriber), by hand here.
            h.append("nemesis", "info", "fault-start", value={"name": "subscriber-slow", "targets": ["slow"]})
            slow.pause_reading()
            tasks = await burst(p, healthy, hang_after=4.0)
            slow.resume_reading()
            h.append("nemesis", "info", "fault-stop", value={"name": "subscriber-slow", "effective": True})
            await asyncio.gather(*tasks)
            for c in (slow, *healthy, p):
                await c.close()

        run(scenario, timeout=120)
    v = check_isolation(h, factor=3.0, slack=0.5)
    assert v.status == expected, v
