"""The lab's faults, one module per family, all in one registry (:data:`REGISTRY`).

=============  ==================================================================
family         faults
=============  ==================================================================
storage        ``storage-latency``, ``storage-down``, ``storage-hang``,
               ``storage-reset``, ``postgres-stop``
subscriber     ``link-blackhole``, ``link-reset``, ``link-cut`` (on a subscriber's own
               fault-proxy link), ``subscriber-slow``, ``subscriber-cut``
process        ``broker-kill`` (a crash: hydration applies), ``broker-pause``
port           ``port-squat``
input          ``malformed-frames``
=============  ==================================================================

Inject one with :meth:`chaos.nemesis.Nemesis.inject`; add one by subclassing
:class:`Fault` in its family's module and decorating it with ``@register``.
"""

from chaos.faults import input, port, process, storage, subscriber  # noqa: F401  (they register)
from chaos.faults.base import (
    FAMILIES,
    REGISTRY,
    Fault,
    FaultError,
    FaultUnsupported,
    Landing,
    Registry,
    register,
)
from chaos.faults.input import BadFrame, MalformedFrames, default_bad_frames
from chaos.faults.port import PortSquat
from chaos.faults.process import BrokerKill, BrokerPause
from chaos.faults.storage import PostgresStop, StorageDown, StorageHang, StorageLatency, StorageReset
from chaos.faults.subscriber import LinkBlackhole, LinkCut, LinkReset, SubscriberCut, SubscriberSlow

__all__ = [
    "FAMILIES",
    "REGISTRY",
    "BadFrame",
    "BrokerKill",
    "BrokerPause",
    "Fault",
    "FaultError",
    "FaultUnsupported",
    "Landing",
    "LinkBlackhole",
    "LinkCut",
    "LinkReset",
    "MalformedFrames",
    "PortSquat",
    "PostgresStop",
    "Registry",
    "StorageDown",
    "StorageHang",
    "StorageLatency",
    "StorageReset",
    "SubscriberCut",
    "SubscriberSlow",
    "default_bad_frames",
    "register",
]
