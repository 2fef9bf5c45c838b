"""Workload helpers the suites share: paced publishing, waiting for deliveries and outcomes.

Pacing at a rate is a workload shape, not synchronisation; every wait here
waits for events in the history (:func:`chaos.clients.wait_for`) and records a
hang, with what was still missing, instead of failing the scenario: the
checkers then judge what was and was not delivered.
"""

from __future__ import annotations

import asyncio
import base64
import os
from collections.abc import Callable, Iterable
from typing import Any

from chaos.clients import HangError, PublishAnswer, Publisher, Subscriber, wait_for
from chaos.environment import Lab
from chaos.history import History
from chaos.probes import probe_healthz


def incompressible(size: int) -> str:
    """*size* characters of base64 of random bytes: permessage-deflate cannot shrink it to nothing.

    A fault that needs bytes on the wire (a stalled reader's buffers filling up)
    must not depend on the broker's compression setting; random data keeps about
    three quarters of its size under deflate.
    """
    if size < 0:
        raise ValueError(f"size must be >= 0, got {size}")
    return base64.b64encode(os.urandom((size * 3 + 3) // 4)).decode()[:size]


Payload = Any | Callable[[int], Any]


async def publish_paced(
    pub: Publisher,
    topic: str,
    count: int,
    rate: float = 50.0,
    payload: Payload = None,
    timeout: float = 20.0,
) -> list[asyncio.Task[PublishAnswer]]:
    """Start *count* publishes at *rate* per second without waiting for their answers.

    Pacing at a rate is a workload shape, not synchronisation: each publish is its own
    task, so a broker that blocks on one publish does not slow the schedule of the next
    (latency is measured from each invoke). Publishes keep to a timetable (the i-th at
    ``i / rate``), so a rate of thousands a second is kept too, sleeping only when ahead.
    *payload* is a value, or a function of the message's number. Await the returned tasks
    to collect the answers.
    """
    if not rate > 0:
        raise ValueError(f"rate must be > 0 publishes per second, got {rate!r}")
    loop = asyncio.get_running_loop()
    tasks = []
    t0 = loop.time()
    since_yield = 0
    for i in range(count):
        delay = t0 + i / rate - loop.time()
        if delay > 0:
            await asyncio.sleep(delay)
            since_yield = 0
        elif since_yield >= 16:  # behind the timetable: still let the publishes already made go out
            await asyncio.sleep(0)
            since_yield = 0
        since_yield += 1
        body = payload(i) if callable(payload) else ({"n": i} if payload is None else payload)
        tasks.append(asyncio.create_task(pub.publish(topic, body, timeout=timeout)))
    return tasks


async def answers(tasks: Iterable[asyncio.Task[PublishAnswer]]) -> list[PublishAnswer]:
    return list(await asyncio.gather(*tasks))


async def settle(
    history: History, subs: Iterable[Subscriber], ids: Iterable[str], timeout: float = 8.0
) -> bool:
    """Wait until every subscriber got every id; on a hang record it (the checkers judge) and go on.

    The subscribers are awaited together, so a broker that lost messages costs one
    *timeout*, not one per subscriber. The default outlasts PROTOCOL.md's first retry (5 s).
    """
    ids = list(ids)
    subs = list(subs)
    outcomes = await asyncio.gather(
        *(s.wait_received(ids, timeout=timeout) for s in subs), return_exceptions=True
    )
    ok = True
    for s, out in zip(subs, outcomes, strict=True):
        if isinstance(out, HangError):
            ok = False
            history.append("lab", "info", "settle-timeout", value={"client": s.client_id, "reason": str(out)})
        elif isinstance(out, BaseException):
            raise out
    return ok


async def wait_outcomes(lab: Lab, pub: Publisher, ids: Iterable[str], timeout: float = 20.0) -> bool:
    """Wait for each id's ``persisted`` / ``persist_failed``; on a hang record why (with ``/healthz``)."""
    try:
        await pub.wait_persisted(ids, timeout=timeout)
        return True
    except HangError as exc:
        health = await probe_healthz(lab.port) if lab.port is not None else None
        lab.history.append("lab", "info", "persist-timeout", value={"reason": str(exc), "healthz": health})
        return False


def published_ids(results: Iterable[PublishAnswer]) -> list[str]:
    return [r.id for r in results if r.ok]


BARRIER_TOPIC = "lab.barrier"
FLUSH_TOPIC = "lab.flush"  # nobody subscribes: its `persisted` says the writes queued before it are done


async def store_barrier(lab: Lab, subs: Iterable[Subscriber], pub: Publisher, timeout: float = 30.0) -> bool:
    """Until the acks every subscriber sent reached the broker and the broker wrote what came before.

    Each subscriber's late acks are waited for, then a subscribe on the same connection is
    answered (so the broker has read the acks sent before it), then a message nobody subscribes to
    is published and its ``persisted`` waited for: a broker that writes in order (the reference
    one does) has then written the acks too. Only then is a store listing meaningful.
    """
    subs = list(subs)
    await wait_for(lab.history, lambda: all(s.acks_pending == 0 for s in subs), timeout=timeout,
                   what="the late acks to go out")  # fmt: skip
    for s in subs:
        await s.subscribe(BARRIER_TOPIC, timeout=timeout)
    flush = await pub.publish(FLUSH_TOPIC, "flush", timeout=timeout)
    return flush.ok and await wait_outcomes(lab, pub, [flush.id], timeout=timeout)
