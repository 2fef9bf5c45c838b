"""scenarios/load/locustfile.py as Locust users run it: ``locust -f`` against a broker they already run."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from chaos.launcher import BrokerUnderTest
from tests.load.test_users import run_locust

pytestmark = pytest.mark.integration
LOCUSTFILE = Path(__file__).resolve().parents[2] / "scenarios" / "load" / "locustfile.py"


def test_headless_run_against_a_running_broker(broker: BrokerUnderTest, tmp_path: Path) -> None:
    summary = tmp_path / "summary.json"
    host = broker.url.replace("ws://", "http://")  # Locust users type http://; it is mapped to ws://
    result = run_locust(
        LOCUSTFILE,
        host,
        users=6,
        seconds=3,
        extra=[
            "--fp-rate",
            "30",
            "--fp-summary",
            str(summary),
            "--fp-ack-mix",
            "always=1,late=1",
            "--fp-ack-delay",
            "0.2",
        ],
    )
    assert result.returncode == 0, result.stdout[-4000:]
    c = json.loads(summary.read_text())["counters"]
    assert c["published"] == c["sent"] > 0 and c["delivered"] > 0 and c["acked"] > 0
    assert c["corrupt"] == c["refused"] == c["connect_failed"] == 0
    assert "fastport push" in result.stdout  # the exact percentiles are logged at the end
    assert "load only, no faults" in result.stdout  # what a broker the lab does not control misses


def test_bad_option_fails_clearly(broker: BrokerUnderTest) -> None:
    result = run_locust(LOCUSTFILE, broker.url, users=1, seconds=1, extra=["--fp-ack-mix", "sometimes=1"])
    assert result.returncode == 2
    assert "unknown ack mode 'sometimes'" in result.stdout
