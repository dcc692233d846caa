"""`deploy` and `check`: parse options, run the library, render the report."""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path

import typer

from nornir_k8sha import console
from nornir_k8sha import constants as C
from nornir_k8sha.exceptions import InventoryError
from nornir_k8sha.report import EXIT_INVALID, LiveProgress, RunReport, print_summary
from nornir_k8sha.topology import ClusterSpec, analyse

InventoryOpt = typer.Option(
    C.DEFAULT_INVENTORY, "--inventory", "-i", help="inventory directory"
)


def load_valid_spec(inventory: Path, as_json: bool) -> ClusterSpec:
    """The spec, or exit 2 naming every error — before anything touches a host."""
    try:
        analysis = analyse(inventory)
    except InventoryError as exc:
        if as_json:
            print(json.dumps({"valid": False, "errors": [str(exc)]}))
        console.error(str(exc))
        raise typer.Exit(EXIT_INVALID) from None
    if analysis.errors or analysis.spec is None:
        if as_json:
            print(json.dumps({"valid": False,
                              "errors": [f.as_dict() for f in analysis.errors]}))
        for finding in analysis.errors:
            console.error(str(finding))
        console.error("invalid inventory: nothing was touched on any host")
        raise typer.Exit(EXIT_INVALID)
    return analysis.spec


def _finish(report: RunReport, spec: ClusterSpec, as_json: bool, report_file: Path | None,
            *, table: bool = True) -> None:
    reports = spec.state_dir / "reports"
    stamp = time.strftime("%Y%m%d-%H%M%S", time.localtime(report.started))
    saved = reports / f"{report.command}-{stamp}.json"
    report.write_json(saved)
    if report_file:
        report.write_json(report_file)
    if as_json:
        print(json.dumps(report.as_dict(), indent=2))
    else:
        print_summary(report, console.out(), table=table)
        console.out().print(f"[dim]report: {saved}[/]")
    raise typer.Exit(report.exit_code)


def deploy(
    inventory: Path = InventoryOpt,
    dry_run: bool = typer.Option(False, "--dry-run", help="show diffs and restarts; write nothing"),
    phase: list[str] = typer.Option(None, "--phase", help="run only these phases (repeatable)"),
    limit: str = typer.Option(None, "--limit", help="comma-separated host names"),
    as_json: bool = typer.Option(False, "--json", help="print the JSON report on stdout only"),
    report_file: Path = typer.Option(None, "--report", help="also write the JSON report here"),
) -> None:
    """Deploy the whole topology: preflight, PKI, SLB + etcd + BGP, control plane, workers."""
    from nornir_k8sha.deploy import DeployContext, run_stages
    from nornir_k8sha.inventory import open_nornir
    from nornir_k8sha.phases import default_stages, phase_names

    spec = load_valid_spec(inventory, as_json)
    unknown = sorted(set(phase or ()) - set(phase_names()))
    if unknown:
        console.error(f"--phase: unknown phase(s) {', '.join(unknown)}; known: "
                      f"{', '.join(phase_names())}")
        raise typer.Exit(EXIT_INVALID)
    hosts = {h.name for h in spec.hosts}
    limit_set = frozenset(x.strip() for x in limit.split(",") if x.strip()) if limit else None
    if limit_set and limit_set - hosts:
        console.error(f"--limit: unknown host(s) {', '.join(sorted(limit_set - hosts))}")
        raise typer.Exit(EXIT_INVALID)
    report = RunReport("deploy", spec.name, dry_run=dry_run)
    ctx = DeployContext(spec, open_nornir(inventory), report, dry_run=dry_run, limit=limit_set,
                        state_dir=spec.state_dir)
    with LiveProgress(report, console.out(), enabled=not as_json):
        run_stages(ctx, default_stages(), only=set(phase) if phase else None)
    if not as_json and not dry_run and report.exit_code == 0:
        report.notes.extend(next_steps(spec, inventory))
    _finish(report, spec, as_json, report_file)


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


def check(
    inventory: Path = InventoryOpt,
    as_json: bool = typer.Option(False, "--json", help="print the JSON report on stdout only"),
    report_file: Path = typer.Option(None, "--report", help="also write the JSON report here"),
) -> None:
    """Prove the cluster: etcd, VIP/IPVS, HAProxy, apiservers, nodes, leases, registry, certs."""
    from nornir_k8sha.checks import run_checks, show_checks
    from nornir_k8sha.inventory import open_nornir

    spec = load_valid_spec(inventory, as_json)
    report = run_checks(spec, open_nornir(inventory))
    if not as_json:
        show_checks(report, console.out())
    _finish(report, spec, as_json, report_file, table=False)


def reset(
    inventory: Path = InventoryOpt,
    yes: bool = typer.Option(False, "--yes", help="really remove Kubernetes from the nodes"),
    dry_run: bool = typer.Option(False, "--dry-run", help="say what would be reset"),
    as_json: bool = typer.Option(False, "--json", help="print the JSON report on stdout only"),
) -> None:
    """`kubeadm reset -f` on workers, then masters. etcd, HAProxy and LVS are left alone."""
    from nornir_k8sha.deploy import DeployContext, run_stages
    from nornir_k8sha.inventory import open_nornir
    from nornir_k8sha.phases.reset import reset_stages

    spec = load_valid_spec(inventory, as_json)
    if not (yes or dry_run):
        console.error("reset removes the Kubernetes control plane and every node: pass --yes "
                      "(or --dry-run to see what it would do)")
        raise typer.Exit(EXIT_INVALID)
    report = RunReport("reset", spec.name, dry_run=dry_run)
    ctx = DeployContext(spec, open_nornir(inventory), report, dry_run=dry_run,
                        state_dir=spec.state_dir)
    with LiveProgress(report, console.out(), enabled=not as_json):
        run_stages(ctx, reset_stages())
    _finish(report, spec, as_json, None)


def register(app: typer.Typer) -> None:
    app.command()(deploy)
    app.command()(check)
    app.command()(reset)
