"""Faults as data: the protocol every fault follows, and the registry that names them.

A fault is a small object built from its parameters (a dataclass): it knows its
``name`` and ``family``, how to ``start`` on a lab, and how to ``stop`` and say
whether it landed (:class:`Landing`): the evidence comes from what happened on
the wire and in the processes, never from what the lab intended. A fault
without proof that it landed is recorded ``effective: false`` (or ``None``),
and the checkers then say ``unknown``, never ``pass``.

The :class:`Registry` maps names to fault classes, so the suites, the generated
schedules, the load schedules and the soak all draw from one list::

    fault = REGISTRY.create("storage-latency", latency_ms=300)
    async with nemesis.inject(fault):
        ...

What a fault records (``fault-start`` / ``fault-stop`` events, see
:mod:`chaos.nemesis`) carries its ``family`` and flags such as ``crash``, which
is how the checkers classify windows without a copied list of names.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, ClassVar, TypeVar

if TYPE_CHECKING:
    from chaos.environment import Lab

FAMILIES = ("storage", "subscriber", "process", "port", "input")
NEEDS = {
    "durable": "the broker must run with a durable store (--store postgres)",
    "restartable-postgres": "the lab must own PostgreSQL (embedded), not FASTPORT_LAB_PG_DSN's external one",
}


class FaultUnsupported(RuntimeError):
    """This environment cannot inject the fault (e.g. stopping an external PostgreSQL); says why."""


class FaultError(ValueError):
    """An unknown fault name or bad parameters; the message names the choices."""


@dataclass(frozen=True)
class Landing:
    """Whether a fault landed (``None``: could not tell), with the evidence that shows it."""

    effective: bool | None
    evidence: dict[str, Any] = field(default_factory=dict)


@dataclass
class Fault:
    """Base of every fault; subclasses are dataclasses whose fields are the fault's parameters."""

    name: ClassVar[str]
    family: ClassVar[str]
    summary: ClassVar[str]
    crash: ClassVar[bool] = False  # the broker is killed and restarted: hydration applies to the window
    needs: ClassVar[frozenset[str]] = frozenset()

    def targets(self) -> list[str]:
        """Client ids the fault is aimed at (everyone else must not notice it)."""
        return []

    def params(self) -> dict[str, Any]:
        """The JSON parameters to record (objects such as a target client are shown by their id)."""
        out: dict[str, Any] = {}
        for f in dataclasses.fields(self):
            if not f.init or f.name.startswith("_"):
                continue
            v = getattr(self, f.name)
            if isinstance(v, (str, int, float, bool)) or v is None:
                out[f.name] = v
            elif isinstance(v, (list, tuple)) and all(isinstance(x, (str, int, float)) for x in v):
                out[f.name] = len(v) if len(v) > 20 else list(v)
        return out

    def unsupported(self, lab: Lab) -> str | None:
        """Why this lab cannot take the fault, or None."""
        if "durable" in self.needs and not lab.config.durable:
            return NEEDS["durable"]
        if "restartable-postgres" in self.needs and not lab.session.pg.can_restart:
            return NEEDS["restartable-postgres"]
        return None

    async def start(self, lab: Lab) -> dict[str, Any]:
        """Inject the fault; returns evidence known at the start."""
        raise NotImplementedError

    async def stop(self, lab: Lab) -> Landing:
        """Heal the fault (always called, also when the body failed) and say whether it landed."""
        raise NotImplementedError


F = TypeVar("F", bound=type[Fault])


class Registry:
    """Fault classes by name; the one list every suite, schedule, load run and soak draws from."""

    def __init__(self) -> None:
        self._faults: dict[str, type[Fault]] = {}

    def register(self, cls: F) -> F:
        name = cls.name
        if name in self._faults:
            raise FaultError(f"fault {name!r} is registered twice")
        if cls.family not in FAMILIES:
            raise FaultError(f"fault {name!r} has unknown family {cls.family!r}; families: {FAMILIES}")
        self._faults[name] = cls
        return cls

    def get(self, name: str) -> type[Fault]:
        try:
            return self._faults[name]
        except KeyError:
            raise FaultError(f"unknown fault {name!r}; known: {', '.join(sorted(self._faults))}") from None

    def create(self, name: str, *args: Any, **params: Any) -> Fault:
        cls = self.get(name)
        try:
            return cls(*args, **params)
        except TypeError as exc:
            fields = ", ".join(f.name for f in dataclasses.fields(cls) if f.init) or "none"
            raise FaultError(f"fault {name!r}: {exc} (parameters: {fields})") from None

    def names(
        self, family: str | None = None, where: Callable[[type[Fault]], bool] | None = None
    ) -> list[str]:
        return [
            n
            for n, c in self._faults.items()
            if (family is None or c.family == family) and (where is None or where(c))
        ]

    def __iter__(self) -> Iterator[type[Fault]]:
        return iter(self._faults.values())

    def __contains__(self, name: object) -> bool:
        return name in self._faults

    def catalogue(self) -> list[dict[str, Any]]:
        """Name, family, summary and parameters of each fault (for docs and ``--help``)."""
        return [
            {
                "name": c.name,
                "family": c.family,
                "summary": c.summary,
                "crash": c.crash,
                "needs": sorted(c.needs),
                "params": [f.name for f in dataclasses.fields(c) if f.init],
            }
            for c in self._faults.values()
        ]


REGISTRY = Registry()
register = REGISTRY.register
