"""History files of either size: compact (``history.npz``) over 200,000 events, JSON lines below, read
back by every reader (the suite runner's ingest, ``gate --from``); the broker logs go with them."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from chaos.bench.history import T0, run_checkers, synthetic
from chaos.config import LabConfig
from chaos.history import History
from chaos.load.recorder import HistoryRecorder
from chaos.runner import COMPACT_OVER, ScenarioResult, write_scenario_folder
from fastport_lab.gate import main as gate_main
from fastport_lab.suite_runner import ingest_scenario_dirs
from reports.build import finish
from reports.record import RunRecorder
from tests.reports.histories import storage_run, storage_verdicts

ZIP = b"PK\x03\x04"


@pytest.fixture(scope="module")
def big(tmp_path_factory) -> tuple[History, list]:
    """A load-run-shaped history just over the line (about 230,000 events), and its verdicts."""
    d = tmp_path_factory.mktemp("big")
    master, rec = History(start=T0), HistoryRecorder(History(start=T0), d / "w.npz")
    synthetic([rec], master, deliveries=100_000, seed=5)
    rec.close()
    h = History.merge([master, History.read(d / "w.npz")])
    assert len(h) > COMPACT_OVER
    verdicts, _ = run_checkers(h)
    return h, list(verdicts.values())


def test_a_big_history_is_recorded_compact_and_a_small_one_as_json_lines(runs_root, big) -> None:
    h, verdicts = big
    rec = RunRecorder(runs_root, run_id="r")
    s_big = rec.add_scenario("load", "load", h, verdicts)
    small = storage_run(per_phase=10)
    s_small = rec.add_scenario("small", 1, small, storage_verdicts(small))
    report = finish(rec)
    assert s_big["history"] == "load/history.npz" and s_small["history"] == "small/history.jsonl"
    assert (report.run_dir / "load" / "history.npz").read_bytes()[:4] == ZIP
    assert not (report.run_dir / "load" / "history.jsonl").exists()
    assert (report.run_dir / "small" / "history.jsonl").read_text().startswith('{"format"')
    back = History.read(report.run_dir / s_big["history"])
    assert len(back) == len(h) == s_big["events"] and back.fault_windows() == h.fault_windows()
    results = json.loads((report.run_dir / "results.json").read_text())
    assert [s["history"] for s in results["scenarios"]] == ["load/history.npz", "small/history.jsonl"]
    assert 'href="load/history.npz"' in report.html.read_text()
    # gate --from re-judges the finished run whatever its history files
    assert gate_main(["--from", str(report.run_dir)]) == report.exit_code


def _scenario(folder: Path, name: str, history: History, verdicts: list) -> ScenarioResult:
    meta = {"nodeid": f"scenarios/test_x.py::{name}", "fmea": 1}
    return ScenarioResult(name, LabConfig(), verdicts, history, folder, 1.0, meta=meta)


def test_scenario_folders_of_either_format_are_ingested_with_their_logs(tmp_path, runs_root, big) -> None:
    h, verdicts = big
    scratch = tmp_path / "scratch"
    write_scenario_folder(_scenario(scratch / "load-1", "load", h, verdicts))
    small = storage_run(per_phase=10)
    write_scenario_folder(_scenario(scratch / "small-1", "small", small, storage_verdicts(small)))
    assert sorted(p.name for p in (scratch / "load-1").iterdir()) == ["history.npz", "verdicts.json"]
    assert json.loads((scratch / "load-1" / "verdicts.json").read_text())["history"] == "history.npz"
    assert (scratch / "small-1" / "history.jsonl").is_file()
    (scratch / "load-1" / "broker-1.log").write_text("# python -m broker ...\nlistening\n")
    (scratch / "load-1" / "broker-2.log").write_text("# after the kill\n")
    (scratch / "small-1" / "proxy.log").write_text("proxy says hello\n")

    rec = RunRecorder(runs_root, run_id="i")
    assert ingest_scenario_dirs(scratch, rec) == 2
    report = finish(rec)
    by_name = {s["name"]: s for s in report.results["scenarios"]}
    assert by_name["load"]["events"] == len(h) and by_name["load"]["history"] == "load/history.npz"
    assert by_name["small"]["events"] == len(small)
    assert by_name["load"]["logs"] == ["load/broker-1.log", "load/broker-2.log"]
    assert by_name["small"]["logs"] == ["small/proxy.log"]
    assert (report.run_dir / "load" / "broker-2.log").read_text() == "# after the kill\n"
    html = report.html.read_text()
    assert '<a href="load/broker-1.log"><code>broker-1.log</code></a>' in html
    assert '<a href="small/proxy.log"><code>proxy.log</code></a>' in html


def test_a_folder_written_again_keeps_one_history(tmp_path, big) -> None:
    h, verdicts = big
    folder = tmp_path / "s"
    write_scenario_folder(_scenario(folder, "s", h, verdicts))
    small = storage_run(per_phase=5)
    write_scenario_folder(_scenario(folder, "s", small, storage_verdicts(small)))
    assert sorted(p.name for p in folder.iterdir()) == ["history.jsonl", "verdicts.json"]


def test_a_file_that_clashes_with_the_history_is_refused(runs_root, tmp_path) -> None:
    clash = tmp_path / "history.jsonl"
    clash.write_text("")
    rec = RunRecorder(runs_root, run_id="c")
    small = storage_run(per_phase=3)
    with pytest.raises(ValueError, match=r"files \['history.jsonl'\]"):
        rec.add_scenario("x", 1, small, [], files=[clash])
    assert not (rec.run_dir / "x").exists()
