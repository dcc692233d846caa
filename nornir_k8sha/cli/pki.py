"""`pki`: create or refresh the cluster's certificates in the state dir and show what happened.

Exit codes: 0 ok (expiring CAs are warnings), 1 a certificate or key cannot be made or read,
2 invalid inventory (nothing is written).
"""

from __future__ import annotations

import json
import time
from pathlib import Path

import typer
from rich.table import Table

from nornir_k8sha import console
from nornir_k8sha import constants as C
from nornir_k8sha.cli.common import InventoryOpt, JsonOpt, load_spec
from nornir_k8sha.exceptions import PKIError
from nornir_k8sha.pki import RENEW_BEFORE_DAYS, CertStatus, ClusterPKI

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


def pki(
    inventory: Path = InventoryOpt,
    state_dir: Path = typer.Option(None, "--state-dir",
                                   help="cluster state dir (default .k8sha/<cluster>/)"),
    as_json: bool = JsonOpt,
) -> None:
    """Create or refresh the cluster's CAs and certificates (idempotent; nothing leaves here)."""
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
