"""`render`: every config file of the cluster, written to a local directory for review.

Nothing leaves the machine: no host is contacted. An invalid inventory exits 2 before anything
is written; a template error writes nothing either (everything is rendered before writing).
"""

from __future__ import annotations

import json
import time
from pathlib import Path

import typer
from rich.markup import escape
from rich.table import Table

from nornir_k8sha import console
from nornir_k8sha import constants as C
from nornir_k8sha.exceptions import InventoryError
from nornir_k8sha.render import RenderedFile, components_for_host, render_all, write_tree
from nornir_k8sha.topology import ClusterSpec, analyse

EXIT_INVALID = 2


def _load_spec(inventory: Path) -> ClusterSpec:
    """The validated spec, or exit 2 naming every error."""
    try:
        analysis = analyse(inventory)
    except InventoryError as exc:
        console.error(str(exc))
        raise typer.Exit(EXIT_INVALID) from None
    if analysis.errors or analysis.spec is None:
        for finding in analysis.errors:
            console.error(str(finding))
        console.error("invalid inventory: nothing was rendered")
        raise typer.Exit(EXIT_INVALID)
    return analysis.spec


#: Above this many hosts the summary shows one row per role instead of one per host.
MAX_HOST_ROWS = 40


def summary_table(spec: ClusterSpec, rendered: dict[str, list[RenderedFile]],
                  out_dir: Path) -> Table:
    """One row per host: its roles, components and files (with the validator of each); one row
    per role on big inventories."""
    table = Table(title=f"cluster {spec.name}: rendered into {out_dir}")
    per_host = len(rendered) <= MAX_HOST_ROWS
    for col in ("host" if per_host else "role (hosts)", "roles" if per_host else "first host",
                "components"):
        table.add_column(col)
    table.add_column("files", overflow="fold")

    def files_cell(files: list[RenderedFile]) -> str:
        return "\n".join(escape(f.path) + (f"  [dim]({f.validate_cmd.split()[0]} checks)[/]"
                                           if f.validate_cmd else "") for f in files)

    if per_host:
        for name, files in rendered.items():
            host = spec.host(name)
            table.add_row(escape(name), ", ".join(host.roles),
                          ", ".join(components_for_host(host)), files_cell(files))
        return table
    seen: dict[tuple[str, ...], list[str]] = {}
    for name in rendered:
        seen.setdefault(spec.host(name).roles, []).append(name)
    for roles, names in seen.items():
        first = spec.host(names[0])
        table.add_row(f"{', '.join(roles)} ({len(names)})", escape(first.name),
                      ", ".join(components_for_host(first)), files_cell(rendered[first.name]))
    return table


def render(
    inventory: Path = typer.Option(
        C.DEFAULT_INVENTORY, "--inventory", "-i", help="inventory directory"),
    output: Path = typer.Option(
        None, "--output", "-o",
        help="directory to write <host>/<path> into (default: <state dir>/rendered)"),
    host: list[str] = typer.Option(None, "--host", "-H", help="only these hosts (repeatable)"),
    as_json: bool = typer.Option(False, "--json", help="one JSON summary on stdout"),
) -> None:
    """Render every config file for every host into a local directory; nothing leaves the
    machine."""
    spec = _load_spec(inventory)
    unknown = [h for h in host or [] if h not in {x.name for x in spec.hosts}]
    if unknown:
        console.error(f"unknown host(s): {', '.join(unknown)}")
        raise typer.Exit(EXIT_INVALID)
    out_dir = output if output is not None else spec.state_dir / "rendered"
    started = time.perf_counter()
    rendered = render_all(spec)
    if host:
        rendered = {name: files for name, files in rendered.items() if name in host}
    write_tree(rendered, out_dir)
    elapsed = time.perf_counter() - started
    count = sum(len(f) for f in rendered.values())
    if as_json:
        doc = {
            "cluster": spec.name,
            "output": str(out_dir),
            "seconds": round(elapsed, 3),
            "hosts": {name: [{"path": f.path, "component": f.component, "mode": oct(f.mode),
                              "validate": f.validate_cmd, "service": f.service}
                             for f in files] for name, files in rendered.items()},
        }
        print(json.dumps(doc, indent=2))
        return
    out = console.out()
    out.print(summary_table(spec, rendered, out_dir))
    out.print(f"{count} file(s) for {len(rendered)} host(s) in {elapsed:.2f} s → "
              f"{escape(str(out_dir))}/<host>/<path>; nothing was sent to any host")


def register(app: typer.Typer) -> None:
    app.command("render")(render)
