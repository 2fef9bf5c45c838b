"""Protocol fuzzing against a live broker: every generated frame answered as PROTOCOL.md says.

The frames and the oracle are :mod:`chaos.suites.fuzz`. One broker (a fresh lab,
the broker of ``--broker-cmd``) takes every example; the fuzzing connection is
opened again only after a close PROTOCOL.md allows. About 300 frames at
``--intensity default``, 10,000 at ``heavy``. A failure prints the smallest list
of frames that still fails (Hypothesis shrinks it) and why.

The run is recorded as a scenario (``protocol_fuzzing``: its history, the broker
logs and one verdict, ``fuzz-answers``), so ``fastport-lab run fuzz`` and the
gate judge it and the report shows it: the frames and examples sent and, on a
failure, the shrunk frame list and why.
"""

import asyncio
import contextlib
import itertools
import json
import math
import threading
import time
from collections.abc import Callable

import pytest
from hypothesis import HealthCheck, given, note, settings
from hypothesis import strategies as st
from websockets.exceptions import ConnectionClosed
from websockets.sync.client import connect

from chaos.config import LabConfig
from chaos.environment import Lab, LabSession
from chaos.probes import probe_healthz
from chaos.runner import ScenarioResult, assert_all_pass
from chaos.suites.fuzz import Answer, Case, FuzzFailure, frames, fuzz_verdict, judge_answer

ANSWER_TIMEOUT = 10.0  # only a silent broker waits this long
MAX_FRAMES = 12  # in one example
_refs = itertools.count()


class LiveLab:
    """A lab kept running in a thread of its own (its event loop), with a publisher and a bystander."""

    def __init__(self, session: LabSession, config: LabConfig) -> None:
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, name="fuzz-lab", daemon=True)
        self.thread.start()
        self.lab = Lab(session, config, name="protocol_fuzzing")
        self.lab.attach_progress()

    def open(self) -> None:
        self.call(self._open())

    def call(self, coro, timeout: float = 60.0):  # noqa: ANN001, ANN201
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result(timeout)

    async def _open(self) -> None:
        await self.lab.__aenter__()
        self.bystander = self.lab.subscriber("bystander", ["fz.bystander"])
        self.pub = self.lab.publisher("fz-pub")
        await self.bystander.start()
        await self.pub.start()

    async def _bystander_served(self) -> str | None:
        answer = await self.pub.publish("fz.bystander", {"check": True})
        if not answer.ok:
            return f"the bystander's publish was not answered: {answer.status}"
        try:
            await self.bystander.wait_received([answer.id], timeout=ANSWER_TIMEOUT)
        except TimeoutError:
            return "the bystander subscriber stopped getting its messages"
        health = await probe_healthz(self.lab.port, timeout=5.0)
        return None if health["ok"] else f"/healthz did not answer 200: {health}"

    def bystander_served(self) -> str | None:
        return self.call(self._bystander_served())

    def close(self) -> None:
        try:
            self.call(self.lab.aclose())
        finally:
            self.loop.call_soon_threadsafe(self.loop.stop)
            self.thread.join(10)


class Fuzzer:
    """The fuzzing connection: sends one case, then a ping, and reads what came back."""

    def __init__(self, port: int) -> None:
        self.port = port
        self.ws = None
        self._open = contextlib.ExitStack()
        self.sent = 0

    def _connection(self):  # noqa: ANN202
        if self.ws is None:
            self.ws = self._open.enter_context(
                connect(
                    f"ws://127.0.0.1:{self.port}/?client_id=fuzzer",
                    max_size=None,
                    compression=None,
                    open_timeout=10,
                )
            )
        return self.ws

    def send(self, case: Case) -> Answer:
        ws, answer = self._connection(), Answer()
        ref = f"fz-{next(_refs)}"
        self.sent += 1
        try:
            if case.kind == "binary":
                ws.send(case.data)
            else:
                ws.send(case.data, text=True)  # raw bytes in a text frame: invalid UTF-8 stays invalid
            ws.send(json.dumps({"type": "ping", "ref": ref}))
            while True:
                raw = ws.recv(timeout=ANSWER_TIMEOUT)
                frame = json.loads(raw) if isinstance(raw, str) else {"type": "<binary>"}
                answer.frames.append(frame if isinstance(frame, dict) else {"type": "<not an object>"})
                if isinstance(frame, dict) and frame.get("type") == "pong" and frame.get("ref") == ref:
                    answer.pong = True
                    return answer
        except ConnectionClosed as exc:
            answer.close = exc.rcvd.code if exc.rcvd is not None else 1006
            self.close()
        except TimeoutError:
            pass
        return answer

    def close(self) -> None:
        self.ws = None
        self._open.close()


