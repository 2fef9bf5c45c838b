"""The Locust users in short real headless runs against the reference broker, judged from their records.

Each run is real Locust in a subprocess (``python -m locust``), once as a
single process and once with ``--processes 2``; the in-memory recorder of each
worker reaches the master and the test checks every delivery against the
broker's own recipient counts. No timing assertions: the drain (publishers
quiet, then a ping barrier per subscriber) makes the end of the run exact.
"""

from __future__ import annotations

import csv
import json
import queue
import subprocess
import sys
import threading
from collections import defaultdict
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from chaos.launcher import BrokerUnderTest
from chaos.load.bench import free_port, locust_command, locust_env, stop_group
from tests.load.conftest import connects_in

pytestmark = pytest.mark.integration
HERE = Path(__file__).parent


def run_locust(
    locustfile: Path,
    host: str,
    *,
    users: int,
    seconds: float,
    processes: int = 1,
    extra: list[str] | None = None,
    timeout: float = 120,
) -> subprocess.CompletedProcess[str]:
    """Run Locust to its end; on a hang, Ctrl-C (then kill) its whole process group, never leave it behind."""
    cmd = locust_command(locustfile, host, users=users, seconds=seconds, processes=processes, extra=extra)
    proc = subprocess.Popen(
        cmd,
        env=locust_env(),
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        start_new_session=True,
    )
    try:
        out, _ = proc.communicate(timeout=timeout)
    finally:
        stop_group(proc)  # type: ignore[arg-type]
    return subprocess.CompletedProcess(cmd, proc.returncode, out, "")


def judge(events: list[list[Any]], since: float = 0.0) -> dict[str, Any]:
    """Every message published (answered) from *since* on reached exactly its recipients, unchanged."""
    invoked: dict[str, tuple[str, int]] = {}
    recipients: dict[str, int] = {}
    topic_of_sub: dict[str, str] = {}
    receivers: dict[str, set[str]] = defaultdict(set)
    counts: dict[str, int] = defaultdict(int)
    for kind, *args in events:  # merged per worker batch: not in time order across workers
        counts[kind] += 1
        if kind == "publish_invoked":
            client, msg_id, topic, t, digest, length = args
            invoked[msg_id] = (topic, digest)
        elif kind == "published" and args[2] >= since:
            recipients[args[1]] = args[3]
        elif kind == "subscribed":
            topic_of_sub[args[0]] = args[1]
    for kind, *args in events:
        if kind == "delivered":
            client, msg_id, topic, t, attempt, digest = args
            assert invoked[msg_id] == (topic, digest), f"{msg_id} changed on its way to {client}"
            assert topic_of_sub[client] == topic
            receivers[msg_id].add(client)
    assert recipients, "nothing was published"
    short = {m: (n, len(receivers[m])) for m, n in recipients.items() if len(receivers[m]) != n}
    assert not short, f"messages not delivered to all their recipients (recipients, got): {short}"
    return {
        "counts": dict(counts),
        "subscribers": set(topic_of_sub),
        "published": len(recipients),
        "deliveries": sum(recipients.values()),
    }


@pytest.mark.parametrize("processes", [1, 2])
def test_users_deliver_everything_they_publish(
    broker: BrokerUnderTest, tmp_path: Path, processes: int
) -> None:
    records, summary = tmp_path / "records.json", tmp_path / "summary.json"
    result = run_locust(
        HERE / "locustfile_recording.py",
        broker.url,
        users=10,
        seconds=4,
        processes=processes,
        extra=[
            "--fp-rate",
            "20",
            "--fp-subscribers-per-topic",
            "3",
            "--fp-ack-mix",
            "always=2,late=1,never=1",
            "--fp-ack-delay",
            "0.3",
            "--fp-payload-size",
            "200",
            "--fp-incompressible",
            "--test-records",
            str(records),
            "--fp-summary",
            str(summary),
            "--csv",
            str(tmp_path / "run"),
            "--json-file",
            str(tmp_path / "stats"),
        ],
    )
    assert result.returncode == 0, result.stdout[-4000:]
    assert "fastport drain: complete" in result.stdout, result.stdout[-4000:]
    seen = judge(json.loads(records.read_text()))
    doc = json.loads(summary.read_text())
    c = doc["counters"]
    assert seen["subscribers"] and len(seen["subscribers"]) == 8  # 10 users, one in five publishes
    assert {s.split("-sub")[1].split(".")[0] for s in seen["subscribers"]} == {
        str(i) for i in range(processes)
    }
    assert c["delivered"] == seen["counts"]["delivered"] >= seen["deliveries"]
    assert c["published"] == seen["published"] == c["sent"]
    assert c["corrupt"] == 0 and c["refused"] == 0 and c["connect_failed"] == 0
    assert c["acked"] == seen["counts"]["acked"] > 0
    assert doc["processes"] == processes and doc["deliveries_per_s"] > 0
    push = doc["latency_ms"]["push"]
    assert push["count"] == c["delivered"] - c["redelivered"] and push["p50"] <= push["p99"] <= push["max"]
    # Locust's own statistics hold the same deliveries (its UI, HTML report and JSON come from them).
    entries = {(e["method"], e["name"]): e for e in json.loads((tmp_path / "stats.json").read_text())}
    assert entries[("fastport", "push")]["num_requests"] == push["count"]
    assert entries[("fastport", "published")]["num_requests"] == c["published"]
    assert entries[("fastport", "connect")]["num_requests"] == c["connects"]
    # Its CSV too, except what came after its last once-a-second write (Locust writes no final row).
    rows = {(r["Type"], r["Name"]): r for r in csv.DictReader((tmp_path / "run_stats.csv").open())}
    assert 0 < int(rows[("fastport", "push")]["Request Count"]) <= push["count"]


