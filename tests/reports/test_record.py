"""The run folder: what the recorder writes (results.json, junit.xml, histories, index.html, runs index)."""

from __future__ import annotations

import json
import re
import xml.etree.ElementTree as ET
from html.parser import HTMLParser

import pytest

from chaos.checkers.verdict import Verdict
from chaos.history import History
from reports.build import finish, rebuild
from reports.judge import GateConfig, Thresholds
from reports.record import RunFormatError, RunRecorder, read_results
from tests.reports.conftest import record_mixed_run
from tests.reports.histories import storage_run, storage_verdicts


def test_run_folder_layout_and_results(runs_root):
    report = record_mixed_run(runs_root)
    d = report.run_dir
    assert d == runs_root / "mixed" and report.exit_code == 0
    for name in ("results.json", "junit.xml", "index.html", "plotly.min.js"):
        assert (d / name).is_file(), name
    r = read_results(d)
    assert r["run_id"] == "mixed" and r["seed"] == 42
    assert r["reproduce"] == "fastport-lab gate --store postgres"
    env = r["environment"]
    assert env["python"].startswith("3.") and env["store"] == "postgres" and "{port}" in env["broker_cmd"]
    assert env["packages"]["plotly"] and env["packages"]["jinja2"] and "websockets" in env["packages"]
    names = [s["name"] for s in r["scenarios"]]
    assert names == ["storage_faults", "crash_and_restart", "flaw-store-first"]
    fmea1, crash, flaw = r["scenarios"]
    assert fmea1["fmea"] == 1 and crash["fmea"] == 3 and crash["duration_s"] == 4.2
    assert "./lab test scenarios/test_fmea1_storage.py::test_x --broker-cmd" in fmea1["reproduce"]
    assert fmea1["phases"]["windows"][0]["name"] == "storage-latency"
    assert crash["phases"]["windows"][0]["hydration_s"] is not None
    lost = next(v for v in flaw["verdicts"] if v["name"] == "at-least-once")["evidence"]["lost"]
    assert {x["id"] for x in lost} == {"p-45", "p-50", "p-51"}
    assert r["gate"]["status"] == "pass" and r["gate"]["config"]["thresholds"]["fault_p99_ms"] == 2000


def test_histories_round_trip(runs_root):
    rec = RunRecorder(runs_root, run_id="rt")
    h = storage_run(per_phase=10)
    rec.add_scenario("one", 1, h, storage_verdicts(h))
    rec.add_scenario("one", 1, h, storage_verdicts(h))  # same name twice: two folders
    finish(rec)
    r = read_results(rec.run_dir)
    assert [s["history"] for s in r["scenarios"]] == ["one/history.jsonl", "one-2/history.jsonl"]
    back = History.read(rec.run_dir / "one" / "history.jsonl")
    assert [e.to_dict() for e in back.events] == [e.to_dict() for e in h.events]


def test_junit_has_one_testcase_per_scenario_and_invariant(runs_root):
    rec = RunRecorder(runs_root, run_id="j")
    bad = storage_run(lose={100})
    rec.add_scenario("fmea1", 1, bad, storage_verdicts(bad))
    unk = storage_run(effective=None)
    rec.add_scenario("unconfirmed", 1, unk, storage_verdicts(unk))
    report = finish(rec, GateConfig(thresholds=Thresholds(baseline_p99_ms=1)))
    assert report.exit_code == 1
    root = ET.parse(report.run_dir / "junit.xml").getroot()
    suites = {s.get("name"): s for s in root.iter("testsuite")}
    assert set(suites) == {"fmea1", "unconfirmed"}
    cases = {c.get("name"): c for c in suites["fmea1"].iter("testcase")}
    assert {"availability-under-storage-faults", "at-least-once", "integrity", "duplicates-and-order"} <= set(
        cases
    )
    failure = cases["at-least-once"].find("failure")
    assert failure is not None and failure.get("message").startswith("at-least-once violated: 1 of")
    assert '"p-100"' in failure.text
    assert cases["integrity"].find("failure") is None
    th = cases["threshold:baseline_p99_ms"].find("failure")
    assert th is not None and "baseline_p99_ms = 1" in th.get("message")
    un = {c.get("name"): c for c in suites["unconfirmed"].iter("testcase")}
    assert un["availability-under-storage-faults"].find("failure").get("type") == "unknown"
    assert int(root.get("tests")) == sum(1 for _ in root.iter("testcase"))
    assert int(root.get("failures")) >= 3

    warn = rebuild(report.run_dir, GateConfig(unknown="warn"))
    root = ET.parse(warn.run_dir / "junit.xml").getroot()
    un = {c.get("name"): c for s in root.iter("testsuite") if s.get("name") == "unconfirmed" for c in s}
    assert un["availability-under-storage-faults"].find("skipped") is not None


def test_html_is_self_contained(runs_root):
    report = record_mixed_run(runs_root)
    html = report.html.read_text()
    assert 'id="verdict-banner"' in html and "The fixes held" in html
    srcs = re.findall(r'<script[^>]*\bsrc="([^"]+)"', html)
    assert srcs == ["plotly.min.js"]  # local file, no CDN
    assert not re.search(r'(src|href)="(https?:)?//', html)
    assert html.count("data-figure=") == 3 and 'id="flaw-matrix"' in html
    figures = json.loads(
        re.search(r'<script type="application/json" id="figures">(.*?)</script>', html, re.S)[1]
    )
    assert set(figures) == {
        f"timeline-{s}" for s in ("storage_faults", "crash_and_restart", "flaw-store-first")
    }
    assert "p-45" in html  # the lost ids are in the evidence tables
    assert "./lab test scenarios/test_fmea1_storage.py::test_x" in html
    assert_well_nested(html)


