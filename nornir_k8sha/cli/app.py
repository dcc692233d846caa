"""The root command and `validate`; every other command group lives in its own module.

The command line is thin: it parses, calls the library, renders with rich. Exit codes
everywhere (constants.EXIT_*): 0 ok, 1 failed hosts / warnings under --strict, 2 invalid input.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import typer

from nornir_k8sha import console
from nornir_k8sha import constants as C
from nornir_k8sha.cli import check, deploy, etcd, lab, node, pki, render, runbook
from nornir_k8sha.cli.common import InventoryOpt, JsonOpt, load_analysis
from nornir_k8sha.exceptions import InventoryError, K8shaError

app = typer.Typer(
    add_completion=False,
    no_args_is_help=True,
    help="Build, prove and operate a highly-available Kubernetes front end with Nornir.",
)


@app.callback()
def _root() -> None:
    """Build, prove and operate a highly-available Kubernetes front end with Nornir."""


@app.command()
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


# The whole command line, in `--help` order; each command lives in its group's module.
app.command("render")(render.render)
app.add_typer(pki.pki_app, name="pki")
app.add_typer(lab.lab_app, name="lab")
app.command()(deploy.deploy)
app.command()(check.check)
app.command()(deploy.reset)
app.add_typer(runbook.runbook_app, name="runbook")
app.command("verify")(runbook.verify)
app.add_typer(etcd.etcd_app, name="etcd")
app.add_typer(node.node_app, name="node")


def main() -> None:
    try:
        app()
    except K8shaError as exc:  # last resort: never a traceback for our own errors
        console.error(str(exc))
        sys.exit(C.EXIT_INVALID if isinstance(exc, InventoryError) else C.EXIT_FAILED)
