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
from nornir_k8sha.cli.common import InventoryOpt, JsonOpt, bad_option, load_spec
from nornir_k8sha.render import RenderedFile, components_for_host, render_all, write_tree
from nornir_k8sha.topology import ClusterSpec

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
    inventory: Path = InventoryOpt,
    output: Path = typer.Option(
        None, "--output", "-o",
        help="directory to write <host>/<path> into (default: <state dir>/rendered)"),
    host: list[str] = typer.Option(None, "--host", "-H", help="only these hosts (repeatable)"),
    as_json: bool = JsonOpt,
) -> None:
    """Render every config file for every host into a local directory; nothing leaves the
    machine."""
    spec = load_spec(inventory, as_json=as_json,
                     consequence="invalid inventory: nothing was rendered")
    unknown = [h for h in host or [] if h not in {x.name for x in spec.hosts}]
    if unknown:
        bad_option("--host", f"unknown host(s): {', '.join(unknown)}", inventory=inventory,
                   as_json=as_json)
    out_dir = output if output is not None else spec.state_dir / C.STATE_RENDERED_DIR
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
