"""Port faults (FMEA 4): the broker's port is taken, so a start on it must fail fast and clearly.

``port-squat`` holds the port with a listening socket of the lab's own that
resets every connection it accepts (clients reconnecting meanwhile fail fast
instead of waiting out a handshake nobody answers). Landed when a second bind
of the port is really refused with EADDRINUSE.
"""

from __future__ import annotations

import asyncio
import socket
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, ClassVar

from chaos.faults.base import Fault, Landing, register
from chaos.probes import port_bind_refused, reset_connection

if TYPE_CHECKING:
    from chaos.environment import Lab


@register
@dataclass
class PortSquat(Fault):
    name: ClassVar[str] = "port-squat"
    family: ClassVar[str] = "port"
    summary: ClassVar[str] = "the broker's port is held by another socket, so a start on it must fail"
    port: int = 0  # 0: the lab's broker port
    _sock: socket.socket | None = field(default=None, init=False, repr=False)
    _server: asyncio.Server | None = field(default=None, init=False, repr=False)
    _refused: bool = field(default=False, init=False, repr=False)

    async def start(self, lab: Lab) -> dict[str, Any]:
        if not self.port:
            if lab.port is None:
                raise RuntimeError("no broker port to squat yet")
            self.port = lab.port
        s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self._sock = s
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # bind over TIME_WAIT leftovers
        s.bind(("127.0.0.1", self.port))
        s.listen(16)
        self._server = await asyncio.start_server(reset_connection, sock=s)
        self._refused = port_bind_refused(self.port)
        return {"port": self.port, "bind_refused": self._refused}

    async def stop(self, lab: Lab) -> Landing:
        if self._server is not None:
            self._server.close()
            await self._server.wait_closed()
        if self._sock is not None:
            self._sock.close()
        return Landing(self._refused, {"port": self.port})
