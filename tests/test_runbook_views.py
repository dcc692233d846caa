"""The views of a runbook run: console table at 80 columns, JSON, JUnit XML (read back with
junitparser), Markdown (0600) with a timeline PNG per case."""

from __future__ import annotations

import io
import json
import stat
from pathlib import Path

import pytest
from junitparser import Error, Failure, JUnitXml, Skipped
from rich.console import Console

from nornir_k8sha.checkresult import CheckResult
from nornir_k8sha.runbook.measure import figures
from nornir_k8sha.runbook.results import (
    CaseResult,
    Expectation,
    Mark,
    RunbookResult,
    Sample,
    StepResult,
)
from nornir_k8sha.runbook.views import as_json, case_table, junit_xml, markdown

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def load(t0: float, seconds: float, outage: tuple[float, float]) -> list[Sample]:
    """Fresh reads every 0.07 s, kept-alive reads every 0.1 s, writes every 0.25 s from t0;
    whatever starts inside `outage` (relative) fails."""
    out = []
    for kind, step in (("read-fresh", 0.07), ("read-keepalive", 0.1), ("write", 0.25)):
        n = int(seconds / step)
        for i in range(n):
            start = t0 + i * step
            down = outage[0] <= i * step < outage[1]
            out.append(Sample(kind, start, start + (0.5 if down else 0.03), not down,  # type: ignore[arg-type]
                              None if down else (201 if kind == "write" else 200),
                              "timed out" if down else "",
                              i + 1 if kind == "write" else None))
    return out


def case(name: str, title: str, bound: float | None, outage: tuple[float, float],
         t0: float = 1000.0) -> CaseResult:
    samples = load(t0, 8.0, outage)
    marks = [Mark(t0 + 2.0, "keepalived stopped on lvs1", "fault"),
             Mark(t0 + 2.4, "VIP on lvs2", "holder"),
             Mark(t0 + 5.0, "keepalived started on lvs1", "lift")]
    acked = sum(1 for s in samples if s.kind == "write" and s.ok)
    fig = figures(samples, fault_at=t0 + 2.0, lifted_at=t0 + 5.0, acknowledged=acked, lost=0,
                  marks=marks)
    exp = Expectation(bound, f"bound of {name} = {bound} s")
    verdict = "passed" if bound is None or fig.downtime_s <= bound else "failed"
    reason = "" if verdict == "passed" else f"downtime {fig.downtime_s:.2f} s > bound {bound} s"
    return CaseResult(
        name=name, title=title, verdict=verdict, reason=reason, expectation=exp, figures=fig,
        steady_before=[CheckResult("etcd", "ok", "3/3 healthy")],
        steady_after=[CheckResult("etcd", "ok", "3/3 healthy")],
        steps=[StepResult("faults.stop_service", True, "stopped", 0.2, ["lvs1"])],
        rollbacks=[StepResult("faults.start_service", True, "started", 0.3, ["lvs1"])],
        samples=samples, marks=marks, started=t0, duration=8.5)


@pytest.fixture
def result() -> RunbookResult:
    return RunbookResult(
        runbook="HA verification", path="runbooks/verify-ha.yaml", cluster="lab",
        cases=[
            case("director-keepalived-stopped", "active LVS director: keepalived stopped",
                 0.601, (2.05, 2.4)),
            case("master-apiserver-stopped", "one master's apiserver", 0.3, (2.1, 3.2),
                 t0=2000.0),
            CaseResult("machine-pm3", "physical machine pm3", verdict="skipped",
                       reason="--case chose another case"),
            CaseResult("etcd-leader-killed", "the etcd leader killed", verdict="error",
                       reason="no host matched selector etcd-leader"),
        ],
        started_wall=1_780_000_000.0, duration=30.0)


