"""Token file: who may connect, as which client_id, and which topics each may use.

JSON (or TOML when the file name ends in ``.toml``)::

    {"tokens": {
        "s3cret-alice": {"client_id": "alice", "publish": ["orders/*"], "subscribe": ["*"]},
        "s3cret-bob":   {"subscribe": ["orders/eu/*"], "expires_at": 1893456000}
    }}

``publish`` / ``subscribe`` are lists of case-sensitive fnmatch globs (``*``
also matches ``/``); an omitted list means every topic, an empty list none.
``client_id`` binds the token to one identity. ``expires_at`` (unix seconds)
makes later frames fail with ``unauthorized``.
"""

from __future__ import annotations

import json
import tomllib
from dataclasses import dataclass
from fnmatch import fnmatchcase
from pathlib import Path
from typing import Any

from .frames import valid_client_id


class AuthFileError(Exception):
    """The token file is missing, unreadable or malformed."""


@dataclass(frozen=True, slots=True)
class Rights:
    client_id: str | None = None
    publish: tuple[str, ...] | None = None  # None = every topic
    subscribe: tuple[str, ...] | None = None
    expires_at: float | None = None

    def may_publish(self, topic: str) -> bool:
        return self.publish is None or any(fnmatchcase(topic, p) for p in self.publish)

    def may_subscribe(self, topic: str) -> bool:
        return self.subscribe is None or any(fnmatchcase(topic, p) for p in self.subscribe)

    def expired(self, now: float) -> bool:
        return self.expires_at is not None and now >= self.expires_at


OPEN = Rights()


def _patterns(entry: dict[str, Any], key: str, where: str) -> tuple[str, ...] | None:
    if key not in entry:
        return None
    value = entry[key]
    if not isinstance(value, list) or not all(isinstance(p, str) and p for p in value):
        raise AuthFileError(f"{where}: '{key}' must be a list of non-empty glob strings")
    return tuple(value)


def parse_tokens(doc: Any, source: str = "auth file") -> dict[str, Rights]:
    if not isinstance(doc, dict) or not isinstance(doc.get("tokens"), dict):
        raise AuthFileError(f"{source}: expected an object with a 'tokens' table mapping token -> rights")
    unknown = set(doc) - {"tokens"}
    if unknown:
        raise AuthFileError(f"{source}: unknown top-level keys {sorted(unknown)}")
    tokens: dict[str, Rights] = {}
    for token, entry in doc["tokens"].items():
        where = f"{source}: token {token[:4]!r}..."
        if not token:
            raise AuthFileError(f"{source}: empty token")
        if not isinstance(entry, dict):
            raise AuthFileError(f"{where}: rights must be an object")
        extra = set(entry) - {"client_id", "publish", "subscribe", "expires_at"}
        if extra:
            raise AuthFileError(f"{where}: unknown keys {sorted(extra)}")
        cid = entry.get("client_id")
        if cid is not None and not valid_client_id(cid):
            raise AuthFileError(f"{where}: 'client_id' must be 1..128 chars of [A-Za-z0-9_.:-]")
        exp = entry.get("expires_at")
        if exp is not None and (isinstance(exp, bool) or not isinstance(exp, int | float)):
            raise AuthFileError(f"{where}: 'expires_at' must be unix seconds")
        tokens[token] = Rights(
            cid,
            _patterns(entry, "publish", where),
            _patterns(entry, "subscribe", where),
            None if exp is None else float(exp),
        )
    return tokens


def load_tokens(path: str | Path) -> dict[str, Rights]:
    p = Path(path)
    try:
        raw = p.read_bytes()
    except OSError as exc:
        raise AuthFileError(f"cannot read auth file {p}: {exc.strerror or exc}") from None
    try:
        doc = tomllib.loads(raw.decode()) if p.suffix == ".toml" else json.loads(raw)
    except (ValueError, UnicodeDecodeError) as exc:
        raise AuthFileError(
            f"auth file {p} is not valid {'TOML' if p.suffix == '.toml' else 'JSON'}: {exc}"
        ) from None
    return parse_tokens(doc, str(p))


def token_from(query: dict[str, list[str]], authorization: str | None) -> str | None:
    """The token of a handshake: query ``token`` first, else ``Authorization: Bearer``."""
    values = query.get("token")
    if values and values[0]:
        return values[0]
    if authorization:
        scheme, _, value = authorization.partition(" ")
        if scheme.lower() == "bearer" and value.strip():
            return value.strip()
    return None
