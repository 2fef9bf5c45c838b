"""Input faults: malformed frames from one client, while everyone else carries on.

``malformed-frames`` opens its own connection (client id ``bad-client`` by
default) and sends every kind of malformed frame PROTOCOL.md names, one at a
time, recording each answer (``bad-frame`` events, judged by
``chaos.checkers.bad_input``); after every frame that may not close the
connection, a ``ping`` must still be answered. It runs in the background from
the start of its window: publish meanwhile, and wait for :meth:`done`.

The oversized frame is far above any sane limit (64 MiB, so a broker whose limit
is larger than PROTOCOL.md's default 1 MiB is still over it, and a broker that
takes it whole is not wrong): an ``error`` ``too_large``, a close with 1009, or
a ``pong`` (the broker's limit is even larger) are all correct answers; which
one came is in the evidence. A connection that just drops (1006, 1011) is not.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, ClassVar

from websockets.asyncio.client import connect
from websockets.exceptions import ConnectionClosed

from chaos.faults.base import Fault, Landing, register

if TYPE_CHECKING:
    from chaos.environment import Lab
    from chaos.history import History

HUGE_FRAME = 64 << 20  # bytes: above any limit a broker would sanely set


@dataclass(frozen=True)
class BadFrame:
    """One malformed frame and the error codes PROTOCOL.md allows as its answer."""

    case: str
    text: str
    codes: tuple[str, ...]
    may_close: bool = False  # over the size limit: the broker may close with 1009 (or take it)


def default_bad_frames(huge: int = HUGE_FRAME) -> list[BadFrame]:
    return [
        BadFrame("not-json", "{this is not json", ("bad_request",)),
        BadFrame("not-an-object", "[1, 2, 3]", ("bad_request",)),
        BadFrame("no-type", json.dumps({"topic": "t"}), ("bad_request",)),
        BadFrame("type-not-string", json.dumps({"type": 7}), ("bad_request", "unknown_type")),
        BadFrame("unknown-type", json.dumps({"type": "explode"}), ("unknown_type",)),
        BadFrame("subscribe-no-topic", json.dumps({"type": "subscribe"}), ("bad_request",)),
        BadFrame("subscribe-bad-topic", json.dumps({"type": "subscribe", "topic": "a b!"}), ("bad_request",)),
        BadFrame("publish-no-topic", json.dumps({"type": "publish", "payload": 1}), ("bad_request",)),
        BadFrame(
            "publish-topic-too-long",
            json.dumps({"type": "publish", "topic": "x" * 300, "payload": 1}),
            ("bad_request",),
        ),
        BadFrame(
            "publish-id-not-string", json.dumps({"type": "publish", "topic": "t", "id": 5}), ("bad_request",)
        ),
        BadFrame("ack-no-id", json.dumps({"type": "ack"}), ("bad_request",)),
        BadFrame("too-large", json.dumps({"type": "ping", "pad": "x" * (huge + 16)}), ("too_large",), True),
    ]


async def _next_frame(ws: Any, timeout: float) -> dict[str, Any]:
    async with asyncio.timeout(timeout):
        raw = await ws.recv()
    try:
        obj = json.loads(raw)
    except ValueError:
        return {"type": "?", "raw": str(raw)[:200]}
    return obj if isinstance(obj, dict) else {"type": "?", "raw": str(raw)[:200]}


def _close_of(ws: Any) -> dict[str, Any]:
    rcvd = ws.protocol.close_rcvd
    return {
        "close_code": None if rcvd is None else rcvd.code,
        "close_reason": None if rcvd is None else rcvd.reason,
    }


@register
@dataclass
class MalformedFrames(Fault):
    name: ClassVar[str] = "malformed-frames"
    family: ClassVar[str] = "input"
    summary: ClassVar[str] = "one client sends every kind of malformed frame; each must get its error"
    client_id: str = "bad-client"
    pace: float = 0.0  # seconds between frames: spread over the workload (pacing, not synchronisation)
    answer_timeout: float = 5.0
    frames: list[BadFrame] | None = None
    _task: asyncio.Task[None] | None = field(default=None, init=False, repr=False)
    _answered: int = field(default=0, init=False, repr=False)
    _sent: int = field(default=0, init=False, repr=False)

    def targets(self) -> list[str]:
        return [self.client_id]

    @property
    def done(self) -> bool:
        return self._task is not None and self._task.done()

    async def wait(self) -> None:
        if self._task is not None:
            await asyncio.shield(self._task)

    async def start(self, lab: Lab) -> dict[str, Any]:
        # 64 MiB of JSON takes a moment to build: not on the event loop the workload runs on.
        frames = self.frames if self.frames is not None else await asyncio.to_thread(default_bad_frames)
        self._task = asyncio.create_task(self._attack(lab, frames), name="malformed-frames")
        return {"frames": [f.case for f in frames]}

    async def stop(self, lab: Lab) -> Landing:
        if self._task is not None:
            try:
                await self._task
            except Exception as exc:
                return Landing(False, {"answered": self._answered, "sent": self._sent, "error": repr(exc)})
        return Landing(self._answered > 0, {"answered": self._answered, "sent": self._sent})

    async def _attack(self, lab: Lab, frames: list[BadFrame]) -> None:
        h = lab.history
        cid = self.client_id
        url = f"ws://127.0.0.1:{lab.port}/?client_id={cid}"
        ws = await connect(url, max_size=None, open_timeout=10, compression=None)
        try:
            await self._send_all(ws, h, cid, frames)
        finally:
            # After a 1009 with megabytes still queued, asyncio's transport may already be gone
            # when websockets closes it (AttributeError deep in selector_events): nothing to close.
            with contextlib.suppress(Exception):
                await ws.close()

    async def _send_all(self, ws: Any, h: History, cid: str, frames: list[BadFrame]) -> None:
        for n, f in enumerate(frames):
            if self.pace:
                await asyncio.sleep(self.pace)
            h.append(cid, "invoke", "bad-frame", value={"case": f.case, "expect": list(f.codes)})
            self._sent += 1
            try:
                await ws.send(f.text)
                answer = await _next_frame(ws, self.answer_timeout)
            except ConnectionClosed as exc:
                close = _close_of(ws)
                if f.may_close and close["close_code"] == 1009:
                    self._answered += 1
                    h.append(cid, "ok", "bad-frame", value={"case": f.case, "answer": close})
                else:
                    h.append(cid, "fail", "bad-frame", value={"case": f.case, "reason": repr(exc), **close})
                return
            except TimeoutError as exc:
                h.append(cid, "fail", "bad-frame", value={"case": f.case, "reason": repr(exc)})
                continue
            code = answer.get("code") if answer.get("type") == "error" else None
            took_it = f.may_close and answer.get("type") == "pong"  # its limit is larger still
            ok = code in f.codes or took_it
            self._answered += ok
            h.append(cid, "ok" if ok else "fail", "bad-frame", value={"case": f.case, "answer": answer})
            if f.may_close and code is not None:
                with contextlib.suppress(TimeoutError, ConnectionClosed):
                    await _next_frame(ws, 1.0)  # the broker may close after the error: see it happen
                if ws.protocol.close_rcvd is not None:
                    return
            if f.may_close and ws.protocol.close_rcvd is not None:
                return
            ref = f"alive-{n}"
            h.append(cid, "invoke", "ping", value={"ref": ref, "after": f.case})
            try:
                await ws.send(json.dumps({"type": "ping", "ref": ref}))
                pong = await _next_frame(ws, self.answer_timeout)
                ok = pong.get("type") == "pong" and pong.get("ref") == ref
            except (TimeoutError, ConnectionClosed) as exc:
                pong, ok = {"error": repr(exc)}, False
            h.append(cid, "ok" if ok else "fail", "ping", value={"ref": ref, "answer": pong})
