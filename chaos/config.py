"""What the lab tests and how hard: the broker's launch command, its store, the intensity, the run folder.

:class:`LabConfig` resolves each from an explicit value (a pytest option, a CLI
flag), then its environment variable, then the default, so pytest, the CLI and
CI all drive the same run:

=======================  ============================  ==========================
setting                  environment variable          default
=======================  ============================  ==========================
broker launch command    ``FASTPORT_LAB_BROKER_CMD``   the reference broker
store                    ``FASTPORT_LAB_STORE``        ``postgres``
intensity                ``FASTPORT_LAB_INTENSITY``    ``default``
backend                  ``FASTPORT_LAB_BACKEND``      ``embedded`` (or ``docker``)
broker image             ``FASTPORT_LAB_BROKER_IMAGE`` none: the broker runs on the host
run folder               ``FASTPORT_LAB_RUN_DIR``      a fresh temp dir
=======================  ============================  ==========================

The broker is known only by its launch command (PROTOCOL.md section 4), so the
same suites run against the reference broker, one of its ``--flaw`` variants,
or a user's broker.
"""

from __future__ import annotations

import os
import shlex
import sys
import tempfile
from collections.abc import Mapping
from dataclasses import dataclass, replace
from pathlib import Path

from chaos.launcher import STORES, render_command

INTENSITIES = ("smoke", "default", "heavy")
BACKENDS = ("embedded", "docker")


@dataclass(frozen=True)
class Intensity:
    """How much traffic the suites drive through each fault: the bugs that show only under load need it.

    ``default`` is what the issue of record asks of every suite (hundreds of
    deliveries per subscriber in each fault window, a durable subscriber offline
    while over 1,000 messages are published to it, a SIGKILL while 1,000 publishes a
    second are being persisted) and keeps ``pytest scenarios/`` within 90 s on two
    cores; ``smoke`` is a quick look that does not reach those loads; ``heavy`` is
    for nightly runs.
    """

    name: str
    rate: float  # publishes per second in the load phases
    per_phase: int  # messages published in each fault window (and in the baseline)
    big_messages: int  # incompressible messages sent towards a stalled subscriber
    big_bytes: int  # size of each of them
    offline_backlog: int  # messages published while a durable subscriber is offline
    kill_rate: float  # publishes per second while the broker is SIGKILLed
    kill_messages: int  # messages in that burst (the kill lands in its middle)
    schedule_examples: int  # Hypothesis examples of the generated schedules
    fuzz_frames: int  # frames of the protocol fuzzer

    def scaled(self, n: int) -> int:
        """*n* at this intensity, where *n* is the default's figure."""
        return max(1, round(n * self.per_phase / PRESETS["default"].per_phase))


PRESETS: dict[str, Intensity] = {
    i.name: i
    for i in (
        Intensity("smoke", 200.0, 40, 60, 64 << 10, 200, 400.0, 400, 4, 60),
        Intensity("default", 400.0, 300, 120, 64 << 10, 1200, 1000.0, 2000, 12, 300),
        Intensity("heavy", 800.0, 1500, 400, 64 << 10, 5000, 2000.0, 8000, 60, 10_000),
    )
}

ROOT = Path(__file__).resolve().parents[1]
ENV_BROKER_CMD = "FASTPORT_LAB_BROKER_CMD"
ENV_STORE = "FASTPORT_LAB_STORE"
ENV_RUN_DIR = "FASTPORT_LAB_RUN_DIR"
ENV_INTENSITY = "FASTPORT_LAB_INTENSITY"
ENV_BACKEND = "FASTPORT_LAB_BACKEND"
ENV_BROKER_IMAGE = "FASTPORT_LAB_BROKER_IMAGE"
REFERENCE_BROKER_CMD = (
    shlex.join([sys.executable, "-m", "broker"]) + " --host {host} --port {port} --store {store} --dsn {dsn}"
)
FLAWS = ("store-first", "unguarded-fanout", "no-hydrate")


class LabConfigError(ValueError):
    """The broker command or store is unusable; the message says which and why."""


