"""Optional tokens (PROTOCOL.md section 1). Without ``--auth`` every connection is let in.

The file is JSON: ``{"tokens": {"TOKEN": {"client_id": "alice", "publish": ["orders/*"],
"subscribe": ["orders/*"]}}}``; each key is optional, an omitted list allows every
topic, patterns are ``fnmatch`` globs.
"""

from __future__ import annotations

import fnmatch
import json
from dataclasses import dataclass
from pathlib import Path


@dataclass(frozen=True)
class Grant:
    client_id: str | None = None
    publish: tuple[str, ...] | None = None
    subscribe: tuple[str, ...] | None = None

    def allows(self, kind: str, topic: str) -> bool:
        patterns = self.publish if kind == "publish" else self.subscribe
        return patterns is None or any(fnmatch.fnmatchcase(topic, p) for p in patterns)


OPEN = Grant()


class Access:
    def __init__(self, tokens: dict[str, Grant] | None = None) -> None:
        self.tokens = tokens

    @classmethod
    def from_file(cls, path: str | None) -> Access:
        if path is None:
            return cls()
        raw = json.loads(Path(path).read_text())
        tokens = {}
        for token, spec in raw["tokens"].items():
            lists = {k: tuple(spec[k]) for k in ("publish", "subscribe") if k in spec}
            tokens[token] = Grant(spec.get("client_id"), **lists)
        return cls(tokens)

    def admit(self, token: str | None, client_id: str | None) -> tuple[int, Grant]:
        """HTTP status for the handshake (200, 401 unknown token, 403 token bound elsewhere) and grant."""
        if self.tokens is None:
            return 200, OPEN
        grant = self.tokens.get(token or "")
        if grant is None:
            return 401, OPEN
        if grant.client_id is not None and client_id not in (None, grant.client_id):
            return 403, OPEN
        return 200, grant
