"""The server's state and every API operation on it, independent of HTTP.

All methods run on the server's event loop, so they never race the data path.
"""

from __future__ import annotations

import random
from collections import defaultdict
from typing import Any

from chaos.toxiproxy import api_model as m
from chaos.toxiproxy.link import Link
from chaos.toxiproxy.proxy import Proxy, ProxyError, same_listen

Json = dict[str, Any]


class ProxyCollection:
    def __init__(self, rng: random.Random | None = None) -> None:
        self.rng = rng or random.Random()
        self.proxies: dict[str, Proxy] = {}
        # (direction, proxy, listener, upstream) -> [received, sent] of the links that ended
        self.link_bytes: dict[tuple[str, str, str, str], list[int]] = defaultdict(lambda: [0, 0])

    # --- helpers ---------------------------------------------------------------------------------

    def _get(self, name: str) -> Proxy:
        proxy = self.proxies.get(name)
        if proxy is None:
            raise m.ApiError(404, "proxy not found")
        return proxy

    def _on_link_done(self, proxy: Proxy, link: Link) -> None:
        counts = self.link_bytes[(link.direction, proxy.name, proxy.listen, proxy.upstream)]
        counts[0] += link.received
        counts[1] += link.sent

    def _new_proxy(self, spec: m.ProxySpec) -> Proxy:
        return Proxy(
            name=spec.name,
            listen=spec.listen or "",
            upstream=spec.upstream,
            rng=self.rng,
            on_link_done=self._on_link_done,
        )

    @staticmethod
    async def _start(proxy: Proxy) -> None:
        try:
            await proxy.start()
        except ProxyError as exc:
            raise m.ApiError(exc.status, exc.message) from None

    def close_all(self) -> None:
        for proxy in self.proxies.values():
            proxy.stop()

    # --- proxies ---------------------------------------------------------------------------------

    def list(self) -> Json:
        return {name: self.proxies[name].to_json() for name in sorted(self.proxies)}

    def get(self, name: str) -> Json:
        return self._get(name).to_json()

    async def create(self, spec: m.ProxySpec) -> Json:
        m.require_proxy_fields(spec)
        if spec.name in self.proxies:
            raise m.ApiError(409, "proxy already exists")
        proxy = self._new_proxy(spec)
        if spec.enabled is not False:
            await self._start(proxy)
        if spec.name in self.proxies:  # created concurrently while we resolved the address
            proxy.stop()
            raise m.ApiError(409, "proxy already exists")
        self.proxies[spec.name] = proxy
        return proxy.to_json()

    async def update(self, name: str, upd: m.ProxyUpdate) -> Json:
        proxy = self._get(name)
        listen = proxy.listen if upd.listen is None else upd.listen
        upstream = proxy.upstream if upd.upstream is None else upd.upstream
        enabled = proxy.enabled if upd.enabled is None else upd.enabled
        if upstream != proxy.upstream or not await same_listen(listen, proxy.listen):
            proxy.stop()
            proxy.listen, proxy.upstream = listen, upstream
        if enabled and not proxy.enabled:
            await self._start(proxy)
        elif not enabled and proxy.enabled:
            proxy.stop()
        return proxy.to_json()

    def delete(self, name: str) -> None:
        proxy = self._get(name)
        proxy.stop()
        del self.proxies[name]

    async def populate(self, specs: list[m.ProxySpec]) -> tuple[list[Json] | None, m.ApiError | None]:
        """Go's populate: validate all, then create/replace/keep in order, stop at the first error."""
        for index, spec in enumerate(specs, start=1):
            m.require_proxy_fields(spec, f" at proxy {index}")
            names: set[str] = set()
            for tspec in spec.toxics:  # extension: validate declared toxics before touching anything
                try:
                    toxic = m.build_toxic(tspec, names)
                except m.ApiError as exc:
                    raise m.ApiError(exc.status, f"{exc.message} at proxy {index}") from None
                names.add(toxic.name)
        done: list[Json] = []
        for spec in specs:
            try:
                done.append(await self._populate_one(spec))
            except m.ApiError as exc:
                return done, exc
        return (done or None), None

    async def _populate_one(self, spec: m.ProxySpec) -> Json:
        existing = self.proxies.get(spec.name)
        if existing is not None:
            listen = spec.listen or ""
            if existing.upstream == spec.upstream and await same_listen(listen, existing.listen):
                return existing.to_json()
            existing.stop()
            del self.proxies[spec.name]
        proxy = self._new_proxy(spec)
        names: set[str] = set()
        for tspec in spec.toxics:  # declared toxics are in place before the first connection
            toxic = m.build_toxic(tspec, names)
            names.add(toxic.name)
            proxy.add_toxic(toxic)
        if spec.enabled is not False:
            await self._start(proxy)
        self.proxies[spec.name] = proxy
        return proxy.to_json()

    async def reset(self) -> None:
        """Re-enable every proxy and remove every toxic (as if each were deleted)."""
        error: m.ApiError | None = None
        for proxy in list(self.proxies.values()):
            if not proxy.enabled:
                try:
                    await self._start(proxy)
                except m.ApiError as exc:
                    error = error or exc
            for toxic in list(proxy.toxics):
                proxy.remove_toxic(toxic)
        if error is not None:
            raise error

    # --- toxics ----------------------------------------------------------------------------------

    def list_toxics(self, name: str) -> list[Json]:
        return self._get(name).to_json()["toxics"]  # type: ignore[return-value]

    def add_toxic(self, name: str, body: Any) -> Json:
        proxy = self._get(name)
        spec = m.parse_toxic_create(body)
        toxic = m.build_toxic(spec, {t.name for t in proxy.toxics})
        proxy.add_toxic(toxic)
        return toxic.to_json()

    def get_toxic(self, name: str, toxic_name: str) -> Json:
        toxic = self._get(name).find_toxic(toxic_name)
        if toxic is None:
            raise m.ApiError(404, "toxic not found")
        return toxic.to_json()

    def update_toxic(self, name: str, toxic_name: str, body: Any) -> Json:
        proxy = self._get(name)
        toxic = proxy.find_toxic(toxic_name)
        if toxic is None:
            raise m.ApiError(404, "toxic not found")
        upd = m.parse_toxic_update(body, toxic)
        toxic.attributes = upd.attributes
        toxic.toxicity = upd.toxicity
        proxy.update_toxic(toxic)
        return toxic.to_json()

    def delete_toxic(self, name: str, toxic_name: str) -> None:
        proxy = self._get(name)
        toxic = proxy.find_toxic(toxic_name)
        if toxic is None:
            raise m.ApiError(404, "toxic not found")
        proxy.remove_toxic(toxic)

    # --- metrics ---------------------------------------------------------------------------------

    def _live_link_bytes(self) -> dict[tuple[str, str, str, str], list[int]]:
        """Counts of ended links plus those of the links still open (a metric that waits for the close
        would not show a broker writing into a half-open connection)."""
        out = {k: list(v) for k, v in self.link_bytes.items()}
        for proxy in self.proxies.values():
            for conn in proxy.connections:
                for link in conn.links.values():
                    key = (link.direction, proxy.name, proxy.listen, proxy.upstream)
                    counts = out.setdefault(key, [0, 0])
                    counts[0] += link.received
                    counts[1] += link.sent
        return out

    def metrics_text(self) -> str:
        lines: list[str] = []
        for metric, idx, help_ in (
            ("toxiproxy_proxy_received_bytes_total", 0, "Number of bytes received from the source"),
            ("toxiproxy_proxy_sent_bytes_total", 1, "Number of bytes sent to the destination"),
        ):
            lines.append(f"# HELP {metric} {help_}")
            lines.append(f"# TYPE {metric} counter")
            for (direction, proxy, listener, upstream), counts in sorted(self._live_link_bytes().items()):
                labels = (
                    f'direction="{_esc(direction)}",listener="{_esc(listener)}",'
                    f'proxy="{_esc(proxy)}",upstream="{_esc(upstream)}"'
                )
                lines.append(f"{metric}{{{labels}}} {counts[idx]}")
        return "\n".join(lines) + "\n"


def _esc(value: str) -> str:
    return value.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")
