"""At-least-once: every message answered ``published`` reaches every recipient by the end of the run.

Recipients are the client_ids surely subscribed to the topic when the message
was published (facts.py); pairs where the subscription raced the publish are
ambiguous and only counted. A lost pair is (message id, recipient) with no
``deliver`` event at all. Unknown when nothing was published to anyone.

A crash may lose what the broker had not persisted yet (PROTOCOL.md promises
only what it reported ``persisted``): an undelivered pair whose message was
published before a crash and not reported persisted before it is counted
(``pairs_lost_unpersisted_in_crash``), not judged. Hydration judges the rest.
"""

from __future__ import annotations

import numpy as np

from chaos.checkers.facts import Facts, crash_windows, facts_of
from chaos.checkers.stats import MAX_LISTED
from chaos.checkers.verdict import Verdict, failed, passed, unknown
from chaos.history import History

NAME = "at-least-once"


def check_at_least_once(history: History | Facts) -> Verdict:
    facts = facts_of(history)
    h = facts.history
    published = facts.published_mask
    crashes = [w.start for w in crash_windows(h) if w.effective is not False]
    sel = published[facts.pair_msg]
    pm = facts.pair_msg[sel]
    undelivered = facts.pair_group[sel] < 0
    pairs = len(pm)
    ambiguous = int(facts.msg_ambiguous[published].sum())
    invoke, persisted = facts.msg_invoke[pm], facts.msg_persisted[pm]
    unpersisted_at_crash = np.zeros(pairs, bool)
    for t in crashes:  # not persisted when the broker crashed: it may be gone
        unpersisted_at_crash |= (t >= invoke) & (np.isnan(persisted) | (persisted > t))
    excused = int((undelivered & unpersisted_at_crash).sum())
    lost = np.flatnonzero(undelivered & ~unpersisted_at_crash)
    windows = h.fault_windows()
    ev = {
        "messages_published": int(published.sum()),
        "pairs_expected": pairs,
        "pairs_ambiguous": ambiguous,
        "pairs_lost": len(lost),
        "pairs_lost_unpersisted_in_crash": excused,
        "run_end_s": h.rel(facts.end),
    }
    if pairs == 0:
        return unknown(
            NAME,
            f"no (message, recipient) pair to check: {ev['messages_published']} message(s) answered "
            "'published' but none had a subscriber surely subscribed at the time.",
            **ev,
        )
    if len(lost):
        clients = facts.pair_client[sel]
        rows = []
        for i in lost[:MAX_LISTED].tolist():
            t = float(invoke[i])
            rows.append(
                {
                    "id": facts.name(facts.msg_code[pm[i]]),
                    "recipient": facts.name(clients[i]),
                    "published_s": h.rel(t),
                    "during_fault": next((w.name for w in windows if w.contains(t, facts.end)), None),
                }
            )
        ev["lost"] = rows
        first = rows[0]
        when = f" during fault {first['during_fault']}" if first["during_fault"] else ""
        return failed(
            NAME,
            f"at-least-once violated: {len(lost)} of {pairs} (message, recipient) pairs were "
            f"answered 'published' but never delivered by the end of the run (t="
            f"{ev['run_end_s']}s); first: {first['id']} -> {first['recipient']}, published at "
            f"t={first['published_s']}s{when}.",
            **ev,
        )
    return passed(
        NAME,
        f"all {pairs} (message, recipient) pairs of {ev['messages_published']} published messages were "
        f"delivered ({ambiguous} ambiguous pairs not judged).",
        **ev,
    )
