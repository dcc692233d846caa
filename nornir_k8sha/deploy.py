"""A deploy as data: stages of small named phases (DESIGN.md 4, k0sctl's phase list).

Phases in one stage run at the same time (e.g. `lb`, `etcd` and `network`); inside a phase
Nornir runs the phase's task on all its hosts in parallel. Stages wait for each other. A host that
failed is skipped by every later phase with the reason; a phase whose dependency failed
everywhere is skipped. A re-run resumes because every task is idempotent.

A phase is anything with the `Phase` protocol; most are `NornirPhase`s: a title, the roles they
touch and one Nornir task. A phase may also have `prepare(ctx)`: it starts with the run, beside
the earlier stages, and the phase's `run` waits for it; it opens what the phase will need (the
switches' sessions, a ~0.5 s login each) and changes nothing, so a failure in it is only
logged: `run` meets the same problem again and reports it.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar, Protocol

import httpx
from nornir.core import Nornir
from nornir.core.task import AggregatedResult, Result, Task

from nornir_k8sha import budget
from nornir_k8sha.report import HostOutcome, RunReport, outcomes_from_nornir
from nornir_k8sha.topology import ClusterSpec, hosts_in_roles

log = logging.getLogger(__name__)

LOCAL = "local"
"""Pseudo host for phases that run on this machine (pki)."""


@dataclass
class DeployContext:
    """Everything a phase may read; `shared` carries data from one phase to a later one."""

    spec: ClusterSpec
    nr: Nornir
    report: RunReport
    dry_run: bool = False
    limit: frozenset[str] | None = None
    state_dir: Path = Path()
    #: Where the deploy's own HTTP calls go (registry push, the waits for etcd, the API and
    #: the nodes, the post-checks): None for the network, httpx.MockTransport in tests.
    http: httpx.BaseTransport | None = None
    shared: dict[str, Any] = field(default_factory=dict)
    lock: threading.Lock = field(default_factory=threading.Lock)

    def hosts_for(self, roles: Sequence[str]) -> list[str]:
        names = [h.name for h in hosts_in_roles(self.spec, roles)]
        if self.limit is not None:
            names = [n for n in names if n in self.limit]
        return names


class Phase(Protocol):
    """The contract of a phase: a name, a title, dependencies, and a run that reports per host."""

    name: str
    title: str
    depends_on: tuple[str, ...]

    def hosts(self, ctx: DeployContext) -> list[str]: ...

    def should_run(self, ctx: DeployContext) -> str | None:
        """None to run, or the reason to skip the whole phase."""

    def run(self, ctx: DeployContext, hosts: list[str]) -> list[HostOutcome]: ...


class NornirPhase:
    """A phase that runs one Nornir task on the hosts of some roles.

    Subclasses set `name`, `title`, `roles` and implement `task(task, ctx)`.
    """

    name: ClassVar[str]
    title: ClassVar[str]
    roles: ClassVar[tuple[str, ...]]
    depends_on: ClassVar[tuple[str, ...]] = ()

    def hosts(self, ctx: DeployContext) -> list[str]:
        return ctx.hosts_for(self.roles)

    def should_run(self, ctx: DeployContext) -> str | None:
        return None

    def task(self, task: Task, ctx: DeployContext) -> Result:
        raise NotImplementedError

    def run(self, ctx: DeployContext, hosts: list[str]) -> list[HostOutcome]:
        """One task on all hosts at once. Multi-step phases override this and call `run_task`
        per step."""
        durations: dict[str, float] = {}

        def timed(task: Task) -> Result:
            start = time.monotonic()
            try:
                return self.task(task, ctx)
            finally:
                durations[task.host.name] = time.monotonic() - start

        return outcomes_from_nornir(run_task(ctx, hosts, timed, self.name), durations)


def run_task(ctx: DeployContext, hosts: list[str], fn: Callable[..., Result], name: str,
             **kwargs: Any) -> AggregatedResult:
    """Run `fn` on `hosts` in parallel (a step inside a multi-step phase)."""
    wanted = set(hosts)
    nr = ctx.nr.filter(filter_func=lambda h: h.name in wanted)
    return nr.run(task=fn, name=name, on_failed=True, **kwargs)


class LocalPhase:
    """A phase that runs on this machine only (reported under the host `local`)."""

    name: ClassVar[str]
    title: ClassVar[str]
    depends_on: ClassVar[tuple[str, ...]] = ()

    def hosts(self, ctx: DeployContext) -> list[str]:
        return [LOCAL]

    def should_run(self, ctx: DeployContext) -> str | None:
        return None

    def local(self, ctx: DeployContext) -> HostOutcome:
        raise NotImplementedError

    def run(self, ctx: DeployContext, hosts: list[str]) -> list[HostOutcome]:
        start = time.monotonic()
        try:
            outcome = self.local(ctx)
        except Exception as exc:  # a failed local phase is a failed host "local"
            outcome = HostOutcome(LOCAL, "failed", message=f"{type(exc).__name__}: {exc}")
        outcome.duration = time.monotonic() - start
        return [outcome]


Stage = Sequence[Phase]
ProgressHook = Callable[[RunReport], None]


def run_stages(ctx: DeployContext, stages: Sequence[Stage], *, only: set[str] | None = None
               ) -> RunReport:
    """Run stages in order, phases of a stage concurrently; fold everything into ctx.report."""
    started = time.monotonic()
    ctx.nr.data.dry_run = ctx.dry_run  # tasks read it through task.is_dry_run()
    ctx.report.dry_run = ctx.dry_run
    selected = [[p for p in stage if only is None or p.name in only] for stage in stages]
    early = [p for stage in selected for p in stage if hasattr(p, "prepare")]
    with budget.measured(ctx.nr, ctx.spec.settings.ssh.max_connections) as resources, \
            ThreadPoolExecutor(max_workers=len(early) or 1) as preparing:
        prepared = {p.name: preparing.submit(_prepare, ctx, p) for p in early}
        for number, phases in enumerate(selected, 1):
            if not phases:
                continue
            with ThreadPoolExecutor(max_workers=len(phases)) as pool:
                for future in [pool.submit(_run_phase, ctx, p, number, started,
                                           prepared.get(p.name)) for p in phases]:
                    future.result()
    ctx.report.duration = time.monotonic() - started
    ctx.report.resources = resources
    return ctx.report


def _earlier_failures(ctx: DeployContext, phase: Phase) -> dict[str, str]:
    """host → the earlier phase it failed in (only phases already finished)."""
    failed: dict[str, str] = {}
    for p in list(ctx.report.phases):
        if p.name == phase.name or p.status == "running":
            continue
        for h in p.failed_hosts:
            failed.setdefault(h, p.name)
    return failed


def _dependency_problem(ctx: DeployContext, phase: Phase) -> str | None:
    done = {p.name: p for p in ctx.report.phases}
    for dep in phase.depends_on:
        report = done.get(dep)
        if report is None:
            continue  # not part of this run (--phase): assume it was done before
        if report.skipped_reason:
            return f"'{dep}' was skipped"
        if report.hosts and all(o.status in ("failed", "skipped") for o in report.hosts.values()):
            return f"'{dep}' failed on every host"
    return None


def _prepare(ctx: DeployContext, phase: Any) -> None:
    try:
        phase.prepare(ctx)
    except Exception:  # noqa: BLE001 - its `run` meets the problem again and reports it
        log.debug("%s: prepare failed", phase.name, exc_info=True)


def _run_phase(ctx: DeployContext, phase: Phase, stage: int, run_started: float,
               prepared: Future[None] | None = None) -> None:
    hosts = phase.hosts(ctx)
    report = ctx.report.add_phase(phase.name, phase.title, hosts)
    start = time.monotonic()
    report.stage, report.started = stage, start - run_started
    reason = _dependency_problem(ctx, phase) or phase.should_run(ctx)
    if reason is None and not hosts and not getattr(phase, "runs_without_hosts", False):
        reason = "no hosts"
    if reason is not None:
        report.skipped_reason = reason
        for h in hosts:
            ctx.report.set(phase.name, HostOutcome(h, "skipped", message=reason))
        return
    failed_before = _earlier_failures(ctx, phase)
    runnable = []
    for h in hosts:
        if h in failed_before:
            ctx.report.set(phase.name, HostOutcome(
                h, "skipped", message=f"failed earlier in '{failed_before[h]}'"))
        else:
            runnable.append(h)
            ctx.report.set(phase.name, HostOutcome(h, "running"))
    if runnable or getattr(phase, "runs_without_hosts", False):
        if prepared is not None:
            prepared.result()  # what it opened is ready (it never raises: see _prepare)
        try:
            outcomes = phase.run(ctx, runnable)
        except Exception as exc:  # a phase that breaks fails its hosts, never the whole run
            outcomes = [HostOutcome(h, "failed", message=f"{type(exc).__name__}: {exc}")
                        for h in runnable]
        for outcome in outcomes:
            ctx.report.set(phase.name, outcome)
    report.duration = time.monotonic() - start
