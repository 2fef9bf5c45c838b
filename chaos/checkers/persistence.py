"""Persistence outcome: the publisher learns each message's fate exactly once.

PROTOCOL.md section 2: every ``published`` message later gets exactly one of
``persisted`` or ``persist_failed``, the latter only when the broker gave up.
"""

from __future__ import annotations

import numpy as np

from chaos.checkers.facts import Facts
from chaos.checkers.stats import MAX_LISTED
from chaos.checkers.verdict import Verdict, failed, passed, unknown
from chaos.history import OK, History

NAME = PERSIST_OUTCOME = "persistence-outcome"


def check_persistence_outcomes(history: History | Facts) -> Verdict:
    """Each message answered ``published`` later got exactly one of ``persisted`` / ``persist_failed``.

    PROTOCOL.md section 2: the publisher is told the outcome once, ``persist_failed``
    only when the broker gave up. Run it after waiting for the outcomes (a hang timeout).
    """
    if isinstance(history, Facts):
        history = history.history
    pub, per = history.columns("publish"), history.columns("persist")
    strings = history.strings()
    ids = pub["id"].astype(np.int64)
    rows = np.flatnonzero((ids >= 0) & (pub["type"] == OK))
    codes, first = np.unique(ids[rows], return_index=True)
    order = np.argsort(first, kind="stable")  # in the order of the first `published`
    published, published_t = codes[order], pub["time"][rows[first[order]]]
    pids = per["id"].astype(np.int64)
    prows = np.flatnonzero(pids >= 0)
    ocodes, ofirst, ocount = np.unique(pids[prows], return_index=True, return_counts=True)
    failed_n = np.bincount(np.searchsorted(ocodes, pids[prows][per["f"][prows] == 1]), minlength=len(ocodes))
    none = np.flatnonzero(~np.isin(published, ocodes))
    many = np.flatnonzero(ocount > 1)
    many = many[np.argsort(ofirst[many], kind="stable")]  # in the order of their first outcome
    several = []
    for k in many[:MAX_LISTED].tolist():
        sel = prows[pids[prows] == ocodes[k]]
        several.append(
            {"id": strings[int(ocodes[k])], "outcomes": [per.spec.fs[f] for f in per["f"][sel].tolist()]}
        )
    gave_up = int(((ocount == 1) & (failed_n == 1)).sum())
    ev_ = {
        "published": len(published),
        "persisted": int(((ocount == 1) & (failed_n == 0)).sum()),
        "persist_failed": gave_up,
        "without_outcome": len(none),
        "without_outcome_ids": [
            {"id": strings[int(published[i])], "published_s": history.rel(float(published_t[i]))}
            for i in none[:MAX_LISTED].tolist()
        ],
        "several_outcomes": several,
    }
    if not len(published):
        return unknown(PERSIST_OUTCOME, "nothing was answered 'published', so no outcome was owed.", **ev_)
    problems = []
    if len(none):
        first_id = ev_["without_outcome_ids"][0]
        problems.append(
            f"{len(none)} of {len(published)} published messages never got 'persisted' or 'persist_failed' "
            f"(first: {first_id['id']}, published at t={first_id['published_s']}s)"
        )
    if len(many):
        problems.append(f"{len(many)} messages got more than one outcome (first: {several[0]})")
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
