"""The foreign broker's write coalescing (pure): what a batch cancels is not written, unless an
earlier write of it failed and may have committed."""

from tests.foreign.ledger import Message, Receipt
from tests.foreign.outbox import Ack, Attempt, Save, coalesce


def save(mid: str, *clients: str) -> Save:
    return Save(Message(Receipt(mid, "t", "p", len(clients), 0.0), '"x"', 1.0), clients)


def test_an_ack_folds_into_the_save_of_its_batch():
    plan = coalesce([save("m1", "a", "b"), Ack("m1", "a")])
    assert plan.messages == [("m1", "t", '"x"', 1.0)] and plan.owed == [("b", "m1", 0, False)]
    assert not coalesce([save("m2", "a"), Ack("m2", "a")])


def test_a_message_of_a_failed_batch_is_written_with_its_acks():
    """Found by the soak: the failed write had committed (its answer lost in a storage hang); the
    retry folded the acks that came meanwhile into the save, wrote nothing, and the rows stayed:
    resurrected after the next kill."""
    plan = coalesce([save("m1", "a", "b"), Ack("m1", "a"), Attempt("m1", "b", 2)], sent={"m1"})
    assert plan.messages == [("m1", "t", '"x"', 1.0)]
    assert plan.owed == [("a", "m1", 0, False), ("b", "m1", 0, False)]
    assert plan.acked == [("a", "m1")] and plan.attempts == [("b", "m1", 2)]
