"""`deploy` and `reset`: parse options, run the phases, render the report."""

from __future__ import annotations

import sys
from pathlib import Path

import httpx
import typer
from rich.markup import escape

from nornir_k8sha import console
from nornir_k8sha import constants as C
from nornir_k8sha.cli.common import (
    BreakLockOpt,
    InventoryOpt,
    JsonOpt,
    ReportOpt,
    bad_option,
    exit_invalid,
    finish,
    load_spec,
    one_operation,
)
from nornir_k8sha.deploy import DeployContext, run_stages
from nornir_k8sha.inventory import open_nornir
from nornir_k8sha.phases import default_stages, phase_names
from nornir_k8sha.phases.etcd import OBSERVED
from nornir_k8sha.phases.reset import reset_stages
from nornir_k8sha.report import LiveProgress, RunReport
from nornir_k8sha.tasks import etcd_scale
from nornir_k8sha.tasks.harbor import harbor_secrets_path
from nornir_k8sha.topology import HOSTS_FILE, ClusterSpec, Finding

NOTHING_TOUCHED = "invalid inventory: nothing was touched on any host"
#: The test seam for the deploy's own HTTP calls (httpx.MockTransport); None in real use.
HTTP_TRANSPORT: httpx.BaseTransport | None = None


def deploy(
    inventory: Path = InventoryOpt,
    dry_run: bool = typer.Option(False, "--dry-run", help="show diffs and restarts; write nothing"),
    phase: list[str] = typer.Option(None, "--phase", help="run only these phases (repeatable)"),
    limit: str = typer.Option(None, "--limit", help="comma-separated host names"),
    as_json: bool = JsonOpt,
    report_file: Path = ReportOpt,
    break_lock: bool = BreakLockOpt,
) -> None:
    """Deploy the whole topology: preflight, PKI, SLB + etcd + BGP, control plane, workers."""
    spec = load_spec(inventory, as_json=as_json, reaches_hosts=True, consequence=NOTHING_TOUCHED)
    unknown = sorted(set(phase or ()) - set(phase_names()))
    if unknown:
        bad_option("--phase", f"unknown phase(s) {', '.join(unknown)}; known: "
                   f"{', '.join(phase_names())}", inventory=inventory, as_json=as_json)
    hosts = {h.name for h in spec.hosts}
    limit_set = frozenset(x.strip() for x in limit.split(",") if x.strip()) if limit else None
    if limit_set and limit_set - hosts:
        bad_option("--limit", f"unknown host(s) {', '.join(sorted(limit_set - hosts))}",
                   inventory=inventory, as_json=as_json)
    # etcd's members are asked only when a phase that changes them runs
    shared: dict[str, object] = {}
    if not phase or set(phase) & {"etcd", "etcd-members"}:
        shared[OBSERVED] = etcd_scale.observe(spec, spec.state_dir, HTTP_TRANSPORT)
    refused = etcd_membership_refusal(spec, inventory, shared.get(OBSERVED))
    if refused is not None:
        exit_invalid(inventory, [refused], as_json=as_json,
                     consequence="a member count that would break etcd's quorum: "
                                 "nothing was touched on any host")
    report = RunReport("deploy", spec.name, dry_run=dry_run)
    nr = open_nornir(inventory)
    ctx = DeployContext(spec, nr, report, dry_run=dry_run, limit=limit_set,
                        state_dir=spec.state_dir, http=HTTP_TRANSPORT,
                        shared=shared)
    with one_operation(spec, "deploy", dry_run=dry_run, nr=nr, break_lock=break_lock,
                       open_first=hosts_reached_first(spec, limit_set, phase)), \
            LiveProgress(report, console.out(), enabled=not as_json):
        run_stages(ctx, default_stages(), only=set(phase) if phase else None)
    if not as_json and not dry_run and report.exit_code == 0:
        report.notes.extend(next_steps(spec, inventory))
    report.notes.extend(harbor_note(spec))
    finish(report, spec, as_json, report_file)


