"""`runbook validate|list|run` and `verify` (= `runbook run` of the built-in verify-ha).

Exit codes: 0 every case passed, 1 a case failed (or the run was interrupted, or the cluster is
busy with another operation), 2 invalid runbook or inventory or a refused run (non-lab without
--yes, lab fault on a real inventory); when refused or busy, nothing was done on any host.
"""

from __future__ import annotations

import json
import sys
from dataclasses import asdict
from pathlib import Path
from typing import Any

import typer
from rich.console import Console
from rich.markup import escape
from rich.status import Status

from nornir_k8sha import console
from nornir_k8sha import constants as C
from nornir_k8sha.cli.common import BreakLockOpt, InventoryOpt, JsonOpt, load_spec, one_operation
from nornir_k8sha.exceptions import OperationLocked, RunbookError
from nornir_k8sha.inventory import open_nornir
from nornir_k8sha.runbook import engine, expect, load, loader, measure, seams, views
from nornir_k8sha.runbook.results import CaseResult, RunbookResult
from nornir_k8sha.statefiles import write_private
from nornir_k8sha.topology import ClusterSpec

VERIFY_RUNBOOK = "verify-ha"

runbook_app = typer.Typer(no_args_is_help=True,
                          help="YAML runbooks: validate, list, run (faults with rollbacks, "
                               "measured under load).")

VarOpt = typer.Option(None, "--var", help="set a runbook variable: NAME=VALUE (repeatable)")
CaseOpt = typer.Option(None, "--case", help="run only this case (repeatable)")
JunitOpt = typer.Option(None, "--junit", help="write JUnit XML here (one testcase per case)")
MarkdownOpt = typer.Option(None, "--markdown", help="write a Markdown report (and timelines)")
YesOpt = typer.Option(False, "--yes", help="run a disruptive runbook on a non-lab inventory")
BoundOpt = typer.Option(None, "--bound", help="CASE=SECONDS: hold this case to your own bound "
                                               "instead of the computed one (repeatable)")
DryRunOpt = typer.Option(False, "--dry-run", help="resolve and show what would run; touch "
                                                  "nothing")


def _variables(pairs: list[str] | None) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for pair in pairs or []:
        name, sep, value = pair.partition("=")
        if not sep or not name:
            console.error(f"--var {pair!r}: write NAME=VALUE")
            raise typer.Exit(C.EXIT_INVALID)
        out[name] = _scalar(value)
    return out


def _bounds(pairs: list[str] | None) -> dict[str, float]:
    """`--bound CASE=SECONDS` -> {case: seconds}; a bad one exits 2 before anything runs."""
    out: dict[str, float] = {}
    for pair in pairs or []:
        name, _, value = pair.partition("=")
        try:
            seconds = float(value)
        except ValueError:
            seconds = -1.0
        if not name or not seconds >= 0 or seconds == float("inf"):
            console.error(f"--bound {pair!r}: write CASE=SECONDS (SECONDS a number >= 0)")
            raise typer.Exit(C.EXIT_INVALID)
        out[name] = seconds
    return out


def _scalar(text: str) -> Any:
    """`3` -> 3, `0.5` -> 0.5, `true` -> True, else the text."""
    for kind in (int, float):
        try:
            return kind(text)
        except ValueError:
            pass
    return {"true": True, "false": False}.get(text.lower(), text)


def _load(file: str | Path, variables: dict[str, Any]) -> loader.LoadedRunbook:
    try:
        return loader.load(loader.find_runbook(file), variables)
    except RunbookError as exc:
        console.error(str(exc))
        console.error("invalid runbook: nothing was touched on any host")
        raise typer.Exit(C.EXIT_INVALID) from None


@runbook_app.command("validate")
def validate(
    file: str = typer.Argument(..., help="runbook file, or the name of a built-in one"),
    inventory: Path = typer.Option(None, "--inventory", "-i",
                                   help="also check selectors and lab steps against it"),
    var: list[str] = VarOpt,
) -> None:
    """Check a runbook: YAML, schema, task and probe names, selectors (file:line for each)."""
    loaded = _load(file, _variables(var))
    if inventory is not None:
        spec = load_spec(inventory, as_json=False)
        if spec.is_lab:
            register_lab_faults(spec)
        try:
            loader.check_against(loaded, spec)
        except RunbookError as exc:
            console.error(str(exc))
            raise typer.Exit(C.EXIT_INVALID) from None
        cases = loaded.cases(spec)
    else:
        cases = loaded.cases()
    console.out().print(f"[green]valid[/]: {escape(str(loaded.path))}: "
                        f"{escape(loaded.runbook.title)}, {len(cases)} case(s): "
                        f"{escape(', '.join(c.name for _, c in cases))}")