def _examples(lab_config: LabConfig) -> int:
    """Examples for about ``fuzz_frames`` frames in all.

    An example is a list of 1..MAX_FRAMES frames (Hypothesis shrinks a failure down
    to the fewest); Hypothesis draws about 5-6 of them on average (4 to 6.4 measured:
    the derandomized draw changes with this module's source), so the frames sent
    come out near ``fuzz_frames``; the verdict's evidence gives the count.
    """
    return max(1, math.ceil(lab_config.load.fuzz_frames / 5))


def fuzz(live: LiveLab, examples: int) -> tuple[Fuzzer, int, FuzzFailure | None, Exception | None]:
    """Run the Hypothesis examples: (the fuzzer, examples run, the last failing example, its exception).

    The last example that failed is the one Hypothesis reports: it replays the shrunk example last.
    """
    fuzzer = Fuzzer(live.lab.port)
    ran = 0
    failure: FuzzFailure | None = None

    @settings(
        max_examples=examples,
        derandomize=True,
        deadline=None,
        database=None,
        suppress_health_check=list(HealthCheck),
        print_blob=False,
        report_multiple_bugs=False,  # one shrunk failure: the one the verdict gives
    )
    @given(cases=st.lists(frames, min_size=1, max_size=MAX_FRAMES))
    def check(cases: list[Case]) -> None:
        nonlocal ran, failure
        ran += 1
        at: int | None = None
        try:
            for i, case in enumerate(cases):
                at = i  # where it failed, if it does
                note(f"sent {case!r}")
                why = judge_answer(case, fuzzer.send(case))
                assert why is None, f"{case!r}: {why}"
            at = None
            why = live.bystander_served()
            assert why is None, why
        except Exception as exc:
            failure = FuzzFailure(list(cases), str(exc).splitlines()[0] if str(exc) else repr(exc), at)
            raise

    try:
        check()
    except Exception as exc:  # Hypothesis's report of the shrunk failure: raised again once recorded
        return fuzzer, ran, failure or FuzzFailure([], f"{type(exc).__name__}: {exc}"), exc
    finally:
        fuzzer.close()
    return fuzzer, ran, None, None


@pytest.mark.integration
@pytest.mark.fmea("bad-input")
@pytest.mark.timeout(3600)
def test_every_generated_frame_is_answered_as_protocol_md_says(
    lab_session: LabSession, lab_config: LabConfig, record_scenario: Callable[..., ScenarioResult]
) -> None:
    examples = _examples(lab_config)
    t0 = time.monotonic()
    live = LiveLab(lab_session, lab_config)
    try:
        try:
            live.open()
        except Exception as exc:  # no broker to fuzz: the scenario did not complete, and says why
            why = f"{type(exc).__name__}: {exc}"
            record_scenario(live.lab, [], duration=time.monotonic() - t0, error=why)
            raise
        fuzzer, ran, failure, raised = fuzz(live, examples)
    finally:
        live.close()
    verdict = fuzz_verdict(fuzzer.sent, ran, examples, failure)
    result = record_scenario(live.lab, [verdict], duration=time.monotonic() - t0)
    print(f"fuzzed {fuzzer.sent} frames in {ran} examples")
    if raised is not None:
        raise raised  # Hypothesis's own account: the shrunk example, frame by frame
    assert_all_pass(result)