def hosts_reached_first(spec: ClusterSpec, limit: frozenset[str] | None,
                        phases: list[str] | None) -> set[str]:
    """The Linux hosts a deploy is sure to reach: those of `--limit`, or every one when all
    phases run (the preflight reaches every host). `--phase` alone: none (a phase reaches
    only its roles' hosts, which the phase knows, not this command)."""
    linux = {h.name for role in C.LINUX_ROLES for h in spec.role(role)}  # preflight's roles
    if limit is not None:
        return linux & limit
    return set() if phases else linux


def etcd_membership_refusal(spec: ClusterSpec, inventory: Path,
                            observed: etcd_scale.Observed | None) -> Finding | None:
    """The inventory's etcd members against the running cluster (`topology`'s rule): why the
    change must not be tried, naming the file and field, or None."""
    plan = observed.plan(spec) if observed is not None else None
    if plan is None or plan.problem is None:
        return None
    return Finding("error", "etcd-membership", plan.problem, where=str(inventory / HOSTS_FILE),
                   field="groups (etcd)")


def _python() -> str:
    """How the user ran us: `.venv/bin/python` rather than a bare `python` when in the venv."""
    exe = Path(sys.executable)
    try:
        return str(exe.relative_to(Path.cwd()))
    except ValueError:
        return "python"


def next_steps(spec: ClusterSpec, inventory: Path) -> list[str]:
    """What a newcomer now has and how to reach it."""
    kubeconfig = spec.state_dir / C.STATE_ADMIN_KUBECONFIG
    me = f"{_python()} -m nornir_k8sha"
    lines = [
        "",
        f"[bold]Your cluster '{spec.name}' is up.[/]",
        f"  API (VIP through LVS-DR → HAProxy): https://{spec.api_endpoint}",
    ]
    if kubeconfig.exists():
        lines.append(f"  admin kubeconfig: {kubeconfig}")
    lines += [
        f"  prove it again:   {me} check -i {inventory}",
    ]
    if inventory.resolve().name == "lab":
        lines += [
            f"  lab hosts:        {me} lab status; "
            f"ssh -F {spec.state_dir}/ssh/ssh_config master1",
            f"  faults:           {me} lab fault --help",
            f"  tear it down:     {me} lab down",
        ]
    return lines


def harbor_note(spec: ClusterSpec) -> list[str]:
    """Where Harbor's admin password is (never the password itself)."""
    path = harbor_secrets_path(spec.state_dir)
    if spec.settings.registry.engine != "harbor" or not path.exists():
        return []
    return [f"Harbor admin password (user admin): {escape(str(path))}, key harbor_admin_password "
            "(0600; keep it: Harbor keeps the password it was installed with)"]


def reset(
    inventory: Path = InventoryOpt,
    yes: bool = typer.Option(False, "--yes", help="really remove Kubernetes from the nodes"),
    dry_run: bool = typer.Option(False, "--dry-run", help="say what would be reset"),
    as_json: bool = JsonOpt,
    break_lock: bool = BreakLockOpt,
) -> None:
    """`kubeadm reset -f` on workers, then masters. etcd, HAProxy and LVS are left alone."""
    spec = load_spec(inventory, as_json=as_json, reaches_hosts=True, consequence=NOTHING_TOUCHED)
    if not (yes or dry_run):
        bad_option("--yes", "reset removes the Kubernetes control plane and every node: pass it "
                   "(or --dry-run to see what it would do)", inventory=inventory,
                   as_json=as_json)
    report = RunReport("reset", spec.name, dry_run=dry_run)
    nr = open_nornir(inventory)
    ctx = DeployContext(spec, nr, report, dry_run=dry_run, state_dir=spec.state_dir)
    with one_operation(spec, "reset", dry_run=dry_run, nr=nr, break_lock=break_lock), \
            LiveProgress(report, console.out(), enabled=not as_json):
        run_stages(ctx, reset_stages())
    finish(report, spec, as_json, None)
