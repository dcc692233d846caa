"""The `deploy` and `check` tables read at 80 columns in a pipe: no phase, check, target or host
name is broken inside a word, no line is longer than the terminal, and the detail still shows."""

from __future__ import annotations

import io
import re

import pytest
from rich.console import Console

from nornir_k8sha import console
from nornir_k8sha.checks import CHECKS, show_checks
from nornir_k8sha.phases import default_stages
from nornir_k8sha.report import HostOutcome, RunReport, print_summary
from nornir_k8sha.topology import load_cluster_spec

from .conftest import LAB_INVENTORY

WIDTH = 80
LONG = ("ConnectError: [Errno 111] Connection refused while talking to https://10.88.0.100:6443"
        "/apis/coordination.k8s.io/v1/namespaces/kube-system/leases/kube-scheduler")
#: Targets as the Kubernetes and PKI checks name them (not found in any detail text below).
TARGETS = ("kube-controller-manager", "kube-scheduler", "VIP 10.88.0.100:6443",
           "etcd/members/etcd2/peer", "kubernetes/front-proxy-client")


def piped(width: int = WIDTH) -> tuple[Console, io.StringIO]:
    """A console like `nornir-k8sha ... | cat` with COLUMNS=80: no terminal, no colour."""
    out = io.StringIO()
    return Console(file=out, width=width, force_terminal=False, color_system=None,
                   highlight=False), out


def whole(name: str, text: str) -> bool:
    """`name` appears in `text` on one line, not glued to other word characters."""
    return re.search(rf"(?<![\w/-]){re.escape(name)}(?![\w/-])", text) is not None


def assert_readable(text: str, names: list[str]) -> None:
    lines = text.splitlines()
    assert all(len(line) <= WIDTH for line in lines), max(lines, key=len)
    words = {w for name in names for w in name.split()}
    broken = sorted(w for w in words if not whole(w, text))
    assert not broken, f"broken at {WIDTH} columns: {broken}\n{text}"


def deploy_report() -> RunReport:
    """A deploy as it ends: every phase of the real pipeline on the lab's hosts, with changes,
    a failure with a long reason and hosts skipped because of it."""
    spec = load_cluster_spec(LAB_INVENTORY)
    report = RunReport("deploy", spec.name)
    for stage in default_stages():
        for phase in stage:
            hosts = [h.name for h in spec.hosts
                     if not getattr(phase, "roles", None) or set(h.roles) & set(phase.roles)]
            p = report.add_phase(phase.name, phase.title, hosts)
            p.duration = 41.25
            for i, host in enumerate(hosts):
                status = ("failed", "skipped", "changed", "ok")[i % 4]
                report.set(phase.name, HostOutcome(host, status, 1.0, LONG))
    return report


def check_report() -> RunReport:
    report = RunReport("check", "lab")
    for name, title, _ in CHECKS:
        p = report.add_phase(name, title, [])
        for target in TARGETS:
            p.hosts[target] = HostOutcome(target, "failed" if "scheduler" in target else "ok",
                                          0.1, LONG)
    return report


def test_deploy_summary_and_problems_keep_names_whole_at_80_columns() -> None:
    report = deploy_report()
    shown, out = piped()
    print_summary(report, shown)
    text = out.getvalue()
    titles = [p.title for p in report.phases]
    hosts = [h for p in report.phases for h, o in p.hosts.items()
             if o.status in ("failed", "skipped")]  # the problems table names these
    assert hosts
    assert_readable(text, [*titles, *hosts, "changed", "skipped", "failed"])
    assert "what went wrong" in text and "Connection" in text


def test_check_table_keeps_names_whole_at_80_columns() -> None:
    report = check_report()
    shown, out = piped()
    show_checks(report, shown)
    text = out.getvalue()
    assert_readable(text, [*(p.title for p in report.phases), *TARGETS])
    assert "Connection" in text


def test_wide_terminals_keep_one_line_per_name() -> None:
    shown, out = piped(width=200)
    show_checks(check_report(), shown)
    text = out.getvalue()
    for title in (t for _, t, _ in CHECKS):
        assert any(title in line for line in text.splitlines()), title


def test_the_cli_console_in_a_pipe_with_columns_80(monkeypatch: pytest.MonkeyPatch,
                                                   capsys: pytest.CaptureFixture[str]) -> None:
    """What `COLUMNS=80 nornir-k8sha check | cat` prints goes through console.out()."""
    monkeypatch.setenv("COLUMNS", str(WIDTH))
    report = check_report()
    show_checks(report, console.out())
    assert_readable(capsys.readouterr().out, [*(p.title for p in report.phases), *TARGETS])
