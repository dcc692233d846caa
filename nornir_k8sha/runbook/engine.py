"""Run a runbook: steady state, then per case the method, rollbacks that always run, the steady
state again, the measurements and a verdict.

Guarantees:
- nothing runs before the runbook and the inventory are known good (loader.check_against), and
  a disruptive runbook runs on a non-lab inventory only with `yes=True` (the lab is the cluster
  named C.LAB_CLUSTER_NAME, i.e. inventory/lab);
- one operation per cluster at a time (runbook/lock.py, shared with deploy);
- rollbacks run after the method whatever happened: a failed step, a step or case running out
  of time, Ctrl-C, or SIGTERM (turned into KeyboardInterrupt while a run is on);
- every step, case and the whole run are bounded in time (a stuck step is abandoned in its
  thread and counts as failed);
- a dry run resolves what it can without touching any host and says what would run;
- steady-state probes with `continuous: N` are also looked at every N s while the method runs
  (a thread of their own, `_Watch`); one that does not hold fails the case, naming it.
"""

from __future__ import annotations

import contextlib
import inspect
import signal
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Protocol

import httpx
from nornir.core import Nornir
from nornir.core.task import Result

from nornir_k8sha import constants as C
from nornir_k8sha.checkresult import CheckResult
from nornir_k8sha.checks.sweep import CheckContext
from nornir_k8sha.clients import error_text
from nornir_k8sha.exceptions import RunbookError
from nornir_k8sha.oplock import operation_lock
from nornir_k8sha.polling import poll
from nornir_k8sha.runbook import assertions, seams, selectors
from nornir_k8sha.runbook.loader import (
    CHECK_PREFIX,
    LoadedRunbook,
    check_against,
    resolve_probe,
    resolve_task,
)
from nornir_k8sha.runbook.model import (
    AnyStep,
    Case,
    LabStep,
    LoadOptions,
    PauseStep,
    ProbeSpec,
    ProbeStep,
    SteadyProbe,
    TaskStep,
    WaitStep,
    step_label,
)
from nornir_k8sha.runbook.results import (
    HAPROXY_DOWN,
    CaseResult,
    Expectation,
    Figures,
    Mark,
    RunbookResult,
    StepResult,
)
from nornir_k8sha.topology import ClusterSpec

#: How often the steady state is polled while waiting for it to come back.
STEADY_POLL_S = 2.0
#: How often the load probe is asked whether the API is back for good.
SETTLE_POLL_S = 0.1
#: How long stopping the load probe may take.
LOAD_STOP_S = 30.0
#: How long the end of a method waits for a continuous probe's look in progress.
WATCH_STOP_S = 2.0


class LoadProbe(Protocol):
    """runbook/load.py's probe as the engine uses it (see the plan)."""

    def start(self) -> None: ...
    def mark(self, label: str, kind: str = "note") -> None: ...
    def stop(self) -> tuple[list[Any], list[Mark]]: ...
    def settled(self) -> bool: ...
    def audit_writes(self, timeout: float = 30.0) -> tuple[int, int]: ...
    def cleanup(self) -> None: ...


@dataclass
class Instruments:
    """The measurement side (runbook/load.py, measure.py, expect.py), injected by the caller
    so the engine runs (and is tested) without it."""

    load_probe: Callable[..., LoadProbe]  # (spec, state_dir, **LoadOptions of the case)
    figures: Callable[..., Figures]  # measure.figures(samples, fault_at=, lifted_at=, ...)
    expectation: Callable[..., Expectation]  # expect.expectation(kind, spec, **params)
    #: measure.shortfalls(expected, figures): what the measurement broke, one line each.
    shortfalls: Callable[[Expectation, Figures], list[str]]


@dataclass
class RunOptions:
    yes: bool = False
    dry_run: bool = False
    cases: list[str] | None = None  # run only these (by name)
    state_dir: Path | None = None
    transport: httpx.BaseTransport | None = None  # HTTP seam of the checks
    instruments: Instruments | None = None
    progress: Callable[[str], None] | None = None  # one line per step
    on_case: Callable[[CaseResult], None] | None = None  # each case as it finishes
    command: str = "runbook"  # what the operation lock says
    #: case name -> seconds: the user's bound instead of the computed one (--bound)
    bounds: dict[str, float] = field(default_factory=dict)


class StepTimeout(Exception):
    pass


