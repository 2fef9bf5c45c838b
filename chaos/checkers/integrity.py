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

from chaos.checkers.digest import payload_checksum, recorded_digest, recorded_self_check
from chaos.checkers.facts import Facts, facts_of
from chaos.checkers.stats import listed
from chaos.checkers.verdict import Verdict, failed, passed, unknown
from chaos.history import History

NAME = "integrity"
__all__ = ["NAME", "check_integrity", "payload_checksum"]


def check_integrity(history: History | Facts) -> Verdict:
    facts = facts_of(history)
    h = facts.history
    phantom, altered, misrouted = [], [], []
    delivered = 0
    for (client, msg_id), evs in facts.deliveries.items():
        m = facts.messages.get(msg_id)
        for d in evs:
            delivered += 1
            at = h.rel(d.time)
            if m is None:
                phantom.append({"id": msg_id, "recipient": client, "topic": d.topic, "delivered_s": at})
                continue
            digest = recorded_digest(d.value)
            if (digest is not None and m.digest is not None and digest != m.digest) or not (
                recorded_self_check(d.value)
            ):
                altered.append(
                    {
                        "id": msg_id,
                        "recipient": client,
                        "delivered_s": at,
                        "published_digest": m.digest,
                        "delivered_digest": digest,
                        "delivered_bytes": d.get("bytes"),
                        "self_check": recorded_self_check(d.value),
                    }
                )
            end = m.answered_time if m.answered_time is not None else d.time
            if d.topic != m.topic or not facts.possibly_subscribed(client, m.topic, m.invoke_time, end):
                misrouted.append(
                    {
                        "id": msg_id,
                        "recipient": client,
                        "delivered_s": at,
                        "delivered_topic": d.topic,
                        "message_topic": m.topic,
                    }
                )
    ev = {
        "deliveries": delivered,
        "phantom_count": len(phantom),
        "altered_count": len(altered),
        "misrouted_count": len(misrouted),
        "phantom": listed(phantom),
        "altered": listed(altered),
        "misrouted": listed(misrouted),
    }
    if delivered == 0:
        return unknown(NAME, "no delivery in the history, so integrity could not be checked.", **ev)
    problems = []
    if phantom:
        p = phantom[0]
        problems.append(
            f"{len(phantom)} phantom deliveries of ids never published (first: {p['id']} -> "
            f"{p['recipient']} at t={p['delivered_s']}s)"
        )
    if altered:
        a = altered[0]
        problems.append(
            f"{len(altered)} deliveries with an altered payload (first: {a['id']} -> "
            f"{a['recipient']} at t={a['delivered_s']}s)"
        )
    if misrouted:
        r = misrouted[0]
        problems.append(
            f"{len(misrouted)} deliveries on a topic the recipient was not subscribed to (first: "
            f"{r['id']} on {r['delivered_topic']!r} -> {r['recipient']} at t={r['delivered_s']}s)"
        )
    if problems:
        return failed(NAME, "integrity violated: " + "; ".join(problems) + ".", **ev)
    return passed(
        NAME, f"all {delivered} deliveries match a published message, payload and subscription.", **ev
    )
