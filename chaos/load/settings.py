"""The load users' settings: Locust custom arguments (``--fp-*``) and their validated form.

They are added to Locust's own parser (``init_command_line_parser``), so they
show in the web UI, can live in a locust.conf (``fp-rate = 50``) and reach
the workers with the master's spawn message. (``locust --help`` prints before
it loads the locustfile, so it does not list them.) Pure: any argparse parser.
"""

from __future__ import annotations

import argparse
from dataclasses import dataclass
from typing import Any

ACK_MODES = ("always", "late", "never")


def add_arguments(parser: Any) -> None:
    """Register the ``--fp-*`` options on Locust's parser (or any argparse parser)."""
    group = parser.add_argument_group(
        "FastPort load", "options of the FastPort publisher and subscriber users"
    )
    add = group.add_argument
    add(
        "--fp-rate",
        type=float,
        default=10.0,
        metavar="MSGS",
        help="publishes per second per publisher user; 0 = as fast as --fp-window allows (default 10)",
    )
    add(
        "--fp-window",
        type=int,
        default=100,
        metavar="N",
        help="publishes per publisher awaiting their `published` answer before it waits (default 100)",
    )
    add(
        "--fp-payload-size",
        type=int,
        default=64,
        metavar="BYTES",
        help="length of the payload's data string (default 64)",
    )
    add(
        "--fp-incompressible",
        action="store_true",
        help="fresh random base64 data in every payload, so permessage-deflate cannot shrink it",
    )
    add(
        "--fp-topics",
        type=int,
        default=0,
        metavar="N",
        help="number of topics; 0 = derived from the subscriber count and --fp-subscribers-per-topic",
    )
    add(
        "--fp-subscribers-per-topic",
        type=int,
        default=10,
        metavar="N",
        help="subscriber connections per topic when --fp-topics is 0 (default 10)",
    )
    add(
        "--fp-ack-mix",
        default="always",
        metavar="MIX",
        help="ack modes of the subscribers by weight, e.g. always=8,late=1,never=1 (default always)",
    )
    add(
        "--fp-ack-delay",
        type=float,
        default=2.0,
        metavar="S",
        help="how long a `late` subscriber waits before it acks (default 2)",
    )
    add(
        "--fp-subs-per-user",
        type=int,
        default=1,
        metavar="N",
        help="subscriber connections per subscriber user (default 1)",
    )
    add(
        "--fp-publishers",
        type=int,
        default=0,
        metavar="N",
        help="exact number of publisher users (default: one in five users, by class weight)",
    )
    add("--fp-topic-prefix", default="load", metavar="P", help="topics are P-0, P-1, ... (default load)")
    add(
        "--fp-run-id",
        default="",
        metavar="ID",
        help="client ids are <run id>-<role><n>; default a fresh random id per run, so that a rerun "
        "against the same broker does not inherit the last run's durable subscriptions",
    )
    add("--fp-token", default=None, metavar="TOKEN", help="auth token sent as Authorization: Bearer")
    add(
        "--fp-keep-subscriptions",
        action="store_true",
        help="do not unsubscribe when a subscriber stops (the broker keeps its deliveries outstanding)",
    )
    add(
        "--fp-drain-timeout",
        type=float,
        default=10.0,
        metavar="S",
        help="at the end, stop publishing and wait up to S for every subscriber to have received what "
        "was published (a ping barrier on each connection); 0 = no drain (default 10)",
    )
    add(
        "--fp-warmup",
        type=float,
        default=0.0,
        metavar="S",
        help="deliveries in the first S seconds of the run do not count towards deliveries_per_s",
    )
    add(
        "--fp-summary",
        default=None,
        metavar="FILE",
        help="write the merged summary (counters, exact percentiles, deliveries/s) as JSON",
    )


@dataclass(frozen=True)
class Settings:
    rate: float
    window: int
    payload_size: int
    incompressible: bool
    topics: int
    subscribers_per_topic: int
    ack_mix: tuple[str, ...]  # one entry per weight unit, e.g. (always x8, late, never)
    ack_delay: float
    subs_per_user: int
    publishers: int
    topic_prefix: str
    run_id: str
    token: str | None
    keep_subscriptions: bool
    drain_timeout: float
    warmup: float
    summary: str | None

    @classmethod
    def from_options(cls, options: argparse.Namespace | Any) -> Settings:
        """Validate Locust's parsed options; raises ValueError naming the option."""
        get = lambda name, default=None: getattr(options, name, default)  # noqa: E731
        rate = float(get("fp_rate", 10.0))
        if not rate >= 0:
            raise ValueError(f"--fp-rate must be >= 0, got {rate}")
        for opt, low in (
            ("fp_window", 1),
            ("fp_payload_size", 0),
            ("fp_topics", 0),
            ("fp_subscribers_per_topic", 1),
            ("fp_subs_per_user", 1),
            ("fp_publishers", 0),
        ):
            value = get(opt, low)
            if not isinstance(value, int) or value < low:
                raise ValueError(f"--{opt.replace('_', '-')} must be an integer >= {low}, got {value!r}")
        for opt in ("fp_ack_delay", "fp_drain_timeout", "fp_warmup"):
            value = float(get(opt, 0.0))
            if not value >= 0:
                raise ValueError(f"--{opt.replace('_', '-')} must be >= 0, got {value}")
        return cls(
            rate=rate,
            window=get("fp_window", 100),
            payload_size=get("fp_payload_size", 64),
            incompressible=bool(get("fp_incompressible", False)),
            topics=get("fp_topics", 0),
            subscribers_per_topic=get("fp_subscribers_per_topic", 10),
            ack_mix=parse_ack_mix(get("fp_ack_mix", "always")),
            ack_delay=float(get("fp_ack_delay", 2.0)),
            subs_per_user=get("fp_subs_per_user", 1),
            publishers=get("fp_publishers", 0),
            topic_prefix=get("fp_topic_prefix", "load"),
            run_id=get("fp_run_id", "") or "",
            token=get("fp_token"),
            keep_subscriptions=bool(get("fp_keep_subscriptions", False)),
            drain_timeout=float(get("fp_drain_timeout", 10.0)),
            warmup=float(get("fp_warmup", 0.0)),
            summary=get("fp_summary"),
        )


def parse_ack_mix(text: str) -> tuple[str, ...]:
    """``"always=8,late=1,never=1"`` (or ``"late"``) -> the modes repeated by weight, interleaved."""
    modes: list[str] = []
    for part in (p.strip() for p in str(text).split(",")):
        if not part:
            continue
        mode, _, weight = part.partition("=")
        mode = mode.strip()
        if mode not in ACK_MODES:
            raise ValueError(f"--fp-ack-mix: unknown ack mode {mode!r} (known: {', '.join(ACK_MODES)})")
        try:
            n = int(weight) if weight else 1
        except ValueError:
            raise ValueError(f"--fp-ack-mix: weight of {mode} must be an integer, got {weight!r}") from None
        if n < 0:
            raise ValueError(f"--fp-ack-mix: weight of {mode} must be >= 0, got {n}")
        modes.extend([mode] * n)
    if not modes:
        raise ValueError(f"--fp-ack-mix: no ack mode with a positive weight in {text!r}")
    # Interleave so that any prefix of subscribers already follows the mix (8 always, 1 late, 1 never).
    order = sorted(range(len(modes)), key=lambda i: (modes[:i].count(modes[i]) / modes.count(modes[i]), i))
    return tuple(modes[i] for i in order)
