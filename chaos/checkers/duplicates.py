"""Duplicates and per-publisher order: counted and reported, judged only by a ratio.

PROTOCOL.md allows duplicates (at-least-once) and promises no order, so this
verdict passes unless duplicate deliveries exceed ``max_duplicate_ratio`` of all
deliveries (or, with ``require_order=True``, any per-publisher reordering is
seen). Order is judged on first deliveries only: for each (recipient,
publisher), a message delivered after one its publisher invoked later is an
inversion.
"""

from __future__ import annotations

from collections import defaultdict

from chaos.checkers.facts import Facts, facts_of
from chaos.checkers.stats import listed
from chaos.checkers.verdict import Verdict, failed, passed, unknown
from chaos.history import History

NAME = "duplicates-and-order"


def check_duplicates(
    history: History | Facts, *, max_duplicate_ratio: float = 0.5, require_order: bool = False
) -> Verdict:
    if max_duplicate_ratio < 0:
        raise ValueError(f"max_duplicate_ratio must be >= 0, got {max_duplicate_ratio}")
    facts = facts_of(history)
    h = facts.history
    total = sum(len(v) for v in facts.deliveries.values())
    dups = [
        {"id": i, "recipient": c, "deliveries": len(v), "attempts": [d.get("attempt") for d in v]}
        for (c, i), v in facts.deliveries.items()
        if len(v) > 1
    ]
    extra = sum(d["deliveries"] - 1 for d in dups)
    firsts: dict[tuple[str, str], list[tuple[float, int, str]]] = defaultdict(list)
    for (c, i), v in facts.deliveries.items():
        m = facts.messages.get(i)
        if m is not None:
            firsts[(c, m.publisher)].append((v[0].time, m.seq, i))
    inversions = []
    for (c, pub), seq in firsts.items():
        seq.sort()
        highest: tuple[int, str] | None = None
        for t, s, i in seq:
            if highest is not None and s < highest[0]:
                inversions.append(
                    {"recipient": c, "publisher": pub, "id": i, "after": highest[1], "delivered_s": h.rel(t)}
                )
            if highest is None or s > highest[0]:
                highest = (s, i)
    ratio = extra / total if total else 0.0
    ev = {
        "deliveries": total,
        "duplicate_deliveries": extra,
        "duplicate_pairs": len(dups),
        "duplicate_ratio": round(ratio, 6),
        "max_duplicate_ratio": max_duplicate_ratio,
        "duplicates": listed(sorted(dups, key=lambda d: -d["deliveries"])),
        "order_inversions": len(inversions),
        "inversions": listed(inversions),
    }
    if total == 0:
        return unknown(
            NAME, "no delivery in the history, so duplicates and order could not be counted.", **ev
        )
    if ratio > max_duplicate_ratio:
        d = ev["duplicates"][0]
        return failed(
            NAME,
            f"too many duplicates: {extra} extra deliveries out of {total} (ratio {ratio:.3f} > "
            f"{max_duplicate_ratio}); worst: {d['id']} delivered {d['deliveries']} times to "
            f"{d['recipient']}.",
            **ev,
        )
    if require_order and inversions:
        i = inversions[0]
        return failed(
            NAME,
            f"per-publisher order violated {len(inversions)} times; first: {i['id']} reached "
            f"{i['recipient']} at t={i['delivered_s']}s after the later {i['after']}.",
            **ev,
        )
    return passed(
        NAME,
        f"{extra} duplicate deliveries out of {total} (ratio {ratio:.3f} <= "
        f"{max_duplicate_ratio}); {len(inversions)} per-publisher order inversions.",
        **ev,
    )
