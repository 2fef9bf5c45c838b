"""Persistence outcome: the publisher learns each message's fate exactly once.

PROTOCOL.md section 2: every ``published`` message later gets exactly one of
``persisted`` or ``persist_failed``, the latter only when the broker gave up.
"""

from __future__ import annotations

from chaos.checkers.verdict import Verdict, failed, passed, unknown
from chaos.history import History

NAME = PERSIST_OUTCOME = "persistence-outcome"


def check_persistence_outcomes(history: History) -> Verdict:
    """Each message answered ``published`` later got exactly one of ``persisted`` / ``persist_failed``.

    PROTOCOL.md section 2: the publisher is told the outcome once, ``persist_failed``
    only when the broker gave up. Run it after waiting for the outcomes (a hang timeout).
    """
    published: dict[str, float] = {}
    for ev in history.by_f("publish", type="ok"):
        if ev.id is not None:
            published.setdefault(ev.id, ev.time)
    outcomes: dict[str, list[str]] = {}
    for ev in history.by_f("persisted", "persist_failed"):
        if ev.id is not None:
            outcomes.setdefault(ev.id, []).append(ev.f)
    none = [i for i in published if i not in outcomes]
    many = [{"id": i, "outcomes": o} for i, o in outcomes.items() if len(o) > 1]
    gave_up = sum(1 for o in outcomes.values() if o == ["persist_failed"])
    ev_ = {
        "published": len(published),
        "persisted": sum(1 for o in outcomes.values() if o == ["persisted"]),
        "persist_failed": gave_up,
        "without_outcome": len(none),
        "without_outcome_ids": [{"id": i, "published_s": history.rel(published[i])} for i in none[:20]],
        "several_outcomes": many[:20],
    }
    if not published:
        return unknown(PERSIST_OUTCOME, "nothing was answered 'published', so no outcome was owed.", **ev_)
    problems = []
    if none:
        problems.append(
            f"{len(none)} of {len(published)} published messages never got 'persisted' or 'persist_failed' "
            f"(first: {none[0]}, published at t={history.rel(published[none[0]])}s)"
        )
    if many:
        problems.append(f"{len(many)} messages got more than one outcome (first: {many[0]})")
    if problems:
        return failed(
            PERSIST_OUTCOME,
            "publishers were not told the persistence outcome: " + "; ".join(problems) + ".",
            **ev_,
        )
    return passed(
        PERSIST_OUTCOME,
        f"each of {len(published)} published messages got one outcome: {ev_['persisted']} persisted, "
        f"{gave_up} persist_failed.",
        **ev_,
    )