@dataclass(frozen=True)
class LabConfig:
    """What to test: the broker's launch command and the store it runs with."""

    broker_cmd: str = REFERENCE_BROKER_CMD
    store: str = "postgres"
    intensity: str = "default"
    backend: str = "embedded"  # where PostgreSQL and the fault proxy run: embedded, or docker containers
    broker_image: str | None = None  # run the broker as a container of this image (docker backend)
    ready_timeout: float = 30.0  # a broker that neither listens nor exits by then is a hang
    cwd: str = str(ROOT)  # `python -m broker` resolves from the checkout

    def __post_init__(self) -> None:
        if self.store not in STORES:
            raise LabConfigError(f"store must be one of {', '.join(STORES)}, got {self.store!r}")
        if self.backend not in BACKENDS:
            raise LabConfigError(f"backend must be one of {', '.join(BACKENDS)}, got {self.backend!r}")
        if self.broker_image and self.backend != "docker":
            raise LabConfigError("--broker-image needs --backend docker (a container engine)")
        if self.intensity not in INTENSITIES:
            raise LabConfigError(
                f"intensity must be one of {', '.join(INTENSITIES)}, got {self.intensity!r}"
            )
        try:
            render_command(self.broker_cmd, port=0, dsn="postgresql://lab@127.0.0.1:1/x", store=self.store)
        except ValueError as exc:
            raise LabConfigError(f"unusable broker command: {exc}") from None
        if not any("{port}" in t for t in shlex.split(self.broker_cmd)):
            raise LabConfigError(
                f"broker command {self.broker_cmd!r} has no {{port}} placeholder: the lab must choose "
                "the port (PROTOCOL.md section 4) so that runs never collide"
            )

    @classmethod
    def resolve(
        cls,
        broker_cmd: str | None = None,
        store: str | None = None,
        env: Mapping[str, str] | None = None,
        intensity: str | None = None,
        backend: str | None = None,
        broker_image: str | None = None,
    ) -> LabConfig:
        """Explicit values win, then the ``FASTPORT_LAB_*`` environment variables, then the defaults."""
        env = os.environ if env is None else env
        cmd = (broker_cmd or env.get(ENV_BROKER_CMD) or "").strip() or REFERENCE_BROKER_CMD
        st = (store or env.get(ENV_STORE) or "").strip() or "postgres"
        it = (intensity or env.get(ENV_INTENSITY) or "").strip() or "default"
        image = (broker_image or env.get(ENV_BROKER_IMAGE) or "").strip() or None
        be = (backend or env.get(ENV_BACKEND) or "").strip() or ("docker" if image else "embedded")
        if image and not (broker_cmd or env.get(ENV_BROKER_CMD) or "").strip():
            from chaos.containers.broker import CONTAINER_REFERENCE_BROKER_CMD

            cmd = CONTAINER_REFERENCE_BROKER_CMD  # the reference broker as the image runs it
        return cls(broker_cmd=cmd, store=st, intensity=it, backend=be, broker_image=image)

    @property
    def is_reference(self) -> bool:
        """The reference broker (``python -m broker``), whose store schema the lab may read."""
        toks = shlex.split(self.broker_cmd)
        return any(a == "-m" and b == "broker" for a, b in zip(toks, toks[1:], strict=False))

    @property
    def durable(self) -> bool:
        return self.store == "postgres"

    @property
    def load(self) -> Intensity:
        """The traffic figures of this config's intensity."""
        return PRESETS[self.intensity]

    def with_flaw(self, flaw: str) -> LabConfig:
        """The reference broker with one ``--flaw`` (for the flaw matrix), at ``default`` intensity or more.

        The matrix is the lab testing itself: ``smoke`` does not drive the load that exposes a stalled
        fan-out, and a quick look must not report the lab blind to its own flaws.
        """
        if not self.is_reference:
            raise LabConfigError("flaw variants exist only for the reference broker")
        if flaw not in FLAWS:
            raise LabConfigError(f"unknown flaw {flaw!r}; choose from {', '.join(FLAWS)}")
        intensity = "default" if self.intensity == "smoke" else self.intensity
        return replace(self, broker_cmd=f"{self.broker_cmd} --flaw {flaw}", intensity=intensity)


def run_root(env: Mapping[str, str] | None = None) -> Path:
    """Where run folders go: ``$FASTPORT_LAB_RUN_DIR`` or a fresh temp dir (kept for the user to read)."""
    env = os.environ if env is None else env
    given = env.get(ENV_RUN_DIR, "").strip()
    if given:
        path = Path(given).expanduser()
        path.mkdir(parents=True, exist_ok=True)
        return path
    return Path(tempfile.mkdtemp(prefix="fastport-lab-"))
