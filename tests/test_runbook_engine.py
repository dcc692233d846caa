"""The runbook engine on the fake fleet: rollbacks always run (failed step, timeout, Ctrl-C,
SIGTERM), a non-lab inventory is refused without --yes, a dry run touches nothing, waits poll
until the probe holds, the operation lock keeps a second operation out, and the measurement
side (a fake of runbook/load.py, measure.py, expect.py) decides the verdict."""

from __future__ import annotations

import os
import signal
import textwrap
import threading
import time
from pathlib import Path
from typing import Any

import httpx
import pytest
from nornir.core.task import Result, Task

from nornir_k8sha.checkresult import CheckResult
from nornir_k8sha.exceptions import OperationLocked, RunbookError
from nornir_k8sha.inventory import open_nornir
from nornir_k8sha.oplock import operation_lock
from nornir_k8sha.runbook import engine, loader
from nornir_k8sha.runbook.engine import Instruments, RunOptions
from nornir_k8sha.runbook.results import Expectation, Figures, Mark
from nornir_k8sha.testing import FakeFleet, install_fake
from nornir_k8sha.topology import load_cluster_spec

from .conftest import LAB_INVENTORY

HERE = "tests.test_runbook_engine"
#: What the test probes answer, per host (missing: ok).
HEALTH: dict[str, str] = {}
RELEASE = threading.Event()
COUNT = {"probe": 0}


def healthy(task: Task, spec: Any = None) -> Result:
    """A probe task: ok unless HEALTH says otherwise for this host."""
    COUNT["probe"] += 1
    status = HEALTH.get(task.host.name, "ok")
    res = CheckResult(task.host.name, status, status, {"n": COUNT["probe"]})  # type: ignore[arg-type]
    return Result(host=task.host, result=res, failed=status == "failed")


def boom(task: Task) -> Result:
    raise RuntimeError("the step broke")


def hang(task: Task) -> Result:
    RELEASE.wait(10)
    return Result(host=task.host, result="late")


def interrupt(task: Task) -> Result:
    raise KeyboardInterrupt


def sigterm(task: Task) -> Result:
    os.kill(os.getpid(), signal.SIGTERM)
    RELEASE.wait(5)
    return Result(host=task.host, result="terminated")


@pytest.fixture(autouse=True)
def _reset() -> Any:
    HEALTH.clear()
    COUNT["probe"] = 0
    RELEASE.clear()
    yield
    RELEASE.set()


@pytest.fixture
def spec():  # noqa: ANN201
    return load_cluster_spec(LAB_INVENTORY)


@pytest.fixture
def nr():  # noqa: ANN201
    return open_nornir(LAB_INVENTORY)


@pytest.fixture
def fleet(nr) -> FakeFleet:  # noqa: ANN001
    return install_fake(nr, FakeFleet())


def _runbook(tmp_path: Path, middle: str, *, extra: str = "", steady: bool = True) -> Any:
    """Two cases: `first` stops haproxy on haproxy1 (the fault), runs `middle`, and its
    rollback starts haproxy again; `second` only stops keepalived on lvs1."""
    probe = (f"steady_state:\n  - probe: {HERE}:healthy\n    hosts: role:haproxy\n"
             if steady else "")
    text = (
        "title: engine test\nrecovery_max_time: 3\n" + probe
        + "cases:\n"
        "  - name: first\n"
        "    method:\n"
        "      - task: faults.stop_service\n"
        "        hosts: name:haproxy1\n"
        "        args: {unit: haproxy}\n"
        "        fault: true\n"
        + textwrap.indent(middle, "      ") + "\n"
        "    rollbacks:\n"
        "      - task: faults.start_service\n"
        '        hosts: "@fault"\n'
        "        args: {unit: haproxy}\n"
        "        lift: true\n"
        + (textwrap.indent(extra, "    ") + "\n" if extra else "")
        + "  - name: second\n"
        "    method:\n"
        "      - task: faults.stop_service\n"
        "        hosts: lvs1\n"
        "        args: {unit: keepalived}\n")
    path = tmp_path / "rb.yaml"
    path.write_text(text)
    return loader.load(path)


