"""The command line: thin. Parses, calls the library, renders with rich.

Exit codes everywhere: 0 ok, 1 failed hosts / warnings under --strict, 2 invalid input.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import typer

from nornir_k8sha import console
from nornir_k8sha import constants as C
from nornir_k8sha.exceptions import InventoryError, K8shaError
from nornir_k8sha.topology import analyse

EXIT_OK = 0
EXIT_FAILED = 1
EXIT_INVALID = 2

DEFAULT_INVENTORY = C.DEFAULT_INVENTORY

app = typer.Typer(
    add_completion=False,
    no_args_is_help=True,
    help="Build, prove and operate a highly-available Kubernetes front end with Nornir.",
)



@app.callback()
def _root() -> None:
    """Build, prove and operate a highly-available Kubernetes front end with Nornir."""


InventoryOpt = typer.Option(
    DEFAULT_INVENTORY, "--inventory", "-i", help="inventory directory (hosts/groups/defaults)"
)


def _fail_invalid(exc: Exception, *, inventory: Path, as_json: bool = False) -> None:
    """An unreadable inventory: exit 2, the message on stderr (and the JSON shape on stdout)."""
    if as_json:
        print(json.dumps(console.invalid_document(str(inventory), str(exc)), indent=2))
    console.error(str(exc))
    raise typer.Exit(EXIT_INVALID)


@app.command()
def validate(
    inventory: Path = InventoryOpt,
    as_json: bool = typer.Option(False, "--json", help="one JSON document on stdout"),
    strict: bool = typer.Option(False, "--strict", help="exit 1 when there are warnings"),
) -> None:
    """Check the inventory: roles, etcd quorum, physical-machine losses, every rule."""
    try:
        analysis = analyse(inventory)
    except InventoryError as exc:
        _fail_invalid(exc, inventory=inventory, as_json=as_json)
        return
    if as_json:
        print(json.dumps(console.analysis_document(analysis), indent=2))
    else:
        console.show_analysis(analysis)
    if analysis.errors:
        raise typer.Exit(EXIT_INVALID)
    if strict and analysis.warnings:
        raise typer.Exit(EXIT_FAILED)


def _register_subcommands() -> None:
    """Sub-apps live in their own modules; a missing optional one must not break `validate`."""
    import importlib

    for module in ("nornir_k8sha.cli_render", "nornir_k8sha.cli_pki", "nornir_k8sha.cli_lab",
                   "nornir_k8sha.cli_deploy"):
        try:
            mod = importlib.import_module(module)
        except ModuleNotFoundError as exc:
            if exc.name != module:
                raise
            continue
        mod.register(app)


_register_subcommands()


def main() -> None:
    try:
        app()
    except K8shaError as exc:  # last resort: never a traceback for our own errors
        console.error(str(exc))
        sys.exit(EXIT_INVALID if isinstance(exc, InventoryError) else EXIT_FAILED)