def test_case_table_is_readable_at_80_columns(result: RunbookResult) -> None:
    console = Console(width=80, record=True, file=io.StringIO(), color_system=None)
    console.print(case_table(result))
    text = console.export_text()
    lines = text.splitlines()
    assert max(len(line) for line in lines) <= 80
    for c in result.cases:  # names whole, on one line
        assert any(c.name in line for line in lines), c.name
    row = next(line for line in lines if "director-keepalived-stopped" in line)
    assert "<= 0.60 s" in row and "passed" in row
    failed = next(line for line in lines if "master-apiserver" in line)
    down = result.cases[1].figures.downtime_s  # type: ignore[union-attr]
    assert "failed" in failed and "<= 0.30 s" in failed and f"{down:.2f} s" in failed
    assert f"downtime {down:.2f} s > bound 0.3 s" in text  # the reason, in the caption


def test_a_very_long_case_name_is_cut_never_wrapped(result: RunbookResult) -> None:
    long = "master-apiserver-stopped-while-the-etcd-leader-moves-too"
    result.cases[1].name = long
    console = Console(width=80, record=True, file=io.StringIO(), color_system=None)
    console.print(case_table(result))
    lines = console.export_text().splitlines()
    assert max(len(line) for line in lines) <= 80
    row = next(line for line in lines if line.startswith("master-apiserver-stopped"))
    assert "…" in row and "<= 0.30 s" in row and "failed" in row
    assert not any(line.startswith("moves") or line.startswith("-moves") for line in lines)
    assert any(line.startswith(long) for line in lines)  # whole in the caption


def test_json_document_is_whole_and_small(result: RunbookResult) -> None:
    result.cases[0].steps[0].data = {"unit": Path("/etc/keepalived"), "hosts": {"lvs1"}}
    doc = as_json(result)
    text = json.dumps(doc)
    assert doc["cases"][0]["steps"][0]["data"] == {"unit": "/etc/keepalived", "hosts": "{'lvs1'}"}
    assert doc["passed"] is False and doc["counts"] == {"passed": 1, "failed": 1,
                                                        "skipped": 1, "error": 1}
    first = doc["cases"][0]
    assert first["figures"]["downtime_s"] == pytest.approx(0.42 - 0.03 + 0.03, abs=0.08)
    assert first["expectation"]["downtime_s"] == 0.601
    assert [m["kind"] for m in first["marks"]] == ["fault", "holder", "lift"]
    assert first["marks"][0]["at_s"] == 2.0  # relative to the case start
    samples = first["samples"]
    assert samples["by_kind"]["write"]["requests"] == 32
    assert sum(s["ok"] + s["failed"] for s in samples["per_second"]) == len(
        result.cases[0].samples)
    assert all(not s["ok"] for s in samples["failed"])
    assert first["steady_after"][0]["status"] == "ok"
    assert len(text) < 50_000


def test_junit_xml_reads_back_with_junitparser(result: RunbookResult, tmp_path: Path) -> None:
    path = tmp_path / "verify.xml"
    path.write_text(junit_xml(result))
    xml = JUnitXml.fromfile(str(path))
    suites = list(xml)
    assert len(suites) == 1
    suite = suites[0]
    assert (suite.tests, suite.failures, suite.errors, suite.skipped) == (4, 1, 1, 1)
    cases = {tc.name: tc for tc in suite}
    assert list(cases) == [c.name for c in result.cases]
    assert cases["director-keepalived-stopped"].is_passed
    (failure,) = cases["master-apiserver-stopped"].result
    assert isinstance(failure, Failure)
    down = result.cases[1].figures.downtime_s  # type: ignore[union-attr]
    assert f"measured downtime {down:.2f} s" in failure.message
    assert "expected <= 0.30 s" in failure.message
    assert isinstance(cases["etcd-leader-killed"].result[0], Error)
    assert isinstance(cases["machine-pm3"].result[0], Skipped)


