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

from chaos.checkers.facts import Facts, crash_windows, facts_of
from chaos.checkers.stats import listed
from chaos.checkers.verdict import Verdict, failed, passed, unknown
from chaos.history import History

NAME = "at-least-once"


def check_at_least_once(history: History | Facts) -> Verdict:
    facts = facts_of(history)
    h = facts.history
    published = facts.published()
    crashes = [w.start for w in crash_windows(h) if w.effective is not False]
    pairs = ambiguous = excused = 0
    lost: list[tuple[str, str, float]] = []
    for m in published:
        required, amb = facts.recipients(m)
        ambiguous += len(amb)
        for c in required:
            pairs += 1
            if (c, m.id) not in facts.deliveries:
                if any(
                    t >= m.invoke_time and (m.persisted_time is None or m.persisted_time > t) for t in crashes
                ):
                    excused += 1  # not persisted when the broker crashed: it may be gone
                    continue
                lost.append((m.id, c, m.invoke_time))
    windows = h.fault_windows()
    ev = {
        "messages_published": len(published),
        "pairs_expected": pairs,
        "pairs_ambiguous": ambiguous,
        "pairs_lost": len(lost),
        "pairs_lost_unpersisted_in_crash": excused,
        "run_end_s": h.rel(facts.end),
    }
    if pairs == 0:
        return unknown(
            NAME,
            f"no (message, recipient) pair to check: {len(published)} message(s) answered "
            "'published' but none had a subscriber surely subscribed at the time.",
            **ev,
        )
    if lost:
        ev["lost"] = listed(
            {
                "id": i,
                "recipient": c,
                "published_s": h.rel(t),
                "during_fault": next((w.name for w in windows if w.contains(t, facts.end)), None),
            }
            for i, c, t in lost
        )
        first = ev["lost"][0]
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
        f"all {pairs} (message, recipient) pairs of {len(published)} published messages were "
        f"delivered ({ambiguous} ambiguous pairs not judged).",
        **ev,
    )