def run(loaded: LoadedRunbook, spec: ClusterSpec, nr: Nornir,
        options: RunOptions | None = None) -> RunbookResult:
    """Run (or dry-run) a loaded runbook on a cluster. RunbookError (nothing done) when the
    runbook does not fit the inventory, a case name is unknown, or a disruptive runbook meets
    a non-lab inventory without `yes`; OperationLocked when a deploy holds the cluster."""
    opts = options or RunOptions()
    cases = prepare(loaded, spec, opts)
    result = RunbookResult(loaded.runbook.title, str(loaded.path), spec.name,
                           started_wall=time.time(), dry_run=opts.dry_run)
    start = time.monotonic()
    if opts.dry_run:
        result.cases = [_dry_case(loaded, spec, c, opts) for c in cases]
        return result
    state_dir = opts.state_dir or spec.state_dir
    with operation_lock(state_dir, f"{opts.command} {loaded.path}"), _sigterm_as_interrupt():
        runner = _Runner(loaded, spec, nr, opts, state_dir, start + loaded.runbook.max_time)
        abort = ""
        for case in cases:
            if abort:
                result.cases.append(CaseResult(case.name, case.title or case.name,
                                               verdict="skipped", reason=abort))
                continue
            try:
                cr, abort = runner.case(case)
            except KeyboardInterrupt:  # outside a method: nothing of this case was broken
                runner.interrupted = True
                cr, abort = CaseResult(case.name, case.title or case.name, verdict="error",
                                       reason="interrupted (Ctrl-C / SIGTERM)"), "interrupted"
            result.cases.append(cr)
            result.interrupted = result.interrupted or runner.interrupted
            if opts.on_case:
                opts.on_case(cr)
    result.duration = time.monotonic() - start
    return result


def prepare(loaded: LoadedRunbook, spec: ClusterSpec, opts: RunOptions) -> list[Case]:
    """The cases to run, after every up-front check (RunbookError: nothing may run)."""
    check_against(loaded, spec, set(opts.cases) if opts.cases else None)
    cases = [c for _, c in loaded.cases(spec)]
    if opts.cases:
        unknown = sorted(set(opts.cases) - {c.name for c in cases})
        if unknown:
            raise RunbookError(f"{loaded.path}: no case named {', '.join(unknown)} (cases: "
                               f"{', '.join(c.name for c in cases)})")
        cases = [c for c in cases if c.name in opts.cases]
    unbound = sorted(set(opts.bounds) - {c.name for c in cases})
    if unbound:
        raise RunbookError(f"{loaded.path}: --bound names {', '.join(unbound)}, which is not a "
                           f"case of this run (cases: {', '.join(c.name for c in cases)})")
    if loaded.runbook.disruptive and not spec.is_lab and not opts.yes and not opts.dry_run:
        raise RunbookError(f"{loaded.path}: this runbook breaks things on purpose and cluster "
                           f"{spec.name!r} is not the lab ({C.LAB_CLUSTER_NAME!r}): refused; "
                           "pass --yes to run it anyway")
    return cases


# --- dry run --------------------------------------------------------------------------------


def _dry_case(loaded: LoadedRunbook, spec: ClusterSpec, case: Case,
              opts: RunOptions) -> CaseResult:
    cr = CaseResult(case.name, case.title or case.name, verdict="skipped", reason="dry run")
    for part, steps in (("method", case.method), ("rollbacks", case.rollbacks)):
        out = cr.steps if part == "method" else cr.rollbacks
        for step in steps:
            hosts, message = _dry_hosts(step, spec)
            out.append(StepResult(step_label(step), True, message, hosts=hosts))
            _say(opts, f"{case.name}: {part}: {step_label(step)}: {message}")
    return cr


def _dry_hosts(step: AnyStep, spec: ClusterSpec) -> tuple[list[str], str]:
    selector = getattr(step, "hosts", None)
    if isinstance(step, WaitStep):
        selector = step.wait.hosts
    if selector is None:
        return [], "would run"
    static = selectors.static_hosts(selectors.parse(selector), spec)
    if static is None:
        return [], f"would run on {selector} (resolved at run time)"
    pick = getattr(step, "pick", "all")
    if pick == "any":
        return static, f"would run on one of {', '.join(static)}"
    picked = selectors.narrow(static, pick)
    return picked, f"would run on {', '.join(picked)}"


