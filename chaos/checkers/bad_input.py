"""Bad input: each malformed frame is answered as PROTOCOL.md allows, and the sender is still served.

A frame may be answered with an ``error`` of an allowed code, or (for a frame
over the broker's size limit, PROTOCOL.md section 2) with a close 1009; what
came is in the evidence. After every frame that may not close the connection, a
``ping`` on the same connection must still get its ``pong``.
"""

from __future__ import annotations

from typing import Any

from chaos.checkers.verdict import Verdict, failed, passed, unknown
from chaos.history import History

NAME = BAD_INPUT = "bad-input-answered"


def check_bad_input(history: History) -> Verdict:
    """Each malformed frame got an ``error`` with an allowed code, and the sender was still served after.

    Reads ``bad-frame`` invoke/ok/fail events and the ``ping`` sent after each frame
    (recorded by the ``malformed-frames`` fault, ``chaos.faults.input``).
    """
    cases: dict[str, dict[str, Any]] = {}
    for ev in history.by_f("bad-frame", "ping"):
        case = ev.get("case") if ev.f == "bad-frame" else ev.get("after")
        if ev.f == "ping" and ev.type == "invoke":
            continue
        if ev.type == "invoke":
            cases[case] = {"case": case, "expect": ev.get("expect"), "sent_s": history.rel(ev.time)}
        elif ev.f == "bad-frame" and case in cases:
            cases[case]["answer"] = ev.get("answer") or ev.get("reason")
            cases[case]["answered_ok"] = ev.type == "ok"
        elif ev.f == "ping" and case in cases:
            cases[case]["still_served"] = ev.type == "ok"
    rows = list(cases.values())
    ev_ = {"frames": len(rows), "cases": rows}
    if not rows:
        return unknown(BAD_INPUT, "no malformed frame was sent, so error handling was not exercised.", **ev_)
    wrong = [r for r in rows if not r.get("answered_ok")]
    dropped = [r for r in rows if r.get("still_served") is False]
    problems = []
    if wrong:
        r = wrong[0]
        problems.append(
            f"{len(wrong)} of {len(rows)} malformed frames did not get an error with an allowed code "
            f"(first: {r['case']} at t={r['sent_s']}s expected {r['expect']}, got {r.get('answer')!r})"
        )
    if dropped:
        r = dropped[0]
        problems.append(
            f"after {len(dropped)} malformed frames the broker stopped answering the sender "
            f"(first after {r['case']}): one bad frame must not end the connection"
        )
    if problems:
        return failed(BAD_INPUT, "bad input mishandled: " + "; ".join(problems) + ".", **ev_)
    return passed(
        BAD_INPUT,
        f"all {len(rows)} malformed frames were answered with the right error code and the "
        "connection kept working.",
        **ev_,
    )
