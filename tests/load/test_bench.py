"""``fastport-lab bench load`` runs end to end (tiny and short: it checks the machinery, not speed)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from chaos.load import bench

pytestmark = pytest.mark.integration


def test_bench_load_measures_lean_and_rig_on_both_servers(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "rows.json"
    assert (
        bench.main(
            [
                "--subscribers",
                "2",
                "--processes",
                "1,2",
                "--seconds",
                "1",
                "--warmup",
                "1",
                "--repeat",
                "1",
                "--json",
                str(out),
            ]
        )
        == 0
    )
    rows = json.loads(out.read_text())
    assert {(r["target"], r["client"]) for r in rows} == {
        (t, c) for t in ("relay", "memory") for c in ("lean", "rig x1", "rig x2")
    }
    assert all(r["deliveries_per_s"] > 0 for r in rows)
    assert "rig/lean median" in capsys.readouterr().out


def test_bench_load_rejects_bad_options() -> None:
    with pytest.raises(SystemExit):
        bench.main(["--servers", "postgres"])
