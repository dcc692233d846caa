"""`verify` on the deployed lab as CI runs it (issue 10): every case of the HA checklist,
measured under load through the VIP, read back from the JSON and the JUnit XML a CI system
reads. Runs after the deploy tests (file order); alone it deploys first when no cluster answers.

The reports of each run stay in pytest's tmp directory (`--basetemp` to keep them somewhere):
verify.json has every failed request of every case, for when a margin needs explaining.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import yaml
from junitparser import Error, Failure, JUnitXml

from nornir_k8sha.runbook import loader
from nornir_k8sha.topology import ClusterSpec
from tests.conftest import LAB_INVENTORY
from tests.lab.test_lab_deploy import cli, outcomes, report_of
from tests.lab.test_lab_runbooks import deployed  # noqa: F401 - the fixture, shared

pytestmark = pytest.mark.lab

#: A safety stop for a hung run, not a timing assertion (the goal, 10 minutes, is a benchmark).
VERIFY_TIMEOUT = 1200
#: The checklist case that HAProxy's health checks bound (one master's apiserver stopped).
API_CASE = "apiserver-stopped"
#: The same with the apiserver frozen: requests hang on it until HAProxy takes it out.
FROZEN_CASE = "apiserver-frozen"
#: HAProxy's check interval the issue asks to slow the lab down to.
SLOW_CHECK_INTER_MS = 3000


def verify(*args: str, reports: Path) -> tuple[int, dict, JUnitXml, str]:
    """`verify ARGS --json --junit F`: exit code, the JSON report, the JUnit XML, stderr."""
    reports.mkdir(parents=True, exist_ok=True)
    junit = reports / "verify.xml"
    proc = cli("verify", *args, "--json", "--junit", str(junit), timeout=VERIFY_TIMEOUT)
    (reports / "verify.json").write_text(proc.stdout)
    (reports / "verify.stderr").write_text(proc.stderr)
    try:
        report = json.loads(proc.stdout)
    except json.JSONDecodeError:
        raise AssertionError(f"not JSON (exit {proc.returncode}):\n{proc.stdout[-3000:]}\n"
                             f"{proc.stderr[-3000:]}") from None
    return proc.returncode, report, JUnitXml.fromfile(str(junit)), proc.stderr


def junit_cases(xml: JUnitXml) -> dict[str, object]:
    return {tc.name: tc for suite in xml for tc in suite}


def checklist(spec: ClusterSpec) -> list[str]:
    """The case names verify-ha has on this inventory (one per machine expanded)."""
    loaded = loader.load(loader.find_runbook("verify-ha"))
    return [case.name for _, case in loaded.cases(spec)]


def test_verify_runs_every_case_and_all_pass(lab, deployed: None, tmp_path: Path) -> None:  # noqa: ANN001, F811
    code, report, xml, stderr = verify("-i", str(LAB_INVENTORY), reports=tmp_path)
    cases = {c["name"]: c for c in report["cases"]}
    summary = {n: (c["verdict"], c["reason"]) for n, c in cases.items()}
    assert code == 0, f"reports in {tmp_path}: {summary}\n{stderr[-3000:]}"
    assert list(cases) == checklist(lab.spec)
    assert report["passed"] and report["counts"] == {"passed": len(cases)}
    for name, case in cases.items():
        fig = case["figures"]
        assert case["verdict"] == "passed", (name, case["reason"])
        assert fig["requests"] > 0, name  # the load ran through the VIP in every case
        assert fig["writes_acknowledged"] > 0 and fig["writes_lost"] == 0, (name, fig)
        bound = case["expectation"]["downtime_s"]
        if bound is not None and case["expectation"]["api_must_serve"]:
            assert fig["downtime_s"] <= bound, (name, fig, bound)
    # JUnit: what CI reads: one testcase per case, none failed, measured vs expected in it
    tcs = junit_cases(xml)
    assert list(tcs) == list(cases)
    for name, tc in tcs.items():
        assert not [r for r in tc.result if isinstance(r, Failure | Error)], name
        assert "measured downtime" in tc.system_out and "expected" in tc.system_out, name
    # Every case restored what it broke (a lease whose holder died in a power cut is still
    # there, held by the dead one until another master takes it over: never a 404)
    after = cli("check", "-i", str(LAB_INVENTORY))
    assert after.returncode == 0, after.stdout[-3000:]
    # ... and left nothing for a deploy to put back: the machines that lost power came back as
    # machines do, with their disks (their /etc/hosts kept deploy's registry line)
    again = cli("deploy", "-i", str(LAB_INVENTORY), "--json")
    report = report_of(again)
    changed = [k for k, v in outcomes(report).items() if v["status"] == "changed"]
    assert again.returncode == 0 and report["changed"] == 0, changed


def slow_checks_copy(tmp_path: Path) -> Path:
    """inventory/lab with haproxy.check_inter_ms raised to 3000 (the same cluster)."""
    inv = tmp_path / "inventory-slow-checks"
    shutil.copytree(LAB_INVENTORY, inv)
    defaults = yaml.safe_load((inv / "defaults.yaml").read_text())
    defaults["data"]["haproxy"]["check_inter_ms"] = SLOW_CHECK_INTER_MS
    (inv / "defaults.yaml").write_text(yaml.safe_dump(defaults, sort_keys=False))
    return inv


def test_slower_haproxy_checks_grow_the_bound_and_a_tight_bound_fails(
        lab, deployed: None, tmp_path: Path) -> None:  # noqa: ANN001, F811
    """The issue's "making it fail": HAProxy deployed with check_inter_ms 3000 takes a
    stopped or frozen apiserver out later, the bounds computed from the inventory grow with
    it, and a bound the user tightens below the measurement fails the case (exit 1, a JUnit
    failure with measured vs expected). A stopped apiserver refuses connections and HAProxy
    redispatches them, so the requests barely notice: what grows is the takeout, the first
    HAProxy showing it DOWN (the case's takeover figure). A frozen one accepts connections
    and answers nothing: requests sent to it fail until HAProxy takes it out, so its measured
    downtime (the window in which requests failed) grows too."""
    cases = ("--case", API_CASE, "--case", FROZEN_CASE)
    code, report, _, stderr = verify("-i", str(LAB_INVENTORY), *cases,
                                     reports=tmp_path / "default")
    assert code == 0, ([c["reason"] for c in report["cases"]], stderr[-2000:])
    fast, fast_frozen = report["cases"]
    slow_inventory = slow_checks_copy(tmp_path)
    try:
        deploy = cli("deploy", "-i", str(slow_inventory))
        assert deploy.returncode == 0, deploy.stdout[-3000:] + deploy.stderr[-2000:]
        code, report, _, stderr = verify("-i", str(slow_inventory), *cases,
                                         reports=tmp_path / "slow")
        assert code == 0, ([c["reason"] for c in report["cases"]], stderr[-2000:])
        slow, slow_frozen = report["cases"]
        for key in ("downtime_s", "takeover_s"):
            assert slow["expectation"][key] > fast["expectation"][key], key
            assert slow_frozen["expectation"][key] > fast_frozen["expectation"][key], key
        assert f"haproxy.check_inter_ms {SLOW_CHECK_INTER_MS} ms" in \
            slow["expectation"]["explanation"]
        assert fast["figures"]["takeover_s"] is not None
        assert slow["figures"]["takeover_s"] > fast["figures"]["takeover_s"], (fast, slow)
        # the frozen apiserver: requests failed for longer, within the grown bound. The fast
        # case may see no failed request at all (0 s: twice in CI on 2026-12-04, 162 requests,
        # none failed; why no fresh read reached the frozen master in its ~1-2 s before DOWN
        # is not understood): what must hold is that the slow checks leave clients failing
        # longer than the fast ones do, and longer than the fast bound. A kept-alive request
        # that hung there is sent again once HAProxy cuts it, as kubectl's would be, and
        # succeeds: it counts in the window as hung (samples.retried), not as failed
        hung = len(slow_frozen["samples"]["retried"])
        assert slow_frozen["figures"]["failed"] + hung > 0, slow_frozen["figures"]
        assert slow_frozen["figures"]["downtime_s"] > fast_frozen["figures"]["downtime_s"], (
            fast_frozen["figures"], slow_frozen["figures"])
        assert slow_frozen["figures"]["downtime_s"] > fast_frozen["expectation"]["downtime_s"]
        # (check_fall - 1) x inter is the least a refused apiserver can take to go DOWN:
        # 1 s is below any measurement at 3000 ms, and below this one
        tight = 1.0
        assert slow["figures"]["takeover_s"] > tight
        code, report, xml, stderr = verify("-i", str(slow_inventory), "--case", API_CASE,
                                           "--bound", f"{API_CASE}={tight:g}",
                                           reports=tmp_path / "tight")
        assert code == 1, stderr[-2000:]
        (case,) = report["cases"]
        assert case["verdict"] == "failed" and not report["passed"]
        (tc,) = junit_cases(xml).values()
        (failure,) = [r for r in tc.result if isinstance(r, Failure)]
        measured = case["figures"]["takeover_s"]
        assert f"takeover {measured:.2f} s > bound {tight:.2f} s" in failure.message
        assert "measured downtime" in failure.message
        assert f"expected <= {tight:.2f} s, takeover <= {tight:.2f} s" in failure.message
    finally:
        restore = cli("deploy", "-i", str(LAB_INVENTORY))  # later tests see the normal cluster
    assert restore.returncode == 0, restore.stdout[-3000:] + restore.stderr[-2000:]