def _opts(tmp_path: Path, **kw: Any) -> RunOptions:
    return RunOptions(state_dir=tmp_path / "state", **kw)


def test_a_passing_run_runs_method_then_rollbacks(tmp_path, spec, nr, fleet) -> None:
    loaded = _runbook(tmp_path, "- pause: 0.01")
    progress: list[str] = []
    result = engine.run(loaded, spec, nr, _opts(tmp_path, progress=progress.append))
    assert [c.verdict for c in result.cases] == ["passed", "passed"]
    assert fleet.host("haproxy1").commands() == ["systemctl stop haproxy",
                                                 "systemctl start haproxy"]
    first = result.cases[0]
    assert first.steps[0].hosts == ["haproxy1"] and first.rollbacks[0].hosts == ["haproxy1"]
    assert [m.kind for m in first.marks] == ["fault", "applied", "lift", "steady"]
    assert len(first.steady_before) == 2 and len(first.steady_after) == 2
    assert any("first: rollback: task faults.start_service" in p for p in progress)
    assert result.passed


def test_rollbacks_run_when_a_step_fails(tmp_path, spec, nr, fleet) -> None:
    loaded = _runbook(tmp_path, f"- task: {HERE}:boom\n  hosts: haproxy1\n- pause: 5")
    result = engine.run(loaded, spec, nr, _opts(tmp_path))
    first = result.cases[0]
    assert first.verdict == "failed" and "the step broke" in first.reason
    assert len(first.steps) == 2  # the pause after the failed step never ran
    assert fleet.host("haproxy1").commands() == ["systemctl stop haproxy",
                                                 "systemctl start haproxy"]
    assert result.cases[1].verdict == "passed"  # the next case still runs
    assert not result.passed
    assert "haproxy1" not in nr.data.failed_hosts


def test_rollbacks_run_when_a_step_times_out(tmp_path, spec, nr, fleet) -> None:
    loaded = _runbook(tmp_path, f"- task: {HERE}:hang\n  hosts: haproxy1\n  timeout: 0.3")
    result = engine.run(loaded, spec, nr, _opts(tmp_path))
    first = result.cases[0]
    assert first.verdict == "failed" and "timed out" in first.reason
    assert fleet.host("haproxy1").commands()[-1] == "systemctl start haproxy"


def test_rollbacks_run_when_the_case_runs_out_of_time(tmp_path, spec, nr, fleet) -> None:
    loaded = _runbook(tmp_path, "- pause: 0.2\n- pause: 5", extra="max_time: 0.5")
    result = engine.run(loaded, spec, nr, _opts(tmp_path))
    assert result.cases[0].verdict == "failed"
    assert "max_time is spent" in result.cases[0].reason
    assert fleet.host("haproxy1").commands()[-1] == "systemctl start haproxy"


@pytest.mark.parametrize("task", ["interrupt", "sigterm"])
def test_rollbacks_run_on_ctrl_c_and_sigterm(tmp_path, spec, nr, fleet, task: str) -> None:
    loaded = _runbook(tmp_path, f"- task: {HERE}:{task}\n  hosts: haproxy1")
    before = signal.getsignal(signal.SIGTERM)
    result = engine.run(loaded, spec, nr, _opts(tmp_path))
    assert signal.getsignal(signal.SIGTERM) == before  # the handler is only there during a run
    assert result.interrupted and not result.passed
    assert result.cases[0].verdict == "error" and "interrupted" in result.cases[0].reason
    assert fleet.host("haproxy1").commands() == ["systemctl stop haproxy",
                                                 "systemctl start haproxy"]
    assert result.cases[1].verdict == "skipped"
    assert fleet.host("lvs1").commands() == []  # nothing after the interruption


