"""Each seeded bug is really there: a small reproduction through the protocol, independent of the lab.

A probe returns True when it saw the bug. Every probe must see it with its mutant
switched on and must not see it on the correct broker, so a mutant can never be a
no-op that the lab's matrix "catches" by accident, and no probe passes vacuously.
"""

from __future__ import annotations

import socket
from collections.abc import Awaitable, Callable

import pytest

from tests.foreign.harness import HANG, Foreign, Peer, Relay, drive, flush, slow_reader_stalls
from tests.foreign.mutants import MUTANTS

pytestmark = pytest.mark.integration
Probe = Callable[[str | None, str | None], Awaitable[bool]]


async def _replayed_before(peer: Peer, topic: str, pub: Peer, ids: list[str], tag: str) -> set[str]:
    """Ids among *ids* that *peer* received before a message published after its subscribe."""
    await pub.publish(topic, "sentinel", tag)
    await peer.expect("message", id=tag)
    before = peer.frames[: peer.frames.index(peer.got("message", id=tag)[0])]
    return {f["id"] for f in before if f.get("type") == "message"} & set(ids)


async def no_retry_while_connected(mutant: str | None, dsn: str | None) -> bool:
    async with Foreign("memory", None, mutant, "--retry-first", "0.3") as b:
        sub, pub = await Peer.open(b.url("s")), await Peer.open(b.url("p"))
        await sub.subscribe("t")
        await pub.publish("t", 1, "m")
        await sub.expect("message", id="m", attempt=1)
        try:
            await sub.expect("message", id="m", attempt=2, timeout=3.0)  # due within 0.3 s
        except AssertionError:
            return True
        return False


async def no_replay_on_subscribe(mutant: str | None, dsn: str | None) -> bool:
    async with Foreign("memory", None, mutant) as b:
        sub, pub = await Peer.open(b.url("s")), await Peer.open(b.url("p"))
        await sub.subscribe("t")
        await pub.publish("t", 1, "m")
        await sub.expect("message", id="m")
        await sub.close()
        sub = await Peer.open(b.url("s"))
        await sub.subscribe("t")
        return not await _replayed_before(sub, "t", pub, ["m"], "after")


async def slow_reader(mutant: str | None, dsn: str | None) -> bool:
    async with Foreign("memory", None, mutant) as b:
        return await slow_reader_stalls(b)


async def overflowing_reader(mutant: str | None, dsn: str | None) -> bool:
    async with Foreign("memory", None, mutant, "--send-queue", "40") as b:  # slow one is closed 1013
        return await slow_reader_stalls(b)


async def storage_hang(mutant: str | None, dsn: str | None) -> bool:
    assert dsn is not None
    relay = Relay(dsn)
    try:
        async with Foreign("postgres", await relay.start(), mutant, "--db-timeout", "4") as b:
            sub, pub = await Peer.open(b.url("s")), await Peer.open(b.url("p"))
            await sub.subscribe("t")
            await flush(pub, "f0")
            relay.freeze()
            await pub.publish("t", 1, "m")
            try:
                await sub.expect("message", id="m", timeout=2.0)
            except AssertionError:
                return True
            return False
    finally:
        await relay.close()


async def _offline_then_crash(b: Foreign, ids: list[str], payload: object = None) -> tuple[Peer, Peer]:
    """keeper subscribes and leaves; *ids* are published and persisted; SIGKILL and restart; keeper
    and a fresh publisher reconnect and keeper subscribes again."""
    keeper, pub = await Peer.open(b.url("keeper")), await Peer.open(b.url("p"))
    await keeper.subscribe("jobs")
    await keeper.close()
    for i in ids:
        await pub.publish("jobs", payload if payload is not None else i, i)
    for i in ids:
        await pub.expect("persisted", id=i)
    await b.restart()
    keeper, pub = await Peer.open(b.url("keeper")), await Peer.open(b.url("p"))
    await keeper.subscribe("jobs")
    return keeper, pub


async def unsent_not_hydrated(mutant: str | None, dsn: str | None) -> bool:
    async with Foreign("postgres", dsn, mutant) as b:
        ids = ["a", "b", "c"]
        keeper, pub = await _offline_then_crash(b, ids)
        return await _replayed_before(keeper, "jobs", pub, ids, "after") != set(ids)


async def persisted_lost_at_kill(mutant: str | None, dsn: str | None) -> bool:
    async with Foreign("postgres", dsn, mutant) as b:
        ids = [f"m{i}" for i in range(20)]
        keeper, pub = await _offline_then_crash(b, ids)
        return await _replayed_before(keeper, "jobs", pub, ids, "after") != set(ids)


async def payload_after_restart(mutant: str | None, dsn: str | None) -> bool:
    async with Foreign("postgres", dsn, mutant) as b:
        payload = {"k": [1, "x", 2.5]}
        keeper, _ = await _offline_then_crash(b, ["m"], payload)
        return (await keeper.expect("message", id="m"))["payload"] != payload


