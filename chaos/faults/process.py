"""Process faults (FMEA 3): the broker killed with SIGKILL and restarted, or frozen with SIGSTOP.

* ``broker-kill``: SIGKILL of the broker's whole process group, restart on the
  same port when the window ends (window: the kill until it listens again).
  Recorded with ``crash: true``, so hydration is judged over it. Landed when
  the old pid died of SIGKILL and a new pid listens on the same port.
* ``broker-pause``: SIGSTOP, SIGCONT when the window ends. Landed when
  ``/healthz`` stopped answering while frozen and answers again after.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, ClassVar

from chaos.faults.base import Fault, Landing, register
from chaos.probes import probe_healthz

if TYPE_CHECKING:
    from chaos.environment import Lab


@register
@dataclass
class BrokerKill(Fault):
    name: ClassVar[str] = "broker-kill"
    family: ClassVar[str] = "process"
    summary: ClassVar[str] = "SIGKILL of the broker, restarted on the same port when the window ends"
    crash: ClassVar[bool] = True
    _evidence: dict[str, Any] = field(default_factory=dict, init=False, repr=False)

    async def start(self, lab: Lab) -> dict[str, Any]:
        old = lab.broker
        assert old is not None
        pid, port = old.pid, lab.port
        code = await asyncio.to_thread(old.kill)
        self._evidence = {"old_pid": pid, "port": port, "exit_code": code}
        return {"signal": "SIGKILL", "pid": pid, "port": port}

    async def stop(self, lab: Lab) -> Landing:
        ev = self._evidence
        new = await lab.start_broker(port=ev["port"])
        ev.update(new_pid=new.pid, new_port=new.port)
        return Landing(ev["exit_code"] == -9 and new.pid != ev["old_pid"] and new.port == ev["port"], ev)


@register
@dataclass
class BrokerPause(Fault):
    name: ClassVar[str] = "broker-pause"
    family: ClassVar[str] = "process"
    summary: ClassVar[str] = "SIGSTOP of the broker (frozen with its sockets open), SIGCONT at the end"
    _evidence: dict[str, Any] = field(default_factory=dict, init=False, repr=False)

    async def start(self, lab: Lab) -> dict[str, Any]:
        b = lab.broker
        assert b is not None and lab.port is not None
        b.stop()
        self._evidence = {"pid": b.pid, "healthz_while_stopped": await probe_healthz(lab.port, timeout=0.5)}
        return {"signal": "SIGSTOP", "pid": b.pid}

    async def stop(self, lab: Lab) -> Landing:
        b = lab.broker
        assert b is not None and lab.port is not None
        b.cont()
        ev = self._evidence
        ev["healthz_after"] = await probe_healthz(lab.port, timeout=10.0)
        frozen = not ev.get("healthz_while_stopped", {"ok": True})["ok"]
        return Landing(frozen and ev["healthz_after"]["ok"], ev)