def test_a_non_lab_inventory_is_refused_without_yes(tmp_path, make_inventory) -> None:
    inv = make_inventory(lambda h, g, d: d["data"].update(cluster_name="prod"))
    spec, nr = load_cluster_spec(inv), open_nornir(inv)
    fleet = install_fake(nr, FakeFleet())
    loaded = _runbook(tmp_path, "- pause: 0.01")
    with pytest.raises(RunbookError, match="'prod' is not the lab .*--yes"):
        engine.run(loaded, spec, nr, _opts(tmp_path))
    assert all(not h.calls for h in fleet.hosts.values())
    result = engine.run(loaded, spec, nr, _opts(tmp_path, yes=True))
    assert result.passed and fleet.host("haproxy1").commands()


def test_a_dry_run_touches_nothing(tmp_path, spec, nr, fleet) -> None:
    loaded = _runbook(tmp_path, "- task: faults.kill_service\n  hosts: etcd-leader\n"
                                "  args: {unit: etcd}")
    lines: list[str] = []
    result = engine.run(loaded, spec, nr, _opts(tmp_path, dry_run=True, progress=lines.append))
    assert result.dry_run and all(c.verdict == "skipped" for c in result.cases)
    assert all(not h.calls for h in fleet.hosts.values())
    assert not (tmp_path / "state").exists()  # not even the lock file
    steps = result.cases[0].steps
    assert steps[0].hosts == ["haproxy1"]
    assert "etcd-leader (resolved at run time)" in steps[1].message
    assert any("second: method: task faults.stop_service on lvs1: would run on lvs1" in x
               for x in lines)


def test_a_wait_polls_until_the_probe_holds(tmp_path, spec, nr, fleet) -> None:
    HEALTH["haproxy2"] = "failed"
    wait = (f"- wait: {{probe: '{HERE}:healthy', hosts: haproxy2, max_time: 20, "
            "check_interval: 0.05}")
    loaded = _runbook(tmp_path, wait, steady=False)

    def heal() -> None:
        while COUNT["probe"] < 3:
            time.sleep(0.01)
        HEALTH.pop("haproxy2")

    threading.Thread(target=heal, daemon=True).start()
    result = engine.run(loaded, spec, nr, _opts(tmp_path))
    step = result.cases[0].steps[1]
    assert step.ok and step.data["attempts"] >= 3


def test_a_wait_that_never_holds_fails_the_case(tmp_path, spec, nr, fleet) -> None:
    HEALTH["haproxy2"] = "failed"
    wait = (f"- wait: {{probe: '{HERE}:healthy', hosts: haproxy2, max_time: 0.3, "
            "check_interval: 0.05}")
    result = engine.run(_runbook(tmp_path, wait, steady=False), spec, nr, _opts(tmp_path))
    assert result.cases[0].verdict == "failed"
    assert "did not hold within 0.3s" in result.cases[0].reason
    assert fleet.host("haproxy1").commands()[-1] == "systemctl start haproxy"


def test_probe_expectations_per_host(tmp_path, spec, nr, fleet) -> None:
    good = (f"- probe: '{HERE}:healthy'\n  hosts: role:haproxy\n  expect:\n"
            "    - {field: message, equal: ok}\n    - {field: values.n, range: [1, 1000]}\n"
            "    - {field: target, regex: '^haproxy[12]$'}\n"
            "    - {field: target, equal: '@fault', match: any}")
    result = engine.run(_runbook(tmp_path, good), spec, nr, _opts(tmp_path))
    assert result.cases[0].verdict == "passed", result.cases[0].reason
    bad = (f"- probe: '{HERE}:healthy'\n  hosts: role:haproxy\n  expect:\n"
           "    - {field: target, not_equal: '@fault'}")
    result = engine.run(_runbook(tmp_path, bad), spec, nr, _opts(tmp_path))
    assert result.cases[0].verdict == "failed"
    assert "haproxy1: target = 'haproxy1', expected not_equal 'haproxy1'" in \
        result.cases[0].reason


