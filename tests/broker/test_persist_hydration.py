"""Hunting lost `persisted` messages: the spill queue's coalescing and the planner, model-checked.

The invariant (PROTOCOL.md section 3, hydration): once the writer has committed a
batch and told a publisher ``persisted``, every (message, recipient) pair of that
message that no ack has settled must be in the store. The store here is a
line-by-line Python rendering of the SQL in ``broker.store_postgres`` applied to
the phases of the real ``plan()``, and the queue is the real ``SpillQueue``
driven the way ``PersistenceWriter._run`` drives it (take, ops arriving during
the await, commit or failure).
"""

from __future__ import annotations

from hypothesis import given, settings
from hypothesis import strategies as st

from broker.persist import SpillQueue
from broker.store import Op, SaveAck, SaveAttempt, SaveDeadLetter, SaveMessage, StoredMessage
from broker.store_postgres import Phase, plan

CLIENTS = ("a", "b", "c")


class SqlModel:
    """What the statements of ``_apply_phase`` do to the messages and deliveries tables."""

    def __init__(self) -> None:
        self.messages: set[str] = set()
        self.deliveries: dict[tuple[str, str], bool] = {}  # (message, client) -> dead

    def apply(self, ops: list[Op]) -> None:
        for phase in plan(ops):
            self._phase(phase)

    def _phase(self, p: Phase) -> None:
        self.messages.update(p.messages)  # ON CONFLICT DO NOTHING
        for m, c in p.deliveries:  # JOIN messages, ON CONFLICT DO NOTHING
            if m in self.messages:
                self.deliveries.setdefault((m, c), False)
        for key in p.dead:
            if key in self.deliveries:
                self.deliveries[key] = True
        if p.acks:
            for key in p.acks:
                self.deliveries.pop(key, None)
            for m in {m for m, _ in p.acks}:  # the orphan delete
                if not any(k[0] == m for k in self.deliveries):
                    self.messages.discard(m)

    def holds(self, mid: str, client: str) -> bool:
        return mid in self.messages and (mid, client) in self.deliveries


def _message(mid: str, recipients: tuple[str, ...]) -> SaveMessage:
    return SaveMessage(StoredMessage(mid, "t", {"n": mid}, 0.0, "p"), recipients)


steps = st.lists(
    st.one_of(
        st.tuples(
            st.just("publish"), st.lists(st.sampled_from(CLIENTS), min_size=1, max_size=3, unique=True)
        ),
        st.tuples(st.just("ack"), st.integers(0, 50)),
        st.tuples(st.just("attempt"), st.integers(0, 50)),
        st.tuples(st.just("dead"), st.integers(0, 50)),
        st.tuples(st.just("take"), st.integers(1, 6), st.integers(0, 6), st.integers(0, 3), st.booleans()),
    ),
    max_size=60,
)


@settings(max_examples=400, deadline=None, derandomize=True)
@given(steps)
def test_persisted_unacked_pairs_are_always_in_the_store(script: list[tuple]) -> None:
    queue = SpillQueue()
    store = SqlModel()
    outstanding: list[tuple[str, str]] = []  # live (message, client) pairs, in the core's sense
    acked: set[tuple[str, str]] = set()
    dead: set[tuple[str, str]] = set()
    persisted: set[str] = set()
    published: dict[str, tuple[str, ...]] = {}
    now = 0.0

    def push_client_op(kind: str, pick: int) -> None:
        if not outstanding:
            return
        mid, client = outstanding[pick % len(outstanding)]
        if kind == "ack":
            outstanding.remove((mid, client))
            acked.add((mid, client))
            queue.push(SaveAck(mid, client), now)
        elif kind == "attempt":
            queue.push(SaveAttempt(mid, client, 2), now)
        else:
            outstanding.remove((mid, client))
            dead.add((mid, client))
            queue.push(SaveDeadLetter(mid, client, "max_attempts"), now)

    def publish(recipients: list[str]) -> None:
        mid = f"m{len(published)}"
        published[mid] = tuple(recipients)
        queue.push_message(_message(mid, tuple(recipients)), now, 10)
        outstanding.extend((mid, c) for c in recipients)

    for step in script:
        now += 0.001
        if step[0] == "publish":
            publish(step[1])
        elif step[0] in ("ack", "attempt", "dead"):
            push_client_op(step[0], step[1])
        else:
            _, n, lookahead, arrivals, fails = step
            count, writes = queue.take(n, lookahead=lookahead)
            for i in range(arrivals):  # what the event loop queues while the writer awaits the store
                if i % 2:
                    publish(["a", "b"])
                else:
                    push_client_op("ack", i)
            if fails:
                continue  # the batch is retried later: nothing committed, nothing told
            store.apply(writes)
            persisted.update(op.message.id for op in queue.commit(count))
        for mid in persisted:
            for client in published[mid]:
                if (mid, client) not in acked:
                    assert store.holds(mid, client), (
                        f"{mid} -> {client} was told persisted, is not acked, but is not in the store"
                    )


# --- the two lab failures, op for op (evidence of 19:02: schedule-190212, crash_and_restart-190205) ---


def test_schedule_evidence_paused_burst_acked_by_one_of_two() -> None:
    """Three publishes released by SIGCONT, s1 acks all before the writer takes them, s2 never acks."""
    queue, store = SpillQueue(), SqlModel()
    for i in range(3):
        queue.push_message(_message(f"p-{i}", ("s1", "s2")), 0.0, 10)
    for i in range(3):
        queue.push(SaveAck(f"p-{i}", "s1"), 0.0)
    count, writes = queue.take(5000, lookahead=5000)
    assert [type(op).__name__ for op in writes].count("SaveMessage") == 3, "a message s2 holds was coalesced"
    store.apply(writes)
    told = {op.message.id for op in queue.commit(count)}
    assert told == {"p-0", "p-1", "p-2"}
    assert all(store.holds(f"p-{i}", "s2") for i in range(3))
    assert not any(store.holds(f"p-{i}", "s1") for i in range(3))


def test_fmea3_evidence_message_acked_by_the_other_recipient_while_the_previous_batch_was_written() -> None:
    """p-0 is being written when p-1 is published and acked by 'acker'; 'keeper' never acks."""
    queue, store = SpillQueue(), SqlModel()
    queue.push_message(_message("p-0", ("keeper", "acker")), 0.0, 10)
    count, writes = queue.take(5000, lookahead=5000)
    queue.push(SaveAck("p-0", "acker"), 0.0)  # these three arrive during the await
    queue.push_message(_message("p-1", ("keeper", "acker")), 0.0, 10)
    queue.push(SaveAck("p-1", "acker"), 0.0)
    store.apply(writes)
    assert {op.message.id for op in queue.commit(count)} == {"p-0"}
    count, writes = queue.take(5000, lookahead=5000)
    store.apply(writes)
    assert {op.message.id for op in queue.commit(count)} == {"p-1"}
    assert store.holds("p-0", "keeper") and store.holds("p-1", "keeper")
    assert len(queue) == 0


def test_a_message_acked_by_every_recipient_is_still_coalesced_away() -> None:
    """The optimisation the fix must keep: nothing is written for a fully acked message."""
    queue = SpillQueue()
    queue.push_message(_message("m", ("a", "b")), 0.0, 10)
    queue.push(SaveAck("m", "a"), 0.0)
    queue.push(SaveAck("m", "b"), 0.0)
    count, writes = queue.take(1, lookahead=10)
    assert (count, writes) == (1, [])
    assert queue.commit(1)[0].message.id == "m"
    assert queue.take(10) == (2, [])