@runbook_app.command("list")
def list_runbooks() -> None:
    """The built-in runbooks: name, title, cases."""
    out = console.out()
    for path in loader.builtin_runbooks():
        try:
            loaded = loader.load(path)
        except RunbookError as exc:
            console.error(str(exc))
            continue
        names = [c.name + (f" (for each {c.for_each})" if c.for_each else "")
                 for _, c in loaded.cases()]
        out.print(f"[bold]{escape(path.stem)}[/]  {escape(loaded.runbook.title)}  "
                  f"[dim]({len(names)} case(s): {escape(', '.join(names))})[/]")


@runbook_app.command("run")
def run(
    file: str = typer.Argument(..., help="runbook file, or the name of a built-in one"),
    inventory: Path = InventoryOpt,
    dry_run: bool = DryRunOpt,
    as_json: bool = JsonOpt,
    junit: Path = JunitOpt,
    markdown: Path = MarkdownOpt,
    yes: bool = YesOpt,
    case: list[str] = CaseOpt,
    var: list[str] = VarOpt,
    bound: list[str] = BoundOpt,
    break_lock: bool = BreakLockOpt,
) -> None:
    """Run a runbook: steady state, each case's method under load, rollbacks, verdicts."""
    run_file(file, inventory, dry_run=dry_run, as_json=as_json, junit=junit,
             markdown=markdown, yes=yes, cases=case, variables=_variables(var),
             bounds=_bounds(bound), break_lock=break_lock)


def verify(
    inventory: Path = InventoryOpt,
    case: list[str] = CaseOpt,
    junit: Path = JunitOpt,
    markdown: Path = MarkdownOpt,
    as_json: bool = JsonOpt,
    yes: bool = YesOpt,
    dry_run: bool = DryRunOpt,
    bound: list[str] = BoundOpt,
    break_lock: bool = BreakLockOpt,
) -> None:
    """Prove the HA claims: every checklist case of runbooks/verify-ha.yaml, measured."""
    run_file(VERIFY_RUNBOOK, inventory, dry_run=dry_run, as_json=as_json, junit=junit,
             markdown=markdown, yes=yes, cases=case, variables={}, bounds=_bounds(bound),
             break_lock=break_lock)


def run_file(file: str | Path, inventory: Path, *, dry_run: bool, as_json: bool,
             junit: Path | None, markdown: Path | None, yes: bool, cases: list[str] | None,
             variables: dict[str, Any], bounds: dict[str, float] | None = None,
             break_lock: bool = False) -> None:
    """Load, check against the inventory, run; render; exit 0/1/2."""
    loaded = _load(file, variables)
    spec = load_spec(inventory, as_json=as_json, reaches_hosts=not dry_run)
    live = LiveLine(console.err())
    options = engine.RunOptions(yes=yes, dry_run=dry_run, cases=cases or None,
                                progress=live.step, on_case=live.case,
                                command=f"runbook run {loaded.path.name}", bounds=bounds or {})
    if spec.is_lab:
        register_lab_faults(spec)
    nr = open_nornir(inventory)
    try:
        engine.prepare(loaded, spec, options)  # refusals first: nothing loaded, nothing run
        if not dry_run:
            options.instruments = _instruments()
        # the cluster lock on the hosts (the engine's local one re-enters inside)
        with one_operation(spec, f"{options.command} {loaded.path}", dry_run=dry_run, nr=nr,
                           break_lock=break_lock):
            result = engine.run(loaded, spec, nr, options)
    except RunbookError as exc:
        console.error(str(exc))
        console.error("nothing was touched on any host")
        raise typer.Exit(C.EXIT_INVALID) from None
    except OperationLocked as exc:  # busy, not invalid: the same exit as a second deploy
        console.error(str(exc))
        console.error("nothing was touched on any host")
        raise typer.Exit(C.EXIT_FAILED) from None
    finally:
        live.stop()
        nr.close_connections(on_good=True, on_failed=True)
    _render(result, as_json=as_json, junit=junit, markdown=markdown)
    raise typer.Exit(C.EXIT_OK if result.passed and not result.interrupted else C.EXIT_FAILED)


