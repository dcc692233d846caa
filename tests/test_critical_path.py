"""The deploy summary names the critical path: the phases, stage by stage, that set the wall
time, with the host that took longest in each — on screen at 80 columns and in the JSON report."""

from __future__ import annotations

import json
import threading
import time
from pathlib import Path

from nornir.core.task import Result, Task

from nornir_k8sha import constants as C
from nornir_k8sha.deploy import DeployContext, NornirPhase, run_stages
from nornir_k8sha.report import HostOutcome, RunReport, critical_path, print_summary

from .test_deploy_engine import Recording, make_ctx
from .test_report_tables import assert_readable, piped

#: How long the phase that must end last keeps going after the other one ended (a margin for
#: ordering, never asserted as a time).
AFTER_S = 0.2


def staged_report() -> RunReport:
    """A finished deploy as the engine leaves it: three stages, the middle one with four
    phases of which `lb` ended last although `etcd` took longer; a stage that was skipped."""
    report = RunReport("deploy", "lab")
    report.duration = 31.0
    layout = [  # stage, name, title, started, duration, {host: seconds}
        (1, "preflight", "preflight", 0.0, 1.5, {"lvs1": 1.5, "etcd1": 0.4}),
        (2, "pki", "PKI", 1.6, 0.5, {"local": 0.5}),
        (3, "lb", "LVS + HAProxy", 5.0, 12.0, {"lvs1": 12.0, "haproxy1": 3.0, "haproxy2": 0}),
        (3, "etcd", "etcd", 2.1, 14.0, {"etcd1": 5.0, "etcd2": 13.9, "etcd3": 6.0}),
        (3, "network", "BGP", 2.1, 3.0, {"lvs1": 3.0}),
        (4, "workers", "workers (kubeadm join)", 16.2, 0.0, {}),
        (5, "post-checks", "post-checks", 16.3, 14.5, {"etcd:etcd1": 0.2, "vip:lvs2": 14.4}),
    ]
    for stage, name, title, started, duration, hosts in layout:
        p = report.add_phase(name, title, list(hosts))
        p.stage, p.started, p.duration = stage, started, duration
        for host, seconds in hosts.items():
            report.set(name, HostOutcome(host, "ok", seconds))
        if name == "workers":
            p.skipped_reason = "'control-plane' was skipped"
    report.phase("lb").hosts["haproxy2"].status = "skipped"
    report.phase("lb").hosts["haproxy2"].duration = 99.0  # a skipped host never counts
    return report


def test_the_path_is_each_stages_last_phase_with_its_slowest_host() -> None:
    path = critical_path(staged_report())
    assert [(s.stage, s.phase) for s in path] == [
        (1, "preflight"), (2, "pki"), (3, "lb"), (5, "post-checks")]
    assert [(s.slowest_host, s.slowest_host_s) for s in path] == [
        ("lvs1", 1.5), ("local", 0.5), ("lvs1", 12.0), ("vip:lvs2", 14.4)]


def test_the_json_report_carries_the_path_and_each_phases_stage(tmp_path: Path) -> None:
    report = staged_report()
    report.resources = {"peak_connections": 7, "peak_open_connections": 15, "peak_rss_mb": 88.0}
    report.write_json(tmp_path / "r.json")
    doc = json.loads((tmp_path / "r.json").read_text())
    assert [s["phase"] for s in doc["critical_path"]] == ["preflight", "pki", "lb",
                                                         "post-checks"]
    lb = doc["critical_path"][2]
    assert lb == {"stage": 3, "phase": "lb", "title": "LVS + HAProxy", "started_s": 5.0,
                  "duration_s": 12.0, "slowest_host": "lvs1", "slowest_host_s": 12.0}
    assert {p["name"]: p["stage"] for p in doc["phases"]}["network"] == 3
    assert doc["resources"] == {"peak_connections": 7, "peak_open_connections": 15,
                                "peak_rss_mb": 88.0}


def test_the_summary_shows_the_path_and_the_costs_at_80_columns() -> None:
    report = staged_report()
    report.resources = {"peak_connections": 7, "peak_open_connections": 15, "handshakes": 2,
                        "peak_rss_mb": 88.0}
    shown, out = piped()
    print_summary(report, shown)
    text = out.getvalue()
    assert "critical path: 28.5s of 31.0s" in text
    path_part = text[text.index("critical path"):]
    assert_readable(path_part, ["preflight", "PKI", "LVS + HAProxy", "post-checks", "lvs1",
                                "vip:lvs2", "slowest host"])
    assert "14.5s 47%" in path_part and "lvs1 12.0s" in path_part
    assert "etcd2" not in path_part
    assert "peak 7 SSH connections (15 open, 2 handshakes), 88 MB RSS" in " ".join(text.split())


def test_a_report_without_stages_prints_no_path() -> None:
    report = RunReport("check", "lab")
    report.add_phase("etcd", "etcd members", ["etcd1"])
    shown, out = piped()
    print_summary(report, shown)
    assert critical_path(report) == [] and "critical path" not in out.getvalue()


def test_the_engine_records_when_each_phase_ran_and_finds_the_path() -> None:
    """Two phases in one stage; the one on the LVS hosts ends last (it waits until the etcd
    phase's hosts are done), and lvs2 is its slowest host."""
    etcd_done = threading.Barrier(3 + 1, timeout=10)  # etcd's three hosts and lvs2

    class Etcd(Recording):
        def task(self, task: Task, ctx: DeployContext) -> Result:
            result = super().task(task, ctx)
            etcd_done.wait()
            return result

    class Lvs(Recording):
        def task(self, task: Task, ctx: DeployContext) -> Result:
            if task.host.name == "lvs2":
                etcd_done.wait()
                time.sleep(AFTER_S)
            return super().task(task, ctx)

    class Then(NornirPhase):
        name, title, roles = "then", "then", (C.ROLE_HARBOR,)

        def task(self, task: Task, ctx: DeployContext) -> Result:
            return Result(host=task.host)

    ctx = make_ctx()
    report = run_stages(ctx, [[Lvs("lvs", (C.ROLE_LVS,)), Etcd("etcd", (C.ROLE_ETCD,))],
                              [Then()]])
    assert report.exit_code == 0
    stages = {p.name: p.stage for p in report.phases}
    assert stages == {"lvs": 1, "etcd": 1, "then": 2}
    assert report.phase("then").started >= report.phase("lvs").ended
    path = critical_path(report)
    assert [(s.phase, s.slowest_host) for s in path] == [("lvs", "lvs2"), ("then", "harbor1")]
