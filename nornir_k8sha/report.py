"""One aggregation of results for every command: per phase × host outcomes, a live progress
display, a final table, a JSON document and the exit code.

Thin containers over built-ins, like nornir's own Result: a `HostOutcome` per host per phase, a
`PhaseReport` per phase, a `RunReport` for the whole command.
"""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

from nornir.core.task import AggregatedResult, MultiResult

from nornir_k8sha import constants as C
from nornir_k8sha.console import escape
from nornir_k8sha.statefiles import write_private

if TYPE_CHECKING:
    from rich.console import Console
    from rich.table import Table

Status = Literal["ok", "changed", "failed", "skipped", "pending", "running"]

_STYLE = {
    "ok": "green",
    "changed": "yellow",
    "failed": "bold red",
    "skipped": "dim",
    "pending": "dim",
    "running": "cyan",
}


@dataclass
class HostOutcome:
    """What one phase did on one host."""

    host: str
    status: Status
    duration: float = 0.0
    message: str = ""
    diff: str = ""
    changes: list[str] = field(default_factory=list)
    #: What a check measured (CheckResult.values); empty for deploy steps.
    values: dict[str, Any] = field(default_factory=dict)

    def as_dict(self) -> dict[str, Any]:
        out = {
            "host": self.host,
            "status": self.status,
            "duration_s": round(self.duration, 3),
            "message": self.message,
            "diff": self.diff,
            "changes": self.changes,
        }
        if self.values:
            out["values"] = self.values
        return out


@dataclass
class PhaseReport:
    """A phase: its hosts' outcomes, or why it was skipped."""

    name: str
    title: str
    hosts: dict[str, HostOutcome] = field(default_factory=dict)
    duration: float = 0.0
    skipped_reason: str = ""
    #: The stage it ran in (phases of one stage run at the same time, stages one after
    #: another); None outside a staged run (the rows of `check`).
    stage: int | None = None
    #: Seconds from the start of the run to the start of this phase.
    started: float = 0.0

    @property
    def ended(self) -> float:
        return self.started + self.duration

    @property
    def failed_hosts(self) -> list[str]:
        return [h for h, o in self.hosts.items() if o.status == "failed"]

    def slowest_host(self) -> HostOutcome | None:
        """The host that took longest in this phase (hosts that ran only)."""
        ran = [o for o in self.hosts.values() if o.status not in ("skipped", "pending")]
        return max(ran, key=lambda o: o.duration, default=None)

    @property
    def changed(self) -> int:
        return sum(1 for o in self.hosts.values() if o.status == "changed")

    @property
    def status(self) -> Status:
        if self.skipped_reason:
            return "skipped"
        statuses = {o.status for o in self.hosts.values()}
        for s in ("failed", "running", "changed"):
            if s in statuses:
                return s  # type: ignore[return-value]
        return "ok"

    def as_dict(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "title": self.title,
            "status": self.status,
            "duration_s": round(self.duration, 3),
            "skipped_reason": self.skipped_reason,
            "stage": self.stage,
            "started_s": round(self.started, 3),
            "hosts": {h: o.as_dict() for h, o in self.hosts.items()},
        }


