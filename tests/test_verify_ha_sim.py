"""The shipped verify-ha runbook, every case, on a simulated cluster (tests/simcluster.py):
the faults change the model, the task library's checks see the failover, the rollbacks
restore everything, and every case passes. No lab, no network: the fake fleet and
httpx.MockTransport answer from the model."""

from __future__ import annotations

from pathlib import Path

import pytest

from nornir_k8sha.checkresult import CheckResult
from nornir_k8sha.inventory import open_nornir
from nornir_k8sha.runbook import engine, loader, seams
from nornir_k8sha.runbook.engine import RunOptions
from nornir_k8sha.testing import install_fake
from nornir_k8sha.topology import load_cluster_spec

from .conftest import LAB_INVENTORY
from .simcluster import SimCluster

CASES = [c.name for _, c in loader.load(loader.find_runbook("verify-ha")).cases(
    load_cluster_spec(LAB_INVENTORY))]


@pytest.fixture
def sim(monkeypatch: pytest.MonkeyPatch) -> SimCluster:
    sim = SimCluster(load_cluster_spec(LAB_INVENTORY))
    monkeypatch.setattr("nornir_k8sha.tasks.keepalived.check_vip_tcp",
                        lambda spec: CheckResult("VIP", "ok" if sim.api_serves() else "failed",
                                                 "tcp"))
    seams.register("power_off", sim.power_off)
    seams.register("power_on", sim.power_on)
    yield sim
    seams.unregister("power_off")
    seams.unregister("power_on")


def _run(sim: SimCluster, tmp_path: Path, cases: list[str] | None, runbook: str = "verify-ha",
         **variables):  # noqa: ANN001, ANN202
    state = tmp_path / "state"
    state.mkdir()
    (state / "admin.conf").write_text("apiVersion: v1\n")  # a control plane exists
    nr = open_nornir(LAB_INVENTORY)
    install_fake(nr, sim.fleet())
    if runbook == "verify-ha":
        variables = {"hold": 0.01, **variables}
    loaded = loader.load(loader.find_runbook(runbook), variables)
    return engine.run(loaded, sim.spec, nr, RunOptions(
        cases=cases, state_dir=state, transport=sim.transport()))


@pytest.mark.parametrize("case", CASES)
def test_every_verify_ha_case_passes_and_restores_the_cluster(sim, tmp_path, case) -> None:
    result = _run(sim, tmp_path, [case])
    (cr,) = result.cases
    assert cr.verdict == "passed", f"{cr.reason}\n" + "\n".join(sim.log)
    assert sim.healthy(), sim
    assert cr.steps[0].hosts and all(s.ok for s in cr.steps + cr.rollbacks)


def test_a_fault_the_cluster_does_not_survive_fails_its_case(sim, tmp_path, monkeypatch) -> None:
    # break VRRP takeover: lvs2 never takes the VIP, so the wait cannot hold
    monkeypatch.setattr(SimCluster, "vip_holder", lambda self: "lvs1" if self.up(
        "lvs1", "keepalived") else None)
    result = _run(sim, tmp_path, ["director-keepalived-stopped"], takeover_max=0.5)
    (cr,) = result.cases
    assert cr.verdict == "failed" and "did not hold within 0.5s" in cr.reason
    assert sim.healthy()  # the rollback still restarted keepalived


def test_haproxy_maintenance_drains_stops_starts_and_re_adds(sim, tmp_path) -> None:
    result = _run(sim, tmp_path, None, "haproxy-maintenance", node="haproxy2",
                  settle=0.01)
    (cr,) = result.cases
    assert cr.verdict == "passed", cr.reason
    assert sim.healthy()
    drained = [line for line in sim.log if "ipvsadm -e" in line]
    # drain, re-add, and the rollbacks' re-add (they always run)
    assert drained == [f"lvs{i}: ipvsadm -e -t {sim.spec.vip}:6443 -r 10.88.0.22:6443 -g -w {w}"
                       for w in (0, 1, 1) for i in (1, 2)]
    stop = sim.log.index("haproxy2: systemctl stop haproxy")
    assert stop > sim.log.index(drained[1])  # drained everywhere before the stop
