"""A NEW etcd cluster on simulated Debian hosts: the order in which its members start (the seed
first, the others once it serves: tasks/etcd.py `StartOrder`), its units enabled in one
`systemctl enable`, and a second run that changes nothing."""

from __future__ import annotations

import re
import threading
from pathlib import Path
from typing import Any

import httpx
import pytest

from nornir_k8sha import constants as C
from nornir_k8sha.deploy import DeployContext, run_stages
from nornir_k8sha.exceptions import ConnectionFailed
from nornir_k8sha.inventory import open_nornir
from nornir_k8sha.phases.etcd import OBSERVED, EtcdPhase
from nornir_k8sha.pki import ClusterPKI
from nornir_k8sha.report import RunReport
from nornir_k8sha.tasks import etcd
from nornir_k8sha.testing import FakeFleet, FakeHost, FakeUnit, install_fake
from nornir_k8sha.topology import ClusterSpec, load_cluster_spec

from .conftest import LAB_INVENTORY

MEMBERS = ["etcd1", "etcd2", "etcd3"]
SERVES = rf"^bash -c .*/dev/tcp/127\.0\.0\.1/{C.ETCD_METRICS_PORT}"
START = r"^systemctl start etcd$"


@pytest.fixture
def spec() -> ClusterSpec:
    return load_cluster_spec(LAB_INVENTORY)


@pytest.fixture
def fleet() -> FakeFleet:
    """The etcd members as the lab ships them: etcd installed and stopped, no timer yet."""
    fleet = FakeFleet(debian=True)
    for name in MEMBERS:
        fleet.host(name).debian.packages.update({"etcd-server": "3.4", "etcd-client": "3.4"})
        fleet.host(name).debian.units["etcd"] = FakeUnit()
    return fleet


def deploy(spec: ClusterSpec, fleet: FakeFleet, state_dir: Path) -> RunReport:
    ClusterPKI(spec, state_dir).ensure()
    nr = open_nornir(LAB_INVENTORY)
    install_fake(nr, fleet)
    healthy = httpx.MockTransport(lambda request: httpx.Response(200, json={"health": "true"}))
    ctx = DeployContext(spec, nr, RunReport("deploy", spec.name), state_dir=state_dir,
                        http=healthy, shared={OBSERVED: None})  # nothing runs yet
    return run_stages(ctx, [[EtcdPhase()]])


def serving_after_its_start(seed: FakeHost, delay: float = 0.3) -> threading.Event:
    """`seed` serves `delay` s after its `systemctl start etcd`; asked whether it serves, it
    answers as soon as it does, or no after 1 s (what the command does on a host)."""
    serving = threading.Event()

    def start(host: FakeHost, command: str, stdin: Any) -> None:
        threading.Timer(delay, serving.set).start()
        return None  # on to the simulated systemd: the unit becomes active

    seed.on(START, start)
    seed.on(SERVES, lambda h, c, s: (0 if serving.wait(1.0) else 1, "", ""))
    return serving


def test_the_other_members_of_a_new_cluster_start_etcd_once_the_seed_serves(
        spec: ClusterSpec, fleet: FakeFleet, tmp_path: Path) -> None:
    # etcd1 (10.88.0.31): its peer URL sorts first, every other member asks it first
    assert etcd.StartOrder(open_nornir(LAB_INVENTORY), spec, MEMBERS).seed == "etcd1"
    serving = serving_after_its_start(fleet.host("etcd1"))
    seed_served_first: dict[str, bool] = {}

    def record(host: FakeHost, command: str, stdin: Any) -> None:
        seed_served_first[host.name] = serving.is_set()

    for name in ("etcd2", "etcd3"):
        fleet.host(name).on(START, record)
    report = deploy(spec, fleet, tmp_path)
    assert report.exit_code == 0, report.phase("etcd").hosts
    assert seed_served_first == {"etcd2": True, "etcd3": True}
    assert all(fleet.host(n).debian.units["etcd"].active for n in MEMBERS)
    assert any(re.search(SERVES, c) for c in fleet.host("etcd1").commands())  # asked there
    assert not any("/dev/tcp" in c for n in ("etcd2", "etcd3") for c in fleet.host(n).commands())


def test_a_new_member_enables_its_units_at_once_arms_the_timer_first_and_a_rerun_changes_nothing(
        spec: ClusterSpec, fleet: FakeFleet, tmp_path: Path) -> None:
    serving_after_its_start(fleet.host("etcd1"), delay=0.0)
    assert deploy(spec, fleet, tmp_path).exit_code == 0
    for name in MEMBERS:
        ran = fleet.host(name).commands()
        enables = [c for c in ran if " systemctl enable " in f" {c}"]
        assert enables == [f"SYSTEMCTL_SKIP_SYSV=1 systemctl enable {C.ETCD_BACKUP_TIMER_UNIT} "
                           "etcd"], ran
        assert ran.index(f"systemctl start {C.ETCD_BACKUP_TIMER_UNIT}") < \
            ran.index("systemctl start etcd")
        units = fleet.host(name).debian.units
        assert units["etcd"].enabled and units[C.ETCD_BACKUP_TIMER_UNIT].enabled
        assert units["etcd"].starts == 1 and units[C.ETCD_BACKUP_TIMER_UNIT].starts == 1
    done = {n: len(fleet.host(n).commands()) for n in MEMBERS}
    report = deploy(spec, fleet, tmp_path)  # the cluster as the first run left it
    assert report.exit_code == 0 and report.changed == 0
    for name in MEMBERS:
        again = fleet.host(name).commands()[done[name]:]
        assert not any(c.startswith(("systemctl start", "systemctl restart")) or
                       " systemctl enable " in f" {c}" or "/dev/tcp" in c for c in again)


def test_a_seed_whose_configure_ended_holds_no_member_back(
        spec: ClusterSpec, fleet: FakeFleet) -> None:
    nr = open_nornir(LAB_INVENTORY)
    install_fake(nr, fleet)
    seed = fleet.host("etcd1")
    seed.on(SERVES, exit_code=1)  # never serves
    order = etcd.StartOrder(nr, spec, MEMBERS)
    order.seed_ended.set()  # e.g. its upload failed: etcd will not start there
    nr.filter(name="etcd2").run(task=order.before_start)
    nr.filter(name="etcd3").run(task=order.before_start)
    asked = [c for c in seed.commands() if "/dev/tcp" in c]
    assert len(asked) == 1  # asked once, then both went on


def test_a_seed_that_cannot_be_reached_fails_alone_and_the_others_start(
        spec: ClusterSpec, fleet: FakeFleet, tmp_path: Path) -> None:
    def lost(host: FakeHost, command: str, stdin: Any) -> None:
        raise ConnectionFailed(host.name, "no route to host")

    fleet.host("etcd1").on(r"", lost)  # every command: the seed cannot be reached
    report = deploy(spec, fleet, tmp_path)
    hosts = report.phase("etcd").hosts
    assert hosts["etcd1"].status == "failed"
    assert {n: hosts[n].status for n in ("etcd2", "etcd3")} == {"etcd2": "changed",
                                                                  "etcd3": "changed"}
    assert all(fleet.host(n).debian.units["etcd"].active for n in ("etcd2", "etcd3"))
