"""`etcd backup|backups|restore|replace`: day-2 care of the external etcd cluster.

Exit codes: 0 done, 1 failed (no healthy member, a step on a host failed, the cluster is busy
with another operation), 2 invalid input or a refused restore — then nothing was touched.
"""

from __future__ import annotations

import json
from pathlib import Path

import httpx
import typer
from rich.markup import escape

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
from nornir_k8sha.exceptions import CommandFailed, ReplaceRefused, SnapshotError
from nornir_k8sha.inventory import open_nornir
from nornir_k8sha.tasks import etcd_backup as B
from nornir_k8sha.tasks import etcd_replace as X
from nornir_k8sha.tasks import etcd_restore as R

etcd_app = typer.Typer(no_args_is_help=True,
                       help="The external etcd cluster: snapshots, restore, member replace.")

#: The test seam for the HTTP checks of the members (httpx.MockTransport); None in real use.
HTTP_TRANSPORT: httpx.BaseTransport | None = None


@etcd_app.command("backup")
def backup(inventory: Path = InventoryOpt, as_json: bool = JsonOpt,
           break_lock: bool = BreakLockOpt) -> None:
    """Snapshot etcd on a healthy member (the leader if it can), check it with `etcdctl
    snapshot status`, keep it in the state dir with its checksum; keep `etcd.backup_keep`."""
    spec = load_spec(inventory, as_json=as_json, reaches_hosts=True)
    nr = open_nornir(inventory)
    with one_operation(spec, "etcd backup", dry_run=False, nr=nr, break_lock=break_lock):
        try:
            taken, pruned = B.take_backup(nr, spec, spec.state_dir,
                                          transport=HTTP_TRANSPORT)
        except (SnapshotError, CommandFailed) as exc:
            console.error(f"etcd backup failed: {exc}")
            raise typer.Exit(C.EXIT_FAILED) from None
    if as_json:
        print(json.dumps({**taken.as_dict(), "pruned": [str(p) for p in pruned]}, indent=2))
        return
    out = console.out()
    out.print(f"[green]snapshot good[/] from {escape(taken.member)}: revision {taken.revision}, "
              f"{taken.total_keys} keys, {taken.size} bytes (etcdctl snapshot status)")
    out.print(f"saved {escape(str(taken.path))} (sha256 {taken.sha256})")
    for path in pruned:
        out.print(f"[dim]pruned {escape(str(path))} (keep {spec.settings.etcd.backup_keep})[/]")


@etcd_app.command("backups")
def backups(inventory: Path = InventoryOpt, as_json: bool = JsonOpt) -> None:
    """The snapshots in the state dir, oldest first: time, member, revision, keys, size."""
    spec = load_spec(inventory, as_json=as_json)
    found = B.list_backups(spec.state_dir)
    if as_json:
        print(json.dumps([b.as_dict() for b in found], indent=2))
        return
    out = console.out()
    if not found:
        out.print(f"no snapshots in {escape(str(B.backups_dir(spec.state_dir)))}; "
                  "take one with `etcd backup`")
        return
    for b in found:
        out.print(f"{escape(b.taken)}  {escape(b.member)}  revision {b.revision}  "
                  f"{b.total_keys} keys  {b.size} bytes  {escape(str(b.path))}")


@etcd_app.command("restore")
def restore(
    inventory: Path = InventoryOpt,
    source: Path = typer.Option(..., "--from", help="snapshot taken by `etcd backup` "
                                                    "(with its .json sidecar)"),
    force: bool = typer.Option(False, "--force", help="restore even though the cluster has "
                                                      "quorum (rolls its keyspace back)"),
    break_lock: bool = BreakLockOpt,
) -> None:
    """Restore every member from one snapshot into a new cluster (same names and URLs, a new
    cluster token), start them together, wait for quorum and the API through the VIP."""
    spec = load_spec(inventory, as_json=False, reaches_hosts=True)
    try:
        backup_, data = B.verify_local(source)
    except SnapshotError as exc:
        console.error(str(exc))
        console.error("nothing was touched on any host")
        raise typer.Exit(C.EXIT_INVALID) from None
    nr = open_nornir(inventory)
    out = console.out()
    with one_operation(spec, "etcd restore", dry_run=False, nr=nr, break_lock=break_lock):
        healthy, quorum = R.healthy_members(nr, spec, spec.state_dir, HTTP_TRANSPORT)
        if len(healthy) >= quorum and not force:
            console.error(f"etcd is healthy ({len(healthy)} members up: {', '.join(healthy)};"
                          f" quorum {quorum}): a restore would roll it back to revision "
                          f"{backup_.revision}. Use --force to restore anyway; nothing was "
                          "touched")
            raise typer.Exit(C.EXIT_INVALID)
        out.print(f"restoring {escape(str(source))} (taken {escape(backup_.taken)} on "
                  f"{escape(backup_.member)}, revision {backup_.revision}, "
                  f"{backup_.total_keys} keys)")
        try:
            done = R.restore(nr, spec, spec.state_dir, backup_, data,
                             say=lambda line: out.print(f"- {escape(line)}"))
        except (SnapshotError, CommandFailed, TimeoutError) as exc:
            console.error(f"etcd restore failed: {exc}")
            raise typer.Exit(C.EXIT_FAILED) from None
    out.print(f"[green]restored[/]: new cluster token {escape(done.token)}; old data dirs "
              f"kept at {escape(done.aside)} on every member")


@etcd_app.command("replace")
def replace(
    member: str = typer.Argument(..., help="the etcd member to replace (inventory name)"),
    inventory: Path = InventoryOpt,
    force: bool = typer.Option(False, "--force", help="replace a member that is healthy"),
    break_lock: bool = BreakLockOpt,
) -> None:
    """Replace a dead or wiped member: remove it, set its data dir aside, add it back as a
    learner, start it joining the existing cluster, promote it once it has caught up."""
    spec = load_spec(inventory, as_json=False, reaches_hosts=True)
    names = [m.name for m in spec.role(C.ROLE_ETCD)]
    if member not in names:
        bad_option("MEMBER", f"{member!r} is not an etcd member of {inventory} (members: "
                   f"{', '.join(names)}); nothing was touched", inventory=inventory,
                   as_json=False)
    out = console.out()
    nr = open_nornir(inventory)
    with one_operation(spec, f"etcd replace {member}", dry_run=False, nr=nr,
                       break_lock=break_lock):
        try:
            done = X.replace(nr, spec, spec.state_dir, member, force=force,
                             transport=HTTP_TRANSPORT,
                             say=lambda line: out.print(f"- {escape(line)}"))
        except ReplaceRefused as exc:
            console.error(str(exc))
            raise typer.Exit(C.EXIT_INVALID) from None
        except (CommandFailed, TimeoutError) as exc:
            console.error(f"etcd replace {member} failed: {exc}")
            raise typer.Exit(C.EXIT_FAILED) from None
    out.print(f"[green]replaced[/] {escape(done.member)}: member ID {done.old_id or '-'} -> "
              f"{done.new_id}; old data dir kept at {escape(done.aside)}")
