"""Run by test_client: the load client in a monkey-patched process (as inside Locust), one JSON line out.

Publishes 200 messages, receives and acks them all in one subscriber, cuts its
connection, lets it reconnect and resubscribe, publishes 200 more; prints what
it saw. Exit 1 with a traceback on any failure.
"""

from gevent import monkey

monkey.patch_all()

import json  # noqa: E402
import socket  # noqa: E402
import sys  # noqa: E402

import gevent  # noqa: E402
from gevent.event import Event  # noqa: E402

from chaos.load.client import FastPortClient  # noqa: E402


def main(url: str) -> None:
    seen: list[dict] = []
    got = Event()

    def on_frame(frame: dict, size: int) -> None:
        if frame["type"] == "message":
            seen.append(frame)
            sub.ack(frame["id"])
            got.set()

    def wait_for(count: int) -> None:
        with gevent.Timeout(30):
            while len(seen) < count:
                got.clear()
                got.wait()

    sub = FastPortClient(url, "patched-sub", on_frame=on_frame).start()
    pub = FastPortClient(url, "patched-pub").start()
    sub.subscribe("t")
    for i in range(200):
        pub.publish("t", i, id=f"patched-pub-{i}")
    wait_for(200)
    sub.roundtrip()
    sub.abort()
    sub.wait_open(30)
    sub.wait_subscribed(timeout=30)
    for i in range(200, 400):
        pub.publish("t", i, id=f"patched-pub-{i}")
    wait_for(400)
    sub.roundtrip()
    replayed = sum(1 for f in seen if f["attempt"] > 1)
    sub.close()
    pub.close()
    print(
        json.dumps(
            {
                "patched": socket.socket is gevent.socket.socket and monkey.is_module_patched("socket"),
                "delivered": len(seen),
                "acked_replayed": replayed,
                "reconnected": sub.connections == 2,
            }
        )
    )


if __name__ == "__main__":
    main(sys.argv[1])