@dataclass
class RunReport:
    """A whole command (deploy, check, ...): phases in order, timings, exit code."""

    command: str
    cluster: str
    dry_run: bool = False
    phases: list[PhaseReport] = field(default_factory=list)
    started: float = field(default_factory=time.time)
    duration: float = 0.0
    notes: list[str] = field(default_factory=list)
    #: What the run cost this machine: peak_connections (SSH connections opening or working at
    #: once), peak_open_connections (held open, idle ones too), handshakes (connections the
    #: command opened that were not riding a persistent master already, the ones a deploy's
    #: cluster lock opened on the etcd members just before its phases included), peak_rss_mb.
    resources: dict[str, float] = field(default_factory=dict)
    _lock: threading.Lock = field(default_factory=threading.Lock, repr=False)

    def phase(self, name: str) -> PhaseReport:
        for p in self.phases:
            if p.name == name:
                return p
        raise KeyError(name)

    def add_phase(self, name: str, title: str, hosts: list[str]) -> PhaseReport:
        with self._lock:
            report = PhaseReport(name, title, {h: HostOutcome(h, "pending") for h in hosts})
            self.phases.append(report)
            return report

    def set(self, phase: str, outcome: HostOutcome) -> None:
        with self._lock:
            self.phase(phase).hosts[outcome.host] = outcome

    @property
    def failed_hosts(self) -> list[str]:
        seen: dict[str, None] = {}
        for p in self.phases:
            for h in p.failed_hosts:
                seen[h] = None
        return list(seen)

    @property
    def changed(self) -> int:
        return sum(p.changed for p in self.phases)

    @property
    def exit_code(self) -> int:
        return C.EXIT_FAILED if self.failed_hosts else C.EXIT_OK

    def counts(self) -> dict[str, int]:
        out = {"ok": 0, "changed": 0, "failed": 0, "skipped": 0}
        for p in self.phases:
            for o in p.hosts.values():
                if o.status in out:
                    out[o.status] += 1
        return out

    def as_dict(self) -> dict[str, Any]:
        return {
            "command": self.command,
            "cluster": self.cluster,
            "dry_run": self.dry_run,
            "started": self.started,
            "duration_s": round(self.duration, 3),
            "exit_code": self.exit_code,
            "counts": self.counts(),
            "changed": self.changed,
            "failed_hosts": self.failed_hosts,
            "notes": self.notes,
            "resources": self.resources,
            "critical_path": [step.as_dict() for step in critical_path(self)],
            "phases": [p.as_dict() for p in self.phases],
        }

    def write_json(self, path: Path) -> None:
        """The JSON report at `path`, 0600 from its creation (it is an inventory of the
        cluster); an existing file is truncated and brought back to 0600."""
        write_private(path, json.dumps(self.as_dict(), indent=2) + "\n")


@dataclass(frozen=True)
class PathStep:
    """One phase on the critical path, and the host that held it up longest."""

    stage: int
    phase: str
    title: str
    started: float
    duration: float
    slowest_host: str | None
    slowest_host_s: float | None

    def as_dict(self) -> dict[str, Any]:
        return {"stage": self.stage, "phase": self.phase, "title": self.title,
                "started_s": round(self.started, 3), "duration_s": round(self.duration, 3),
                "slowest_host": self.slowest_host,
                "slowest_host_s": None if self.slowest_host_s is None
                else round(self.slowest_host_s, 3)}


def critical_path(report: RunReport) -> list[PathStep]:
    """The chain of phases that set the run's wall time: stages run one after another and a
    stage lasts until its last phase ends, so the path is each stage's last-ending phase.
    Stages where nothing ran (every phase skipped at once) are left out."""
    stages: dict[int, list[PhaseReport]] = {}
    for p in report.phases:
        if p.stage is not None:
            stages.setdefault(p.stage, []).append(p)
    path = []
    for stage in sorted(stages):
        last = max(stages[stage], key=lambda p: (p.ended, p.duration))
        if last.skipped_reason and last.duration == 0:
            continue
        slow = last.slowest_host()
        path.append(PathStep(stage, last.name, last.title, last.started, last.duration,
                             slow.host if slow else None, slow.duration if slow else None))
    return path


def outcomes_from_nornir(
    result: AggregatedResult, durations: dict[str, float]
) -> list[HostOutcome]:
    """Fold a Nornir AggregatedResult into one outcome per host.

    Changed comes from any subtask (nornir does not propagate it to the parent: DESIGN.md 4).
    """
    outcomes = []
    for host, multi in result.items():
        outcomes.append(_outcome(host, multi, durations.get(host, 0.0)))
    return outcomes


def _outcome(host: str, multi: MultiResult, duration: float) -> HostOutcome:
    failed = [r for r in multi if r.failed]
    diff = "\n".join(r.diff for r in multi if r.diff)
    if failed:  # the diff stays: what was attempted (a switch change rolled back, ...)
        first = failed[-1] if failed[-1].exception is not None else failed[0]
        exc = first.exception
        message = str(exc) if exc is not None else str(first.result or "failed")
        return HostOutcome(host, "failed", duration, _first_lines(message), diff)
    changed = [r for r in multi if r.changed]
    messages = [str(r.result) for r in multi[:1] if isinstance(r.result, str) and r.result]
    return HostOutcome(
        host,
        "changed" if changed else "ok",
        duration,
        messages[0] if messages else "",
        diff,
        [r.name for r in changed if r is not multi[0]],
    )


