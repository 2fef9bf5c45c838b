"""FMEA 3: after a crash, everything persisted and unacked is redelivered, and nothing rots in the store.

Hydration: for each crash window (recorded by the nemesis with ``crash: true``;
start = the kill, end = the broker listening again), each (message, recipient)
pair whose publisher saw ``persisted`` before the crash, whose recipient was
surely subscribed when it was published and had not acked it before the crash,
must be delivered again after the crash, provided the recipient subscribed
again after the restart (otherwise the pair is counted as unverifiable). The
evidence gives, per crash, ``redelivery_s``: from the restart to the last
redelivery of an owed pair (the gate's ``max_hydration_s`` reads it).

Dead letters: PROTOCOL.md lets a broker stop retrying a pair after its max
attempts and dead-letter it; a dead letter is not outstanding, so a restarted
broker need not send it again. The lab cannot read a broker's max attempts, so
it takes them from what the broker did: a pair that had already been delivered
as often before the crash as any delivery of the run ever was (the highest
``attempt`` seen, when that is at least 3: a short run where everything was
retried once shows no cap) may have been dead-lettered, and is counted
(``pairs_possibly_dead_lettered``), not judged. Limits: a broker that retries
without a cap has its few most-retried pairs excused too; one that dead-letters
after fewer than 3 attempts, or by a TTL shorter than the run, is held to
redeliver them.

Replayed on subscribe (PROTOCOL.md section 2: ``subscribed``, then every
outstanding delivery): an owed pair redelivered more than ``replay_grace``
seconds after its recipient subscribed again, and after that recipient already
got a message published after the subscription, came by a retry timer, not by
the replay: that fails too (``not_replayed_on_subscribe``).

No zombie: fed with a store listing taken at the end of the run (the pending and
dead deliveries, e.g. ``broker.store.Snapshot.deliveries``), no live delivery may
remain for a pair that its recipient acked, nor for a pair that was never
retried to its recipient after the last restart although it was connected and
subscribed. Unknown when no listing is given.
"""

from __future__ import annotations

from collections.abc import Collection, Iterable, Mapping
from typing import Any

import numpy as np

from chaos.checkers.facts import Facts, crash_windows, facts_of, take
from chaos.checkers.stats import MAX_LISTED, listed
from chaos.checkers.verdict import Verdict, failed, passed, unknown
from chaos.history import FaultWindow, History

HYDRATION = "hydration"
NO_ZOMBIE = "no-zombie"
REPLAY_GRACE_S = 1.0
MIN_CAP = 3  # the fewest attempts taken for a broker's max attempts (see "Dead letters")


def _crashes(facts: Facts, crash_faults: Collection[str] | None) -> list[FaultWindow]:
    if crash_faults is None:
        return crash_windows(facts.history)
    return [w for w in facts.history.fault_windows() if w.name in crash_faults]


class _Listed:
    """A count and the first few rows of a kind of pair, across crashes."""

    def __init__(self) -> None:
        self.count = 0
        self.rows: list[dict[str, Any]] = []

    def add(
        self,
        facts: Facts,
        crash: FaultWindow,
        owed: np.ndarray,
        sel: np.ndarray,
        times: dict[str, np.ndarray] | None = None,
    ) -> None:
        """The pairs ``owed[sel]``; *times*: more evidence per owed pair (seconds since run start)."""
        ks = np.flatnonzero(sel)
        self.count += len(ks)
        for k in ks[: MAX_LISTED - len(self.rows)].tolist():
            i = int(owed[k])
            m = int(facts.pair_msg[i])
            row = {
                "id": facts.name(facts.msg_code[m]),
                "recipient": facts.name(facts.pair_client[i]),
                "crash": crash.name,
                "persisted_s": facts.rel(facts.msg_persisted[m]),
            }
            for name, t in (times or {}).items():
                row[name] = facts.rel(t[k])
            self.rows.append(row)


def _first_live(facts: Facts, client: int, topic: int, since: float) -> float:
    """When *client* first got a message on *topic* published after *since* (NaN: never)."""
    lo = np.searchsorted(facts.dg_key, client << 32)
    hi = np.searchsorted(facts.dg_key, (client + 1) << 32)
    m = facts.dg_msg[lo:hi]
    sel = (take(facts.msg_topic, m, -1) == topic) & (take(facts.msg_invoke, m, np.nan) > since)
    return float(facts.dg_first_time[lo:hi][sel].min()) if sel.any() else float("nan")