def test_master_and_separate_workers(broker: BrokerUnderTest, tmp_path: Path) -> None:
    """``--master`` / ``--worker`` as on several machines: the workers get the ``--fp-*`` from the master."""
    records, summary = tmp_path / "records.json", tmp_path / "summary.json"
    port = free_port()
    worker_cmd = [
        sys.executable,
        "-m",
        "locust",
        "-f",
        str(HERE / "locustfile_recording.py"),
        "--worker",
        "--master-host",
        "127.0.0.1",
        "--master-port",
        str(port),
    ]
    workers = [
        subprocess.Popen(
            worker_cmd,
            env=locust_env(),
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            start_new_session=True,
        )
        for _ in range(2)
    ]
    try:
        master = run_locust(
            HERE / "locustfile_recording.py",
            broker.url,
            users=10,
            seconds=4,
            extra=[
                "--master",
                "--expect-workers",
                "2",
                "--master-bind-host",
                "127.0.0.1",
                "--master-bind-port",
                str(port),
                "--fp-rate",
                "20",
                "--fp-subscribers-per-topic",
                "3",
                "--fp-payload-size",
                "100",
                "--test-records",
                str(records),
                "--fp-summary",
                str(summary),
            ],
        )
        for worker in workers:
            worker.wait(timeout=30)  # the master's quit ends them
    finally:
        for worker in workers:
            stop_group(worker)
    assert master.returncode == 0, master.stdout[-4000:]
    seen = judge(json.loads(records.read_text()))
    assert {s.split("-sub")[1].split(".")[0] for s in seen["subscribers"]} == {"0", "1"}
    assert json.loads(summary.read_text())["settings"]["payload_size"] == 100
    run_ids = {s.split("-sub")[0] for s in seen["subscribers"]}
    assert len(run_ids) == 1  # one run id, chosen by the master, on both workers


def test_users_reconnect_and_resubscribe_across_a_broker_restart(
    start_broker: Callable[..., BrokerUnderTest], tmp_path: Path
) -> None:
    """SIGKILL the broker mid-run and start it again on its port: every user reconnects and goes on."""
    first = start_broker()
    records, summary = tmp_path / "records.json", tmp_path / "summary.json"
    cmd = locust_command(
        HERE / "locustfile_recording.py",
        first.url,
        users=6,
        seconds=12,
        extra=[
            "--fp-rate",
            "20",
            "--fp-subscribers-per-topic",
            "2",
            "--test-records",
            str(records),
            "--fp-summary",
            str(summary),
        ],
    )
    proc = subprocess.Popen(
        cmd,
        env=locust_env(),
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        start_new_session=True,
    )
    lines: queue.Queue[str] = queue.Queue()
    out: list[str] = []

    def pump() -> None:
        for line in proc.stdout:  # type: ignore[union-attr]
            out.append(line)
            lines.put(line)

    reader = threading.Thread(target=pump, daemon=True)
    reader.start()
    try:
        while connects_in(lines.get(timeout=60)) < 6:  # Locust's console: all six connected
            pass
        first.kill()
        start_broker(port=first.port)
        while connects_in(lines.get(timeout=60)) < 12:  # and all six again
            pass
        proc.wait(timeout=60)
        reader.join(timeout=5)
    finally:
        stop_group(proc)  # type: ignore[arg-type]
    log = "".join(out)
    assert proc.returncode == 1, log[-4000:]  # Locust's exit code on errors: the refused reconnects
    assert "fastport drain: complete" in log, log[-4000:]
    events = json.loads(records.read_text())
    last_subscribed = max(e[3] for e in events if e[0] == "subscribed")
    seen = judge(events, since=last_subscribed)  # the memory store forgot what was in flight at the kill
    assert seen["published"] > 0
    c = json.loads(summary.read_text())["counters"]
    assert c["connects"] >= 12 and c["disconnects"] >= 6 and c["connect_failed"] > 0
    assert c["published"] == c["sent"] and c["refused"] == c["corrupt"] == 0
