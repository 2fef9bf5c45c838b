"""The protocol fuzzer's oracle (chaos.suites.fuzz): right answers pass, every kind of wrong one fails."""

import json

import pytest
from hypothesis import given, settings

from chaos.suites.fuzz import Answer, Case, expectation, frames, judge_answer


def case(obj: object) -> Case:
    return Case("json", json.dumps(obj).encode(), obj)


def answered(*frames: dict, close: int | None = None) -> Answer:
    return Answer(
        frames=[*frames, {"type": "pong", "ref": "ours"}] if close is None else list(frames),
        close=close,
        pong=close is None,
    )


SUB = case({"type": "subscribe", "topic": "a.b"})
PUB = case({"type": "publish", "topic": "a", "payload": [1]})
ACK = case({"type": "ack", "id": "m-1"})
PING = case({"type": "ping", "ref": 3})
NOT_JSON = Case("text", b"{nope")


@pytest.mark.parametrize(
    ("sent", "answer"),
    [
        (SUB, answered({"type": "subscribed", "topic": "a.b"})),
        (case({"type": "unsubscribe", "topic": "x"}), answered({"type": "unsubscribed", "topic": "x"})),
        (PUB, answered({"type": "published", "id": "1", "recipients": 0})),
        (PUB, answered({"type": "published", "id": "1"}, {"type": "persisted", "id": "1"})),
        (ACK, answered()),  # an ack gets nothing
        (ACK, answered({"type": "error", "code": "bad_request"})),  # or an error for an id it never sent
        (PING, answered({"type": "pong", "ref": 3})),
        (NOT_JSON, answered({"type": "error", "code": "bad_request"})),
        (case([1]), answered({"type": "error", "code": "bad_request"})),
        (case({"type": "shout"}), answered({"type": "error", "code": "unknown_type"})),
        (case({"type": 7}), answered({"type": "error", "code": "unknown_type"})),
        (
            case({"type": "publish", "topic": "a b", "payload": 1}),
            answered({"type": "error", "code": "bad_request"}),
        ),
        (Case("utf8", b"\xff\xfe"), answered(close=1007)),
        (Case("binary", b"\x00"), answered(close=1003)),
        (Case("binary", b"\x00"), answered({"type": "error", "code": "bad_request"})),
        # deliveries may arrive between any frame and its answer
        (SUB, answered({"type": "message", "id": "x"}, {"type": "subscribed", "topic": "a.b"})),
        # nested deeper than Python's parser goes: still JSON, so a broker may publish it
        (
            Case("text", b'{"type":"publish","topic":"t","payload":' + b"[" * 3000 + b"]" * 3000 + b"}"),
            answered({"type": "published", "id": "d"}),
        ),
    ],
)
def test_right_answers_pass(sent: Case, answer: Answer) -> None:
    assert judge_answer(sent, answer) is None


@pytest.mark.parametrize(
    ("sent", "answer", "why"),
    [
        (SUB, answered(close=1011), "closed the connection (1011)"),
        (NOT_JSON, answered(close=1000), "closed the connection (1000)"),
        (SUB, Answer(frames=[{"type": "subscribed"}]), "went silent"),
        (SUB, answered({"type": "error", "code": "bad_request"}), "answered ['error']"),
        (PUB, answered({"type": "error", "code": "internal"}), "error code 'internal'"),
        (NOT_JSON, answered({"type": "error", "code": "internal"}), "error code 'internal'"),
        (NOT_JSON, answered(), "answered ['none']"),
        (
            case({"type": "shout"}),
            answered({"type": "error", "code": "bad_request"}),
            "error code 'bad_request'",
        ),
        (ACK, answered({"type": "acked"}), "unknown frame types"),
        (PING, answered(), "answered ['none']"),  # its own pong missing
        (SUB, answered({"type": "subscribed"}, {"type": "published"}), "answered"),
    ],
)
def test_wrong_answers_fail_with_a_reason(sent: Case, answer: Answer, why: str) -> None:
    verdict = judge_answer(sent, answer)
    assert verdict is not None and why in verdict


def test_an_oversized_frame_may_be_closed_with_1009() -> None:
    big = case({"type": "publish", "topic": "t", "payload": "x" * (1 << 20)})
    assert judge_answer(big, answered(close=1009)) is None
    assert judge_answer(big, answered({"type": "error", "code": "too_large"})) is None


@settings(max_examples=300, database=None)
@given(sent=frames)
def test_every_generated_frame_has_a_right_answer(sent: Case) -> None:
    """The oracle never asks the impossible: each frame has some answer it accepts."""
    right, codes = expectation(sent)
    assert right
    if right == {"error"}:
        assert codes