def test_a_broken_steady_state_stops_the_run_before_any_fault(tmp_path, spec, nr,
                                                              fleet) -> None:
    HEALTH["haproxy2"] = "failed"
    result = engine.run(_runbook(tmp_path, "- pause: 0.01"), spec, nr, _opts(tmp_path))
    assert result.cases[0].verdict == "error"
    assert "steady state does not hold before" in result.cases[0].reason
    assert result.cases[1].verdict == "skipped"
    assert all(not h.commands() for h in fleet.hosts.values())


def test_the_steady_state_must_come_back(tmp_path, spec, nr, fleet) -> None:
    fail_after = f"- task: {HERE}:healthy\n  hosts: haproxy1"  # any step

    def break_it(task: Task, unit: str) -> Result:
        HEALTH["haproxy2"] = "failed"
        return Result(host=task.host, result="broke it")

    loaded = _runbook(tmp_path, fail_after)
    loaded.runbook.cases[0].method[0].task = f"{HERE}:break_steady"
    globals()["break_steady"] = break_it
    result = engine.run(loaded, spec, nr, _opts(tmp_path))
    first = result.cases[0]
    assert first.verdict == "failed" and "steady state did not return within 3s" in \
        first.reason
    assert first.rollbacks and first.rollbacks[0].ok


def _continuous(tmp_path: Path, middle: str) -> Any:
    """`first` with its steady state looked at every 0.05 s during the method too."""
    loaded = _runbook(tmp_path, middle)
    loaded.runbook.steady_state[0].continuous = 0.05
    loaded.runbook.steady_state[0].name = "haproxy nodes healthy"
    return loaded


def heal(task: Task) -> Result:
    HEALTH.clear()
    return Result(host=task.host, result="healed")


def test_a_continuous_steady_state_probe_that_deviates_fails_the_case(tmp_path, spec, nr,
                                                                        fleet) -> None:
    """The steady state holds before and after (a rollback heals it), but not in between:
    only the continuous look sees it, and the case fails naming the probe."""
    globals()["break_steady"] = lambda task: (HEALTH.update(haproxy2="failed")
                                             or Result(host=task.host, result="broke"))
    loaded = _continuous(tmp_path, f"- task: {HERE}:break_steady\n  hosts: haproxy1\n"
                                   "- pause: 0.4")
    loaded.runbook.cases[0].rollbacks.insert(0, loaded.runbook.cases[0].method[0].model_copy(
        update={"task": f"{HERE}:heal", "hosts": "haproxy1", "fault": False, "args": {}}))
    result = engine.run(loaded, spec, nr, _opts(tmp_path, cases=["first"]))
    case = result.cases[0]
    assert case.verdict == "failed"
    assert case.reason.startswith("steady-state probe haproxy nodes healthy did not hold "
                                  "during the method (")
    assert "haproxy2: failed" in case.reason
    assert case.deviations and all("haproxy nodes healthy" in d for d in case.deviations)
    assert "deviation" in [m.kind for m in case.marks]
    assert all(r.ok for r in case.steady_after)  # before and after alone would have passed


def test_a_continuous_probe_that_holds_is_looked_at_during_the_method(tmp_path, spec, nr,
                                                                      fleet) -> None:
    loaded = _continuous(tmp_path, "- pause: 0.4")
    result = engine.run(loaded, spec, nr, _opts(tmp_path, cases=["first"]))
    case = result.cases[0]
    assert case.verdict == "passed", case.reason
    assert not case.deviations
    # 2 haproxy hosts per look: before, after, and at least 4 looks during the 0.4 s pause
    assert COUNT["probe"] >= 2 * (2 + 4)


