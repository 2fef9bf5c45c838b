"""Prometheus text exposition (format 0.0.4) of the broker's counters and gauges.

Hand-written: the numbers already live in the core and the writer, so a
scrape just formats them; no client library and no per-event overhead.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from .server import Broker

PREFIX = "fastport_broker_"


def _family(out: list[str], name: str, kind: str, help_: str, samples: list[tuple[str, float]]) -> None:
    out.append(f"# HELP {PREFIX}{name} {help_}")
    out.append(f"# TYPE {PREFIX}{name} {kind}")
    for labels, value in samples:
        out.append(
            f"{PREFIX}{name}{labels} {value:g}"
            if isinstance(value, float)
            else f"{PREFIX}{name}{labels} {value}"
        )


def render(b: Broker) -> str:
    s = b.core.stats
    w = b.writer
    out: list[str] = []
    c = "counter"
    g = "gauge"
    _family(out, "published_total", c, "Messages accepted (duplicates excluded).", [("", s.published)])
    _family(out, "duplicates_total", c, "Publishes answered from the dedup window.", [("", s.duplicates)])
    _family(
        out, "delivered_total", c, "Message frames handed to connections (all attempts).", [("", s.delivered)]
    )
    _family(out, "retried_total", c, "Deliveries with attempt >= 2 (retries and replays).", [("", s.retried)])
    _family(out, "acked_total", c, "Deliveries acked by their recipient.", [("", s.acked)])
    _family(
        out,
        "dead_lettered_total",
        c,
        "Deliveries dead-lettered (max attempts or TTL).",
        [("", s.dead_lettered)],
    )
    _family(
        out,
        "dead_letters_loaded",
        g,
        "Dead deliveries found in the store at start-up.",
        [("", s.dead_loaded)],
    )
    _family(
        out,
        "hydrated_deliveries",
        g,
        "Outstanding deliveries loaded from the store at start-up.",
        [("", s.hydrated_deliveries)],
    )
    _family(
        out,
        "outstanding_deliveries",
        g,
        "Unacked, not dead deliveries held now.",
        [("", b.core.outstanding())],
    )
    _family(
        out, "persist_failures_total", c, "Failed storage calls (each retried later).", [("", w.failures)]
    )
    _family(out, "persist_given_up_total", c, "Messages told persist_failed.", [("", w.given_up)])
    _family(out, "persist_batches_total", c, "Committed storage batches.", [("", w.batches)])
    _family(out, "persistence_backlog", g, "Ops waiting for storage.", [("", len(b.queue))])
    _family(out, "persistence_backlog_messages", g, "Messages waiting for storage.", [("", b.queue.messages)])
    _family(out, "persistence_backlog_bytes", g, "Payload bytes waiting for storage.", [("", b.queue.bytes)])
    _family(
        out,
        "persist_dropped_ops_total",
        c,
        "Non-message ops dropped past the hard cap.",
        [("", b.queue.dropped_ops)],
    )
    _family(
        out,
        "storage_breaker_open",
        g,
        "1 while the storage circuit breaker is open or half-open.",
        [("", int(w.breaker.state != "closed"))],
    )
    _family(out, "storage_healthy", g, "1 when the last storage call succeeded.", [("", int(w.healthy))])
    _family(out, "connected_clients", g, "Open WebSocket sessions.", [("", len(b.conns))])
    _family(out, "connections_total", c, "WebSocket sessions opened.", [("", b.counters["connections"])])
    _family(
        out,
        "rejected_handshakes_total",
        c,
        "Handshakes refused (401, 403, 400, 404).",
        [("", b.counters["rejected_handshakes"])],
    )
    _family(
        out,
        "slow_consumers_total",
        c,
        "Sessions closed because their send queue overflowed.",
        [("", b.counters["slow_consumers"])],
    )
    _family(
        out,
        "session_takeovers_total",
        c,
        "Sessions replaced by a newer one with the same client_id.",
        [("", b.counters["takeovers"])],
    )
    _family(
        out,
        "overloaded_total",
        c,
        "Publishes refused because the persistence queue was full.",
        [("", b.counters["overloaded"])],
    )
    _family(
        out,
        "errors_total",
        c,
        "Error frames sent, by code.",
        [(f'{{code="{code}"}}', n) for code, n in b.errors.items()],
    )
    _family(
        out,
        "subscriptions",
        g,
        "Durable subscriptions (client_id, topic).",
        [("", sum(len(v) for v in b.core.subscribers.values()))],
    )
    return "\n".join(out) + "\n"