class LiveLine:
    """One live line on stderr (rich status) with the running case and step; a line per
    finished case stays. Without a terminal, every step is a plain line."""

    COLOURS = {"passed": "green", "failed": "bold red", "error": "bold red"}

    def __init__(self, err: Console) -> None:
        self.err = err
        self.status: Status | None = err.status("starting") if err.is_terminal else None
        if self.status is not None:
            self.status.start()

    def step(self, line: str) -> None:
        if self.status is not None:
            self.status.update(escape(line))
        else:
            self.err.print(f"[dim]{escape(line)}[/]")

    def case(self, case: CaseResult) -> None:
        colour = self.COLOURS.get(case.verdict, "yellow")
        why = f": {case.reason}" if case.reason else ""
        self.err.print(f"[{colour}]{case.verdict}[/] {escape(case.name)} "
                       f"({case.duration:.1f}s){escape(why)}")

    def stop(self) -> None:
        if self.status is not None:
            self.status.stop()
            self.status = None


def register_lab_faults(spec: ClusterSpec, faults: Any = None) -> None:
    """The lab's power cuts as the runbook lab steps `power_off` / `power_on` (a whole
    physical machine at once when the hosts are exactly its hosts). Only for the lab's own
    inventory; `faults` is the test seam (default: the lab's Faults)."""
    if faults is None:
        from nornir_k8sha.lab.faults import Faults  # lazy: the lab (root, namespaces)
        from nornir_k8sha.lab.lab import Lab  # lazy: only for the lab's own inventory

        faults = Faults(Lab(spec))

    def power_off(spec: ClusterSpec, hosts: list[str]) -> str:
        machines = _whole_machines(spec, hosts)
        for m in machines:
            faults.kill_machine(m)
        for h in ([] if machines else hosts):
            faults.kill_host(h)
        return f"power cut: {', '.join(machines or hosts)}"

    def power_on(spec: ClusterSpec, hosts: list[str], wait: bool = True) -> str:
        machines = _whole_machines(spec, hosts)
        for m in machines:
            faults.restore_machine(m, wait=wait)
        for h in ([] if machines else hosts):
            faults.restore_host(h, wait=wait)
        return f"powered on: {', '.join(machines or hosts)}"

    seams.register("power_off", power_off)
    seams.register("power_on", power_on)


def _whole_machines(spec: ClusterSpec, hosts: list[str]) -> list[str]:
    """The machines whose hosts are exactly `hosts` (together), else []."""
    machines = sorted({spec.host(h).machine for h in hosts})
    if not machines:
        return []
    every = {h.name for m in machines for h in spec.machines[m]}
    return machines if every == set(hosts) and len(spec.machines[machines[0]]) > 1 else []


def _instruments() -> engine.Instruments:
    """The load probe, figures and expectations of runbook/load, measure, expect."""
    return engine.Instruments(load_probe=load.LoadProbe,
                              figures=measure.figures, expectation=expect.expectation,
                              shortfalls=measure.shortfalls)


def _render(result: RunbookResult, *, as_json: bool, junit: Path | None,
            markdown: Path | None) -> None:
    if result.dry_run:
        if as_json:
            print(json.dumps(asdict(result), indent=2, default=str))
        else:
            steps = sum(len(c.steps) + len(c.rollbacks) for c in result.cases)
            console.out().print(f"dry run of {escape(result.runbook)}: {len(result.cases)} "
                                f"case(s), {steps} step(s); nothing was touched")
        return
    if junit:
        write_private(junit, views.junit_xml(result))
    if markdown:
        views.markdown(result, markdown)
    if as_json:
        print(json.dumps(views.as_json(result), indent=2))
    else:
        console.out().print(views.case_table(result))
    if result.interrupted:
        print("interrupted: rollbacks ran; later cases were skipped", file=sys.stderr)