def check_hydration(
    history: History | Facts,
    *,
    crash_faults: Collection[str] | None = None,
    require_effective: bool = True,
    replay_grace: float = REPLAY_GRACE_S,
) -> Verdict:
    """*crash_faults*: names of the crash windows; default: every window recorded with ``crash: true``."""
    facts = facts_of(history)
    h = facts.history
    crashes = _crashes(facts, crash_faults)
    ev: dict[str, Any] = {"crashes": []}
    if not crashes:
        return unknown(
            HYDRATION,
            "no crash fault window (a kill of the broker, recorded with crash: true) in the "
            "history, so hydration was not exercised.",
            **ev,
        )
    expected = 0
    missing, unverifiable, late, dead = _Listed(), _Listed(), _Listed(), _Listed()
    not_landed = []
    attempts = _attempts(facts)
    top = int(attempts.max()) if len(attempts) else -1  # the most attempts the broker ever made
    published = facts.published_mask[facts.pair_msg]
    persisted = facts.msg_persisted[facts.pair_msg]
    acked = facts.pair_ack
    for w in crashes:
        label = f"{w.name} at t={h.rel(w.start)}s"
        cev: dict[str, Any] = {
            "name": w.name,
            "start_s": h.rel(w.start),
            "end_s": h.rel(w.end),
            "effective": w.effective,
        }
        ev["crashes"].append(cev)
        if w.effective is False or (w.effective is None and require_effective):
            not_landed.append(label)
            continue
        restart = w.end if w.end is not None else facts.end
        owed = np.flatnonzero(published & (persisted <= w.start) & ~(acked <= w.start))
        if top >= MIN_CAP:  # pairs retried as often as the broker ever retried: maybe dead letters
            before = facts.dv_time < w.start
            most = np.full(facts.n_groups, -1, np.int64)
            np.maximum.at(most, facts.dv_group[before], attempts[before])
            capped = take(most, facts.pair_group[owed], -1) >= top
            dead.add(facts, w, owed, capped)
            owed = owed[~capped]
        subs = facts.pair_sub[owed]
        resub = np.array([_nan(iv.first_ok_since(restart)) for iv in facts.sub_intervals])
        resub_at = resub[subs] if len(resub) else np.empty(0)
        verifiable = ~np.isnan(resub_at)
        unverifiable.add(facts, w, owed, ~verifiable)
        g = facts.pair_group[owed]
        after, _ = facts.first_delivery_after(w.start)
        again = take(after, g, np.nan)
        n = int(verifiable.sum())
        gone = verifiable & np.isnan(again)
        missing.add(facts, w, owed, gone)
        back = verifiable & ~np.isnan(again)
        last_redelivery = float(again[back].max()) if back.any() else None
        # replayed on subscribe: not after the grace when a newer message already came on that subscription
        live_of_sub = np.full(facts.n_subs, np.nan)
        for s in np.unique(subs[back]).tolist():
            live_of_sub[s] = _first_live(
                facts, int(facts.sub_client[s]), int(facts.sub_topic[s]), float(resub[s])
            )
        live = live_of_sub[subs]
        slow = back & (again > resub_at + replay_grace) & (again > live)
        times = {"resubscribed_s": resub_at, "newer_message_s": live, "redelivered_s": again}
        late.add(facts, w, owed, slow, times)
        cev["pairs_expected"] = n
        cev["redelivery_s"] = (
            None if last_redelivery is None else round(max(0.0, last_redelivery - restart), 6)
        )
        expected += n
    ev.update(
        pairs_expected=expected,
        pairs_missing=missing.count,
        missing=missing.rows,
        replay_grace_s=replay_grace,
        pairs_not_replayed_on_subscribe=late.count,
        not_replayed_on_subscribe=late.rows,
        pairs_unverifiable=unverifiable.count,
        unverifiable=unverifiable.rows,
        max_attempt_seen=top,
        pairs_possibly_dead_lettered=dead.count,
        possibly_dead_lettered=dead.rows,
    )
    if missing.count:
        p = missing.rows[0]
        return failed(
            HYDRATION,
            f"hydration violated: {missing.count} of {expected} persisted, unacked "
            f"(message, recipient) pairs were not redelivered after the restart; first: "
            f"{p['id']} -> {p['recipient']} (persisted at t={p['persisted_s']}s, before "
            f"{p['crash']}).",
            **ev,
        )
    if late.count:
        p = late.rows[0]
        return failed(
            HYDRATION,
            f"not replayed on subscribe: {late.count} of {expected} persisted, unacked pairs came back only "
            f"by a later retry, after newer messages; first: {p['id']} -> {p['recipient']} redelivered at "
            f"t={p['redelivered_s']}s, resubscribed at t={p['resubscribed_s']}s (PROTOCOL.md: subscribed, "
            "then every outstanding delivery).",
            **ev,
        )
    if not_landed:
        return unknown(
            HYDRATION,
            "cannot judge hydration: crash "
            + ", ".join(not_landed)
            + " did not take effect or was not confirmed to.",
            **ev,
        )
    if expected == 0:
        why = (
            f"{unverifiable.count} pairs' recipients never subscribed again after the restart"
            if unverifiable.count
            else "nothing was persisted and unacked before the crash"
        )
        return unknown(HYDRATION, f"nothing to check for hydration: {why}.", **ev)
    return passed(
        HYDRATION,
        f"all {expected} persisted, unacked (message, recipient) pairs were redelivered "
        f"after {len(crashes)} crash(es).",
        **ev,
    )


