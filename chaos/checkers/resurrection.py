"""Resurrection: a delivery acked well before a crash must not come back after the restart.

PROTOCOL.md section 3: acked deliveries are removed from the store. A broker
that keeps them (or forgets to apply the deletes) hydrates them again after a
restart, and its subscribers get messages they already finished: what Jepsen
calls a resurrected write. The protocol alone shows it: for each crash window
(the nemesis records ``crash: true``), a (message, recipient) pair is
*settled* when its recipient acked it

* at least ``grace`` seconds before the crash (an ack may still be in flight, or
  waiting in the broker's write batch, for a moment: ``grace`` is that moment,
  2 s by default, well above any sane persistence linger),
* on a connection that stayed open for ``grace`` seconds after the ack (so the
  ack surely reached the broker), and
* while no storage fault was active in those ``grace`` seconds (the broker could
  not have been prevented from writing it).

A delivery of a settled pair after the restart is a resurrection. Unknown when
no crash landed or no pair was settled before one.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from chaos.checkers.facts import Facts, crash_windows, facts_of, group_order, runs, storage_windows, take
from chaos.checkers.stats import MAX_LISTED
from chaos.checkers.verdict import Verdict, failed, passed, unknown
from chaos.history import History

NAME = "resurrection"
GRACE_S = 2.0


def _no_drop_between(facts: Facts, clients: np.ndarray, a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """No ``disconnect`` of the client within [a, b] (its connection stayed the same one)."""
    out = np.ones(len(clients), bool)
    o = group_order(clients)
    for lo, hi in runs(clients[o]):
        times = facts.disconnects.get(int(clients[o[lo]]))
        if times is None or not len(times):
            continue
        idx = o[lo:hi]
        i = np.searchsorted(times, a[idx], side="left")
        out[idx] = (i >= len(times)) | (times[np.minimum(i, len(times) - 1)] > b[idx])
    return out


def check_resurrection(history: History | Facts, *, grace: float = GRACE_S) -> Verdict:
    if not grace >= 0:
        raise ValueError(f"grace must be >= 0 seconds, got {grace!r}")
    facts = facts_of(history)
    h = facts.history
    crashes = [w for w in crash_windows(h) if w.effective is not False]
    storage = storage_windows(h)
    ev: dict[str, Any] = {"grace_s": grace, "crashes": []}
    if not crashes:
        return unknown(NAME, "no crash fault window that landed, so resurrection was not exercised.", **ev)
    acked, clients = facts.ak_time, facts.ak_client
    until = acked + grace
    # acked on a connection that stayed open for the grace, with storage healthy meanwhile
    calm = facts.online_mask(clients, acked) & facts.online_mask(clients, until)
    calm &= _no_drop_between(facts, clients, acked, until)
    for s in storage:
        calm &= ~((s.start <= until) & (acked <= (s.end or facts.end)))
    group = facts.groups_of(clients, facts.ak_code)
    resurrected: list[dict[str, Any]] = []
    n_resurrected = settled_total = 0
    for w in crashes:
        restart = w.end if w.end is not None else facts.end
        settled = calm & (until <= w.start)
        n = int(settled.sum())
        when, which = facts.first_delivery_after(restart, inclusive=True)
        again = take(when, group, np.nan)
        back = np.flatnonzero(settled & ~np.isnan(again))
        n_resurrected += len(back)
        back = back[np.argsort(facts.ak_row[back], kind="stable")]  # in the order of the acks
        for i in back[: MAX_LISTED - len(resurrected)].tolist():
            d = int(take(which, group[[i]], -1)[0])
            resurrected.append(
                {
                    "id": facts.name(facts.ak_code[i]),
                    "recipient": facts.name(clients[i]),
                    "acked_s": facts.rel(acked[i]),
                    "crash_s": h.rel(w.start),
                    "redelivered_s": facts.rel(again[i]),
                    "attempt": facts.delivery_event(d).get("attempt"),
                }
            )
        ev["crashes"].append({"name": w.name, "start_s": h.rel(w.start), "end_s": h.rel(w.end), "settled": n})
        settled_total += n
    ev.update(pairs_settled=settled_total, pairs_resurrected=n_resurrected, resurrected=resurrected)
    if n_resurrected:
        r = resurrected[0]
        return failed(
            NAME,
            f"resurrected deliveries: {n_resurrected} of {settled_total} (message, recipient) pairs acked "
            f"well before a crash came back after the restart; first: {r['id']} -> {r['recipient']} acked at "
            f"t={r['acked_s']}s, redelivered at t={r['redelivered_s']}s after the crash at t={r['crash_s']}s "
            "(acked deliveries must be removed from the store).",
            **ev,
        )
    if settled_total == 0:
        return unknown(
            NAME,
            f"no delivery was acked at least {grace}s before a crash (on a connection that stayed open, with "
            "storage healthy), so a resurrection could not be seen.",
            **ev,
        )
    return passed(
        NAME,
        f"none of {settled_total} (message, recipient) pairs acked well before {len(crashes)} crash(es) came "
        "back after the restart.",
        **ev,
    )
