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

from bisect import bisect_left
from typing import Any

from chaos.checkers.facts import Facts, crash_windows, facts_of, storage_windows
from chaos.checkers.stats import listed
from chaos.checkers.verdict import Verdict, failed, passed, unknown
from chaos.history import History

NAME = "resurrection"
GRACE_S = 2.0


def _disconnects(facts: Facts) -> dict[str, list[float]]:
    out: dict[str, list[float]] = {}
    for ev in facts.history.by_f("disconnect"):
        out.setdefault(ev.process, []).append(ev.time)
    return out


def _stayed_open(facts: Facts, drops: dict[str, list[float]], client: str, a: float, b: float) -> bool:
    """Connected over the whole of [a, b] on one connection (no disconnect in between)."""
    if not (facts.online(client, a) and facts.online(client, b)):
        return False
    times = drops.get(client, [])
    i = bisect_left(times, a)
    return i >= len(times) or times[i] > b


def check_resurrection(history: History | Facts, *, grace: float = GRACE_S) -> Verdict:
    if not grace >= 0:
        raise ValueError(f"grace must be >= 0 seconds, got {grace!r}")
    facts = facts_of(history)
    h = facts.history
    crashes = [w for w in crash_windows(h) if w.effective is not False]
    storage = storage_windows(h)
    drops = _disconnects(facts)
    ev: dict[str, Any] = {"grace_s": grace, "crashes": []}
    if not crashes:
        return unknown(NAME, "no crash fault window that landed, so resurrection was not exercised.", **ev)
    resurrected: list[dict[str, Any]] = []
    settled_total = 0
    for w in crashes:
        restart = w.end if w.end is not None else facts.end
        settled = 0
        for (client, msg_id), acked in facts.acks.items():
            if acked + grace > w.start:
                continue
            if any(s.start <= acked + grace and acked <= (s.end or facts.end) for s in storage):
                continue
            if not _stayed_open(facts, drops, client, acked, acked + grace):
                continue
            settled += 1
            again = [d for d in facts.deliveries.get((client, msg_id), ()) if d.time >= restart]
            if again:
                resurrected.append(
                    {
                        "id": msg_id,
                        "recipient": client,
                        "acked_s": h.rel(acked),
                        "crash_s": h.rel(w.start),
                        "redelivered_s": h.rel(again[0].time),
                        "attempt": again[0].get("attempt"),
                    }
                )
        ev["crashes"].append(
            {"name": w.name, "start_s": h.rel(w.start), "end_s": h.rel(w.end), "settled": settled}
        )
        settled_total += settled
    ev.update(
        pairs_settled=settled_total, pairs_resurrected=len(resurrected), resurrected=listed(resurrected)
    )
    if resurrected:
        r = resurrected[0]
        return failed(
            NAME,
            f"resurrected deliveries: {len(resurrected)} of {settled_total} (message, recipient) pairs acked "
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
