"""`node remove`: take one worker or master out of the cluster (cordon, drain, reset, delete; a
master also leaves HAProxy). Adding a node is `deploy` with the node in the inventory.

Exit codes: 0 removed, 1 a step failed (named) or the cluster is busy, 2 invalid input (not a
node of the inventory, or a cluster without it would break a rule) — nothing touched then.
"""

from __future__ import annotations

from pathlib import Path

import httpx
import typer
from rich.markup import escape

from nornir_k8sha import console
from nornir_k8sha import constants as C
from nornir_k8sha.cli.common import (
    BreakLockOpt,
    InventoryOpt,
    bad_option,
    exit_invalid,
    load_spec,
    one_operation,
)
from nornir_k8sha.exceptions import CommandFailed, ConnectionFailed
from nornir_k8sha.inventory import open_nornir
from nornir_k8sha.tasks import node_remove
from nornir_k8sha.topology import analyse_inventory

node_app = typer.Typer(no_args_is_help=True, help="Kubernetes nodes: remove one (add one by "
                                                  "putting it in the inventory and `deploy`).")

#: The test seam for the API and HAProxy checks (httpx.MockTransport); None in real use.
HTTP_TRANSPORT: httpx.BaseTransport | None = None


@node_app.command("remove")
def remove(
    name: str = typer.Argument(..., help="the worker or master to remove (inventory name)"),
    inventory: Path = InventoryOpt,
    break_lock: bool = BreakLockOpt,
) -> None:
    """Cordon, drain (evict its pods), `kubeadm reset -f`, delete the Node; a master is first
    taken out of every HAProxy's backends, one HAProxy at a time. Then remove it from the
    inventory's hosts.yaml."""
    spec = load_spec(inventory, as_json=False, reaches_hosts=True)
    nodes = [h.name for h in spec.kubernetes_nodes()]
    if name not in nodes:
        bad_option("NAME", f"{name!r} is not a worker or master of {inventory} (nodes: "
                   f"{', '.join(nodes)}); nothing was touched", inventory=inventory,
                   as_json=False)
    without = open_nornir(inventory).inventory
    del without.hosts[name]
    after = analyse_inventory(without)
    if after.errors or after.spec is None:
        exit_invalid(inventory, after.errors, as_json=False,
                     consequence=f"the cluster without {name} would break these rules: "
                                 "nothing was touched")
    nr = open_nornir(inventory)
    out = console.out()
    try:
        with one_operation(spec, f"node remove {name}", dry_run=False, nr=nr,
                           break_lock=break_lock):
            done = node_remove.remove(nr, spec, after.spec, name, spec.state_dir,
                                      say=lambda line: out.print(f"- {escape(line)}"),
                                      transport=HTTP_TRANSPORT)
    except (CommandFailed, ConnectionFailed, TimeoutError, httpx.HTTPError) as exc:
        console.error(f"node remove {name} stopped: {exc}")
        raise typer.Exit(C.EXIT_FAILED) from None
    finally:
        nr.close_connections(on_good=True, on_failed=True)
    proxies = f"; HAProxy updated on {', '.join(done.haproxy)}" if done.haproxy else ""
    out.print(f"[green]removed[/] {escape(name)}{proxies}. Now delete it from "
              f"{escape(str(inventory / 'hosts.yaml'))} (a later `deploy` would join it again)")
