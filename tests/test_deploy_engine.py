"""The deploy engine on fake phases: stages, concurrency, failure propagation, skipping."""

from __future__ import annotations

import threading

from nornir.core.task import Result, Task

from nornir_k8sha import constants as C
from nornir_k8sha.deploy import DeployContext, LocalPhase, NornirPhase, run_stages
from nornir_k8sha.inventory import open_nornir
from nornir_k8sha.report import HostOutcome, RunReport
from nornir_k8sha.topology import load_cluster_spec

from .conftest import LAB_INVENTORY


def make_ctx(**kw: object) -> DeployContext:
    spec = load_cluster_spec(LAB_INVENTORY)
    return DeployContext(spec, open_nornir(LAB_INVENTORY), RunReport("deploy", spec.name), **kw)


class Recording(NornirPhase):
    """Records which hosts it ran on and when; fails on the hosts in `fail`."""

    def __init__(self, name: str, roles: tuple[str, ...], fail: set[str] = frozenset(),
                 depends_on: tuple[str, ...] = (), changed: bool = False):
        self.name = name
        self.title = name
        self.roles = roles
        self.fail = fail
        self.depends_on = depends_on
        self.changed = changed
        self.ran: list[str] = []
        self._lock = threading.Lock()

    def task(self, task: Task, ctx: DeployContext) -> Result:
        with self._lock:
            self.ran.append(task.host.name)
        if task.host.name in self.fail:
            raise RuntimeError(f"{task.host.name}: boom")
        return Result(host=task.host, changed=self.changed, result="done")


def test_phases_of_a_stage_run_concurrently() -> None:
    together = threading.Barrier(5, timeout=10)  # 2 LVS + 3 etcd hosts, two phases, at once

    class Meeting(Recording):
        def task(self, task: Task, ctx: DeployContext) -> Result:
            together.wait()
            return super().task(task, ctx)

    a = Meeting("a", (C.ROLE_LVS,))
    b = Meeting("b", (C.ROLE_ETCD,))
    ctx = make_ctx()
    run_stages(ctx, [[a, b]])
    assert not together.broken
    assert sorted(a.ran) == ["lvs1", "lvs2"] and sorted(b.ran) == ["etcd1", "etcd2", "etcd3"]
    assert ctx.report.exit_code == 0


def test_failed_host_is_skipped_later_and_others_continue() -> None:
    first = Recording("first", (C.ROLE_ETCD,), fail={"etcd2"})
    second = Recording("second", (C.ROLE_ETCD,), depends_on=("first",), changed=True)
    ctx = make_ctx()
    report = run_stages(ctx, [[first], [second]])
    assert sorted(second.ran) == ["etcd1", "etcd3"]
    outcome = report.phase("second").hosts["etcd2"]
    assert outcome.status == "skipped" and "first" in outcome.message
    assert report.phase("first").hosts["etcd2"].status == "failed"
    assert "boom" in report.phase("first").hosts["etcd2"].message
    assert report.exit_code == 1 and report.failed_hosts == ["etcd2"]
    assert report.changed == 2


def test_phase_whose_dependency_failed_everywhere_is_skipped() -> None:
    first = Recording("first", (C.ROLE_LVS,), fail={"lvs1", "lvs2"})
    second = Recording("second", (C.ROLE_MASTERS,), depends_on=("first",))
    report = run_stages(make_ctx(), [[first], [second]])
    assert second.ran == []
    assert "first" in report.phase("second").skipped_reason


def test_limit_and_only() -> None:
    a = Recording("a", (C.ROLE_LVS,))
    b = Recording("b", (C.ROLE_ETCD,))
    ctx = make_ctx(limit=frozenset({"lvs2", "etcd1"}))
    run_stages(ctx, [[a], [b]], only={"b"})
    assert a.ran == [] and b.ran == ["etcd1"]


def test_local_phase_failure_is_reported_not_raised() -> None:
    class Broken(LocalPhase):
        name = "pki"
        title = "PKI"

        def local(self, ctx: DeployContext) -> HostOutcome:
            raise OSError("disk full")

    after = Recording("after", (C.ROLE_ETCD,), depends_on=("pki",))
    report = run_stages(make_ctx(), [[Broken()], [after]])
    assert report.phase("pki").hosts["local"].status == "failed"
    assert "disk full" in report.phase("pki").hosts["local"].message
    assert after.ran == [] and report.exit_code == 1


def test_dry_run_reaches_tasks() -> None:
    seen: list[bool] = []

    class Probe(NornirPhase):
        name = "probe"
        title = "probe"
        roles = (C.ROLE_HARBOR,)

        def task(self, task: Task, ctx: DeployContext) -> Result:
            seen.append(task.is_dry_run())
            return Result(host=task.host)

    run_stages(make_ctx(dry_run=True), [[Probe()]])
    assert seen == [True]
