"""Integrity: no phantom message, no altered payload, no delivery on a topic the recipient did not take.

* phantom: a delivered id that no client ever published;
* altered: the delivered payload's digest differs from the one published under that
  id (or, for payloads carrying ``sha256`` of their ``data``, the checksum no longer
  matches); digests, not payloads, are recorded (``chaos.checkers.digest``);
* misrouted: delivered on a topic other than the message's, or to a client that
  was surely not subscribed to the topic when the message was published.
Unknown when nothing was delivered.
"""

from __future__ import annotations

import numpy as np

from chaos.checkers.digest import payload_checksum, recorded_digest, recorded_self_check
from chaos.checkers.facts import Facts, facts_of, take
from chaos.checkers.stats import MAX_LISTED
from chaos.checkers.verdict import Verdict, failed, passed, unknown
from chaos.history import DIGEST_HEX, DIGEST_INT, DIGEST_STR, History

NAME = "integrity"
__all__ = ["NAME", "check_integrity", "payload_checksum"]


def altered_mask(facts: Facts) -> np.ndarray:
    """Deliveries whose payload digest differs from the published one's, or that failed their self-check.

    A digest is only compared with one of its own kind (docs/checkers.md): strings with strings
    (canonical JSON), ints with ints (the load rig's CRC-32).
    """
    m = facts.dv_msg
    kind, lo, hi, bad = facts.dv_digest
    mkind = take(facts.msg_digest[0], m, 0)
    mlo, mhi = take(facts.msg_digest[1], m, 0), take(facts.msg_digest[2], m, 0)
    strs = (kind == DIGEST_HEX) | (kind == DIGEST_STR)
    mstrs = (mkind == DIGEST_HEX) | (mkind == DIGEST_STR)
    differ = strs & mstrs & ((kind != mkind) | (lo != mlo) | (hi != mhi))
    differ |= (kind == DIGEST_INT) & (mkind == DIGEST_INT) & (lo != mlo)
    return (m >= 0) & (differ | bad)


def misrouted_mask(facts: Facts) -> np.ndarray:
    """Deliveries on another topic than the message's, or to a client surely not subscribed at its publish."""
    m = facts.dv_msg
    known = m >= 0
    mtopic = take(facts.msg_topic, m, -1)
    a = take(facts.msg_invoke, m, np.nan)
    answered = take(facts.msg_answered, m, np.nan)
    b = np.where(np.isnan(answered), facts.dv_time, answered)
    possibly = facts.possibly_subscribed_mask(facts.sub_of(facts.dv_client, mtopic), a, b)
    return known & ((facts.dv_topic != mtopic) | ~possibly)


def _in_order(facts: Facts, rows: np.ndarray) -> np.ndarray:
    """Deliveries in the order of their (client, id) group's first delivery, then history order."""
    key = facts.dg_first[facts.dv_group[rows]] * max(1, len(facts.dv_rows)) + rows
    return rows[np.argsort(key, kind="stable")][:MAX_LISTED]


def check_integrity(history: History | Facts) -> Verdict:
    facts = facts_of(history)
    h = facts.history
    delivered = len(facts.dv_rows)
    phantom_rows = np.flatnonzero(facts.dv_msg < 0)
    altered_rows = np.flatnonzero(altered_mask(facts))
    misrouted_rows = np.flatnonzero(misrouted_mask(facts))
    phantom, altered, misrouted = [], [], []
    for i in _in_order(facts, phantom_rows).tolist():
        d = facts.delivery_event(i)
        phantom.append({"id": d.id, "recipient": d.process, "topic": d.topic, "delivered_s": h.rel(d.time)})
    for i in _in_order(facts, altered_rows).tolist():
        d = facts.delivery_event(i)
        altered.append(
            {
                "id": d.id,
                "recipient": d.process,
                "delivered_s": h.rel(d.time),
                "published_digest": facts.message_digest(int(facts.dv_msg[i])),
                "delivered_digest": recorded_digest(d.value),
                "delivered_bytes": d.get("bytes"),
                "self_check": recorded_self_check(d.value),
            }
        )
    for i in _in_order(facts, misrouted_rows).tolist():
        d = facts.delivery_event(i)
        misrouted.append(
            {
                "id": d.id,
                "recipient": d.process,
                "delivered_s": h.rel(d.time),
                "delivered_topic": d.topic,
                "message_topic": facts.name(facts.msg_topic[facts.dv_msg[i]]),
            }
        )
    ev = {
        "deliveries": delivered,
        "phantom_count": len(phantom_rows),
        "altered_count": len(altered_rows),
        "misrouted_count": len(misrouted_rows),
        "phantom": phantom,
        "altered": altered,
        "misrouted": misrouted,
    }
    if delivered == 0:
        return unknown(NAME, "no delivery in the history, so integrity could not be checked.", **ev)
    problems = []
    if phantom:
        p = phantom[0]
        problems.append(
            f"{len(phantom_rows)} phantom deliveries of ids never published (first: {p['id']} -> "
            f"{p['recipient']} at t={p['delivered_s']}s)"
        )
    if altered:
        a = altered[0]
        problems.append(
            f"{len(altered_rows)} deliveries with an altered payload (first: {a['id']} -> "
            f"{a['recipient']} at t={a['delivered_s']}s)"
        )
    if misrouted:
        r = misrouted[0]
        problems.append(
            f"{len(misrouted_rows)} deliveries on a topic the recipient was not subscribed to (first: "
            f"{r['id']} on {r['delivered_topic']!r} -> {r['recipient']} at t={r['delivered_s']}s)"
        )
    if problems:
        return failed(NAME, "integrity violated: " + "; ".join(problems) + ".", **ev)
    return passed(
        NAME, f"all {delivered} deliveries match a published message, payload and subscription.", **ev
    )
