"""``fastport-lab toxiproxy`` and ``fastport-lab bench proxy`` as real processes."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import requests

from chaos.supervisor import Child
from chaos.toxiproxy.server import json_line
from tests.toxiproxy.conftest import EchoServer, connect, port_of, recv_exact

pytestmark = pytest.mark.integration

CLI = str(Path(sys.executable).parent / "fastport-lab")


def test_cli_serves_config_and_stops_on_sigterm(tmp_path: Path, echo: EchoServer) -> None:
    config = tmp_path / "toxiproxy.json"
    config.write_text(json.dumps([
        {"name": "pg", "listen": "127.0.0.1:0", "upstream": echo.addr,
         "toxics": [{"type": "latency", "attributes": {"latency": 10}}]},
        {"name": "off", "listen": "127.0.0.1:0", "upstream": echo.addr, "enabled": False},
    ]))  # fmt: skip
    proc = Child([CLI, "toxiproxy", "-port", "0", "--config", str(config)], ready=json_line).start()
    try:
        info = proc.ready
        assert info["event"] == "listening" and info["host"] == "127.0.0.1" and info["port"] > 0
        proxies = requests.get(f"{info['url']}/proxies", timeout=10).json()
        assert set(proxies) == {"off", "pg"} and proxies["off"]["enabled"] is False
        assert proxies["pg"]["toxics"][0]["attributes"]["latency"] == 10
        with connect(port_of(proxies["pg"]["listen"])) as s:
            s.sendall(b"hey")
            assert recv_exact(s, 3) == b"hey"
        proc.signal(signal.SIGTERM)
        assert proc.exited(10) and proc.returncode == 0
    finally:
        proc.kill()


@pytest.mark.parametrize(
    ("content", "needle"),
    [('[{"upstream": "x:1"}]', "missing required field: name at proxy 1"), ("{nope", "bad request body")],
)
def test_cli_rejects_bad_config(tmp_path: Path, content: str, needle: str) -> None:
    config = tmp_path / "bad.json"
    config.write_text(content)
    out = subprocess.run([CLI, "toxiproxy", "--port", "0", "--config", str(config)],
                         capture_output=True, text=True, timeout=30)  # fmt: skip
    assert out.returncode == 2 and needle in out.stderr


def test_cli_missing_config_and_version() -> None:
    cmd = [CLI, "toxiproxy", "--config", "/nonexistent/x.json"]
    out = subprocess.run(cmd, capture_output=True, text=True, timeout=30)
    assert out.returncode == 2 and "cannot read config" in out.stderr
    ver = subprocess.run([CLI, "toxiproxy", "-version"], capture_output=True, text=True, timeout=30)
    assert (ver.returncode, ver.stdout) == (0, "2.12.0\n")


def test_cli_port_in_use_fails_clearly() -> None:
    import socket

    with socket.create_server(("127.0.0.1", 0)) as busy:
        port = busy.getsockname()[1]
        out = subprocess.run(
            [CLI, "toxiproxy", "--port", str(port)], capture_output=True, text=True, timeout=30
        )
    assert out.returncode == 1 and "address already in use" in out.stderr


def test_bench_proxy_smoke() -> None:
    out = subprocess.run([CLI, "bench", "proxy", "--round-trips", "300", "--bulk-mb", "4", "--repeats", "1",
                          "--json"], capture_output=True, text=True, timeout=120)  # fmt: skip
    assert out.returncode in (0, 1), out.stderr  # 1 = a target missed on a loaded machine; not a test failure
    assert "echo RTT p50 (us)" in out.stdout and "download (MB/s)" in out.stdout
    results = json.loads(out.stdout.strip().splitlines()[-1])
    assert results["proxied"]["upload_mbps"] > 0 and results["direct"]["rtt_p50_us"] > 0
