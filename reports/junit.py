"""JUnit XML for CI dashboards: one testsuite per scenario, one testcase per invariant.

A failed verdict is a ``<failure>`` carrying its summary (and the evidence as
text); an unknown one is ``<skipped>`` when the gate only warns on unknowns and a
``<failure type="unknown">`` when it fails on them; a not-applicable check is
skipped. Thresholds the gate found crossed are extra ``threshold:<name>``
testcases, a scenario that did not complete gets an ``<error>``, and an
environment error is a suite of its own, so a CI page shows why nothing ran.
"""

from __future__ import annotations

import json
import xml.etree.ElementTree as ET
from collections.abc import Mapping
from typing import Any

from chaos.checkers.verdict import is_not_applicable
from reports.judge import GateConfig, GateOutcome, seeded_bug

MAX_TEXT = 20_000


def _text(evidence: Any) -> str:
    s = json.dumps(evidence, indent=2, default=str)
    return s if len(s) <= MAX_TEXT else s[:MAX_TEXT] + "\n... (cut; full evidence in results.json)"


def _case(suite: ET.Element, classname: str, name: str, time_s: float | None = None) -> ET.Element:
    return ET.SubElement(suite, "testcase", classname=classname, name=name, time=f"{time_s or 0:.3f}")


def build_junit(results: Mapping[str, Any], outcome: GateOutcome, config: GateConfig) -> ET.ElementTree:
    root = ET.Element("testsuites", name="fastport-lab")
    findings: dict[str, list[Any]] = {}
    for f in outcome.findings:
        findings.setdefault(f.scenario, []).append(f)
    if results.get("environment_error"):
        suite = ET.SubElement(root, "testsuite", name="environment")
        case = _case(suite, "fastport-lab.environment", "suites-ran")
        ET.SubElement(case, "error", message=str(results["environment_error"]), type="environment")
    for s in results.get("scenarios", []):
        name = s["name"]
        suite = ET.SubElement(root, "testsuite", name=name)
        props = ET.SubElement(suite, "properties")
        for key in ("fmea", "broker_cmd", "store", "reproduce", "history"):
            if s.get(key) is not None:
                ET.SubElement(props, "property", name=key, value=str(s[key]))
        cls = f"fastport-lab.{s.get('slug', name)}"
        flaw = seeded_bug(s)  # "flaw store-first", "mutant backlog-cap"
        expect = (s.get("meta") or {}).get("expect")
        if s.get("error"):
            case = _case(suite, cls, "scenario-completed", s.get("duration_s"))
            ET.SubElement(case, "error", message=str(s["error"]), type="scenario-error")
        for v in s.get("verdicts", []):
            case = _case(suite, cls, v["name"])
            status, summary = v["status"], v.get("summary", "")
            if flaw:
                if expect and v["name"] != expect:
                    ET.SubElement(case, "skipped", message=f"informational with the {flaw}: {status}")
                elif status == "fail":
                    case.set("name", f"{v['name']} catches {flaw}")
                else:
                    el = ET.SubElement(case, "failure", message=f"{flaw} not caught: {status}: {summary}")
                    el.set("type", "flaw-not-caught")
                continue
            if status == "fail":
                el = ET.SubElement(case, "failure", message=summary, type="invariant-violated")
                el.text = _text(v.get("evidence"))
            elif is_not_applicable(v):
                ET.SubElement(case, "skipped", message=summary)
            elif status == "unknown":
                if config.unknown == "warn":
                    ET.SubElement(case, "skipped", message=f"unknown: {summary}")
                else:
                    el = ET.SubElement(case, "failure", message=f"unknown: {summary}", type="unknown")
                    el.text = _text(v.get("evidence"))
        for f in findings.get(name, []):
            case = _case(suite, cls, f"threshold:{f.threshold}")
            el = ET.SubElement(case, "failure", message=f.message, type="threshold-crossed")
            el.text = f"value {f.value} > limit {f.limit} (from {f.source}; set in {config.source})"
    total = failures = errors = skipped = 0
    for suite in root.iter("testsuite"):
        cases = suite.findall("testcase")
        n_f = sum(1 for c in cases if c.find("failure") is not None)
        n_e = sum(1 for c in cases if c.find("error") is not None)
        n_s = sum(1 for c in cases if c.find("skipped") is not None)
        suite.set("tests", str(len(cases)))
        suite.set("failures", str(n_f))
        suite.set("errors", str(n_e))
        suite.set("skipped", str(n_s))
        total, failures, errors, skipped = total + len(cases), failures + n_f, errors + n_e, skipped + n_s
    root.set("tests", str(total))
    root.set("failures", str(failures))
    root.set("errors", str(errors))
    root.set("skipped", str(skipped))
    tree = ET.ElementTree(root)
    ET.indent(tree)
    return tree
