"""Broker settings, the command-line parser that fills them, and the named flaws."""

from __future__ import annotations

import argparse
from dataclasses import dataclass, field

from .frames import DEFAULT_MAX_FRAME

# Each flaw reproduces one FMEA failure of the original broker and changes nothing else.
FLAWS: dict[str, str] = {
    "store-first": "await storage of each message before fan-out (FMEA 1: slow/down storage stops delivery)",
    "unguarded-fanout": "sequential awaited sends; the first send error aborts the fan-out (FMEA 2)",
    "no-hydrate": "load nothing from the store at start-up (FMEA 3: persisted deliveries become zombies)",
}


@dataclass(slots=True)
class Config:
    host: str = "127.0.0.1"
    port: int = 8765
    store: str = "memory"
    dsn: str | None = None
    auth: str | None = None
    flaws: frozenset[str] = field(default_factory=frozenset)
    retry_initial: float = 4.0
    retry_min: float = 1.0
    retry_max: float = 30.0
    max_attempts: int = 10
    ttl: float = 3600.0
    dedup_window: float = 120.0
    max_frame: int = DEFAULT_MAX_FRAME
    db_timeout: float = 2.0
    db_pool: int = 4
    persist_queue_limit: int = 100_000
    persist_queue_bytes: int = 64 << 20
    persist_ttl: float = 120.0
    persist_batch: int = 5000
    persist_linger: float = 0.05
    send_queue: int = 10_000
    max_queue: int = 64
    compression: bool = False
    ping_interval: float = 20.0
    shutdown_timeout: float = 6.0
    startup_timeout: float = 10.0
    log_format: str = "text"
    log_level: str = "info"
    loop: str = "auto"


def _positive(kind: type) -> object:
    def conv(text: str) -> object:
        try:
            value = kind(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"not a {kind.__name__}: {text!r}") from None
        if value <= 0:
            raise argparse.ArgumentTypeError(f"must be > 0: {text!r}")
        return value

    conv.__name__ = kind.__name__
    return conv


def _non_negative_float(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a number: {text!r}") from None
    if value < 0:
        raise argparse.ArgumentTypeError(f"must be >= 0: {text!r}")
    return value


def _port(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a port number: {text!r}") from None
    if not 0 <= value <= 65535:
        raise argparse.ArgumentTypeError(f"port out of range 0..65535: {value}")
    return value


def _flaw(text: str) -> str:
    if text not in FLAWS:
        raise argparse.ArgumentTypeError(f"unknown flaw {text!r}; choose from {', '.join(FLAWS)}")
    return text


def build_parser(prog: str = "python -m broker") -> argparse.ArgumentParser:
    d = Config()
    pf, pi = _positive(float), _positive(int)
    p = argparse.ArgumentParser(
        prog=prog,
        description="The reference FastPort WebSocket pub/sub broker.",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    p.add_argument("--host", default=d.host, help="interface to listen on")
    p.add_argument("--port", type=_port, default=d.port, help="TCP port; 0 picks a free one")
    p.add_argument("--store", choices=("memory", "postgres"), default=d.store)
    p.add_argument("--dsn", help="PostgreSQL DSN (with --store postgres)")
    p.add_argument(
        "--auth", metavar="FILE", help="token file (JSON, or TOML by .toml suffix); open mode if unset"
    )
    p.add_argument(
        "--flaw",
        action="append",
        type=_flaw,
        default=[],
        metavar="NAME",
        help=f"reproduce an original failure; repeatable: {', '.join(FLAWS)}",
    )
    g = p.add_argument_group("delivery")
    g.add_argument(
        "--retry-initial",
        type=pf,
        default=d.retry_initial,
        help="latest first retry (s); backoff doubles from here with full jitter",
    )
    g.add_argument(
        "--retry-min", type=_non_negative_float, default=d.retry_min, help="floor of any retry delay (s)"
    )
    g.add_argument("--retry-max", type=pf, default=d.retry_max, help="cap of the retry backoff (s)")
    g.add_argument("--max-attempts", type=pi, default=d.max_attempts, help="sends before dead-lettering")
    g.add_argument(
        "--ttl",
        type=pf,
        default=d.ttl,
        help="seconds after publish before an unacked delivery is dead-lettered",
    )
    g.add_argument(
        "--dedup-window",
        type=_non_negative_float,
        default=d.dedup_window,
        help="seconds a publish id is remembered per topic",
    )
    g.add_argument("--max-frame", type=pi, default=d.max_frame, help="largest accepted frame (bytes)")
    g.add_argument(
        "--send-queue",
        type=pi,
        default=d.send_queue,
        help="frames queued per slow connection before it is closed with 1013",
    )
    g.add_argument(
        "--max-queue",
        type=pi,
        default=d.max_queue,
        help="incoming frames buffered per connection before reading pauses (websockets max_queue)",
    )
    g.add_argument("--compression", action="store_true", help="enable permessage-deflate (off by default)")
    g.add_argument(
        "--ping-interval",
        type=_non_negative_float,
        default=d.ping_interval,
        help="keepalive ping interval (s); 0 disables",
    )
    s = p.add_argument_group("persistence")
    s.add_argument("--db-timeout", type=pf, default=d.db_timeout, help="deadline of each storage call (s)")
    s.add_argument("--db-pool", type=pi, default=d.db_pool, help="PostgreSQL pool size")
    s.add_argument(
        "--persist-queue-limit",
        type=pi,
        default=d.persist_queue_limit,
        help="unpersisted messages held before publishes get 'overloaded'",
    )
    s.add_argument(
        "--persist-queue-bytes",
        type=pi,
        default=d.persist_queue_bytes,
        help="payload bytes of unpersisted messages held before 'overloaded'",
    )
    s.add_argument(
        "--persist-ttl",
        type=pf,
        default=d.persist_ttl,
        help="seconds a message may wait for storage before 'persist_failed'",
    )
    s.add_argument("--persist-batch", type=pi, default=d.persist_batch, help="largest batch per storage call")
    s.add_argument(
        "--persist-linger",
        type=_non_negative_float,
        default=d.persist_linger,
        help="seconds a change waits before a durable store gets it, so that acks arriving meanwhile "
        "cancel their message's writes (0: write at once)",
    )
    o = p.add_argument_group("process")
    o.add_argument("--shutdown-timeout", type=pf, default=d.shutdown_timeout, help="SIGTERM drain budget (s)")
    o.add_argument(
        "--startup-timeout",
        type=pf,
        default=d.startup_timeout,
        help="how long to keep trying to open and load the store at start-up (s)",
    )
    o.add_argument(
        "--loop",
        choices=("auto", "asyncio", "uvloop"),
        default=d.loop,
        help="event loop: uvloop is faster when installed; auto uses it if importable",
    )
    o.add_argument("--log-format", choices=("text", "json"), default=d.log_format)
    o.add_argument("--log-level", choices=("debug", "info", "warning", "error"), default=d.log_level)
    return p


def parse_args(argv: list[str], prog: str = "python -m broker") -> Config:
    parser = build_parser(prog)
    ns = parser.parse_args(argv)
    if ns.store == "postgres" and not ns.dsn:
        parser.error("--store postgres needs --dsn")
    if not ns.retry_min <= ns.retry_initial <= ns.retry_max:
        parser.error("need --retry-min <= --retry-initial <= --retry-max")
    values = {k: v for k, v in vars(ns).items() if k != "flaw"}
    return Config(flaws=frozenset(ns.flaw), **values)
