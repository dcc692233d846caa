"""`nornir-k8sha lab up|down|status|fault ...`: the embedded lab from the command line.

Thin: parses, calls `nornir_k8sha.lab`, renders with rich. Exit codes: 0 ok, 1 the lab failed
(a host did not come up, a fault could not be applied), 2 bad input or not root.
"""

from __future__ import annotations

import json
from dataclasses import asdict
from pathlib import Path

import typer
from rich.table import Table

from nornir_k8sha import console
from nornir_k8sha import constants as C
from nornir_k8sha.cli.common import InventoryOpt, JsonOpt
from nornir_k8sha.exceptions import InventoryError, K8shaError, LabError, NotRootError

lab_app = typer.Typer(no_args_is_help=True, help="The embedded lab: real hosts on this machine.")
fault_app = typer.Typer(no_args_is_help=True, help="Break the lab on purpose (recorded in time).")
lab_app.add_typer(fault_app, name="fault")

def _log(message: str) -> None:
    console.err().print(f"[dim]lab:[/dim] {message}")


def _lab(inventory: Path):  # noqa: ANN202
    from nornir_k8sha.lab.lab import Lab, require_root  # lazy: paramiko, +60-80 ms at startup

    require_root("the lab")  # before anything else: the answer a non-root user needs first
    return Lab.from_inventory(inventory, log=_log)


def _run(action):  # noqa: ANN001, ANN202
    """Run an action; turn our errors into a message and an exit code, never a traceback."""
    try:
        return action()
    except NotRootError as exc:
        console.error(str(exc))
        raise typer.Exit(C.EXIT_INVALID) from None
    except InventoryError as exc:
        console.error(str(exc))
        raise typer.Exit(C.EXIT_INVALID) from None
    except (LabError, K8shaError) as exc:
        console.error(str(exc))
        raise typer.Exit(C.EXIT_FAILED) from None


@lab_app.command()
def up(
    inventory: Path = InventoryOpt,
    timeout: float = typer.Option(120.0, help="seconds to wait for every host's SSH"),
) -> None:
    """Build (or repair) the lab: bridge, containers, UML directors; wait for SSH everywhere."""
    lab = _run(lambda: _lab(inventory))
    report = _run(lambda: lab.up(timeout=timeout))
    what = (f"started {len(report.started)}, kept {len(report.kept)} running"
            if report.kept else f"started {len(report.started)} hosts")
    console.out().print(
        f"[green]lab up[/green]: {what}; every host answers SSH "
        f"({report.seconds:.1f} s, SSH wait {report.ssh_seconds:.1f} s)"
        + (" — rootfs built" if report.rootfs_built else "")
    )
    console.out().print(f"  ssh -F {lab.ssh.config} <host>")


@lab_app.command()
def down(inventory: Path = InventoryOpt) -> None:
    """Stop every lab host and remove everything the lab made on this machine."""
    lab = _run(lambda: _lab(inventory))
    report = _run(lab.down)
    if report.leftovers:
        console.error("lab down left: " + "; ".join(report.leftovers))
        raise typer.Exit(C.EXIT_FAILED)
    console.out().print(f"[green]lab down[/green]: {len(report.stopped)} hosts stopped, "
                        f"nothing left ({report.seconds:.1f} s)")


@lab_app.command()
def status(
    inventory: Path = InventoryOpt,
    as_json: bool = JsonOpt,
) -> None:
    """Each host: address, role, physical machine, state, memory (PSS of its processes)."""
    lab = _run(lambda: _lab(inventory))
    rows = _run(lab.status)
    if as_json:
        print(json.dumps([{
            "host": r.name, "address": r.address, "roles": list(r.roles), "machine": r.machine,
            "kind": r.kind, "state": r.state, "pid": r.pid, "memory_mib": round(r.memory_mib, 1),
        } for r in rows], indent=2))
    else:
        table = Table(title=f"lab {lab.spec.name} on {lab.bridge} (controller {lab.controller})")
        for column in ("host", "address", "role", "machine", "kind", "state", "memory"):
            table.add_column(column, justify="right" if column == "memory" else "left")
        colours = {"running": "green", "unreachable": "yellow", "stopped": "red"}
        for r in rows:
            table.add_row(r.name, r.address, ",".join(r.roles), r.machine, r.kind,
                          f"[{colours[r.state]}]{r.state}[/]",
                          f"{r.memory_mib:.0f} MiB" if r.pss_kib else "-")
        total = sum(r.pss_kib for r in rows) / 1024
        console.out().print(table)
        console.out().print(f"total memory: {total:.0f} MiB")
    if any(r.state != "running" for r in rows):
        raise typer.Exit(C.EXIT_FAILED)


