"""The gevent FastPort client against a real reference broker: frames, acks, replays, reconnects, auth."""

from __future__ import annotations

import json
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import pytest

from chaos.launcher import BrokerUnderTest
from chaos.load.bench import locust_env
from chaos.load.client import ClientClosed, CloseInfo, FastPortClient, client_url
from tests.load.conftest import HANG, Inbox

pytestmark = pytest.mark.integration


def test_client_url_keeps_query_and_rejects_other_schemes() -> None:
    assert client_url("ws://h:1/x?a=1&client_id=old", "c1", "t") == "ws://h:1/x?a=1&client_id=c1&token=t"
    with pytest.raises(ValueError, match="ws://"):
        client_url("http://h:1/", "c1")


def test_publish_deliver_ack_and_replay_of_the_unacked(broker: BrokerUnderTest) -> None:
    inbox, replies = Inbox(), Inbox()
    sub = FastPortClient(broker.url, "sub-1", on_frame=inbox).start()
    pub = FastPortClient(broker.url, "pub-1", on_frame=replies).start()
    try:
        sub.subscribe("t")
        assert pub.publish("t", {"n": 0}, id="pub-1-0", ref="r0")
        [published] = replies.expect("published", id="pub-1-0")
        assert published["ref"] == "r0" and published["recipients"] == 1
        replies.expect("persisted", id="pub-1-0")
        [msg] = inbox.expect("message", id="pub-1-0")
        assert msg["payload"] == {"n": 0} and msg["attempt"] == 1 and msg["topic"] == "t"
        assert sub.ack("pub-1-0")
        pub.publish("t", {"n": 1}, id="pub-1-1")
        inbox.expect("message", id="pub-1-1")
        sub.roundtrip()  # the ack of pub-1-0 was handled before the pong
    finally:
        sub.close()
    assert not sub.connected
    # The same client_id again: subscribing replays only what was never acked.
    again = Inbox()
    sub2 = FastPortClient(broker.url, "sub-1", on_frame=again).start()
    try:
        sub2.subscribe("t")
        [replay] = again.expect("message", id="pub-1-1")
        assert replay["attempt"] == 2
        sub2.roundtrip()
        assert not again.of("message", id="pub-1-0")
    finally:
        sub2.close()
        pub.close()


def test_unsubscribe_and_ping(broker: BrokerUnderTest) -> None:
    replies = Inbox()
    client = FastPortClient(broker.url, "c-1", on_frame=replies).start()
    try:
        client.subscribe("t")
        client.unsubscribe("t")
        assert "t" not in client.subscribed and "t" not in client.topics
        client.publish("t", None, id="c-1-0")
        [published] = replies.expect("published", id="c-1-0")
        assert published["recipients"] == 0
        client.ping("p1")
        replies.expect("pong", ref="p1")
    finally:
        client.close()


def test_abort_reconnects_and_resubscribes(broker: BrokerUnderTest) -> None:
    inbox, closes = Inbox(), []
    opens: list[int] = []
    sub = FastPortClient(broker.url, "sub-a", on_frame=inbox, on_open=opens.append, on_close=closes.append)
    sub.start()
    pub = FastPortClient(broker.url, "pub-a").start()
    try:
        sub.subscribe("t")
        assert sub.abort()
        sub.wait_open(HANG)
        inbox.expect("subscribed", count=2, topic="t")  # sent again by the client on the new connection
        pub.publish("t", "after", id="pub-a-0")
        inbox.expect("message", id="pub-a-0")
        assert opens == [1, 2] and sub.connections == 2
        assert closes[0].cause == "abort"
    finally:
        sub.close()
        pub.close()
    assert closes[-1] == CloseInfo("close", 1000, "")


def test_reconnect_with_backoff_across_a_broker_restart(start_broker: Callable[..., BrokerUnderTest]) -> None:
    first = start_broker()
    port = first.port
    failed, inbox = Inbox(), Inbox()
    sub = FastPortClient(
        first.url,
        "sub-r",
        on_frame=inbox,
        backoff=(0.02, 0.2),
        on_connect_failed=lambda error: failed({"type": "failed", "error": error}, 0),
    )
    sub.start()
    try:
        sub.subscribe("t")
        first.kill()
        failed.expect("failed")  # it keeps trying while the broker is down
        second = start_broker(port=port)  # same port: the lab's restarts keep the URL
        sub.wait_open(HANG)
        inbox.expect(
            "subscribed", count=2, topic="t"
        )  # memory store: the subscription came back from the client
        pub = FastPortClient(second.url, "pub-r").start()
        try:
            pub.publish("t", 1, id="pub-r-0")
            inbox.expect("message", id="pub-r-0")
        finally:
            pub.close()
    finally:
        sub.close()


def test_auth_refusal_is_final_and_a_token_is_sent_as_bearer(
    start_broker: Callable[..., BrokerUnderTest], tmp_path: Path
) -> None:
    tokens = tmp_path / "tokens.json"
    tokens.write_text(json.dumps({"tokens": {"s3cret": {}}}))
    broker = start_broker("--auth", str(tokens))
    refused = FastPortClient(broker.url, "no-token")
    with pytest.raises(ClientClosed, match="401"):
        refused.start(timeout=HANG)
    assert refused.connections == 0
    ok = FastPortClient(broker.url, "with-token", token="s3cret", query={"x": "1"}).start()
    try:
        assert ok.connected and "token=s3cret" in ok.url
    finally:
        ok.close()


def test_client_works_under_gevent_monkey_patching(broker: BrokerUnderTest) -> None:
    """The same client in a process that ran ``monkey.patch_all()`` first, as Locust does."""
    out = subprocess.run(
        [sys.executable, "-m", "tests.load.patched_client_check", broker.url],
        env=locust_env(),
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert out.returncode == 0, out.stderr[-3000:]
    result = json.loads(out.stdout.strip().splitlines()[-1])
    assert result == {"patched": True, "delivered": 400, "acked_replayed": 0, "reconnected": True}
