"""The root command and `validate`; every other command group lives in its own module.

The command line is thin: it parses, calls the library, renders with rich. Exit codes
everywhere (constants.EXIT_*): 0 ok, 1 failed hosts / warnings under --strict, 2 invalid input.

`build()` assembles the whole command line (`nornir_k8sha.cli.app`); `main()` assembles only
the command it is about to run, so `check` does not pay for importing the runbook engine, the
lab and every other group at start-up (issue 12.3). Either way the commands are the same
functions, registered in the one order below.
"""

from __future__ import annotations

import json
import platform
import sys
from collections.abc import Callable
from pathlib import Path
from types import ModuleType

import typer

from nornir_k8sha import __version__, console
from nornir_k8sha import constants as C
from nornir_k8sha.cli import startup
from nornir_k8sha.cli.common import InventoryOpt, JsonOpt, load_analysis
from nornir_k8sha.exceptions import InventoryError, K8shaError

HELP = "Build, prove and operate a highly-available Kubernetes front end with Nornir."


def _show_version(wanted: bool) -> None:
    """`--version`, eager: answered before any command or inventory is looked at."""
    if wanted:
        from importlib.metadata import version  # lazy: only for --version

        print(f"nornir-k8sha {__version__} (nornir {version('nornir')}, "
              f"Python {platform.python_version()})")
        raise typer.Exit()


def _root(
    show_version: bool = typer.Option(False, "--version", is_eager=True,
                                      callback=_show_version,
                                      help="print the version and exit"),
) -> None:
    """Build, prove and operate a highly-available Kubernetes front end with Nornir."""


def validate(
    inventory: Path = InventoryOpt,
    as_json: bool = JsonOpt,
    strict: bool = typer.Option(False, "--strict", help="exit 1 when there are warnings"),
) -> None:
    """Check the inventory: roles, etcd quorum, physical-machine losses, every rule."""
    analysis = load_analysis(inventory, as_json=as_json)
    if as_json:
        print(json.dumps(console.analysis_document(analysis), indent=2))
    else:
        console.show_analysis(analysis)
    if analysis.errors:
        raise typer.Exit(C.EXIT_INVALID)
    if strict and analysis.warnings:
        raise typer.Exit(C.EXIT_FAILED)


def _group(name: str) -> ModuleType:
    """The module of one command group, imported when a command of it is registered."""
    if name == "render":
        from nornir_k8sha.cli import render  # lazy: start-up, a command imports its group only
        return render
    if name == "pki":
        from nornir_k8sha.cli import pki  # lazy: start-up, a command imports its group only
        return pki
    if name == "lab":
        from nornir_k8sha.cli import lab  # lazy: start-up, a command imports its group only
        return lab
    if name == "deploy":
        from nornir_k8sha.cli import deploy  # lazy: start-up, a command imports its group only
        return deploy
    if name == "check":
        from nornir_k8sha.cli import check  # lazy: start-up, a command imports its group only
        return check
    if name == "runbook":
        from nornir_k8sha.cli import runbook  # lazy: start-up, a command imports its group only
        return runbook
    if name == "etcd":
        from nornir_k8sha.cli import etcd  # lazy: start-up, a command imports its group only
        return etcd
    if name == "node":
        from nornir_k8sha.cli import node  # lazy: start-up, a command imports its group only
        return node
    raise KeyError(name)


#: The whole command line, in `--help` order: command -> (its group, how it is added).
COMMANDS: dict[str, tuple[str, Callable[[typer.Typer, ModuleType], None]]] = {
    "render": ("render", lambda app, m: app.command("render")(m.render)),
    "pki": ("pki", lambda app, m: app.add_typer(m.pki_app, name="pki")),
    "lab": ("lab", lambda app, m: app.add_typer(m.lab_app, name="lab")),
    "deploy": ("deploy", lambda app, m: app.command()(m.deploy)),
    "check": ("check", lambda app, m: app.command()(m.check)),
    "reset": ("deploy", lambda app, m: app.command()(m.reset)),
    "runbook": ("runbook", lambda app, m: app.add_typer(m.runbook_app, name="runbook")),
    "verify": ("runbook", lambda app, m: app.command("verify")(m.verify)),
    "etcd": ("etcd", lambda app, m: app.add_typer(m.etcd_app, name="etcd")),
    "node": ("node", lambda app, m: app.add_typer(m.node_app, name="node")),
}


def build(command: str | None = None) -> typer.Typer:
    """The command line: the root, `validate` and every command; with `command` (one of
    COMMANDS) the root, `validate` and that command only."""
    app = typer.Typer(add_completion=False, no_args_is_help=True, help=HELP)
    app.callback()(_root)
    app.command()(validate)
    for name, (group, add) in COMMANDS.items():
        if command in (None, name) or command not in COMMANDS:
            add(app, _group(group))
    return app


def main() -> None:
    """Run the command named in argv (`startup`: its imports with the collector paused, and
    its end)."""
    command = sys.argv[1] if len(sys.argv) > 1 else None
    try:
        with startup.imports():
            app = build(command)
        app()
    except K8shaError as exc:  # last resort: never a traceback for our own errors
        console.error(str(exc))
        sys.exit(C.EXIT_INVALID if isinstance(exc, InventoryError) else C.EXIT_FAILED)
    finally:
        startup.exiting()
