"""The nemesis: injects faults into a running lab and records each one's window and evidence.

Faults are data (:mod:`chaos.faults`); the nemesis is the one place that turns
a fault into history, so every fault is recorded the same way and always
healed, also when the body fails or is cancelled::

    async with nemesis.inject("storage-latency", latency_ms=300):
        ...  # publish while PostgreSQL answers slowly

It records ``fault-start`` (process ``"nemesis"``; ``name``, ``family``,
``targets``, ``crash``, the parameters) *before* the fault is injected, so the
window covers the whole injection, and ``fault-stop`` after it is healed, with
the fault's own proof of landing: ``"effective": true|false|null`` and the
evidence (probes, pids, byte counts). A fault that could not even start is
recorded as a window with ``effective: false`` and the error.
"""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator
from typing import TYPE_CHECKING, Any

from chaos.faults import REGISTRY, Fault, FaultUnsupported, Registry

if TYPE_CHECKING:
    from chaos.environment import Lab

__all__ = ["FaultUnsupported", "Nemesis"]


class Nemesis:
    """Fault injection on one :class:`~chaos.environment.Lab`; ``async with nemesis.inject(...)``."""

    def __init__(self, lab: Lab, registry: Registry = REGISTRY) -> None:
        self.lab = lab
        self.history = lab.history
        self.registry = registry

    def fault(self, fault: Fault | str, *args: Any, **params: Any) -> Fault:
        """*fault* itself, or the registry's fault of that name built with *params*."""
        if isinstance(fault, Fault):
            if args or params:
                raise TypeError(
                    "parameters go to the fault's constructor, not to inject(), for a Fault object"
                )
            return fault
        return self.registry.create(fault, *args, **params)

    @contextlib.asynccontextmanager
    async def inject(self, fault: Fault | str, *args: Any, **params: Any) -> AsyncIterator[Fault]:
        """Inject *fault* for the duration of the block; raises FaultUnsupported if this lab cannot."""
        f = self.fault(fault, *args, **params)
        why = f.unsupported(self.lab)
        if why is not None:
            raise FaultUnsupported(f"{f.name}: {why}")
        start: dict[str, Any] = {"name": f.name, "family": f.family, "params": f.params()}
        if f.targets():
            start["targets"] = f.targets()
        if f.crash:
            start["crash"] = True
        self.history.append("nemesis", "info", "fault-start", value=start)
        try:
            began = await f.start(self.lab)
        except BaseException as exc:
            self._stop(f, False, {"error": f"the fault could not be injected: {type(exc).__name__}: {exc}"})
            raise
        try:
            yield f
        finally:
            try:
                landing = await f.stop(self.lab)
            except BaseException as exc:
                self._stop(f, False, {**began, "error": f"healing failed: {type(exc).__name__}: {exc}"})
                raise
            self._stop(f, landing.effective, {**began, **landing.evidence})

    def _stop(self, f: Fault, effective: bool | None, evidence: dict[str, Any]) -> None:
        self.history.append(
            "nemesis", "info", "fault-stop", value={"name": f.name, "effective": effective, **evidence}
        )
