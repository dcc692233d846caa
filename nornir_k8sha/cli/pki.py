"""`pki`: create or refresh the cluster's certificates in the state dir and show what happened;
`pki renew`: renew what expires soon and roll it out one host at a time.

Exit codes: 0 ok (expiring CAs are warnings), 1 a certificate or key cannot be made or read, a
host did not come back healthy, or the cluster is busy; 2 invalid input (nothing is written).
"""

from __future__ import annotations

import json
import time
from pathlib import Path

import httpx
import typer
from rich.markup import escape
from rich.table import Table

from nornir_k8sha import console
from nornir_k8sha import constants as C
from nornir_k8sha.cli.common import (
    BreakLockOpt,
    InventoryOpt,
    JsonOpt,
    bad_option,
    load_spec,
    one_operation,
)
from nornir_k8sha.exceptions import CommandFailed, ConnectionFailed, PKIError
from nornir_k8sha.inventory import open_nornir
from nornir_k8sha.pki import RENEW_BEFORE_DAYS, CertStatus, ClusterPKI
from nornir_k8sha.tasks import pki_renew

pki_app = typer.Typer(help="The cluster's certificates: make them (`pki`), renew them "
                           "(`pki renew`).")

#: The test seam for the HTTP checks during the rollout (httpx.MockTransport); None in use.
HTTP_TRANSPORT: httpx.BaseTransport | None = None

_STYLE = {"created": "green", "reused": "dim", "regenerated": "yellow", "renewed": "cyan",
          "removed": "magenta"}


def _expires(status: CertStatus) -> str:
    if status.not_after is None:
        return "-"
    days = status.days_left
    colour = "red" if days is not None and days < RENEW_BEFORE_DAYS else "default"
    return f"[{colour}]{status.not_after:%Y-%m-%d} ({days}d)[/]"


def _show(statuses: list[CertStatus], state_dir: Path, elapsed: float) -> None:
    out = console.out()
    table = Table(title=f"PKI in {state_dir / 'pki'}")
    table.add_column("certificate", no_wrap=True)
    table.add_column("status")
    table.add_column("subject")
    table.add_column("SANs")
    table.add_column("expires", no_wrap=True)
    for s in statuses:
        style = _STYLE[s.action]
        action = f"[{style}]{s.action}[/]"
        if s.action != "reused" and s.reason and s.reason != "new":
            action += f" [dim]({s.reason})[/]"
        table.add_row(s.name + (" [bold](CA)[/]" if s.is_ca else ""), action, s.subject,
                      ", ".join(s.sans) or "-", _expires(s))
    out.print(table)
    counts = {a: sum(1 for s in statuses if s.action == a) for a in _STYLE}
    summary = ", ".join(f"{n} {a}" for a, n in counts.items() if n)
    out.print(f"{len(statuses)} certificates and keys: {summary} in {elapsed:.2f} s")


@pki_app.callback(invoke_without_command=True)
def pki(
    ctx: typer.Context,
    inventory: Path = InventoryOpt,
    state_dir: Path = typer.Option(None, "--state-dir",
                                   help="cluster state dir (default .k8sha/<cluster>/)"),
    as_json: bool = JsonOpt,
) -> None:
    """Create or refresh the cluster's CAs and certificates (idempotent; nothing leaves here)."""
    if ctx.invoked_subcommand is not None:
        return
    spec = load_spec(inventory, as_json=as_json,
                     consequence="invalid inventory: no certificate was written")
    directory = state_dir if state_dir is not None else spec.state_dir
    start = time.perf_counter()
    try:
        statuses = ClusterPKI(spec, directory).ensure()
    except PKIError as exc:
        if as_json:
            print(json.dumps({"ok": False, "valid": True, "errors": [str(exc)]}))
        console.error(str(exc))
        raise typer.Exit(C.EXIT_FAILED) from None
    elapsed = time.perf_counter() - start
    for s in statuses:
        if s.is_ca and s.reason:
            console.warn(f"{s.name}: {s.reason}")
    if as_json:
        print(json.dumps({
            "ok": True,
            "cluster": spec.name,
            "state_dir": str(directory),
            "seconds": round(elapsed, 4),
            "certificates": [s.as_dict() for s in statuses],
        }, indent=2))
    else:
        _show(statuses, directory, elapsed)


@pki_app.command("renew")
def renew(
    inventory: Path = InventoryOpt,
    within: int = typer.Option(RENEW_BEFORE_DAYS, "--within", help="renew what expires "
                               "within this many days"),
    dry_run: bool = typer.Option(False, "--dry-run", help="say what would be renewed; change "
                                 "nothing"),
    break_lock: bool = BreakLockOpt,
) -> None:
    """Renew the certificates expiring within --within days with the existing CAs and roll
    them out one host at a time: etcd members (leader last, after a hand-over), masters'
    apiservers, the registry; each host healthy again before the next."""
    spec = load_spec(inventory, as_json=False, reaches_hosts=True)
    if within < 1:
        bad_option("--within", f"{within}: give a number of days of at least 1; nothing was "
                   "touched", inventory=inventory, as_json=False)
    nr = open_nornir(inventory)
    out = console.out()
    try:
        if dry_run:
            plan = pki_renew.plan(nr, spec, spec.state_dir, within)
            for name in plan.names:
                out.print(f"would renew {escape(name)}")
            out.print(f"{len(plan.names)} certificate(s) expire within {within} days; "
                      "dry run: nothing was changed")
            return
        with one_operation(spec, f"pki renew --within {within}", dry_run=False, nr=nr,
                           break_lock=break_lock):
            done = pki_renew.renew(nr, spec, spec.state_dir, within,
                                   say=lambda line: out.print(f"- {escape(line)}"),
                                   transport=HTTP_TRANSPORT)
    except PKIError as exc:
        console.error(f"pki renew: {exc}")
        raise typer.Exit(C.EXIT_FAILED) from None
    except (CommandFailed, ConnectionFailed, TimeoutError) as exc:
        console.error(f"pki renew stopped: {exc}")
        raise typer.Exit(C.EXIT_FAILED) from None
    finally:
        nr.close_connections(on_good=True, on_failed=True)
    if not done.plan.names:
        out.print(f"nothing expires within {within} days; nothing was changed")
        return
    slowest = max(done.rolled.values(), default=0.0)
    out.print(f"[green]renewed[/] {len(done.plan.names)} certificate(s); rolled out to "
              f"{len(done.rolled)} host(s) one at a time (slowest back in {slowest:.1f} s)")
