"""`check`: prove the running cluster and report what was measured."""

from __future__ import annotations

from pathlib import Path

from nornir_k8sha import console
from nornir_k8sha.checks import run_checks, show_checks
from nornir_k8sha.cli.common import InventoryOpt, JsonOpt, ReportOpt, finish, load_spec
from nornir_k8sha.inventory import open_nornir


def check(
    inventory: Path = InventoryOpt,
    as_json: bool = JsonOpt,
    report_file: Path = ReportOpt,
) -> None:
    """Prove the cluster: etcd, VIP/IPVS, HAProxy, apiservers, nodes, leases, registry, certs."""
    spec = load_spec(inventory, as_json=as_json, reaches_hosts=True,
                     consequence="invalid inventory: no host was contacted")
    report = run_checks(spec, open_nornir(inventory))
    if not as_json:
        show_checks(report, console.out())
    finish(report, spec, as_json, report_file, table=False)