def fold_step(outcome: HostOutcome, result: MultiResult) -> None:
    """Add one more step's Nornir result to a host's outcome (multi-step phases): a failure
    wins with its message; a change is listed by the step's result."""
    if result.failed:
        exc = next((r.exception for r in result if r.exception), None)
        outcome.status = "failed"
        outcome.message = _first_lines(str(exc or result[0].result))
    elif any(r.changed for r in result):
        if outcome.status != "failed":
            outcome.status = "changed"
        outcome.changes.append(str(result[0].result))


def _first_lines(text: str, n: int = 6) -> str:
    lines = text.strip().splitlines()
    return "\n".join(lines[:n]) + (" …" if len(lines) > n else "")


# --- rendering (rich is imported when something is drawn: `--json` draws nothing) -------------


#: Width assumed when no console is given (a pipe without COLUMNS gets 80 from rich too).
DEFAULT_WIDTH = 80
#: The detail column keeps at least this many characters: multi-word names give way first.
MIN_DETAIL_WIDTH = 20


def fitted_table(title: str, names: Sequence[str], detail: str,
                 rows: Iterable[Sequence[str]], width: int = DEFAULT_WIDTH) -> Table:
    """A table that a person can read at `width` columns: the name columns (a phase, a check, a
    host, a status) never break inside a word — each keeps its full width when it fits, else
    wraps at spaces, never narrower than its longest word — and the last column, the detail,
    takes the rest and folds. (Left to rich, every column shrinks and names break mid-word.)"""
    from rich.cells import cell_len
    from rich.table import Table
    from rich.text import Text

    rows = [list(r) for r in rows]
    plain = [[Text.from_markup(cell).plain for cell in row[:len(names)]] for row in rows]
    full = [max([cell_len(n), *(cell_len(r[i]) for r in plain)]) for i, n in enumerate(names)]
    word = [max(cell_len(w) for text in (n, *(r[i] for r in plain)) for w in text.split() or [""])
            for i, n in enumerate(names)]
    widths = list(full)
    borders = 3 * (len(names) + 1) + 1  # a rule and two spaces of padding per column
    budget = width - borders - MIN_DETAIL_WIDTH
    while sum(widths) > budget:
        shrinkable = [i for i, w in enumerate(widths) if w > word[i]]
        if not shrinkable:
            break
        widths[max(shrinkable, key=lambda i: widths[i])] -= 1
    table = Table(title=title)
    for name, fitted, natural in zip(names, widths, full, strict=True):
        if fitted == natural:
            table.add_column(name, no_wrap=True)
        else:
            table.add_column(name, width=fitted, overflow="fold")  # wraps at spaces only
    table.add_column(detail, overflow="fold")
    for row in rows:
        table.add_row(*row)
    return table


def progress_table(report: RunReport, width: int = DEFAULT_WIDTH) -> Table:
    """Phase × host grid, refreshed live while a deploy runs."""
    rows = []
    for p in report.phases:
        cells = " ".join(f"[{_STYLE[o.status]}]{escape(h)}[/]" for h, o in p.hosts.items())
        rows.append((escape(p.title), f"[{_STYLE[p.status]}]{p.status}[/]",
                     cells or f"[dim]{escape(p.skipped_reason)}[/]"))
    title = f"{report.command} {report.cluster}" + (" (dry run)" if report.dry_run else "")
    return fitted_table(title, ("phase", "status"), "hosts", rows, width)


def summary_table(report: RunReport, width: int = DEFAULT_WIDTH) -> Table:
    """Final table: one row per phase with its host counts and time; problems named."""
    rows = []
    for p in report.phases:
        counts = {s: sum(1 for o in p.hosts.values() if o.status == s)
                  for s in ("ok", "changed", "failed", "skipped")}
        changed = [h for h, o in p.hosts.items() if o.status == "changed"]
        detail = p.skipped_reason or (f"changed: {', '.join(changed)}" if changed else "")
        rows.append((
            escape(p.title), str(counts["ok"]),
            f"[yellow]{counts['changed']}[/]" if counts["changed"] else "0",
            f"[bold red]{counts['failed']}[/]" if counts["failed"] else "0",
            str(counts["skipped"]), f"{p.duration:.1f}s", escape(detail),
        ))
    title = (f"{report.command} {report.cluster}: summary"
             + (" (dry run: nothing written)" if report.dry_run else ""))
    return fitted_table(title, ("phase", "ok", "changed", "failed", "skipped", "time"),
                        "detail", rows, width)


