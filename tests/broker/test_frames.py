"""Frame parsing and encoding: every error code the parser can produce, and exact encodings."""

from __future__ import annotations

import json

import pytest

from broker import frames as F


def err(data: str | bytes, max_frame: int = F.DEFAULT_MAX_FRAME) -> F.FrameError:
    with pytest.raises(F.FrameError) as info:
        F.parse(data, max_frame)
    return info.value


def test_parses_every_client_frame() -> None:
    assert F.parse('{"type":"subscribe","topic":"a/b"}') == F.Subscribe("a/b")
    assert F.parse('{"type":"unsubscribe","topic":"a:b","ref":1}') == F.Unsubscribe("a:b", 1)
    assert F.parse('{"type":"publish","topic":"t","payload":null}') == F.Publish("t", None)
    assert F.parse('{"type":"publish","topic":"t","payload":[1],"id":"x","ref":"r"}') == F.Publish(
        "t", [1], "x", "r"
    )
    assert F.parse('{"type":"ack","id":"x"}') == F.Ack("x")
    assert F.parse('{"type":"ping"}') == F.Ping()
    assert F.parse('{"type":"ping","ref":{"a":1}}') == F.Ping({"a": 1})


@pytest.mark.parametrize(
    "data, code",
    [
        ("not json", F.BAD_REQUEST),
        ("[1,2]", F.BAD_REQUEST),
        ('"str"', F.BAD_REQUEST),
        ("{}", F.BAD_REQUEST),
        ('{"type":5}', F.BAD_REQUEST),
        ('{"type":"frobnicate"}', F.UNKNOWN_TYPE),
        ('{"type":"subscribe"}', F.BAD_REQUEST),
        ('{"type":"subscribe","topic":""}', F.BAD_REQUEST),
        ('{"type":"subscribe","topic":"sp ace"}', F.BAD_REQUEST),
        ('{"type":"subscribe","topic":"' + "x" * 257 + '"}', F.BAD_REQUEST),
        ('{"type":"subscribe","topic":7}', F.BAD_REQUEST),
        ('{"type":"publish","topic":"t"}', F.BAD_REQUEST),
        ('{"type":"publish","topic":"t","payload":1,"id":""}', F.BAD_REQUEST),
        ('{"type":"publish","topic":"t","payload":1,"id":3}', F.BAD_REQUEST),
        ('{"type":"publish","topic":"t","payload":1,"id":"' + "i" * 129 + '"}', F.BAD_REQUEST),
        ('{"type":"publish","topic":"t","payload":NaN}', F.BAD_REQUEST),
        # found by the protocol fuzzer: a lone surrogate parsed, then failed to encode (``internal``)
        ('{"type":"publish","topic":"t","payload":"\\ud800"}', F.BAD_REQUEST),
        ('{"type":"publish","topic":"t","payload":1,"id":"x\\uDFFF"}', F.BAD_REQUEST),
        ('{"type":"ping","ref":["\\udc00"]}', F.BAD_REQUEST),
        ('{"type":"ack"}', F.BAD_REQUEST),
        ('{"type":"ack","id":null}', F.BAD_REQUEST),
    ],
)
def test_refusals_carry_the_protocol_code(data: str, code: str) -> None:
    assert err(data).code == code


def test_a_surrogate_pair_and_an_escaped_backslash_are_text() -> None:
    assert F.parse('{"type":"publish","topic":"t","payload":"\\ud83d\\ude00"}').payload == "\U0001f600"
    assert F.parse('{"type":"ping","ref":"\\\\ud800"}').ref == "\\ud800"


def test_ref_is_echoed_in_errors_when_the_object_parsed() -> None:
    assert err('{"type":"nope","ref":"r1"}').ref == "r1"
    assert err('{"type":"subscribe","ref":9}').ref == 9


def test_binary_frames_are_refused() -> None:
    assert err(b'{"type":"ping"}').code == F.BAD_REQUEST


def test_too_large_counts_utf8_bytes() -> None:
    small = '{"type":"publish","topic":"t","payload":"' + "é" * 40 + '"}'
    assert len(small) < 100 < len(small.encode())
    assert err(small, max_frame=100).code == F.TOO_LARGE
    assert F.parse(small, max_frame=200).payload == "é" * 40
    assert err("x" * 101, max_frame=100).code == F.TOO_LARGE


def test_topic_and_client_id_rules() -> None:
    assert F.valid_topic("a/b.c:d_e-f") and not F.valid_topic("a b") and not F.valid_topic("")
    assert F.valid_client_id("c-1.a:b_") and not F.valid_client_id("a/b") and not F.valid_client_id("x" * 129)


def test_message_encoder_encodes_once_and_varies_only_attempt() -> None:
    enc = F.MessageEncoder("t", "m1", {"k": ["v", 1.5]}, 12.25)
    one = json.loads(enc.first)
    assert one == {
        "type": "message",
        "topic": "t",
        "id": "m1",
        "payload": {"k": ["v", 1.5]},
        "published_at": 12.25,
        "attempt": 1,
    }
    assert enc.frame(1) is enc.first
    assert json.loads(enc.frame(12)) == {**one, "attempt": 12}


def test_reply_frames() -> None:
    assert json.loads(F.published_frame("m", None, 3)) == {
        "type": "published",
        "id": "m",
        "ref": None,
        "recipients": 3,
    }
    assert json.loads(F.persisted_frame("m")) == {"type": "persisted", "id": "m"}
    assert json.loads(F.persist_failed_frame("m", "why")) == {
        "type": "persist_failed",
        "id": "m",
        "reason": "why",
    }
    assert json.loads(F.pong_frame(5)) == {"type": "pong", "ref": 5}
    assert json.loads(F.error_frame("forbidden", "no", "r")) == {
        "type": "error",
        "code": "forbidden",
        "message": "no",
        "ref": "r",
    }
    assert "ref" not in json.loads(F.error_frame("internal", "x"))
    assert json.loads(F.subscribed_frame("t")) == {"type": "subscribed", "topic": "t"}
    assert json.loads(F.unsubscribed_frame("t")) == {"type": "unsubscribed", "topic": "t"}