def test_a_deploy_holding_the_lock_keeps_the_runbook_out(tmp_path, spec, nr, fleet) -> None:
    state = tmp_path / "state"
    with operation_lock(state, "deploy"):
        with pytest.raises(OperationLocked, match=r"pid \d+, `deploy`, since"):
            engine.run(_runbook(tmp_path, "- pause: 0.01"), spec, nr, _opts(tmp_path))
    assert all(not h.calls for h in fleet.hosts.values())
    assert engine.run(_runbook(tmp_path, "- pause: 0.01"), spec, nr, _opts(tmp_path)).passed


def test_unknown_case_name_is_refused(tmp_path, spec, nr, fleet) -> None:
    with pytest.raises(RunbookError, match="no case named third"):
        engine.run(_runbook(tmp_path, "- pause: 0.01"), spec, nr,
                   _opts(tmp_path, cases=["third"]))
    result = engine.run(_runbook(tmp_path, "- pause: 0.01"), spec, nr,
                        _opts(tmp_path, cases=["second"]))
    assert [c.name for c in result.cases] == ["second"]


# --- the measurement side, faked --------------------------------------------------------------


class FakeLoad:
    def __init__(self) -> None:
        self.calls: list[str] = []
        self.marks: list[Mark] = []

    def start(self) -> None:
        self.calls.append("start")

    def mark(self, label: str, kind: str = "note") -> None:
        self.marks.append(Mark(time.monotonic(), label, kind))  # type: ignore[arg-type]

    def stop(self) -> tuple[list, list[Mark]]:
        self.calls.append("stop")
        return [], list(self.marks)

    def settled(self) -> bool:
        self.asked += 1
        return self.settle_after is not None and self.asked > self.settle_after

    def audit_writes(self, timeout: float = 30.0) -> tuple[int, int]:
        self.calls.append("audit")
        return 40, self.lost

    def cleanup(self) -> None:
        self.calls.append("cleanup")

    lost = 0
    asked = 0
    settle_after: int | None = 0  # answers "not yet" this many times (None: never settles)


def _instruments(load: FakeLoad, downtime: float, bound: float | None) -> Instruments:
    def figures(samples, *, fault_at, lifted_at, acknowledged, lost, marks,  # noqa: ANN001
                takeover_of, partial) -> Figures:
        assert fault_at is not None and lifted_at is not None and fault_at <= lifted_at
        assert [m.kind for m in marks] == ["fault", "applied", "lift", "steady"]
        return Figures(100, 3, downtime, 0.1, 0.5, acknowledged, lost)

    def expectation(kind: str, spec, **params) -> Expectation:  # noqa: ANN001
        return Expectation(bound, f"{kind} {params}")

    def shortfalls(exp: Expectation, fig: Figures) -> list[str]:
        out = [f"{fig.writes_lost} acknowledged write(s) lost"] if fig.writes_lost else []
        if exp.downtime_s is not None and fig.downtime_s > exp.downtime_s:
            out.append(f"downtime {fig.downtime_s:.2f}s > bound {exp.downtime_s:.2f}s "
                       f"({exp.explanation})")
        return out

    return Instruments(lambda spec, state_dir: load, figures, expectation, shortfalls)


@pytest.mark.parametrize("downtime,bound,lost,verdict,why", [
    (0.4, 0.9, 0, "passed", ""),
    (1.4, 0.9, 0, "failed", "downtime 1.40s > bound 0.90s (none {})"),
    (0.4, None, 0, "passed", ""),
    (0.4, 0.9, 2, "failed", "2 acknowledged write(s) lost"),
])
def test_the_verdict_reads_figures_against_the_expectation(tmp_path, spec, nr, fleet,
                                                           downtime, bound, lost, verdict,
                                                           why) -> None:
    loaded = _runbook(tmp_path, "- pause: 0.01", extra="load: true")
    load = FakeLoad()
    load.lost = lost
    result = engine.run(loaded, spec, nr, _opts(
        tmp_path, cases=["first"], instruments=_instruments(load, downtime, bound)))
    case = result.cases[0]
    assert (case.verdict, case.reason) == (verdict, why)
    assert load.calls == ["start", "stop", "audit", "cleanup"]
    assert [m.kind for m in case.marks] == ["fault", "applied", "lift", "steady"]
    assert case.expectation is not None and case.figures.writes_acknowledged == 40


