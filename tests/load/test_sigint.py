"""Ctrl-C of a multi-process Locust run leaves no process and no connection behind."""

from __future__ import annotations

import json
import os
import queue
import signal
import subprocess
import threading
import urllib.request
from pathlib import Path

import psutil
import pytest

from chaos.launcher import BrokerUnderTest
from chaos.load.bench import locust_command, locust_env, stop_group
from tests.load.conftest import HANG, connects_in
from tests.sigint import sigint_default

pytestmark = pytest.mark.integration
LOCUSTFILE = Path(__file__).resolve().parents[2] / "scenarios" / "load" / "locustfile.py"


def _clients(broker: BrokerUnderTest) -> int:
    with urllib.request.urlopen(f"http://127.0.0.1:{broker.port}/healthz", timeout=HANG) as resp:
        return int(json.load(resp)["clients"])


@pytest.mark.parametrize("target", ["group", "master"])
def test_sigint_stops_master_and_workers(broker: BrokerUnderTest, target: str) -> None:
    """``group``: the terminal's Ctrl-C (every process of the group); ``master``: only the master's pid."""
    cmd = locust_command(
        LOCUSTFILE, broker.url, users=10, seconds=300, processes=2, extra=["--fp-rate", "20"]
    )
    proc = subprocess.Popen(
        cmd,
        env=locust_env(),
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        start_new_session=True,
        preexec_fn=sigint_default,  # Ctrl-C as in a terminal, also if this run started with SIGINT ignored
    )
    lines: queue.Queue[str] = queue.Queue()
    reader = threading.Thread(target=lambda: [lines.put(line) for line in proc.stdout], daemon=True)  # type: ignore[union-attr]
    reader.start()
    try:
        # Locust's console stats (from the workers' reports) say when all ten users are connected.
        while connects_in(lines.get(timeout=60)) < 10:  # queue.Empty on a hang
            pass
        tree = [psutil.Process(proc.pid), *psutil.Process(proc.pid).children(recursive=True)]
        assert len(tree) == 3, [p.cmdline() for p in tree]  # the master and its two workers
        assert _clients(broker) == 10
        if target == "group":
            os.killpg(proc.pid, signal.SIGINT)
        else:
            os.kill(proc.pid, signal.SIGINT)
        proc.wait(timeout=60)
        gone, alive = psutil.wait_procs(tree, timeout=HANG)
        assert not alive, [p.pid for p in alive]
        assert _clients(broker) == 0  # every user closed its connection on the way out
    finally:
        stop_group(proc)  # type: ignore[arg-type]
        reader.join(timeout=5)
