"""rich rendering of what the library returns. Consoles are made per call (never bound to
sys.stdout at import) so Typer's test runner captures them. rich itself (~15 ms to import) is
imported when something is drawn: `check --json` draws nothing (issue 12.3)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

from nornir_k8sha import constants as C
from nornir_k8sha.topology import Analysis, Finding, etcd_quorum, etcd_tolerance

if TYPE_CHECKING:
    from rich.console import Console

#: Names listed per table cell; a large inventory's full lists are in `validate --json`.
MAX_NAMES = 8


def escape(text: str) -> str:
    """rich's markup escaped (`rich.markup.escape`)."""
    from rich.markup import escape as rich_escape

    return rich_escape(text)


def _names(names: list[str]) -> str:
    shown = ", ".join(names[:MAX_NAMES])
    more = len(names) - MAX_NAMES
    return escape(shown + (f", … +{more} more" if more > 0 else ""))


def out() -> Console:
    from rich.console import Console

    return Console(highlight=False, soft_wrap=True)


def err() -> Console:
    from rich.console import Console

    return Console(stderr=True, highlight=False, soft_wrap=True)


def error(message: str) -> None:
    err().print(f"[bold red]error:[/] {escape(message)}")


def warn(message: str) -> None:
    err().print(f"[yellow]warning:[/] {escape(message)}")


def findings_document(inventory: str, errors: Sequence[Finding],
                      warnings: Sequence[Finding] = ()) -> dict[str, Any]:
    """The JSON every command prints on stdout for an invalid inventory or option (exit 2);
    `validate --json` adds the topology to the same keys."""
    return {
        "inventory": inventory,
        "valid": not errors,
        "errors": [f.as_dict() for f in errors],
        "warnings": [f.as_dict() for f in warnings],
    }


def analysis_document(analysis: Analysis) -> dict[str, Any]:
    """`validate --json`: the same content as the tables, as one document."""
    spec = analysis.spec
    inventory = str(analysis.raw.directory) if analysis.raw else ""
    doc = findings_document(inventory, analysis.errors, analysis.warnings)
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
    from rich.table import Table

    console = out()
    spec = analysis.spec
    if spec is not None:
        roles = Table(title=f"cluster {spec.name}: roles (VIP {spec.api_endpoint})")
        for col in ("role", "count", "hosts"):
            roles.add_column(col)
        for role in C.ROLES:
            hosts = spec.role(role)
            roles.add_row(role, str(len(hosts)),
                          _names([f"{h.name} ({h.address}, {h.machine})" for h in hosts]))
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
        # The verdict is the point of this table: it keeps its width; the host list wraps.
        machines.add_column("machine", no_wrap=True)
        machines.add_column("hosts")
        for col in ("etcd left/quorum", "masters", "haproxy", "lvs"):
            machines.add_column(col, justify="right")
        machines.add_column("verdict", min_width=18)
        for loss in spec.machine_losses():
            colour = "green" if loss.api_survives else "red"
            machines.add_row(
                escape(loss.machine), _names(list(loss.hosts)),
                f"{loss.etcd_left} / {loss.etcd_quorum}",
                str(loss.masters_left), str(loss.haproxy_left), str(loss.lvs_left),
                f"[{colour}]{escape(loss.verdict)}[/]",
            )
        console.print(machines)
    for finding in analysis.warnings:
        console.print(f"[yellow]warning[/] {escape(str(finding))}")
    for finding in analysis.errors:
        console.print(f"[bold red]error[/] {escape(str(finding))}")
    if analysis.errors:
        console.print(f"[bold red]invalid:[/] {len(analysis.errors)} error(s), "
                      f"{len(analysis.warnings)} warning(s)")
    else:
        console.print(f"[green]valid[/]: {len(analysis.warnings)} warning(s)")