def test_the_probe_runs_on_after_the_steady_state_until_the_api_is_back_for_good(
        tmp_path, spec, nr, fleet) -> None:
    """The steady state can hold again while the lift's own disruption is under way (a thawed
    VRRP master taking its VIP back): the probe must see it end, not be stopped inside it."""
    loaded = _runbook(tmp_path, "- pause: 0.01", extra="load: true")
    load = FakeLoad()
    load.settle_after = 3
    result = engine.run(loaded, spec, nr, _opts(
        tmp_path, cases=["first"], instruments=_instruments(load, 0.4, 0.9)))
    assert result.cases[0].verdict == "passed"
    assert load.asked == 4 and load.calls == ["start", "stop", "audit", "cleanup"]


def test_a_probe_that_never_settles_fails_the_case_when_the_recovery_time_runs_out(
        tmp_path, spec, nr, fleet) -> None:
    loaded = _runbook(tmp_path, "- pause: 0.01", extra="load: true")
    load = FakeLoad()
    load.settle_after = None
    result = engine.run(loaded, spec, nr, _opts(
        tmp_path, cases=["first"], instruments=_instruments(load, 0.4, 0.9)))
    case = result.cases[0]
    assert case.verdict == "failed"
    assert case.reason == ("the load probe still saw requests fail when the recovery time (3s) "
                           "ran out")
    assert load.calls == ["start", "stop", "audit", "cleanup"]  # stopped and measured anyway


def test_a_bound_set_by_the_user_replaces_the_computed_one(tmp_path, spec, nr, fleet) -> None:
    loaded = _runbook(tmp_path, "- pause: 0.01", extra="load: true")
    result = engine.run(loaded, spec, nr, _opts(
        tmp_path, cases=["first"], bounds={"first": 0.3},
        instruments=_instruments(FakeLoad(), 0.4, 0.9)))
    case = result.cases[0]
    assert case.verdict == "failed" and case.expectation.downtime_s == 0.3
    assert case.reason.startswith("downtime 0.40s > bound 0.30s (bound set to 0.3 s by "
                                  "--bound; computed from the configuration: none {})")
    with pytest.raises(RunbookError, match="--bound names third, which is not a case"):
        engine.run(loaded, spec, nr, _opts(tmp_path, bounds={"third": 1.0}))
    # a case that expects an outage has no downtime bound to set: an error, nothing broken
    result = engine.run(loaded, spec, nr, _opts(
        tmp_path, cases=["first"], bounds={"first": 0.3},
        instruments=_instruments(FakeLoad(), 0.4, None)))
    assert result.cases[0].verdict == "error"
    assert "expects an outage (no downtime bound to set)" in result.cases[0].reason


def test_the_load_probe_stops_even_when_the_case_is_interrupted(tmp_path, spec, nr,
                                                                fleet) -> None:
    loaded = _runbook(tmp_path, f"- task: {HERE}:interrupt\n  hosts: haproxy1",
                      extra="load: true")
    load = FakeLoad()
    result = engine.run(loaded, spec, nr, _opts(
        tmp_path, instruments=_instruments(load, 0.1, 1.0)))
    assert result.interrupted and "stop" in load.calls and "cleanup" in load.calls
    assert "audit" not in load.calls  # an interrupted case is not measured


