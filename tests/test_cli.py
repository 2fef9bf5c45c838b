"""The ``fastport-lab`` command as a user runs it: a real subprocess, real exit codes."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest


def run(*args: str, timeout: float = 120) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "fastport_lab.cli", *args], capture_output=True, text=True,
                          timeout=timeout, stdin=subprocess.DEVNULL)


def test_help_lists_every_command() -> None:
    out = run("--help")
    assert out.returncode == 0
    for name in ("demo", "broker", "toxiproxy", "bench broker", "bench proxy"):
        assert name in out.stdout


def test_unknown_command_is_a_usage_error() -> None:
    out = run("frobnicate")
    assert out.returncode == 3  # the gate's "could not run", never a verdict's code
    assert "unknown command 'frobnicate'" in out.stderr


def test_bench_needs_a_known_benchmark() -> None:
    out = run("bench", "nothing")
    assert out.returncode == 2
    assert "choose one of broker, proxy" in out.stderr


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--subscribers", "0"], "--subscribers takes positive integers"),
        (["--subscribers", "x"], "--subscribers takes positive integers"),
        (["--store", "redis"], "--store takes memory, postgres or both"),
        (["--seconds", "-1"], "--seconds must be positive"),
    ],
)
def test_bench_broker_rejects_bad_options(args: list[str], message: str) -> None:
    out = run("bench", "broker", *args)
    assert out.returncode == 2
    assert message in out.stderr


@pytest.mark.integration
def test_bench_broker_smoke(tmp_path) -> None:
    """A tiny run: both servers start, the workload completes, figures are sane (not timed)."""
    rows_file = tmp_path / "rows.json"
    out = run("bench", "broker", "--subscribers", "2", "--store", "memory", "--seconds", "0.3",
              "--json", str(rows_file))
    assert out.returncode == 0, out.stderr
    rows = json.loads(rows_file.read_text())
    assert [r["target"] for r in rows] == ["relay", "memory"]
    for row in rows:
        assert row["deliveries_per_s"] > 0
        assert 0 < row["p50_ms"] <= row["p99_ms"]
    assert "ratio" in out.stdout


@pytest.mark.integration
def test_demo_passes_against_the_reference_broker(tmp_path) -> None:
    history = tmp_path / "history.jsonl"
    out = run("demo", "--messages", "3", "--history", str(history))
    assert out.returncode == 0, out.stdout + out.stderr
    assert "carol received all 3 messages" in out.stdout
    assert out.stdout.count("pass") >= 3
    assert history.read_text().count('"f":"fault-start"') == 1


@pytest.mark.integration
def test_demo_catches_the_no_hydrate_flaw() -> None:
    cmd = (f"{sys.executable} -m broker --host {{host}} --port {{port}} --store {{store}} --dsn {{dsn}}"
           " --flaw no-hydrate")
    out = run("demo", "--messages", "2", "--broker-cmd", cmd)
    assert out.returncode == 1, out.stdout + out.stderr
    assert "hydration violated" in out.stdout
