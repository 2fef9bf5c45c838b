"""Containers for the lab: PostgreSQL, the fault proxy and the broker under test on a Docker engine.

``DockerBackend`` (backend.py) is the entry point; see docs/containers.md. Importing this
package needs the ``docker`` package, not an engine: :func:`engine_status` says whether one answers.
"""

from chaos.containers.backend import ENV_BROKER_IMAGE, ENV_PG_IMAGE, ENV_PROXY_IMAGE, DockerBackend
from chaos.containers.broker import CONTAINER_REFERENCE_BROKER_CMD, BrokerContainer, BrokerContainerError
from chaos.containers.engine import (
    ContainerError,
    ContainerStartError,
    EngineUnavailable,
    engine_status,
    reap_stale,
)
from chaos.containers.images import OFFICIAL, ImageBuildError, Images
from chaos.containers.postgres import ContainerPostgres, ContainerPostgresError, ContainerPostgresPortInUse
from chaos.containers.proxy import ProxyContainer

__all__ = [
    "CONTAINER_REFERENCE_BROKER_CMD",
    "ENV_BROKER_IMAGE",
    "ENV_PG_IMAGE",
    "ENV_PROXY_IMAGE",
    "OFFICIAL",
    "BrokerContainer",
    "BrokerContainerError",
    "ContainerError",
    "ContainerPostgres",
    "ContainerPostgresError",
    "ContainerPostgresPortInUse",
    "ContainerStartError",
    "DockerBackend",
    "EngineUnavailable",
    "ImageBuildError",
    "Images",
    "ProxyContainer",
    "engine_status",
    "reap_stale",
]
