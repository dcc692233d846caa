"""What every command shares: the common options, and the one way to load the inventory or
exit 2 (one JSON error shape on stdout with --json, the messages on stderr).

The invalid-input document, for every command (`validate` adds the topology to it):
    {"inventory": "<dir>", "valid": false, "errors": [finding...], "warnings": [finding...]}
where a finding is {"severity", "rule", "message", "where", "host", "field"}.
"""

from __future__ import annotations

import contextlib
import json
import time
from collections.abc import Collection, Iterator
from pathlib import Path
from typing import NoReturn

import typer
from nornir.core import Nornir

from nornir_k8sha import console
from nornir_k8sha import constants as C
from nornir_k8sha.exceptions import InventoryError, OperationLocked
from nornir_k8sha.lab import network as lab_network
from nornir_k8sha.oplock import operation_lock
from nornir_k8sha.report import RunReport, print_summary
from nornir_k8sha.tasks import host as H
from nornir_k8sha.tasks.hostlock import cluster_lock
from nornir_k8sha.topology import Analysis, ClusterSpec, Finding, analyse

InventoryOpt = typer.Option(
    C.DEFAULT_INVENTORY, "--inventory", "-i", help="inventory directory (hosts/groups/defaults)"
)
JsonOpt = typer.Option(False, "--json", help="one JSON document on stdout, nothing else there")
ReportOpt = typer.Option(None, "--report", help="also write the JSON report here (0600)")
BreakLockOpt = typer.Option(False, "--break-lock",
                            help="break the cluster lock if its holder is gone (stale)")


def exit_invalid(inventory: Path, errors: list[Finding], *, as_json: bool,
                 consequence: str = "", warnings: list[Finding] | None = None) -> NoReturn:
    """Exit 2: every error on stderr; with --json the invalid-input document on stdout."""
    if as_json:
        print(json.dumps(console.findings_document(str(inventory), errors, warnings or []),
                         indent=2))
    for finding in errors:
        console.error(str(finding))
    if consequence:
        console.error(consequence)
    raise typer.Exit(C.EXIT_INVALID)


def bad_option(option: str, message: str, *, inventory: Path, as_json: bool) -> NoReturn:
    """An option naming something the inventory does not have (a host, a phase): exit 2."""
    exit_invalid(inventory, [Finding("error", "option", message, field=option)],
                 as_json=as_json)


def load_analysis(inventory: Path, *, as_json: bool) -> Analysis:
    """Every finding of the inventory; exit 2 when it cannot even be read."""
    try:
        return analyse(inventory)
    except InventoryError as exc:
        exit_invalid(inventory, [Finding("error", "inventory", str(exc))], as_json=as_json)


def load_spec(inventory: Path, *, as_json: bool,
              consequence: str = "invalid inventory: nothing was touched",
              reaches_hosts: bool = False) -> ClusterSpec:
    """The validated spec, or exit 2 naming every error — before anything is touched.

    `reaches_hosts`: the command talks to the hosts; on the lab's own inventory the lab must
    then be up (see `lab_is_down`)."""
    analysis = load_analysis(inventory, as_json=as_json)
    if analysis.errors or analysis.spec is None:
        exit_invalid(inventory, analysis.errors, as_json=as_json, consequence=consequence,
                     warnings=analysis.warnings)
    if reaches_hosts and lab_is_down(analysis.spec):
        bridge = lab_network.bridge_name(analysis.spec.name)
        exit_invalid(inventory, [Finding(
            "error", "lab-down", f"the lab is not up (no bridge {bridge}): its addresses "
            "would be sent to this machine's default route; run `lab up` first",
            field="hostname")], as_json=as_json, consequence="nothing was sent to any host")
    return analysis.spec


def lab_is_down(spec: ClusterSpec) -> bool:
    """The lab's inventory while its bridge is missing: its private addresses exist only on
    that bridge, so nothing may be sent to them now (a unit test's fake fleet replaces this)."""
    return spec.is_lab and not lab_network.link_exists(
        lab_network.bridge_name(spec.name))


def finish(report: RunReport, spec: ClusterSpec, as_json: bool, report_file: Path | None,
           *, table: bool = True) -> NoReturn:
    """Save the report (state dir, and `--report`), print it (JSON or tables), exit with its
    code. Reports are written 0600: they name every host and what changed on it."""
    # to the millisecond: two runs in one second must not overwrite each other's report
    stamp = (time.strftime("%Y%m%d-%H%M%S", time.localtime(report.started))
             + f"-{int(report.started * 1000) % 1000:03d}")
    saved = spec.state_dir / C.STATE_REPORTS_DIR / f"{report.command}-{stamp}.json"
    report.write_json(saved)
    if report_file:
        report.write_json(report_file)
    if as_json:
        print(json.dumps(report.as_dict(), indent=2))
    else:
        print_summary(report, console.out(), table=table)
        console.out().print(f"[dim]report: {saved}[/]")
    raise typer.Exit(report.exit_code)


@contextlib.contextmanager
def one_operation(spec: ClusterSpec, command: str, *, dry_run: bool, nr: Nornir | None,
                  break_lock: bool = False, open_first: Collection[str] = ()) -> Iterator[None]:
    """Hold the cluster's locks for a command that changes hosts (deploy, reset, runbooks,
    day-2): the local one (`.k8sha/<cluster>/operation.lock`), then the one on the hosts
    (tasks/hostlock.py: a majority of the etcd members), so a second operator on this or
    another machine exits 1 naming the holder. A dry run changes nothing: no lock. Both are
    released however the block ends. `nr` None: the local lock only (no host to reach).
    `open_first`: hosts the command will reach, whose connections open while the lock is
    taken (their handshakes off the command's path)."""
    if dry_run:
        yield
        return
    if nr is not None and open_first:
        H.open_ahead(nr, sorted(open_first))
    try:
        with operation_lock(spec.state_dir, command, share_inside=True), \
                (cluster_lock(nr, spec, command, break_lock=break_lock, say=console.warn)
                 if nr is not None else contextlib.nullcontext()):
            yield
    except OperationLocked as exc:
        console.error(str(exc))
        console.error("nothing was touched on any host")
        raise typer.Exit(C.EXIT_FAILED) from None