# --- running ----------------------------------------------------------------------------------


@contextlib.contextmanager
def _sigterm_as_interrupt() -> Iterator[None]:
    """SIGTERM raises KeyboardInterrupt in the main thread, so rollbacks run on it too."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def handler(signum: int, frame: Any) -> None:
        raise KeyboardInterrupt(f"signal {signum}")

    previous = signal.signal(signal.SIGTERM, handler)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


def bounded(fn: Callable[[], Any], timeout: float, label: str) -> Any:
    """fn() in a daemon thread, at most `timeout` s (then StepTimeout; the thread is left to
    finish on its own). The wait stays interruptible by Ctrl-C."""
    box: dict[str, Any] = {}

    def target() -> None:
        try:
            box["value"] = fn()
        except BaseException as exc:  # noqa: BLE001 - handed to the caller's thread
            box["error"] = exc

    thread = threading.Thread(target=target, name=f"runbook {label}", daemon=True)
    thread.start()
    deadline = time.monotonic() + max(timeout, 0.0)
    while thread.is_alive():
        left = deadline - time.monotonic()
        if left <= 0:
            raise StepTimeout(f"{label}: no answer within {timeout:g}s")
        thread.join(min(left, 0.2))
    if "error" in box:
        raise box["error"]
    return box.get("value")


def with_bound(exp: Expectation, seconds: float) -> Expectation:
    """The user's bound (--bound CASE=SECONDS) instead of the computed one: for the downtime,
    and for the takeover where the case bounds one (apiserver, lease). ValueError for a case
    that expects an outage: it has no downtime bound to set."""
    if not exp.api_must_serve or exp.downtime_s is None:
        raise ValueError("--bound: this case expects an outage (no downtime bound to set): "
                         f"{exp.explanation}")
    return replace(exp, downtime_s=seconds,
                   takeover_s=None if exp.takeover_s is None else seconds,
                   explanation=f"bound set to {seconds:g} s by --bound; computed from the "
                               f"configuration: {exp.explanation}")


def _say(opts: RunOptions, text: str) -> None:
    if opts.progress:
        opts.progress(text)


@dataclass
class _Runner:
    loaded: LoadedRunbook
    spec: ClusterSpec
    nr: Nornir
    opts: RunOptions
    state_dir: Path
    deadline: float  # the whole run's
    interrupted: bool = False
    # per case:
    fault_hosts: list[str] = field(default_factory=list)
    marks: list[Mark] = field(default_factory=list)
    load: LoadProbe | None = None
    holders: dict[str, tuple[str, ...]] = field(default_factory=dict)
    observing: threading.Lock = field(default_factory=threading.Lock)

    @property
    def cx(self) -> CheckContext:
        return CheckContext(self.spec, self.nr, self.state_dir, self.opts.transport)

    def resolver(self) -> selectors.Resolver:
        return selectors.Resolver(self.cx, self.fault_hosts, observe=self._observe)

    # -- one case --
    def case(self, case: Case) -> tuple[CaseResult, str]:
        """Run one case; returns its result and, when later cases must not run, why."""
        self.fault_hosts, self.marks, self.load, self.holders = [], [], None, {}
        cr = CaseResult(case.name, case.title or case.name, started=time.monotonic())
        say = lambda text: _say(self.opts, f"{case.name}: {text}")  # noqa: E731
        if time.monotonic() >= self.deadline:
            cr.verdict, cr.reason = "skipped", "the runbook's max_time is spent"
            return cr, cr.reason
        say("steady state before")
        ok, cr.steady_before, why = self.steady()
        if not ok:
            cr.verdict = "error"
            cr.reason = f"steady state does not hold before the case: {why}"
            cr.duration = time.monotonic() - cr.started
            return cr, f"steady state broken before case {case.name}"
        instruments = self.opts.instruments
        try:
            # a case's own probe options reach its bound too (a hung request's timeout)
            probe = case.load.model_dump() if isinstance(case.load, LoadOptions) else {}
            if instruments is not None:
                cr.expectation = instruments.expectation(case.expect.kind, self.spec,
                                                         **case.expect.params, **probe)
                if case.name in self.opts.bounds:
                    cr.expectation = with_bound(cr.expectation, self.opts.bounds[case.name])
            if instruments is not None and case.load:
                self.load = instruments.load_probe(self.spec, self.state_dir, **probe)
                self.load.start()
        except Exception as exc:  # noqa: BLE001 - nothing was broken yet: an error, not a crash
            cr.verdict, cr.reason = "error", f"cannot prepare the case: {error_text(exc)}"
            self._stop_load(cr)
            return cr, ""
        case_deadline = min(time.monotonic() + case.max_time, self.deadline)
        failure = ""
        watch = _Watch(self, [p for p in self.loaded.runbook.steady_state if p.continuous],
                       cr.started)
        try:
            watch.start()
            for step in case.method:
                say(step_label(step))
                sr = self.step(step, case_deadline)
                cr.steps.append(sr)
                if not sr.ok and getattr(step, "optional", False):
                    sr.data["optional"] = True
                    sr.message = f"{sr.message} (optional: going on)"
                elif not sr.ok:
                    failure = f"step {sr.name!r} failed: {sr.message}"
                    break
        except KeyboardInterrupt:
            self.interrupted = True
            failure = "interrupted (Ctrl-C / SIGTERM)"
            cr.steps.append(StepResult("interrupted", False, failure))
        finally:
            watch.stop()
            self.rollbacks(case, cr, say)
        problems = [failure] if failure else []
        cr.deviations = watch.lines()
        problems += watch.problems()
        problems += [f"rollback {r.name!r} failed: {r.message}" for r in cr.rollbacks
                     if not r.ok]
        try:
            say("waiting for the steady state")
            deadline = time.monotonic() + self.loaded.runbook.recovery_max_time
            back, cr.steady_after, why = self.await_steady(deadline)
            if back:
                self.mark("steady state holds again", "steady")
                if not self._await_settled(deadline):
                    problems.append("the load probe still saw requests fail when the "
                                    f"recovery time ({self.loaded.runbook.recovery_max_time:g}"
                                    "s) ran out")
            else:
                problems.append(f"steady state did not return within "
                                f"{self.loaded.runbook.recovery_max_time:g}s: {why}")
            self._stop_load(cr, measure=not self.interrupted)
            if not back and cr.figures is not None:
                cr.figures.recover_s = None  # recovery includes the steady state
        except KeyboardInterrupt:
            self.interrupted = True
            problems.append("interrupted while waiting for the steady state")
        finally:
            self._stop_load(cr)
        if instruments is not None and cr.expectation is not None and cr.figures is not None:
            problems += instruments.shortfalls(cr.expectation, cr.figures)
        cr.verdict = "error" if self.interrupted else ("failed" if problems else "passed")
        cr.reason = "; ".join(problems)
        cr.duration = time.monotonic() - cr.started
        say(f"{cr.verdict}{': ' + cr.reason if cr.reason else ''}")
        return cr, ("interrupted" if self.interrupted else "")

    def rollbacks(self, case: Case, cr: CaseResult, say: Callable[[str], None]) -> None:
        """Every rollback step, each bounded by its own time, whatever happened before."""
        for step in case.rollbacks:
            say(f"rollback: {step_label(step)}")
            try:
                sr = self.step(step, time.monotonic() + _step_budget(step))
            except KeyboardInterrupt:
                self.interrupted = True
                sr = StepResult(step_label(step), False, "interrupted; going on with the "
                                "remaining rollbacks")
            cr.rollbacks.append(sr)

    def _stop_load(self, cr: CaseResult, *, measure: bool = False) -> None:
        load, self.load = self.load, None
        if load is None:
            cr.marks = cr.marks or list(self.marks)
            return
        cr.marks = list(self.marks)
        try:
            samples, marks = bounded(load.stop, LOAD_STOP_S, "load probe stop")
            cr.samples, cr.marks = list(samples), sorted([*marks, *self.marks],
                                                         key=lambda m: m.at)
            if measure and self.opts.instruments is not None:
                acked, lost = load.audit_writes()
                cr.figures = self.opts.instruments.figures(
                    cr.samples, fault_at=_first(cr.marks, "fault"),
                    lifted_at=_first(cr.marks, "lift"), acknowledged=acked, lost=lost,
                    marks=cr.marks,
                    takeover_of=cr.expectation.takeover_of if cr.expectation else "",
                    partial=cr.expectation.partial_outage if cr.expectation else False)
        finally:
            with contextlib.suppress(Exception):
                load.cleanup()

    # -- steady state --
    def steady(self) -> tuple[bool, list[CheckResult], str]:
        results: list[CheckResult] = []
        problems = []
        for probe in self.loaded.runbook.steady_state:
            ok, why, found = self.probe(probe, time.monotonic() + probe.timeout)
            results += found
            if not ok:
                problems.append(f"{probe.name or probe.probe}: {why}")
        return not problems, results, "; ".join(problems)

    def await_steady(self, deadline: float) -> tuple[bool, list[CheckResult], str]:
        while True:
            ok, results, why = self.steady()
            if ok or time.monotonic() + STEADY_POLL_S > deadline:
                return ok, results, why
            time.sleep(STEADY_POLL_S)

    def _await_settled(self, deadline: float) -> bool:
        """Keep the load probe running until the API is back for good (LoadProbe.settled), at
        most until `deadline`. Why: the steady state can hold again while the lift's own
        disruption is still under way (a thawed VRRP master taking its VIP back); a probe
        stopped inside it would measure an outage that never ended."""
        if self.load is None:
            return True
        return poll(self.load.settled, bool, timeout=max(0.0, deadline - time.monotonic()),
                    interval=SETTLE_POLL_S)

    # -- steps --
    def step(self, step: AnyStep, deadline: float) -> StepResult:
        label = step_label(step)
        start = time.monotonic()
        try:
            sr = self._step(step, label, deadline)
        except StepTimeout as exc:
            sr = StepResult(label, False, f"timed out: {exc}")
        except selectors.SelectorError as exc:
            sr = StepResult(label, False, str(exc))
        except Exception as exc:  # noqa: BLE001 - a broken step fails, the run goes on
            sr = StepResult(label, False, f"{type(exc).__name__}: {error_text(exc)}")
        sr.duration = time.monotonic() - start
        return sr

    def _step(self, step: AnyStep, label: str, deadline: float) -> StepResult:
        left = deadline - time.monotonic()
        if left <= 0:
            raise StepTimeout("the case's max_time is spent")
        if isinstance(step, PauseStep):
            _sleep(min(step.pause, left))
            if step.pause > left:
                raise StepTimeout("the case's max_time is spent")
            return StepResult(label, True, f"paused {step.pause:g}s")
        if isinstance(step, WaitStep):
            return self._wait(step, label, deadline)
        if isinstance(step, ProbeStep):
            ok, why, found = self.probe(step, min(deadline, time.monotonic() + step.timeout))
            return StepResult(label, ok, why, data={"results": [r.as_dict() for r in found]})
        assert isinstance(step, TaskStep | LabStep)
        if not self.fault_hosts and all(t.kind == "fault" for t in selectors.parse(step.hosts)):
            return StepResult(label, True, "nothing to undo: no fault step ran")
        hosts = bounded(lambda: self.resolver().resolve(step.hosts, step.pick),
                        min(left, step.timeout), f"{label}: selector")
        timeout = min(deadline - time.monotonic(), step.timeout)
        if step.fault:
            self.fault_hosts[:] = [h for h in hosts]
            self.mark(f"fault: {label} on {', '.join(hosts)}", "fault")
        if step.lift:  # when the undo begins: recovery counts what the undo itself takes
            self.mark(f"lifted: {label}", "lift")
        if isinstance(step, LabStep):
            text = bounded(lambda: seams.apply(step.lab, self.spec, hosts, **step.args),
                           timeout, label)
            sr = StepResult(label, True, str(text), hosts=hosts)
        else:
            sr = self._task(step, label, hosts, timeout)
        if step.fault and sr.ok:  # done on every host: from now on the fault surely holds
            self.mark(f"fault in effect: {label}", "applied")
        return sr

    def _task(self, step: TaskStep, label: str, hosts: list[str], timeout: float) -> StepResult:
        fn = resolve_task(step.task)
        args = self._args(step.args)
        results = bounded(lambda: self.run_task(fn, hosts, args), timeout, label)
        failed = [f"{n}: {_result_error(r)}" for n, r in results.items() if r.failed]
        if failed:
            return StepResult(label, False, "; ".join(failed), hosts=hosts)
        targets = [assertions.task_target(n, r) for n, r in results.items()]
        ok, why = assertions.expectations(step.expect, targets, self.tokens())
        said = "; ".join(f"{n}: {r.result}" for n, r in results.items()
                         if isinstance(r.result, str) and r.result)
        return StepResult(label, ok, why or said, hosts=hosts,
                          data={"changed": any(r.changed for r in results.values())})

    def _wait(self, step: WaitStep, label: str, deadline: float) -> StepResult:
        w = step.wait
        end = min(deadline, time.monotonic() + w.max_time)
        probe = w if w.holds is None else w.model_copy(update={"tolerance": w.holds})
        attempts, why = 0, ""
        while True:
            attempts += 1
            ok, why, found = self.probe(probe, min(end, time.monotonic() + w.timeout))
            if ok:
                return StepResult(label, True, f"held after {attempts} attempt(s)",
                                  data={"attempts": attempts})
            if time.monotonic() + w.check_interval > end:
                return StepResult(label, False, f"did not hold within {w.max_time:g}s "
                                  f"({attempts} attempts): {why}", data={"attempts": attempts})
            _sleep(w.check_interval)

    # -- probes --
    def probe(self, probe: ProbeSpec, deadline: float) -> tuple[bool, str, list[CheckResult]]:
        """Run a probe (bounded) and judge it: (holds, why not, the results)."""
        left = deadline - time.monotonic()
        try:
            found = bounded(lambda: self._probe_results(probe), max(left, 0.0),
                            probe.name or probe.probe)
        except StepTimeout as exc:
            return False, str(exc), []
        except selectors.SelectorError as exc:
            return False, str(exc), []
        except Exception as exc:  # noqa: BLE001 - a probe that breaks does not hold
            return False, f"{type(exc).__name__}: {error_text(exc)}", []
        ok, why = assertions.tolerates(probe.tolerance, found)
        if ok:
            ok, why = assertions.expectations(probe.expect, found, self.tokens())
        return ok, why, found

    def _probe_results(self, probe: ProbeSpec) -> list[CheckResult]:
        fn = resolve_probe(probe.probe)
        hosts = (self.resolver().resolve(probe.hosts, probe.pick)
                 if probe.hosts is not None else None)
        if probe.probe.startswith(CHECK_PREFIX):
            found = fn(self.cx)
            self._observe_row(probe.probe[len(CHECK_PREFIX):], found)
            return [r for r in found if (hosts is None or r.target in hosts)
                    and (probe.targets is None or r.target in probe.targets)]
        if hosts is None:
            raise selectors.SelectorError(f"probe {probe.probe}: give `hosts`")
        results = self.run_task(fn, hosts, self._args(probe.args))
        return [assertions.as_check(n, r) for n, r in results.items()]

    # -- plumbing --
    def run_task(self, fn: Callable[..., Any], hosts: list[str],
                 args: dict[str, Any]) -> dict[str, Result]:
        """A Nornir task on these hosts (in parallel); host -> its first Result. Hosts it
        fails are not left marked failed in Nornir (a runbook step is not a deploy)."""
        wanted = set(hosts)
        before = set(self.nr.data.failed_hosts)
        kwargs = {**_implicit(fn, self.spec, self.state_dir, self.opts.transport), **args}
        agg = self.nr.filter(filter_func=lambda h: h.name in wanted).run(
            task=fn, on_failed=True, **kwargs)
        for name in wanted - before:
            self.nr.data.failed_hosts.discard(name)
        return {n: agg[n][0] for n in hosts if n in agg}

    def _args(self, args: dict[str, Any]) -> dict[str, Any]:
        """`{select: <selector>, as: name|address}` values become lists of hosts now."""
        out = {}
        for key, value in args.items():
            if isinstance(value, dict) and "select" in value and set(value) <= {"select", "as"}:
                names = self.resolver().resolve(str(value["select"]))
                value = ([str(self.spec.host(n).address) for n in names]
                         if value.get("as") == "address" else names)
            out[key] = value
        return out

    def tokens(self) -> dict[str, str]:
        if not self.fault_hosts:
            return {}
        first = self.fault_hosts[0]
        return {f"{selectors.FAULT}.address": str(self.spec.host(first).address),
                selectors.FAULT: first}

    def mark(self, label: str, kind: str) -> None:
        if self.load is not None:
            self.load.mark(label, kind)
        else:
            self.marks.append(Mark(time.monotonic(), label, kind))  # type: ignore[arg-type]

    def _observe(self, term: str, hosts: list[str]) -> None:
        """A holder (VIP, etcd leader, lease) seen now: a "holder" mark when it changed.
        Continuous steady-state probes observe from their own thread: one at a time."""
        now = tuple(hosts)
        with self.observing:
            before = self.holders.get(term)
            if before is not None and now != before:
                self.mark(f"{term}: {', '.join(now) or 'none'}", "holder")
            self.holders[term] = now

    def _observe_row(self, row: str, found: list[CheckResult]) -> None:
        if row == "vip":
            self._observe("vip-holder", [r.target for r in found if r.values.get("holds_vip")])
        elif row == "etcd":
            self._observe("etcd-leader", [r.target for r in found if r.values.get("is_leader")])
        elif row == "haproxy":  # the backends any HAProxy has DOWN: a takeout is a change
            self._observe(HAPROXY_DOWN, sorted({d for r in found
                                                for d in r.values.get("down", [])}))
        elif row == "leases":
            for r in found:
                if "holder" in r.values:
                    self._observe(f"lease-holder:{r.target}",
                                  selectors.holder_hosts(self.spec, r.values["holder"]))


class _Watch:
    """The steady-state probes with `continuous: N`, each looked at every N s in a daemon
    thread while a case's method runs. What did not hold is kept and marked on the timeline
    ("deviation"); a look still running when the method ends is not counted (the rollbacks
    may be what it sees)."""

    def __init__(self, runner: _Runner, probes: list[SteadyProbe], origin: float) -> None:
        self.runner, self.probes, self.origin = runner, probes, origin
        self.looks = [0] * len(probes)
        self.missed: list[tuple[int, float, str]] = []  # (probe index, seconds, why)
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, daemon=True,
                                        name="runbook continuous steady state")

    def start(self) -> None:
        if self.probes:
            self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join(WATCH_STOP_S)

    def _loop(self) -> None:
        due = [time.monotonic()] * len(self.probes)
        while not self._stop.is_set():
            for i, probe in enumerate(self.probes):
                now = time.monotonic()
                if now < due[i] or self._stop.is_set():
                    continue
                due[i] = now + (probe.continuous or 1.0)
                ok, why, _ = self.runner.probe(probe, now + probe.timeout)
                with self._lock:
                    if self._stop.is_set():
                        return
                    self.looks[i] += 1
                    if not ok:
                        self.missed.append((i, now - self.origin, why))
                if not ok:
                    self.runner.mark(f"steady state deviated: {_probe_name(probe)}",
                                     "deviation")
            self._stop.wait(max(0.0, min(due) - time.monotonic()))

    def lines(self) -> list[str]:
        with self._lock:
            return [f"+{t:.1f} s {_probe_name(self.probes[i])}: {why}"
                    for i, t, why in self.missed]

    def problems(self) -> list[str]:
        """One sentence per continuous probe that did not hold, naming it."""
        with self._lock:
            out = []
            for i, probe in enumerate(self.probes):
                mine = [(t, why) for j, t, why in self.missed if j == i]
                if mine:
                    out.append(f"steady-state probe {_probe_name(probe)} did not hold during "
                               f"the method ({len(mine)} of {self.looks[i]} looks; first at "
                               f"+{mine[0][0]:.1f} s: {mine[0][1]})")
            return out


def _probe_name(probe: ProbeSpec) -> str:
    return probe.name or probe.probe + (f" on {probe.hosts}" if probe.hosts else "")


def _result_error(r: Result) -> str:
    if r.exception is not None:
        return f"{type(r.exception).__name__}: {error_text(r.exception)}"
    return str(r.result)[:300]


def _implicit(fn: Callable[..., Any], spec: ClusterSpec, state_dir: Path,
              transport: httpx.BaseTransport | None) -> dict[str, Any]:
    """spec / state_dir / transport for the tasks that take them."""
    params = inspect.signature(fn).parameters
    have = {"spec": spec, "state_dir": state_dir, "transport": transport}
    return {k: v for k, v in have.items() if k in params and (k != "transport" or v)}


def _first(marks: list[Mark], kind: str) -> float | None:
    return next((m.at for m in marks if m.kind == kind), None)


def _step_budget(step: AnyStep) -> float:
    if isinstance(step, WaitStep):
        return step.wait.max_time + step.wait.timeout
    if isinstance(step, PauseStep):
        return step.pause + 1.0
    return step.timeout


def _sleep(seconds: float) -> None:
    end = time.monotonic() + seconds
    while (left := end - time.monotonic()) > 0:
        time.sleep(min(left, 0.2))