def _faults(inventory: Path):  # noqa: ANN202
    from nornir_k8sha.lab.faults import Faults  # lazy: the lab, like _lab


    return Faults(_run(lambda: _lab(inventory)))


def _show(fault) -> None:  # noqa: ANN001
    console.out().print(
        f"fault #{fault.id} {fault.kind} {' '.join(fault.targets)} applied at "
        f"{fault.applied_wall:.3f} (monotonic {fault.applied_monotonic:.3f})"
        + (f": {fault.detail}" if fault.detail else "")
    )


HostArg = typer.Argument(..., help="lab host name")
UnitArg = typer.Argument(..., help="systemd unit, e.g. haproxy")


@fault_app.command("stop-service")
def stop_service(host: str = HostArg, unit: str = UnitArg, inventory: Path = InventoryOpt) -> None:
    """systemctl stop UNIT on HOST."""
    _show(_run(lambda: _faults(inventory).stop_service(host, unit)))


@fault_app.command("start-service")
def start_service(host: str = HostArg, unit: str = UnitArg, inventory: Path = InventoryOpt
                  ) -> None:
    """systemctl start UNIT on HOST."""
    _show(_run(lambda: _faults(inventory).start_service(host, unit)))


@fault_app.command("kill-service")
def kill_service(
    host: str = HostArg, unit: str = UnitArg, inventory: Path = InventoryOpt,
    signal: str = typer.Option("KILL", "--signal", "-s", help="KILL, TERM, STOP, CONT, HUP"),
) -> None:
    """systemctl kill -s SIGNAL UNIT on HOST (KILL = crash, STOP = freeze)."""
    _show(_run(lambda: _faults(inventory).kill_service(host, unit, signal)))


@fault_app.command("kill-host")
def kill_host(host: str = HostArg, inventory: Path = InventoryOpt) -> None:
    """Power-cut HOST: SIGKILL its whole process tree (its disk stays)."""
    _show(_run(lambda: _faults(inventory).kill_host(host)))


@fault_app.command("restore-host")
def restore_host(host: str = HostArg, inventory: Path = InventoryOpt) -> None:
    """Boot a killed HOST again and wait for its SSH."""
    _show(_run(lambda: _faults(inventory).restore_host(host)))


@fault_app.command("kill-machine")
def kill_machine(machine: str = typer.Argument(..., help="physical_host label, e.g. pm1"),
                 inventory: Path = InventoryOpt) -> None:
    """Kill every host on one physical machine at once."""
    _show(_run(lambda: _faults(inventory).kill_machine(machine)))


@fault_app.command("restore-machine")
def restore_machine(machine: str = typer.Argument(..., help="physical_host label"),
                    inventory: Path = InventoryOpt) -> None:
    """Boot every host of a physical machine again."""
    _show(_run(lambda: _faults(inventory).restore_machine(machine)))


@fault_app.command("cut-link")
def cut_link(host: str = HostArg, inventory: Path = InventoryOpt) -> None:
    """Take HOST's link to the bridge down (host alive, unreachable)."""
    _show(_run(lambda: _faults(inventory).cut_link(host)))


@fault_app.command("restore-link")
def restore_link(host: str = HostArg, inventory: Path = InventoryOpt) -> None:
    """Bring HOST's link back up."""
    _show(_run(lambda: _faults(inventory).restore_link(host)))


@fault_app.command()
def partition(hosts: list[str] = typer.Argument(..., help="hosts cut off from all others"),
              inventory: Path = InventoryOpt) -> None:
    """Isolate HOSTS from the rest of the lab (they still see each other and the controller)."""
    _show(_run(lambda: _faults(inventory).partition(hosts)))


@fault_app.command()
def heal(inventory: Path = InventoryOpt) -> None:
    """Lift every partition."""
    _show(_run(lambda: _faults(inventory).heal()))


@fault_app.command("list")
def list_faults(inventory: Path = InventoryOpt,
                as_json: bool = JsonOpt) -> None:
    """Faults applied since `lab up`, with their times."""
    faults = _run(lambda: _faults(inventory).history())
    if as_json:
        print(json.dumps([asdict(f) for f in faults], indent=2))
        return
    table = Table(title="lab faults")
    for column in ("#", "kind", "targets", "applied (wall)", "undone (wall)", "detail"):
        table.add_column(column)
    for f in faults:
        table.add_row(str(f.id), f.kind, " ".join(f.targets), f"{f.applied_wall:.3f}",
                      f"{f.undone_wall:.3f}" if f.undone_wall else "[yellow]active[/]",
                      f.detail[:60])
    console.out().print(table)
