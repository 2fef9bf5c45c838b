"""FMEA 3: after a crash, everything persisted and unacked is redelivered, and nothing rots in the store.

Hydration: for each crash window (recorded by the nemesis with ``crash: true``;
start = the kill, end = the broker listening again), each (message, recipient)
pair whose publisher saw ``persisted`` before the crash, whose recipient was
surely subscribed when it was published and had not acked it before the crash,
must be delivered again after the crash, provided the recipient subscribed
again after the restart (otherwise the pair is counted as unverifiable). The
evidence gives, per crash, ``redelivery_s``: from the restart to the last
redelivery of an owed pair (the gate's ``max_hydration_s`` reads it).

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

from chaos.checkers.facts import Facts, crash_windows, facts_of
from chaos.checkers.stats import listed
from chaos.checkers.verdict import Verdict, failed, passed, unknown
from chaos.history import FaultWindow, History

HYDRATION = "hydration"
NO_ZOMBIE = "no-zombie"
REPLAY_GRACE_S = 1.0


def _crashes(facts: Facts, crash_faults: Collection[str] | None) -> list[FaultWindow]:
    if crash_faults is None:
        return crash_windows(facts.history)
    return [w for w in facts.history.fault_windows() if w.name in crash_faults]


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
    missing: list[dict[str, Any]] = []
    unverifiable: list[dict[str, Any]] = []
    not_landed = []
    late: list[dict[str, Any]] = []
    published = facts.published()
    live_cache: dict[tuple[str, str, float], float | None] = {}

    def first_live(client: str, topic: str, since: float) -> float | None:
        """When *client* first got a message on *topic* published after *since* (its resubscribe)."""
        key = (client, topic, since)
        if key not in live_cache:
            times = [
                d[0].time
                for (c, mid), d in facts.deliveries.items()
                if c == client
                and (m2 := facts.messages.get(mid)) is not None
                and m2.topic == topic
                and m2.invoke_time > since
            ]
            live_cache[key] = min(times) if times else None
        return live_cache[key]

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
        n = 0
        last_redelivery: float | None = None
        for m in published:
            if m.persisted_time is None or m.persisted_time > w.start:
                continue
            required, _ = facts.recipients(m)
            for c in required:
                acked = facts.acks.get((c, m.id))
                if acked is not None and acked <= w.start:
                    continue
                pair = {"id": m.id, "recipient": c, "crash": w.name, "persisted_s": h.rel(m.persisted_time)}
                iv = facts.subscriptions[(c, m.topic)]
                if not iv.subscribed_since(restart):
                    unverifiable.append(pair)
                    continue
                n += 1
                again = next((d.time for d in facts.deliveries.get((c, m.id), ()) if d.time > w.start), None)
                if again is None:
                    missing.append(pair)
                    continue
                if last_redelivery is None or again > last_redelivery:
                    last_redelivery = again
                resub = min((t for t in iv.oks if t >= restart), default=None)
                live = None if resub is None else first_live(c, m.topic, resub)
                if resub is not None and live is not None and again > resub + replay_grace and again > live:
                    late.append(
                        pair
                        | {
                            "resubscribed_s": h.rel(resub),
                            "newer_message_s": h.rel(live),
                            "redelivered_s": h.rel(again),
                        }
                    )
        cev["pairs_expected"] = n
        cev["redelivery_s"] = (
            None if last_redelivery is None else round(max(0.0, last_redelivery - restart), 6)
        )
        expected += n
    ev.update(
        pairs_expected=expected,
        pairs_missing=len(missing),
        missing=listed(missing),
        replay_grace_s=replay_grace,
        pairs_not_replayed_on_subscribe=len(late),
        not_replayed_on_subscribe=listed(late),
        pairs_unverifiable=len(unverifiable),
        unverifiable=listed(unverifiable),
    )
    if missing:
        p = missing[0]
        return failed(
            HYDRATION,
            f"hydration violated: {len(missing)} of {expected} persisted, unacked "
            f"(message, recipient) pairs were not redelivered after the restart; first: "
            f"{p['id']} -> {p['recipient']} (persisted at t={p['persisted_s']}s, before "
            f"{p['crash']}).",
            **ev,
        )
    if late:
        p = late[0]
        return failed(
            HYDRATION,
            f"not replayed on subscribe: {len(late)} of {expected} persisted, unacked pairs came back only "
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
            f"{len(unverifiable)} pairs' recipients never subscribed again after the restart"
            if unverifiable
            else "nothing was persisted and unacked before the crash"
        )
        return unknown(HYDRATION, f"nothing to check for hydration: {why}.", **ev)
    return passed(
        HYDRATION,
        f"all {expected} persisted, unacked (message, recipient) pairs were redelivered "
        f"after {len(crashes)} crash(es).",
        **ev,
    )


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
    live = dead = 0
    for msg_id, client, is_dead in rows:
        if is_dead:
            dead += 1
            continue
        live += 1
        row = {"id": msg_id, "recipient": client}
        if (client, msg_id) in facts.acks:
            acked_kept.append(row | {"acked_s": h.rel(facts.acks[(client, msg_id)])})
            continue
        m = facts.messages.get(msg_id)
        if m is None or m.topic is None:
            continue
        iv = facts.subscriptions.get((client, m.topic))
        resubscribed = iv is not None and iv.subscribed_since(last_restart)
        retried = any(d.time >= last_restart for d in facts.deliveries.get((client, msg_id), ()))
        if resubscribed and facts.online(client, facts.end) and not retried:
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
