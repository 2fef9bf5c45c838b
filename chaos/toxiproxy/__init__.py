"""An embedded, Toxiproxy-compatible fault proxy (see docs/toxiproxy.md).

Speaks Toxiproxy 2.12's HTTP API so every Toxiproxy client works against it
unchanged, and a real Toxiproxy can take its place (``TOXIPROXY_URL``).
"""

from chaos.toxiproxy.api_model import VERSION
from chaos.toxiproxy.server import ToxiproxyApp, ToxiproxyProcess, ToxiproxyServer

__all__ = ["VERSION", "ToxiproxyApp", "ToxiproxyProcess", "ToxiproxyServer"]