def problems_table(report: RunReport, width: int = DEFAULT_WIDTH) -> Table | None:
    """Every failed host with its reason (and hosts skipped because of it)."""
    rows = [(escape(p.title), escape(h), f"[{_STYLE[o.status]}]{o.status}[/]", escape(o.message))
            for p in report.phases for h, o in p.hosts.items()
            if o.status == "failed" or (o.status == "skipped" and not p.skipped_reason)]
    if not rows:
        return None
    return fitted_table("what went wrong", ("phase", "host", "status"), "reason", rows, width)


def checks_table(report: RunReport, width: int = DEFAULT_WIDTH) -> Table:
    """`check`: one row per check and target, with its status and what was measured."""
    rows = []
    for phase in report.phases:
        for o in phase.hosts.values():
            colour = {"ok": "green", "failed": "bold red"}.get(o.status, "yellow")
            rows.append((escape(phase.title), escape(o.host), f"[{colour}]{o.status}[/]",
                         escape(o.message)))
    return fitted_table(f"check {report.cluster}", ("check", "target", "status"), "detail", rows,
                        width)


def critical_path_table(report: RunReport, width: int = DEFAULT_WIDTH) -> Table | None:
    """The phases that set the wall time, each with its share of it and the host that took
    longest in it; the longest phase in bold. None when the run had no stages."""
    path = critical_path(report)
    if not path:
        return None
    longest = max(path, key=lambda s: s.duration)
    total = report.duration or sum(s.duration for s in path) or 1.0
    rows = []
    for step in path:
        title = f"[bold]{escape(step.title)}[/]" if step is longest else escape(step.title)
        slow = (f"{escape(step.slowest_host)} {step.slowest_host_s:.1f}s"
                if step.slowest_host is not None and step.slowest_host_s is not None else "")
        rows.append((str(step.stage), title,
                     f"{step.duration:.1f}s {100 * step.duration / total:.0f}%", slow))
    on_path = sum(s.duration for s in path)
    return fitted_table(f"critical path: {on_path:.1f}s of {report.duration:.1f}s",
                        ("stage", "phase", "time"), "slowest host", rows, width)


def resources_text(report: RunReport) -> str:
    """"peak 12 SSH connections (15 open, 3 handshakes), 85 MB RSS", or "" when not measured.
    (Reports written before handshakes were counted say no handshakes.)"""
    r = report.resources
    if not r:
        return ""
    shakes = f", {int(r['handshakes'])} handshakes" if "handshakes" in r else ""
    return (f"peak {int(r.get('peak_connections', 0))} SSH connections "
            f"({int(r.get('peak_open_connections', 0))} open{shakes}), "
            f"{r.get('peak_rss_mb', 0):.0f} MB RSS")


def print_summary(report: RunReport, console: Console, *, table: bool = True) -> None:
    if table:
        console.print(summary_table(report, console.width))
        problems = problems_table(report, console.width)
        if problems is not None:
            console.print(problems)
        path = critical_path_table(report, console.width)
        if path is not None:
            console.print(path)
    for p in report.phases:
        for o in p.hosts.values():
            if o.diff and report.dry_run:
                console.rule(f"{p.name} · {o.host}")
                console.print(o.diff, markup=False, highlight=False)
    c = report.counts()
    colour = "red" if report.failed_hosts else "green"
    console.print(
        f"[{colour}]{report.command} {'failed' if report.failed_hosts else 'ok'}[/] in "
        f"{report.duration:.1f}s: {c['ok']} ok, {c['changed']} changed, {c['failed']} failed, "
        f"{c['skipped']} skipped" + (f"; {resources_text(report)}" if report.resources else "")
    )
    if report.failed_hosts:
        console.print(f"[red]failed hosts:[/] {escape(', '.join(report.failed_hosts))}")
    for note in report.notes:
        console.print(note)  # notes are our own markup


class LiveProgress:
    """A rich Live display of `progress_table`, or nothing when output is not a terminal/JSON."""

    def __init__(self, report: RunReport, console: Console, enabled: bool) -> None:
        self.report = report
        from rich.live import Live

        self.enabled = enabled and console.is_terminal
        self._live = Live(
            console=console, refresh_per_second=4, transient=True,
            get_renderable=lambda: progress_table(report, console.width),
        ) if self.enabled else None

    def __enter__(self) -> LiveProgress:
        if self._live:
            self._live.__enter__()
        return self

    def __exit__(self, *exc: object) -> None:
        if self._live:
            self._live.__exit__(None, None, None)
