"""The HTTP side of the broker's port: ``/healthz``, ``/metrics``, and who may open a WebSocket.

Every request arrives here before the WebSocket handshake, as websockets'
``process_request`` hook would see it. Plain HTTP paths are answered at once
(the load balancer and Prometheus need no WebSocket); a handshake on ``/`` is
admitted with its client_id and rights, or refused with 401 / 403 / 400
before any WebSocket exists. A plain GET on ``/`` goes on to websockets'
own checks, which answer 426.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from http import HTTPStatus
from typing import TYPE_CHECKING, Any
from urllib.parse import parse_qs, urlsplit

from websockets.datastructures import Headers
from websockets.http11 import Request, Response

from . import frames as F
from .auth import OPEN, Rights, token_from
from .metrics import render as render_metrics

if TYPE_CHECKING:
    from .server import Broker


@dataclass(frozen=True, slots=True)
class Admission:
    """A handshake that may proceed: the identity and rights its session will have."""

    client_id: str
    rights: Rights


def health(b: Broker) -> dict[str, Any]:
    """``/healthz``: always 200 while serving; the status field says ok, degraded or stopping."""
    reasons = []
    if b.writer.last_error is not None:
        reasons.append(f"storage: {b.writer.last_error}")
    if b.writer.breaker.state != "closed":
        reasons.append(f"storage circuit breaker {b.writer.breaker.state}")
    if b.queue.messages >= b.queue.max_messages:
        reasons.append("persistence queue full: publishes are refused with 'overloaded'")
    status = "stopping" if b.stopping else ("degraded" if reasons else "ok")
    return {
        "status": status,
        "reasons": reasons,
        "store": b.cfg.store,
        "durable": b.store.durable,
        "persist_backlog": len(b.queue),
        "clients": len(b.conns),
        "flaws": sorted(b.flaws),
        "uptime": round(b.clock() - b.started_at, 3),
    }


def _response(status: int, body: str, content_type: str) -> Response:
    data = body.encode()
    headers = Headers()
    headers["Content-Type"] = content_type
    headers["Content-Length"] = str(len(data))
    headers["Cache-Control"] = "no-store"
    return Response(status, HTTPStatus(status).phrase, headers, data)


def _reject(b: Broker, status: int, text: str) -> Response:
    b.counters["rejected_handshakes"] += 1
    headers = Headers()
    headers["Content-Type"] = "text/plain; charset=utf-8"
    body = (text + "\n").encode()
    headers["Content-Length"] = str(len(body))
    if status == 401:
        headers["WWW-Authenticate"] = 'Bearer realm="fastport"'
    return Response(status, HTTPStatus(status).phrase, headers, body)


def route(b: Broker, request: Request) -> Response | Admission | None:
    """A response to send, an admitted handshake, or None for websockets to answer (426 and such)."""
    url = urlsplit(request.path)
    if url.path == "/healthz":
        return _response(200, json.dumps(health(b)) + "\n", "application/json")
    if url.path == "/metrics":
        return _response(200, render_metrics(b), "text/plain; version=0.0.4; charset=utf-8")
    if url.path != "/":
        return _reject(b, 404, f"no such path {url.path!r}; WebSocket on '/', or GET /healthz, /metrics")
    if request.headers.get("Upgrade", "").lower() != "websocket":
        return None  # websockets answers 426 Upgrade Required
    query = parse_qs(url.query)
    rights = OPEN
    if b.tokens is not None:
        token = token_from(query, request.headers.get("Authorization"))
        if token is None:
            return _reject(b, 401, "missing token: pass ?token= or 'Authorization: Bearer'")
        found = b.tokens.get(token)
        if found is None or found.expired(b.clock()):
            return _reject(b, 401, "unknown or expired token")
        rights = found
    ids = query.get("client_id")
    client_id = ids[0] if ids else None
    if client_id is not None and not F.valid_client_id(client_id):
        return _reject(b, 400, "client_id must be 1..128 chars of [A-Za-z0-9_.:-]")
    if rights.client_id is not None:
        if client_id is not None and client_id != rights.client_id:
            return _reject(b, 403, "this token is bound to another client_id")
        client_id = rights.client_id
    if client_id is None:
        client_id = "anon-" + b.core.new_id()[:16]
    return Admission(client_id, rights)
