"""Command-line options of the foreign broker, parsed into one frozen value every module reads."""

from __future__ import annotations

import argparse
from collections.abc import Sequence
from dataclasses import dataclass

from tests.foreign.mutants import BY_NAME


@dataclass(frozen=True)
class Settings:
    host: str = "127.0.0.1"
    port: int = 8765
    store: str = "memory"
    dsn: str | None = None
    mutant: str | None = None
    auth: str | None = None
    retry_first: float = 3.0  # the first retry comes within this (PROTOCOL.md: within 5 s)
    retry_cap: float = 30.0
    max_attempts: int = 10
    ttl: float = 3600.0
    dedup_window: float = 120.0
    send_queue: int = 10_000  # frames queued for one connection before it is closed as a slow consumer
    send_queue_bytes: int = 64 << 20
    persist_queue: int = 50_000  # unpersisted messages held before publishes are refused overloaded
    persist_queue_bytes: int = 128 << 20
    persist_give_up: float = 60.0
    batch: int = 2000
    db_timeout: float = 2.0
    startup_timeout: float = 10.0
    log_level: str = "warning"


def parse(argv: Sequence[str] | None = None) -> Settings:
    p = argparse.ArgumentParser(prog="python -m tests.foreign", description="FastPort foreign broker")
    d = Settings()
    p.add_argument("--host", default=d.host)
    p.add_argument("--port", type=int, default=d.port)
    p.add_argument("--store", choices=("memory", "postgres"), default=d.store)
    p.add_argument("--dsn", default=None)
    p.add_argument("--mutant", choices=sorted(BY_NAME), default=None)
    p.add_argument("--auth", default=None, help="JSON token file (see access.py); default: open")
    for name in (
        "retry_first",
        "retry_cap",
        "ttl",
        "dedup_window",
        "persist_give_up",
        "db_timeout",
        "startup_timeout",
    ):
        p.add_argument("--" + name.replace("_", "-"), type=float, default=getattr(d, name))
    ints = ("max_attempts", "send_queue", "send_queue_bytes", "persist_queue", "persist_queue_bytes", "batch")
    for name in ints:
        p.add_argument("--" + name.replace("_", "-"), type=int, default=getattr(d, name))
    p.add_argument("--log-level", default=d.log_level)
    ns = p.parse_args(argv)
    if ns.store == "postgres" and not ns.dsn:
        p.error("--store postgres needs --dsn")
    if ns.retry_first <= 0 or ns.retry_cap < ns.retry_first or ns.max_attempts < 1:
        p.error("need 0 < --retry-first <= --retry-cap and --max-attempts >= 1")
    return Settings(**vars(ns))