def _attempts(facts: Facts) -> np.ndarray:
    """The ``attempt`` of each delivery (``dv_*`` order); -1 where none was recorded."""
    cols = facts.history.columns("deliver")
    rows = facts.dv_rows
    out = np.full(len(rows), -1, np.int64)
    if cols.has("v.attempt"):
        a = cols["v.attempt"][rows].astype(np.int64)
        out = np.where(a > 0, a, -1)
    if cols.has("value"):  # values the columns could not hold are kept whole beside their row
        xrefs = cols["value"][rows]
        for j in np.flatnonzero(xrefs >= 0).tolist():
            v = cols.sides[int(xrefs[j])]
            a = v.get("attempt") if isinstance(v, dict) else None
            if type(a) is int and a > 0:
                out[j] = a
    return out


def _nan(x: float | None) -> float:
    return float("nan") if x is None else x


def _field(item: Any, name: str, default: Any = None) -> Any:
    if isinstance(item, Mapping):
        return item.get(name, default)
    return getattr(item, name, default)


def check_no_zombies(
    history: History | Facts,
    store_listing: Iterable[Any] | None = None,
    *,
    crash_faults: Collection[str] | None = None,
) -> Verdict:
    """*store_listing*: deliveries left in the store (objects or mappings with ``message_id``,
    ``client_id`` and optional ``dead``), read after the run settled."""
    facts = facts_of(history)
    h = facts.history
    if store_listing is None:
        return unknown(
            NO_ZOMBIE,
            "no store listing was given (pass store_listing=, e.g. the durable store's "
            "Snapshot.deliveries read after the run), so zombies could not be looked for.",
        )
    try:
        rows = [
            (str(_field(d, "message_id")), str(_field(d, "client_id")), bool(_field(d, "dead", False)))
            for d in store_listing
        ]
    except TypeError as exc:
        raise TypeError(f"store_listing must be an iterable of deliveries: {exc}") from None
    crashes = _crashes(facts, crash_faults)
    last_restart = max((w.end if w.end is not None else w.start for w in crashes), default=h.start)
    acked_kept, stranded = [], []
    code = h.code
    live_rows = [(m, c) for m, c, is_dead in rows if not is_dead]
    dead = len(rows) - len(live_rows)
    live = len(live_rows)
    mc = np.array([code(m) for m, _ in live_rows], np.int64)
    cc = np.array([code(c) for _, c in live_rows], np.int64)
    ack_t = facts.acks_of(cc, mc)
    msg = facts.msg_of_code[mc]
    topic = take(facts.msg_topic, msg, -1)
    sub = facts.sub_of(cc, topic)
    resub_ok = np.array([iv.subscribed_since(last_restart) for iv in facts.sub_intervals], bool)
    resubscribed = take(resub_ok, sub, False)
    g = facts.groups_of(cc, mc)
    retried = take(facts.dg_last_time, g, np.nan) >= last_restart
    online = facts.online_mask(cc, np.full(len(cc), facts.end))
    for i, (msg_id, client) in enumerate(live_rows):
        row = {"id": msg_id, "recipient": client}
        if ack_t[i] == ack_t[i]:
            acked_kept.append(row | {"acked_s": facts.rel(ack_t[i])})
        elif msg[i] >= 0 and topic[i] >= 0 and resubscribed[i] and online[i] and not retried[i]:
            stranded.append(row)
    ev = {
        "store_rows": len(rows),
        "live": live,
        "dead_lettered": dead,
        "last_restart_s": h.rel(last_restart),
        "acked_but_kept": len(acked_kept),
        "stranded": len(stranded),
        "acked_but_kept_pairs": listed(acked_kept),
        "stranded_pairs": listed(stranded),
    }
    problems = []
    if acked_kept:
        a = acked_kept[0]
        problems.append(
            f"{len(acked_kept)} acked deliveries are still in the store (first: {a['id']} -> "
            f"{a['recipient']}, acked at t={a['acked_s']}s)"
        )
    if stranded:
        s = stranded[0]
        problems.append(
            f"{len(stranded)} unacked deliveries sit in the store but were never retried to their "
            f"connected, subscribed recipient after the last restart (first: {s['id']} -> "
            f"{s['recipient']})"
        )
    if problems:
        return failed(NO_ZOMBIE, "zombie deliveries in the store: " + "; ".join(problems) + ".", **ev)
    return passed(
        NO_ZOMBIE,
        f"no zombie: {live} live and {dead} dead-lettered deliveries left in the store, "
        "none acked and all retried.",
        **ev,
    )
