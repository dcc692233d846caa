"""rich rendering of what the library returns. Consoles are made per call (never bound to
sys.stdout at import) so Typer's test runner captures them."""

from __future__ import annotations

from typing import Any

from rich.console import Console
from rich.table import Table

from nornir_k8sha import constants as C
from nornir_k8sha.topology import Analysis, etcd_quorum, etcd_tolerance


def out() -> Console:
    return Console(highlight=False, soft_wrap=True)


def err() -> Console:
    return Console(stderr=True, highlight=False, soft_wrap=True)


def error(message: str) -> None:
    err().print(f"[bold red]error:[/] {message}", markup=True)


def warn(message: str) -> None:
    err().print(f"[yellow]warning:[/] {message}")


def analysis_document(analysis: Analysis) -> dict[str, Any]:
    """`validate --json`: the same content as the tables, as one document."""
    spec = analysis.spec
    doc: dict[str, Any] = {
        "inventory": str(analysis.raw.directory),
        "valid": not analysis.errors,
        "errors": [f.as_dict() for f in analysis.errors],
        "warnings": [f.as_dict() for f in analysis.warnings],
    }
    if spec is not None:
        etcd = spec.count(C.ROLE_ETCD)
        doc.update(
            cluster=spec.name,
            vip=str(spec.vip),
            api_endpoint=spec.api_endpoint,
            roles={
                role: [{"name": h.name, "address": str(h.address), "machine": h.machine}
                       for h in spec.role(role)]
                for role in C.ROLES
            },
            etcd={"members": etcd, "quorum": etcd_quorum(etcd),
                  "tolerates": etcd_tolerance(etcd), "table": spec.etcd_table()},
            machine_losses=[loss.as_dict() for loss in spec.machine_losses()],
        )
    return doc


def show_analysis(analysis: Analysis) -> None:
    console = out()
    spec = analysis.spec
    if spec is not None:
        roles = Table(title=f"cluster {spec.name}: roles (VIP {spec.api_endpoint})")
        for col in ("role", "count", "hosts"):
            roles.add_column(col)
        for role in C.ROLES:
            hosts = spec.role(role)
            roles.add_row(role, str(len(hosts)),
                          ", ".join(f"{h.name} ({h.address}, {h.machine})" for h in hosts))
        console.print(roles)

        quorum = Table(title="etcd quorum and failure tolerance")
        for col in ("members", "quorum (n/2)+1", "failures tolerated", ""):
            quorum.add_column(col)
        for row in spec.etcd_table():
            mark = "◀ this inventory" if row["this_inventory"] else ""
            style = "bold" if row["this_inventory"] else None
            quorum.add_row(str(row["members"]), str(row["quorum"]), str(row["tolerates"]), mark,
                           style=style)
        console.print(quorum)

        machines = Table(title="loss of one physical machine")
        for col in ("machine", "hosts", "etcd left / quorum", "masters", "haproxy", "lvs",
                    "verdict"):
            machines.add_column(col)
        for loss in spec.machine_losses():
            colour = "green" if loss.api_survives else "red"
            machines.add_row(
                loss.machine, ", ".join(loss.hosts), f"{loss.etcd_left} / {loss.etcd_quorum}",
                str(loss.masters_left), str(loss.haproxy_left), str(loss.lvs_left),
                f"[{colour}]{loss.verdict}[/]",
            )
        console.print(machines)
    for finding in analysis.warnings:
        console.print(f"[yellow]warning[/] {finding}")
    for finding in analysis.errors:
        console.print(f"[bold red]error[/] {finding}")
    if analysis.errors:
        console.print(f"[bold red]invalid:[/] {len(analysis.errors)} error(s), "
                      f"{len(analysis.warnings)} warning(s)")
    else:
        console.print(f"[green]valid[/]: {len(analysis.warnings)} warning(s)")
