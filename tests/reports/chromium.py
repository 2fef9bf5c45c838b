"""Open a report in headless Chromium over DevTools: the DOM after scripts, console errors, a screenshot.

CDP is JSON over a WebSocket, so ``websockets`` (already a dependency) is the
whole client. Chromium picks its own debugging port (``--remote-debugging-port=0``)
and prints it on stderr; we wait for that line, not for a fixed time. The browser
runs in its own process group with a fresh profile, both removed on exit.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import itertools
import json
import os
import re
import shutil
import signal
import subprocess
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import websockets

FLAGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--enable-logging=stderr",
    "--v=0",
    "--remote-debugging-port=0",
    "--remote-allow-origins=*",
    "--window-size=1280,1600",
]
CANDIDATES = ("/usr/bin/chromium", "chromium", "chromium-browser")


def find_chromium() -> str | None:
    for c in CANDIDATES:
        path = shutil.which(c) if not os.path.isabs(c) else (c if os.access(c, os.X_OK) else None)
        if path:
            return path
    return None


def install_chromium() -> tuple[str | None, str]:
    """(path, why not) after ``apt-get install -y chromium`` when we are root; never raises."""
    if os.geteuid() != 0 or not shutil.which("apt-get"):
        return None, "chromium is missing and this user cannot apt-get install it (not root or no apt-get)"
    env = dict(os.environ, DEBIAN_FRONTEND="noninteractive")
    for cmd in (["apt-get", "update", "-q"], ["apt-get", "install", "-y", "-q", "chromium"]):
        try:
            done = subprocess.run(cmd, capture_output=True, text=True, timeout=900, env=env, check=False)
        except (OSError, subprocess.TimeoutExpired) as exc:
            return None, f"{' '.join(cmd)} failed: {exc}"
        if done.returncode != 0:
            return None, f"{' '.join(cmd)} exited {done.returncode}: {done.stderr.strip()[-500:]}"
    path = find_chromium()
    return path, "" if path else "apt-get installed chromium but no chromium binary was found"


@dataclass
class Page:
    checks: dict[str, Any]
    console_errors: list[str] = field(default_factory=list)
    external_requests: list[str] = field(default_factory=list)
    ready: Any = None


class CDP:
    """Minimal DevTools client: commands with ids, events collected per session."""

    def __init__(self, ws: Any) -> None:
        self.ws = ws
        self.ids = itertools.count(1)
        self.pending: dict[int, asyncio.Future[Any]] = {}
        self.events: list[dict[str, Any]] = []
        self.waiters: list[tuple[str, asyncio.Future[dict[str, Any]]]] = []
        self.reader = asyncio.create_task(self._read())

    async def _read(self) -> None:
        async for raw in self.ws:
            msg = json.loads(raw)
            if "id" in msg:
                fut = self.pending.pop(msg["id"], None)
                if fut and not fut.done():
                    if "error" in msg:
                        fut.set_exception(RuntimeError(f"CDP error: {msg['error']}"))
                    else:
                        fut.set_result(msg.get("result", {}))
            else:
                self.events.append(msg)
                for method, fut in list(self.waiters):
                    if msg.get("method") == method and not fut.done():
                        fut.set_result(msg)

    async def call(
        self, method: str, params: dict[str, Any] | None = None, session: str | None = None
    ) -> Any:
        i = next(self.ids)
        fut: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
        self.pending[i] = fut
        msg: dict[str, Any] = {"id": i, "method": method, "params": params or {}}
        if session:
            msg["sessionId"] = session
        await self.ws.send(json.dumps(msg))
        return await fut

    def expect(self, method: str) -> asyncio.Future[dict[str, Any]]:
        fut: asyncio.Future[dict[str, Any]] = asyncio.get_running_loop().create_future()
        self.waiters.append((method, fut))
        return fut

    async def close(self) -> None:
        self.reader.cancel()
        with contextlib.suppress(asyncio.CancelledError, Exception):
            await self.reader
        await self.ws.close()


CHECKS_JS = """JSON.stringify({
  title: document.title,
  bannerStatus: (document.getElementById('verdict-banner') || {dataset: {}}).dataset.status || null,
  bannerText: (document.getElementById('verdict-banner') || {innerText: ''}).innerText,
  plotsReady: document.body.dataset.plots || null,
  plotDivs: document.querySelectorAll('[data-figure]').length,
  plotSvgs: document.querySelectorAll('.js-plotly-plot svg.main-svg').length,
  bars: document.querySelectorAll('.js-plotly-plot g.trace.bars').length,
  lines: document.querySelectorAll('.js-plotly-plot g.trace.scatter').length,
  faultShapes: document.querySelectorAll('.js-plotly-plot .shapelayer path').length,
  verdicts: Array.from(document.querySelectorAll('[data-verdict]')).map(
      e => [e.dataset.verdict, e.dataset.status]),
  pagers: Array.from(document.querySelectorAll('.pager span')).map(e => e.textContent),
  visibleRowsFirstPaged: (() => { const t = document.querySelector('table.paged');
      return t ? Array.from(t.tBodies[0].rows).filter(r => !r.hidden).length : null; })(),
  flawMatrix: !!document.getElementById('flaw-matrix'),
})"""


async def _devtools_url(proc: asyncio.subprocess.Process, log: list[str]) -> str:
    assert proc.stderr is not None
    while True:
        line = await proc.stderr.readline()
        if not line:
            raise RuntimeError("chromium exited before DevTools listened:\n" + "\n".join(log[-20:]))
        text = line.decode(errors="replace").rstrip()
        log.append(text)
        m = re.search(r"DevTools listening on (ws://\S+)", text)
        if m:
            return m.group(1)


async def _drain(stream: asyncio.StreamReader, log: list[str]) -> None:
    while line := await stream.readline():
        log.append(line.decode(errors="replace").rstrip())


class Browser:
    """One headless Chromium (own process group, fresh profile) for several pages: ``async with``."""

    def __init__(self, chromium: str, timeout: float = 90.0) -> None:
        self.chromium = chromium
        self.timeout = timeout
        self.log: list[str] = []
        self.cdp: CDP | None = None
        self._proc: asyncio.subprocess.Process | None = None
        self._drain: asyncio.Task[None] | None = None
        self._profile = ""

    async def __aenter__(self) -> Browser:
        self._profile = tempfile.mkdtemp(prefix="fastport-chromium-")
        try:
            self._proc = await asyncio.create_subprocess_exec(
                self.chromium,
                *FLAGS,
                f"--user-data-dir={self._profile}",
                "about:blank",
                stdin=subprocess.DEVNULL,
                stdout=subprocess.DEVNULL,
                stderr=subprocess.PIPE,
                start_new_session=True,
                # Its singleton socket dir goes to $TMPDIR and outlives a SIGKILL: keep it in the profile.
                env=dict(os.environ, TMPDIR=self._profile),
            )
            async with asyncio.timeout(self.timeout):
                url = await _devtools_url(self._proc, self.log)
                assert self._proc.stderr is not None
                self._drain = asyncio.create_task(_drain(self._proc.stderr, self.log))
                self.cdp = CDP(await websockets.connect(url, max_size=None))
        except BaseException:
            await self.__aexit__(None, None, None)
            raise
        return self

    async def __aexit__(self, *exc: object) -> None:
        if self.cdp is not None:
            await self.cdp.close()
        if self._proc is not None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self._proc.pid, signal.SIGKILL)
            await self._proc.wait()
        if self._drain is not None:
            self._drain.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._drain
        shutil.rmtree(self._profile, ignore_errors=True)

    async def open(self, path: Path, screenshot: Path | None = None) -> Page:
        """Load *path* (file://) in a new tab, await ``window.reportReady``, check the DOM, screenshot."""
        cdp = self.cdp
        assert cdp is not None, "use Browser as an async context manager"
        async with asyncio.timeout(self.timeout):
            target = await cdp.call("Target.createTarget", {"url": "about:blank"})
            attached = await cdp.call(
                "Target.attachToTarget", {"targetId": target["targetId"], "flatten": True}
            )
            s = attached["sessionId"]
            first_event = len(cdp.events)
            for domain in ("Runtime", "Log", "Page", "Network"):
                await cdp.call(f"{domain}.enable", session=s)
            loaded = cdp.expect("Page.loadEventFired")
            await cdp.call(
                "Page.navigate", {"url": await asyncio.to_thread(lambda: path.resolve().as_uri())}, session=s
            )
            await loaded
            ready = await cdp.call(
                "Runtime.evaluate",
                {"expression": "window.reportReady", "awaitPromise": True, "returnByValue": True},
                session=s,
            )
            res = await cdp.call(
                "Runtime.evaluate", {"expression": CHECKS_JS, "returnByValue": True}, session=s
            )
            page = Page(json.loads(res["result"]["value"]), ready=ready.get("result", {}).get("value"))
            if screenshot is not None:
                shot = await cdp.call(
                    "Page.captureScreenshot", {"format": "png", "captureBeyondViewport": True}, session=s
                )
                await asyncio.to_thread(screenshot.write_bytes, base64.b64decode(shot["data"]))
            for ev in cdp.events[first_event:]:
                if ev.get("sessionId") != s:
                    continue
                method, p = ev.get("method"), ev.get("params", {})
                if method == "Runtime.consoleAPICalled" and p.get("type") in ("error", "assert"):
                    page.console_errors.append(" ".join(str(a.get("value", a)) for a in p.get("args", [])))
                elif method == "Runtime.exceptionThrown":
                    page.console_errors.append(json.dumps(p.get("exceptionDetails", {}))[:500])
                elif method == "Log.entryAdded" and p.get("entry", {}).get("level") == "error":
                    e = p["entry"]
                    page.console_errors.append(f"{e.get('source')}: {e.get('text')} {e.get('url', '')}")
                elif method == "Network.requestWillBeSent":
                    u = p.get("request", {}).get("url", "")
                    if not u.startswith(("file:", "data:", "about:", "blob:")):
                        page.external_requests.append(u)
            await cdp.call("Target.closeTarget", {"targetId": target["targetId"]})
            return page
