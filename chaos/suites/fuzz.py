"""Protocol fuzzing: generated frames against a live broker, each answered as PROTOCOL.md says.

Hypothesis draws lists of frames: well-formed frames of every type with random
fields, every type in every state (an ack before any subscribe, a double
subscribe, an unsubscribe of nothing), objects with wrong, missing and extra
fields, JSON that is no object, text that is no JSON, huge and deeply nested
values, invalid UTF-8 in a text frame, and binary frames. They go one at a time
over one connection; after each, a ``ping`` with a fresh ``ref``, so everything
the broker said between the frame and its ``pong`` is that frame's answer.

The oracle (:func:`judge_answer`) holds each answer to PROTOCOL.md:

* a well-formed frame gets its reply (``subscribed``, ``unsubscribed``,
  ``published``, a ``pong``; an ``ack`` gets nothing, or at most an ``error``
  for an id it does not know, where PROTOCOL.md is silent);
* a malformed one gets an ``error`` with an allowed code (``bad_request`` or
  ``unknown_type``; ``too_large`` over the size limit);
* only an oversized frame (close 1009), invalid UTF-8 (1007) and a binary frame
  (1003, or ``bad_request``) may end the connection: any other close is a
  failure, and so is silence (no ``pong``);
* deliveries and persistence outcomes may come in between at any time.

After each example the broker must still be alive (``/healthz``) and a
bystander subscriber must still get its messages. A failing example is shrunk by
Hypothesis and printed as the list of frames that broke the broker.

The run is one verdict, :func:`fuzz_verdict` (``fuzz-answers``), recorded with
the scenario like every suite's, so the gate and the report see it: how many
frames and examples were sent, and on a failure the shrunk frame list and why.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from typing import Any

from hypothesis import strategies as st

from chaos.checkers.verdict import Verdict, failed, passed, unknown

TOPIC_RE = re.compile(r"[A-Za-z0-9_.:/-]{1,256}")
TYPES = ("subscribe", "unsubscribe", "publish", "ack", "ping")
INVALID = ("bad_request", "unknown_type")
DEEP = 5000  # nesting deeper than any JSON parser's default recursion limit


@dataclass(frozen=True)
class Case:
    """One frame to send and how it was made (``kind``: json, text, utf8, binary)."""

    kind: str
    data: bytes
    obj: Any = None  # the JSON value, for kind json

    def __repr__(self) -> str:  # what a shrunk failure prints: short, but enough to send it again
        text = self.data[:160].decode("utf-8", "backslashreplace")
        more = f" (+{len(self.data) - 160} bytes)" if len(self.data) > 160 else ""
        return f"Case({self.kind}: {text!r}{more})"


def topics() -> st.SearchStrategy[str]:
    good = st.from_regex(r"\A[a-z]{1,8}(\.[a-z0-9]{1,6}){0,2}\Z")
    bad = st.one_of(st.just(""), st.just("a b"), st.just("x" * 257), st.text(max_size=12))
    return st.one_of(good, good, bad)


json_leaf = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(),
    st.floats(allow_nan=False, allow_infinity=False),
    st.text(max_size=20),
)
json_value = st.recursive(
    json_leaf,
    lambda inner: st.one_of(
        st.lists(inner, max_size=4), st.dictionaries(st.text(max_size=8), inner, max_size=4)
    ),
    max_leaves=12,
)


def _frames_of(obj: Any, ascii_only: bool = False) -> Case:
    return Case("json", json.dumps(obj, ensure_ascii=ascii_only).encode(), obj)


@st.composite
def well_formed(draw: st.DrawFn) -> Case:
    kind = draw(st.sampled_from(TYPES))
    obj: dict[str, Any] = {"type": kind}
    if kind in ("subscribe", "unsubscribe"):
        obj["topic"] = draw(topics())
    elif kind == "publish":
        obj["topic"] = draw(topics())
        obj["payload"] = draw(json_value)
        if draw(st.booleans()):
            obj["id"] = draw(st.one_of(st.text(min_size=1, max_size=12), st.text(min_size=129, max_size=140)))
    elif kind == "ack":
        obj["id"] = draw(st.one_of(st.text(min_size=1, max_size=12), st.just("no-such-id")))
    if draw(st.booleans()):
        obj["ref"] = draw(json_value)
    return _frames_of(obj)


@st.composite
def mangled(draw: st.DrawFn) -> Case:
    """An object with a known or unknown type and wrong, missing or extra fields."""
    obj = draw(
        st.dictionaries(st.sampled_from(["topic", "payload", "id", "ref", "extra"]), json_value, max_size=4)
    )
    obj["type"] = draw(st.one_of(st.sampled_from(TYPES), st.text(max_size=10), json_leaf))
    return _frames_of(obj)


@st.composite
def huge(draw: st.DrawFn) -> Case:
    which = draw(st.sampled_from(["long", "deep", "wide"]))
    if which == "long":
        return _frames_of(
            {"type": "publish", "topic": "fz.huge", "payload": "x" * draw(st.integers(1, 200_000))}
        )
    if which == "deep":
        depth = draw(st.integers(500, DEEP))
        return Case(
            "text", b'{"type":"publish","topic":"fz.deep","payload":' + b"[" * depth + b"]" * depth + b"}"
        )
    return _frames_of({"type": "ping", "ref": list(range(draw(st.integers(1, 50_000))))})


# A lone surrogate escape is valid JSON syntax but no Unicode text: a broker may
# refuse it, but must not die re-encoding it for its subscribers or its store.
surrogate = st.sampled_from(["\\ud800", "\\udfff", "x\\ud83d"]).map(
    lambda esc: Case("text", b'{"type":"publish","topic":"fz.surrogate","payload":"' + esc.encode() + b'"}')
)


frames = st.one_of(
    well_formed(),
    well_formed(),
    mangled(),
    json_value.map(_frames_of),  # JSON that is mostly no object
    st.text(max_size=40).map(lambda t: Case("text", t.encode())),  # mostly no JSON at all
    huge(),
    surrogate,
    st.binary(min_size=1, max_size=8).map(lambda b: Case("utf8", b"\xff" + b)),  # invalid UTF-8 text
    st.binary(max_size=40).map(lambda b: Case("binary", b)),
)


def valid_topic(t: Any) -> bool:
    return isinstance(t, str) and TOPIC_RE.fullmatch(t) is not None


def expectation(case: Case) -> tuple[set[str], set[str]]:
    """(answers that are right, error codes that are right) for *case*, by PROTOCOL.md.

    An answer is a reply type (``subscribed``...), ``none`` (no reply) or ``error``;
    when ``error`` is right, the codes say which.
    """
    if case.kind == "utf8":
        return {"close:1007", "error"}, {"bad_request"}
    if case.kind == "binary":
        return {"close:1003", "error"}, {"bad_request"}
    obj = case.obj
    if case.kind == "text":
        try:
            obj = json.loads(case.data)
        except RecursionError:  # valid JSON nested deeper than this parser goes: a broker may take it
            return {"published", "error"}, {"bad_request", "too_large"}
        except ValueError:
            return {"error"}, {"bad_request"}
    if not isinstance(obj, dict) or "type" not in obj:
        return {"error"}, {"bad_request"}
    kind = obj["type"]
    if not isinstance(kind, str):
        return {"error"}, set(INVALID)
    if kind not in TYPES:
        return {"error"}, {"unknown_type"}
    if kind in ("subscribe", "unsubscribe", "publish") and not valid_topic(obj.get("topic")):
        return {"error"}, {"bad_request"}
    if kind == "publish":
        if "payload" not in obj:  # PROTOCOL.md: payload is a field of publish; brokers differ on absent
            return {"published", "error"}, {"bad_request"}
        mid = obj.get("id")
        if mid is not None and not (isinstance(mid, str) and 1 <= len(mid) <= 128):
            return {"error"}, {"bad_request"}
        return {"published", "error"}, {
            "bad_request",
            "too_large",
            "overloaded",
        }  # an id taken on another topic
    if kind == "ack":
        mid = obj.get("id")
        if not (isinstance(mid, str) and mid):
            return {"error"}, {"bad_request"}
        return {"none", "error"}, {"bad_request"}  # PROTOCOL.md: nothing; an unknown id may get an error
    if kind == "ping":
        return {"pong"}, set()
    return {kind + "d"}, set()  # subscribed, unsubscribed


@dataclass
class Answer:
    """What the broker said between a frame and the ping after it."""

    frames: list[dict[str, Any]] = field(default_factory=list)
    close: int | None = None
    pong: bool = False  # the ping after the frame was answered


ASYNC = {"message", "persisted", "persist_failed"}  # may come at any time
OVERSIZED = 1 << 20  # PROTOCOL.md's default limit: above it too_large (or a 1009 close) is right too


def judge_answer(case: Case, answer: Answer) -> str | None:
    """None when *answer* is right for *case*, else why not (a sentence)."""
    right, codes = expectation(case)
    if len(case.data) > OVERSIZED:
        right, codes = right | {"error", "close:1009"}, codes | {"too_large"}
    if answer.close is not None:
        if f"close:{answer.close}" in right:
            return None
        return f"the broker closed the connection ({answer.close}) after a frame it must answer and survive"
    if not answer.pong:
        return "the broker went silent: no pong for the ping sent after the frame"
    said = [f for f in answer.frames if f.get("type") not in ASYNC]
    kinds = [f.get("type") for f in said]
    unexpected = [k for k in kinds if k not in ("subscribed", "unsubscribed", "published", "pong", "error")]
    if unexpected:
        return f"the broker answered with unknown frame types {unexpected}"
    replies = [k for k in kinds if k != "pong"] or ["none"]
    pongs = kinds.count("pong")
    if "pong" in right:  # the frame was a ping: two pongs, its own and ours
        replies = ["pong"] if pongs >= 2 else replies
    if len(set(replies)) > 1 or replies[0] not in right:
        return f"answered {replies}, expected one of {sorted(right)}"
    if replies[0] == "error":
        code = next(f.get("code") for f in said if f.get("type") == "error")
        if code not in codes:
            return f"error code {code!r}, expected one of {sorted(codes)}"
    return None


FUZZ_ANSWERS = "fuzz-answers"  # the verdict's name


@dataclass
class FuzzFailure:
    """The example Hypothesis failed on last: after shrinking, the smallest one that still fails."""

    frames: list[Case]
    why: str
    failed_at: int | None = None  # index of the frame whose answer was wrong; None: the check after them


def fuzz_verdict(sent: int, examples: int, planned: int, failure: FuzzFailure | None) -> Verdict:
    """The fuzzing run as a verdict: pass when every frame was answered right, with the counts as evidence.

    *sent* frames in *examples* examples run (shrinking a failure runs more), of *planned*. On a failure
    the evidence holds the shrunk example's frames (each as the test printed it) and why it failed.
    """
    evidence: dict[str, Any] = {
        "frames_sent": sent,
        "examples_run": examples,
        "examples_planned": planned,
        "frames_per_example": round(sent / examples, 2) if examples else None,
    }
    if failure is not None:
        frames = [repr(c) for c in failure.frames]
        n = len(frames)
        at = failure.failed_at
        where = f"after its {n} frame(s)" if at is None else f"frame {at + 1} of {n}"
        return failed(
            FUZZ_ANSWERS,
            f"a generated example broke the protocol: {failure.why} ({where} of the shrunk example)",
            **evidence,
            failing_frames=frames,
            failed_at=failure.failed_at,
            why=failure.why,
        )
    if not sent:
        return unknown(FUZZ_ANSWERS, "no frame was sent: nothing was shown", **evidence)
    return passed(
        FUZZ_ANSWERS,
        f"all {sent} generated frames ({examples} examples) were answered as PROTOCOL.md says; after "
        "each example a bystander still got its message and /healthz answered 200",
        **evidence,
    )