async def acked_comes_back(mutant: str | None, dsn: str | None) -> bool:
    async with Foreign("postgres", dsn, mutant) as b:
        sub, pub = await Peer.open(b.url("s")), await Peer.open(b.url("p"))
        await sub.subscribe("t")
        await pub.publish("t", 1, "m")
        await sub.expect("message", id="m")
        await pub.expect("persisted", id="m")  # its insert is done: the ack comes in a later batch
        await sub.send(type="ack", id="m")
        await flush(pub, "f0")
        await b.restart()
        sub, pub = await Peer.open(b.url("s")), await Peer.open(b.url("p"))
        await sub.subscribe("t")
        return bool(await _replayed_before(sub, "t", pub, ["m"], "after"))


async def outcome_lost_in_outage(mutant: str | None, dsn: str | None) -> bool:
    assert dsn is not None
    relay = Relay(dsn)
    try:
        async with Foreign("postgres", await relay.start(), mutant, "--db-timeout", "1") as b:
            sub, pub = await Peer.open(b.url("s")), await Peer.open(b.url("p"))
            await sub.subscribe("t")
            await flush(pub, "f0")
            relay.down()
            await pub.publish("t", 1, "m")
            await sub.expect("message", id="m")

            async def degraded() -> bool:
                return '"degraded"' in (await b.http("/healthz"))[1]

            await b.until(degraded, "storage failure noticed")
            relay.heal()
            await flush(pub, "f1")  # written in order: m's outcome comes first if m was kept
            return not (pub.got("persisted", id="m") or pub.got("persist_failed", id="m"))
    finally:
        await relay.close()


async def non_object_frame(mutant: str | None, dsn: str | None) -> bool:
    async with Foreign("memory", None, mutant) as b:
        peer = await Peer.open(b.url("bad"))
        await peer.ws.send("[1, 2]")
        try:
            await peer.send(type="ping", ref="alive")
            await peer.expect("pong", ref="alive", timeout=3.0)
        except Exception:
            return True
        return peer.got("error")[0]["code"] != "bad_request"


async def port_taken(mutant: str | None, dsn: str | None) -> bool:
    with socket.socket() as squat:
        squat.bind(("127.0.0.1", 0))
        squat.listen()
        b = Foreign("memory", None, mutant)
        await b.spawn(squat.getsockname()[1])
        try:
            code = await b.exit_code(5.0)
        finally:
            await b.kill()
        return code is None or code == 0  # still running with the port taken, or a silent exit 0


async def backlog_evicted(mutant: str | None, dsn: str | None) -> bool:
    async with Foreign("memory", None, mutant) as b:
        sub, pub = await Peer.open(b.url("s")), await Peer.open(b.url("p"))
        await sub.subscribe("t")
        await sub.close()
        ids = [f"m{i}" for i in range(1100)]
        for i in ids:
            await pub.publish("t", i, i)
        await pub.expect("published", id=ids[-1])
        sub = await Peer.open(b.url("s"))
        await sub.subscribe("t")
        return await _replayed_before(sub, "t", pub, ids, "after") != set(ids)


PROBES: dict[str, tuple[Probe, bool]] = {  # mutant -> (probe, needs PostgreSQL)
    "sent-means-done": (no_retry_while_connected, False),
    "no-replay": (no_replay_on_subscribe, False),
    "serial-fanout": (slow_reader, False),
    "fanout-abort": (overflowing_reader, False),
    "store-first": (storage_hang, True),
    "hydrate-attempted-only": (unsent_not_hydrated, True),
    "ack-dropped-in-coalesce": (acked_comes_back, True),
    "drop-failed-batch": (outcome_lost_in_outage, True),
    "reencode-on-load": (payload_after_restart, True),
    "non-object-crash": (non_object_frame, False),
    "bind-retry": (port_taken, False),
    "backlog-cap": (backlog_evicted, False),
    "write-behind": (persisted_lost_at_kill, True),
    "drain-stall": (slow_reader, False),
}


def test_every_mutant_has_a_probe() -> None:
    assert set(PROBES) == {m.name for m in MUTANTS}


def _run(request: pytest.FixtureRequest, name: str, mutant: str | None) -> bool:
    probe, needs_pg = PROBES[name]
    dsn = request.getfixturevalue("pg_dsn") if needs_pg else None
    return drive(probe(mutant, dsn), timeout=HANG * 6)


@pytest.mark.parametrize("name", list(PROBES))
def test_mutant_bug_is_real(request: pytest.FixtureRequest, name: str) -> None:
    assert _run(request, name, name), f"--mutant {name} behaves correctly: its bug is not there"


@pytest.mark.parametrize("name", list(PROBES))
def test_probe_passes_on_correct_broker(request: pytest.FixtureRequest, name: str) -> None:
    assert not _run(request, name, None), f"the correct broker shows the {name} bug"