def test_a_vip_holder_change_is_marked_on_the_timeline(tmp_path, spec, nr, fleet,
                                                       monkeypatch) -> None:
    monkeypatch.setattr("nornir_k8sha.tasks.keepalived.check_vip_tcp",
                        lambda spec: CheckResult("VIP", "ok", "tcp ok"))
    holder = {"name": "lvs1"}

    def addr(name: str):  # noqa: ANN202
        def reply(host, command, stdin):  # noqa: ANN001, ANN202
            if holder["name"] != name:
                return ""
            return (f"2: eth0 inet {spec.vip}/32 scope global eth0\n"
                    f"TCP  {spec.vip}:6443 wlc\n  -> 10.88.0.21:6443 Route 1 0 0\n")
        return reply

    for name in ("lvs1", "lvs2"):
        fleet.host(name).on(r"^ip -o -4 addr", addr(name))
    fleet.host("lvs1").on(r"systemctl stop keepalived",
                          lambda h, c, s: holder.update(name="lvs2") or "")
    path = tmp_path / "vip.yaml"
    path.write_text(textwrap.dedent("""\
        title: vip
        method:
          - task: faults.stop_service
            hosts: vip-holder
            args: {unit: keepalived}
            fault: true
          - wait: {probe: check:vip, hosts: vip-holder, max_time: 5, check_interval: 0.05,
                   expect: [{field: target, not_equal: "@fault"}]}
        rollbacks:
          - task: faults.start_service
            hosts: "@fault"
            args: {unit: keepalived}
            lift: true
        """))
    result = engine.run(loader.load(path), spec, nr, _opts(tmp_path))
    case = result.cases[0]
    assert case.verdict == "passed", case.reason
    assert [(m.kind, m.label) for m in case.marks if m.kind != "fault"] == [
        ("applied", "fault in effect: task faults.stop_service on vip-holder"),
        ("holder", "vip-holder: lvs2"), ("lift", "lifted: task faults.start_service on @fault"),
        ("steady", "steady state holds again")]
    assert fleet.host("lvs1").commands()[-1] == "systemctl start keepalived"


def test_the_lift_is_marked_when_the_undo_begins(tmp_path, spec, nr, fleet) -> None:
    """Recovery counts from the lift, so a slow undo (a start that blocks until the service
    is ready) must count in it: the "lift" mark comes before the undo runs."""
    ran: list[float] = []

    def slow_start(host, command, stdin) -> str:  # noqa: ANN001
        ran.append(time.monotonic())
        time.sleep(0.3)
        return ""

    fleet.host("haproxy1").on(r"systemctl start haproxy", slow_start)
    result = engine.run(_runbook(tmp_path, "- pause: 0.01"), spec, nr,
                        _opts(tmp_path, cases=["first"]))
    marks = {m.kind: m.at for m in result.cases[0].marks}
    assert marks["lift"] <= ran[0] and marks["steady"] - marks["lift"] >= 0.3


def test_haproxy_taking_a_backend_out_is_marked_as_a_holder_change(tmp_path, spec, nr,
                                                                    fleet) -> None:
    """The apiserver kind's takeover is the first HAProxy marking the stopped apiserver DOWN:
    the engine marks each change of the DOWN backends while it looks at check:haproxy."""
    state = {"down": False}

    def stats(request: httpx.Request) -> httpx.Response:
        first = "DOWN" if state["down"] else "UP"
        return httpx.Response(200, text=f"# pxname,svname,status\napiserver,master1,{first}\n"
                              "apiserver,master2,UP\napiserver,master3,UP\n")

    fleet.host("master1").on(r"^mv \S*manifests/kube-apiserver",
                             lambda h, c, s: state.update(down=True) or "")
    path = tmp_path / "api.yaml"
    path.write_text(textwrap.dedent("""\
        title: api
        steady_state: [{probe: check:haproxy}]
        method:
          - task: faults.stop_static_pod
            hosts: master1
            args: {component: kube-apiserver}
            fault: true
          - wait: {probe: check:haproxy, max_time: 5, check_interval: 0.05,
                   expect: [{field: values.down, contains: "@fault"}]}
        rollbacks:
          - task: faults.start_static_pod
            hosts: "@fault"
            args: {component: kube-apiserver}
            lift: true
        """))
    fleet.host("master1").on(r"then mv \S*k8sha-fault", lambda h, c, s: state.update(down=False)
                             or "")
    result = engine.run(loader.load(path), spec, nr,
                        _opts(tmp_path, transport=httpx.MockTransport(stats)))
    case = result.cases[0]
    assert case.verdict == "passed", case.reason
    holders = [m.label for m in case.marks if m.kind == "holder"]
    assert holders == ["haproxy-down: master1", "haproxy-down: none"]