def test_markdown_is_private_with_a_png_timeline_per_case(result: RunbookResult,
                                                          tmp_path: Path) -> None:
    out = tmp_path / "report" / "verify.md"
    text = markdown(result, out)
    assert out.read_text() == text
    assert stat.S_IMODE(out.stat().st_mode) == 0o600
    assert "| director-keepalived-stopped | <= 0.60 s |" in text
    assert "bound of director-keepalived-stopped = 0.601 s" in text
    assert "2. 2.40 s: VIP on lvs2 (holder)" in text  # the timeline's numbered marks, whole
    pngs = sorted(out.parent.glob("*.png"))
    assert [p.name for p in pngs] == ["verify-01-director-keepalived-stopped.png",
                                      "verify-02-master-apiserver-stopped.png"]  # none without
    # samples
    for png in pngs:
        assert png.read_bytes().startswith(PNG_MAGIC)
        assert stat.S_IMODE(png.stat().st_mode) == 0o600
        assert f"]({png.name})" in text


def test_markdown_overwrites_a_readable_file_as_private(result: RunbookResult,
                                                        tmp_path: Path) -> None:
    out = tmp_path / "verify.md"
    out.write_text("old")
    out.chmod(0o644)
    result.cases = result.cases[2:]  # no samples: nothing to draw
    markdown(result, out)
    assert stat.S_IMODE(out.stat().st_mode) == 0o600


def test_recovery_and_deviations_reach_every_view(result: RunbookResult, tmp_path: Path) -> None:
    """Recovery (from the lift to the API and the steady state back) and what a continuous
    steady-state probe saw during the method are in the table, JSON, JUnit and Markdown."""
    first = result.cases[0]
    t0 = first.started
    first.marks.append(Mark(t0 + 7.5, "steady state holds again", "steady"))
    first.figures = figures(first.samples, fault_at=t0 + 2.0, lifted_at=t0 + 5.0,
                            acknowledged=1, lost=0, marks=first.marks)
    first.deviations = ["+3.1 s check:etcd: etcd2: failed"]
    assert first.figures.recover_s == pytest.approx(2.5)  # the steady state came back last
    doc = as_json(result)["cases"][0]
    assert doc["figures"]["recover_s"] == pytest.approx(2.5)
    assert doc["figures"]["api_recover_s"] == 0.0
    assert doc["deviations"] == first.deviations
    path = tmp_path / "verify.xml"
    path.write_text(junit_xml(result))
    tc = next(iter(next(iter(JUnitXml.fromfile(str(path))))))
    assert "recovery 2.50 s (API back 0.00 s after the lift)" in tc.system_out
    assert "steady state during the method: +3.1 s check:etcd: etcd2: failed" in tc.system_out
    text = markdown(result, tmp_path / "verify.md")
    assert "| 2.50 s | passed |" in text
    assert "steady state did not hold during the method: +3.1 s check:etcd" in text
    console = Console(file=io.StringIO(), width=80)
    console.print(case_table(result))
    assert "2.50 s" in console.file.getvalue()  # type: ignore[attr-defined]


def test_the_json_lists_writes_acknowledged_while_writes_had_to_be_refused(result) -> None:
    """Where every write must be refused (etcd without quorum), the writes acknowledged while
    the fault held are listed one by one: a failed case can be explained from the JSON."""
    first = result.cases[0]
    assert as_json(result)["cases"][0]["samples"]["acknowledged_in_fault"] == []
    first.expectation = Expectation(None, "majority lost", api_must_serve=False,
                                    writes_must_be_refused=True)
    listed = as_json(result)["cases"][0]["samples"]["acknowledged_in_fault"]
    inside = [s for s in first.samples if s.kind == "write" and s.ok
              and first.started + 2.0 <= s.start and s.end <= first.started + 5.0]
    assert listed and len(listed) == len(inside)
    assert all(2.0 <= w["start_s"] and w["end_s"] <= 5.0 and w["status"] == 201 for w in listed)
