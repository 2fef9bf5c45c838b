"""Duplicates and per-publisher order: counted and reported, judged only by a ratio.

PROTOCOL.md allows duplicates (at-least-once) and promises no order, so this
verdict passes unless duplicate deliveries exceed ``max_duplicate_ratio`` of all
deliveries (or, with ``require_order=True``, any per-publisher reordering is
seen). The ratio judged counts only deliveries of a message its subscriber had
already acked: a retry of an unacked delivery is the broker keeping its
at-least-once promise (a subscriber that acks late or never gets one every
backoff, as PROTOCOL.md says), not waste; all repeats are counted beside it.

Order is judged on first deliveries only: for each (recipient, publisher), a
message delivered after one its publisher invoked later is an inversion.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from chaos.checkers.facts import Facts, dense, facts_of, lookup, pair_key
from chaos.checkers.stats import MAX_LISTED
from chaos.checkers.verdict import Verdict, failed, passed, unknown
from chaos.history import History

NAME = "duplicates-and-order"


def inversions(facts: Facts) -> tuple[np.ndarray, np.ndarray]:
    """Order inversions in first deliveries: (delivery groups delivered late, the group each came after).

    Per (recipient, publisher), first deliveries sorted by time (then by publisher order): one
    whose publisher invoked it before the latest seen so far is an inversion. Listed in the order
    of each (recipient, publisher)'s first delivery, then in delivery order.
    """
    groups = np.flatnonzero(facts.dg_msg >= 0)
    msg = facts.dg_msg[groups]
    seq = facts.msg_seq[msg]
    client, n_clients = dense(facts.dg_client[groups])
    publisher, n_publishers = dense(facts.msg_publisher[msg])
    key = client * n_publishers + publisher  # (recipient, publisher), densely numbered
    if n_clients * n_publishers <= 1 << 16:
        key = key.astype(np.uint16)  # radix-sorted
    t = facts.dg_first_time[groups]
    o = np.argsort(seq, kind="stable")  # by (recipient, publisher), then time, then publisher order
    o = o[np.argsort(t[o], kind="stable")]
    o = o[np.argsort(key[o], kind="stable")]
    k = key[o]
    new_seg = np.r_[True, k[1:] != k[:-1]] if len(k) else np.empty(0, bool)
    seg = np.cumsum(new_seg) - 1
    span = int(seq.max()) + 1 if len(seq) else 1
    val = seg * span + seq[o]  # < segments x messages: no overflow
    prev = np.r_[-1, np.maximum.accumulate(val)[:-1]] if len(val) else val
    bad = np.flatnonzero(~new_seg & (val < prev))
    # the message each came after: the latest its publisher had invoked among those already delivered
    after_seq = prev[bad] - seg[bad] * span
    pubs = facts.msg_publisher[msg[o[bad]]]
    by_seq = pair_key(facts.msg_publisher, facts.msg_seq)
    order = np.argsort(by_seq, kind="stable")
    after_msg = order[lookup(by_seq[order], pair_key(pubs, after_seq))]
    # listed per (recipient, publisher) in the order of its first appearance among the groups
    starts = np.flatnonzero(new_seg)
    seg_first = np.minimum.reduceat(facts.dg_first[groups[o]], starts) if len(starts) else starts
    listing = np.argsort(seg_first[seg[bad]] * max(1, len(o)) + bad, kind="stable")
    return groups[o[bad]][listing], after_msg[listing]


def check_duplicates(
    history: History | Facts, *, max_duplicate_ratio: float = 0.5, require_order: bool = False
) -> Verdict:
    if max_duplicate_ratio < 0:
        raise ValueError(f"max_duplicate_ratio must be >= 0, got {max_duplicate_ratio}")
    facts = facts_of(history)
    total = len(facts.dv_rows)
    dup = np.flatnonzero(facts.dg_count > 1)
    extra = int((facts.dg_count[dup] - 1).sum())
    dup = dup[np.argsort(facts.dg_first[dup], kind="stable")]  # in the order of their first delivery
    dup = dup[np.argsort(-facts.dg_count[dup], kind="stable")]  # the worst first
    dups: list[dict[str, Any]] = []
    for g in dup[:MAX_LISTED].tolist():
        evs = facts.group_events(g)
        dups.append(
            {
                "id": evs[0].id,
                "recipient": evs[0].process,
                "deliveries": len(evs),
                "attempts": [d.get("attempt") for d in evs],
            }
        )
    late, after = inversions(facts)
    inv = [
        {
            "recipient": facts.name(facts.dg_client[g]),
            "publisher": facts.name(facts.msg_publisher[facts.dg_msg[g]]),
            "id": facts.name(facts.msg_code[facts.dg_msg[g]]),
            "after": facts.name(facts.msg_code[a]),
            "delivered_s": facts.rel(facts.dg_first_time[g]),
        }
        for g, a in zip(late[:MAX_LISTED].tolist(), after[:MAX_LISTED].tolist(), strict=True)
    ]
    acked = facts.dg_ack[facts.dv_group]  # when each delivery's (subscriber, message) was first acked
    redelivered = facts.dv_time > acked  # NaN (never acked) compares False
    redelivered[facts.dg_first] = False  # a first delivery is never a redelivery, even after an early ack
    after_ack = int(np.count_nonzero(redelivered))
    ratio = after_ack / total if total else 0.0
    ev = {
        "deliveries": total,
        "duplicate_deliveries": extra,
        "duplicate_pairs": len(dup),
        "redelivered_after_ack": after_ack,
        "duplicate_ratio": round(ratio, 6),
        "all_repeats_ratio": round(extra / total, 6) if total else 0.0,
        "max_duplicate_ratio": max_duplicate_ratio,
        "duplicates": dups,
        "order_inversions": len(late),
        "inversions": inv,
    }
    if total == 0:
        return unknown(
            NAME, "no delivery in the history, so duplicates and order could not be counted.", **ev
        )
    if ratio > max_duplicate_ratio:
        d = ev["duplicates"][0]
        return failed(
            NAME,
            f"too many duplicates: {after_ack} deliveries of messages already acked, out of {total} "
            f"(ratio {ratio:.3f} > {max_duplicate_ratio}); worst: {d['id']} delivered {d['deliveries']} "
            f"times to {d['recipient']}.",
            **ev,
        )
    if require_order and len(late):
        i = inv[0]
        return failed(
            NAME,
            f"per-publisher order violated {len(late)} times; first: {i['id']} reached "
            f"{i['recipient']} at t={i['delivered_s']}s after the later {i['after']}.",
            **ev,
        )
    return passed(
        NAME,
        f"{extra} repeated deliveries out of {total}, {after_ack} of them after an ack (ratio "
        f"{ratio:.3f} <= {max_duplicate_ratio}); {len(late)} per-publisher order inversions.",
        **ev,
    )