def test_an_optional_step_that_fails_does_not_stop_the_case(tmp_path, spec, nr, fleet) -> None:
    HEALTH["haproxy2"] = "failed"
    wait = (f"- wait: {{probe: '{HERE}:healthy', hosts: haproxy2, max_time: 0.1, "
            "check_interval: 0.05}\n  optional: true\n- pause: 0.01")
    result = engine.run(_runbook(tmp_path, wait, steady=False), spec, nr, _opts(tmp_path))
    case = result.cases[0]
    assert case.verdict == "passed", case.reason
    assert not case.steps[1].ok and "(optional: going on)" in case.steps[1].message
    assert len(case.steps) == 3


def test_a_rollback_of_a_fault_that_never_ran_is_a_no_op(tmp_path, spec, nr, fleet) -> None:
    path = tmp_path / "nofault.yaml"
    path.write_text(textwrap.dedent("""\
        title: nobody holds the VIP
        method:
          - task: faults.stop_service
            hosts: vip-holder
            args: {unit: keepalived}
            fault: true
        rollbacks:
          - task: faults.start_service
            hosts: "@fault"
            args: {unit: keepalived}
        """))
    result = engine.run(loader.load(path), spec, nr, _opts(tmp_path))
    case = result.cases[0]
    assert case.verdict == "failed" and "'vip-holder' matches no host now" in case.reason
    assert "rollback" not in case.reason
    assert case.rollbacks[0].ok and "nothing to undo" in case.rollbacks[0].message
    assert not any("systemctl" in c for h in fleet.hosts.values() for c in h.commands())


def test_a_fault_that_half_failed_is_still_undone(tmp_path, spec, nr, fleet) -> None:
    fleet.host("haproxy1").on(r"systemctl stop haproxy", exit_code=5, stderr="no such unit")
    result = engine.run(_runbook(tmp_path, "- pause: 0.01"), spec, nr,
                        _opts(tmp_path, cases=["first"]))
    assert result.cases[0].verdict == "failed" and "no such unit" in result.cases[0].reason
    assert fleet.host("haproxy1").commands() == ["systemctl stop haproxy",
                                                 "systemctl start haproxy"]


def test_a_cases_load_options_reach_the_probe_and_the_bound(tmp_path, spec, nr, fleet) -> None:
    """`load: {request_timeout: 20}`: the probe's clients wait that long, and the bound that
    depends on it (a frozen apiserver's) is computed with it."""
    loaded = _runbook(tmp_path, "- pause: 0.01", extra="load: {request_timeout: 20}")
    made: list[dict] = []
    inst = _instruments(FakeLoad(), 0.4, 0.9)
    inst.load_probe = lambda spec, state_dir, **kw: made.append(kw) or FakeLoad()
    result = engine.run(loaded, spec, nr, _opts(tmp_path, cases=["first"], instruments=inst))
    assert made == [{"request_timeout": 20.0}]
    assert result.cases[0].expectation.explanation == "none {'request_timeout': 20.0}"
    (tmp_path / "bad.yaml").write_text(
        (tmp_path / "rb.yaml").read_text().replace("request_timeout: 20", "request_timeout: 0"))
    with pytest.raises(RunbookError, match=r"bad.yaml:\d+.*request_timeout"):
        loader.load(tmp_path / "bad.yaml")
