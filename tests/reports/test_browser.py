"""The report in a real browser: headless Chromium over CDP, offline, from the file system.

Checks what a user sees after the scripts ran: the verdict banner, the Plotly
SVGs with fault windows shaded, paginated tables, no console error, no request
leaving the machine; and keeps a screenshot in the run folder. Without Chromium
the test installs it (root + apt-get) or skips, except under CI=true where it fails.
"""

from __future__ import annotations

import asyncio
import json
import re
import time

import pytest

from reports import timeline
from reports.build import finish
from reports.record import RunRecorder
from tests.reports.chromium import Browser
from tests.reports.conftest import record_mixed_run
from tests.reports.histories import storage_run, storage_verdicts

pytestmark = pytest.mark.integration
PNG = b"\x89PNG\r\n\x1a\n"


def open_pages(chromium, *pages):
    async def go():
        async with Browser(chromium) as b:
            return [await b.open(path, shot) for path, shot in pages]

    return asyncio.run(go())


def test_run_report_and_runs_index_render(chromium, runs_root):
    report = record_mixed_run(runs_root)
    shot = report.run_dir / "screenshot.png"
    index = runs_root / "index.html"
    run_page, index_page = open_pages(chromium, (report.html, shot), (index, runs_root / "index.png"))

    assert run_page.console_errors == [] and run_page.external_requests == []
    c = run_page.checks
    assert c["plotsReady"] == "ready" and run_page.ready is True
    assert c["bannerStatus"] == "pass" and c["bannerText"].startswith("The fixes held")
    assert c["plotDivs"] == 3 and c["plotSvgs"] >= 3  # Plotly drew an SVG per timeline
    assert c["bars"] >= 3 and c["lines"] >= 6  # delivery rate bars, p50 + p99 lines per scenario
    assert c["faultShapes"] >= 3  # each fault window shaded
    assert ["at-least-once", "fail"] in c["verdicts"] and ["hydration", "pass"] in c["verdicts"]
    assert c["flawMatrix"] is True
    assert shot.read_bytes().startswith(PNG) and shot.stat().st_size > 20_000

    assert index_page.console_errors == [] and index_page.external_requests == []
    assert index_page.checks["bannerStatus"] == "pass" and index_page.checks["plotSvgs"] >= 1


def test_a_100k_event_failing_run_stays_quick(chromium, runs_root):
    h = storage_run(per_phase=5600, every=0.002, lose=set(range(11_300, 11_340)))
    assert len(h) >= 100_000
    rec = RunRecorder(runs_root, run_id="big")
    t0 = time.monotonic()
    rec.add_scenario("storage_faults", 1, h, storage_verdicts(h))
    report = finish(rec)
    build_s = time.monotonic() - t0
    assert report.exit_code == 1
    html = report.html.read_text()
    assert len(html) < 1_000_000, "the page must not grow with the history"
    figures = json.loads(re.search(r'id="figures">(.*?)</script>', html, re.S)[1])
    for trace in figures["timeline-storage_faults"]["data"]:
        assert len(trace["x"]) <= timeline.MAX_BUCKETS
    (page,) = open_pages(chromium, (report.html, report.run_dir / "screenshot.png"))
    assert page.console_errors == []
    assert page.checks["bannerStatus"] == "fail" and page.checks["plotSvgs"] >= 1
    assert any(p.startswith("page 1 / 2 (20 rows)") for p in page.checks["pagers"])  # lost pairs, paged
    assert page.checks["visibleRowsFirstPaged"] <= 10
    assert build_s < 120, f"recording a 100k-event scenario took {build_s:.1f}s"


def test_console_errors_are_caught(chromium, runs_root):
    report = record_mixed_run(runs_root)
    (report.run_dir / "plotly.min.js").unlink()
    (page,) = open_pages(chromium, (report.html, None))
    assert page.checks["bannerStatus"] == "pass"  # the verdict is readable without scripts
    assert page.checks["plotSvgs"] == 0
    assert any("plotly" in e.lower() for e in page.console_errors), page.console_errors