class _Nesting(HTMLParser):
    """Table rows only inside tables, every table closed: a template edit that breaks the page fails."""

    VOID = {"meta", "br", "img", "input", "link", "hr", "col", "wbr"}

    def __init__(self) -> None:
        super().__init__()
        self.stack: list[str] = []
        self.problems: list[str] = []

    def handle_starttag(self, tag: str, attrs: list) -> None:
        if tag in self.VOID:
            return
        if tag == "tr" and "table" not in self.stack:
            self.problems.append(f"<tr> outside a table at line {self.getpos()[0]}")
        self.stack.append(tag)

    def handle_endtag(self, tag: str) -> None:
        if tag in self.VOID:
            return
        if tag not in self.stack:
            self.problems.append(f"</{tag}> without an open <{tag}> at line {self.getpos()[0]}")
            return
        while self.stack.pop() != tag:  # implicitly closed elements (p, li, td) end with their parent
            pass


def assert_well_nested(html: str) -> None:
    parser = _Nesting()
    parser.feed(html)
    assert not parser.problems, parser.problems[:5]
    assert "table" not in parser.stack, "a table is never closed"


def test_runs_index_lists_past_runs_with_a_trend(runs_root):
    record_mixed_run(runs_root, "20260101T000000Z-aaaa")
    rec = RunRecorder(runs_root, run_id="20260102T000000Z-bbbb")
    h = storage_run(lose={100})
    rec.add_scenario("fmea1", 1, h, storage_verdicts(h))
    finish(rec)
    (runs_root / "junk").mkdir()
    (runs_root / "junk" / "results.json").write_text("{not json")
    rec2 = RunRecorder(runs_root, run_id="20260103T000000Z-cccc")
    rec2.add_scenario("fmea1", 1, storage_run(), storage_verdicts(storage_run()))
    finish(rec2)
    index = runs_root / "index.html"  # inside the runs root: `--out /tmp/x` writes /tmp/x/index.html
    assert not (runs_root.parent / "index.html").exists()
    html = index.read_text()
    assert (
        html.index("20260103T000000Z-cccc")
        < html.index("20260102T000000Z-bbbb")
        < html.index("20260101T000000Z-aaaa")
    )
    assert 'href="20260102T000000Z-bbbb/index.html"' in html
    assert 'src="plotly.min.js"' in html and (runs_root / "plotly.min.js").is_file()
    run_page = (runs_root / "20260102T000000Z-bbbb" / "index.html").read_text()
    assert '<a href="../index.html">all runs</a>' in run_page
    assert "junk/results.json: unreadable" in html
    assert '"trend": {' in html


def test_bad_input_is_refused_clearly(runs_root):
    rec = RunRecorder(runs_root, run_id="bad")
    with pytest.raises(TypeError, match="chaos.history.History"):
        rec.add_scenario("x", 1, [], [])
    with pytest.raises(TypeError, match="not a verdict"):
        rec.add_scenario("x", 1, storage_run(per_phase=3), [{"name": "x", "status": "maybe"}])
    with pytest.raises(ValueError, match="non-empty"):
        rec.add_scenario("", 1, storage_run(per_phase=3), [])
    with pytest.raises(FileExistsError):
        RunRecorder(runs_root, run_id="bad")
    with pytest.raises(ValueError, match="run id"):
        RunRecorder(runs_root, run_id="../escape")
    rec.add_scenario(
        "odd evidence", None, storage_run(per_phase=3), [Verdict("v", "pass", "ok", {"o": object()})]
    )
    finish(rec)
    with pytest.raises(RuntimeError, match="finished"):
        rec.add_scenario("late", 1, storage_run(per_phase=3), [])
    assert read_results(rec.run_dir)["scenarios"][0]["verdicts"][0]["evidence"]["o"].startswith("<object")


def test_read_results_names_the_problem(tmp_path):
    with pytest.raises(RunFormatError, match="no results.json"):
        read_results(tmp_path)
    (tmp_path / "results.json").write_text("[1, 2")
    with pytest.raises(RunFormatError, match="unreadable"):
        read_results(tmp_path)
    (tmp_path / "results.json").write_text('{"format": "other"}')
    with pytest.raises(RunFormatError, match="not a fastport-run v1"):
        read_results(tmp_path)
    (tmp_path / "results.json").write_text(
        '{"format": "fastport-run", "version": 1, "scenarios": [{"name": 3}]}'
    )
    with pytest.raises(RunFormatError, match=r"scenarios\[0\]"):
        read_results(tmp_path)


def test_add_result_takes_a_scenario_result(runs_root, tmp_path):
    from chaos.config import LabConfig
    from chaos.runner import ScenarioResult

    h = storage_run(per_phase=10)
    cfg = LabConfig(store="memory")
    result = ScenarioResult(
        "storage_faults", cfg, storage_verdicts(h), h, tmp_path / "sc", 3.5, None, {"k": 1}
    )
    rec = RunRecorder(runs_root, run_id="ar")
    rec.add_result(result, fmea=1, meta={"nodeid": "scenarios/test_fmea1_storage.py::t"})
    report = finish(rec)
    (s,) = report.results["scenarios"]
    assert s["store"] == "memory" and s["broker_cmd"] == cfg.broker_cmd and s["duration_s"] == 3.5
    assert s["meta"]["notes"] == {"k": 1} and "--store memory" in s["reproduce"]
