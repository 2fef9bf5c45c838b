"""The seeded bugs of the foreign broker, as data: the lab's own mutation matrix reads this table.

Each mutant is one mistake a real implementer makes, switched on with ``--mutant NAME``.
``invariant`` is the PROTOCOL.md promise it breaks, ``checker`` the lab checker that
should catch it, ``suite`` the chaos suite that exposes it (storage faults, subscriber
faults, crash/restart, port, bad input). ``load_only`` marks bugs that only bite under
volume: the suites drive that volume (``--intensity default``), so they must catch them too.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Mutant:
    name: str
    bug: str
    invariant: str
    checker: str
    suite: str
    load_only: bool = False
    args: tuple[str, ...] = ()  # launch options the bug needs to bite (a realistic setting, not a trap)


MUTANTS: tuple[Mutant, ...] = (
    Mutant(
        "sent-means-done",
        "a send the socket accepted counts as delivered: no timer retry, and the subscribe replay "
        "skips it, so a frame written into a dying connection is never sent again",
        "at-least-once: retry while unacked and connected",
        "at-least-once",
        "subscriber faults",
    ),
    Mutant(
        "no-replay",
        "subscribe only records the subscription; outstanding deliveries wait for their retry timer",
        "subscribe answers subscribed, then every outstanding delivery on the topic",
        "hydration",
        "crash/restart",
    ),
    Mutant(
        "serial-fanout",
        "fan-out awaits each recipient's ws.send() in turn, so one reader with a full socket blocks the rest",
        "isolation: a slow recipient does not delay the others",
        "isolation",
        "subscriber faults",
    ),
    Mutant(
        "fanout-abort",
        "one try/except around the whole fan-out loop: a recipient whose push raises (gone, queue "
        "overflow) ends the loop, the recipients after it never get their first send",
        "isolation: a failing recipient does not stop delivery to the others",
        "isolation",
        "subscriber faults",
        args=(
            "--send-queue",
            "40",
        ),  # a slow-consumer limit a deployment sets: the push that overflows raises
    ),
    Mutant(
        "store-first",
        "publish awaits the message INSERT (up to the db timeout) before fanning out",
        "optimistic delivery: real-time delivery never waits on storage",
        "availability-under-storage-faults",
        "storage faults",
    ),
    Mutant(
        "hydrate-attempted-only",
        "start-up loads only deliveries with attempts > 0; first sends are not written, so every "
        "never-retried delivery stays in the store unloaded",
        "hydration: every outstanding delivery is loaded and resumed at start-up",
        "hydration",
        "crash/restart",
    ),
    Mutant(
        "ack-dropped-in-coalesce",
        "the writer folds acks into the inserts of the same batch and drops an ack whose message "
        "was written in an earlier batch, so its row stays and comes back after a restart",
        "acked deliveries are removed from the store (never redelivered after a restart)",
        "resurrection",
        "crash/restart",
    ),
    Mutant(
        "drop-failed-batch",
        "a write batch that fails is logged and dropped instead of kept for a retry: its publishers "
        "never get persisted nor persist_failed",
        "exactly one persisted / persist_failed per publish; the unpersisted queue survives outages",
        "persistence-outcome",
        "storage faults",
    ),
    Mutant(
        "reencode-on-load",
        "hydration passes the stored JSON text through the publish path's encoder, so replays after "
        "a restart carry the payload as a JSON string",
        "integrity: the payload is delivered exactly as published",
        "integrity",
        "crash/restart",
    ),
    Mutant(
        "non-object-crash",
        "frames are assumed to be objects (frame.get) and the handler has no catch-all, so a JSON "
        "array or number kills the connection (1011)",
        "bad input gets an error and the connection stays open",
        "bad-input-answered",
        "bad input",
    ),
    Mutant(
        "bind-retry",
        "on EADDRINUSE start-up waits and retries the bind forever (the old broker 'must be exiting')",
        "port taken: exit non-zero within 5 s saying address already in use",
        "start-up-port-taken",
        "port",
    ),
    Mutant(
        "backlog-cap",
        "a memory guard keeps at most 1000 outstanding deliveries per client and silently evicts "
        "the oldest beyond it",
        "at-least-once: nothing silently dropped (dead-letter is counted and kept)",
        "at-least-once",
        "crash/restart",
        load_only=True,
    ),
    Mutant(
        "write-behind",
        "persisted is sent when the write is queued; a write-behind flushes once a second, so a "
        "SIGKILL under load loses messages reported persisted",
        "persisted means durable: it survives a SIGKILL",
        "hydration",
        "crash/restart",
        load_only=True,
    ),
    Mutant(
        "drain-stall",
        "fan-out waits for a recipient's queue to drain whenever it holds over 1 MiB, so one reader "
        "whose socket buffers fill stalls every publish",
        "isolation: a slow recipient does not delay the others",
        "isolation",
        "subscriber faults",
        load_only=True,
    ),
)

BY_NAME: dict[str, Mutant] = {m.name: m for m in MUTANTS}


class Bugs:
    """The switched-on mutant of one broker process; asking for an unknown name is a typo, so it raises."""

    def __init__(self, name: str | None) -> None:
        if name is not None and name not in BY_NAME:
            raise ValueError(f"unknown mutant {name!r}; known: {', '.join(BY_NAME)}")
        self.name = name

    def on(self, name: str) -> bool:
        if name not in BY_NAME:
            raise KeyError(name)
        return self.name == name
