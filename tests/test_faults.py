"""Faults as Nornir tasks on the fake fleet: the exact commands, the self-heal timer armed
BEFORE the fault, and every undo."""

from __future__ import annotations

import os
import subprocess
import time
from pathlib import Path

import pytest

from nornir_k8sha.inventory import open_nornir
from nornir_k8sha.tasks import faults, ipvs
from nornir_k8sha.testing import FakeFleet, install_fake
from nornir_k8sha.topology import load_cluster_spec

from .conftest import LAB_INVENTORY


@pytest.fixture
def nr():  # noqa: ANN201
    return open_nornir(LAB_INVENTORY)


@pytest.fixture
def fleet(nr) -> FakeFleet:  # noqa: ANN001
    return install_fake(nr, FakeFleet())


@pytest.fixture
def spec():  # noqa: ANN201
    return load_cluster_spec(LAB_INVENTORY)


def _run(nr, host: str, task, **kwargs):  # noqa: ANN001, ANN202
    return nr.filter(name=host).run(task=task, **kwargs)[host][0]


@pytest.mark.parametrize("task,command", [
    (faults.stop_service, "systemctl stop keepalived"),
    (faults.start_service, "systemctl start keepalived"),
    (faults.kill_service, "systemctl kill --signal=KILL --kill-who=main keepalived"),
    (faults.freeze_service, "systemctl kill --signal=STOP --kill-who=all keepalived"),
    (faults.thaw_service, "systemctl kill --signal=CONT --kill-who=all keepalived"),
])
def test_service_faults_run_one_systemctl_command(nr, fleet, task, command: str) -> None:
    r = _run(nr, "lvs1", task, unit="keepalived")
    assert not r.failed and r.changed
    assert fleet.host("lvs1").commands() == [command]


def test_a_unit_name_cannot_smuggle_a_command(nr, fleet) -> None:
    r = _run(nr, "lvs1", faults.stop_service, unit="keepalived; reboot")
    assert r.failed and "invalid unit" in str(r.exception)
    assert fleet.host("lvs1").commands() == []


def test_a_frozen_static_pod_is_stopped_and_thawed_by_its_process_name(
        nr, fleet, tmp_path) -> None:  # noqa: ANN001
    """On a kubeadm master the apiserver is a container, not a unit: its processes (named
    kube-apiserver) get SIGSTOP / SIGCONT. The command run for real in a shell, with a real
    process standing in for the apiserver (found by a fake pgrep; no such systemd unit)."""
    _run(nr, "master1", faults.freeze_static_pod, component="kube-apiserver")
    _run(nr, "master1", faults.thaw_static_pod, component="kube-apiserver")
    freeze, thaw = fleet.host("master1").commands()
    assert "systemctl kill --signal=STOP --kill-who=all kube-apiserver" in freeze
    assert "pgrep -x kube-apiserver" in freeze and "kill -CONT" in thaw
    victim = subprocess.Popen(["sleep", "30"])
    try:
        bin_dir = tmp_path / "bin"
        bin_dir.mkdir()
        (bin_dir / "systemctl").write_text("#!/bin/sh\nexit 1\n")  # no such unit
        (bin_dir / "pgrep").write_text(f"#!/bin/sh\n[ \"$2\" = kube-apiserver ] && "
                                       f"echo {victim.pid}\n")
        for tool in bin_dir.iterdir():
            tool.chmod(0o755)
        env = {**os.environ, "PATH": f"{bin_dir}:{os.environ['PATH']}"}

        def state() -> str:
            time.sleep(0.2)
            return Path(f"/proc/{victim.pid}/stat").read_text().split(") ")[1][0]

        subprocess.run(["sh", "-c", freeze], env=env, check=True)
        assert state() == "T"  # stopped
        subprocess.run(["sh", "-c", thaw], env=env, check=True)
        assert state() == "S"  # running again (sleeping)
        (bin_dir / "pgrep").write_text("#!/bin/sh\nexit 1\n")  # nothing by that name
        assert subprocess.run(["sh", "-c", freeze], env=env).returncode != 0
    finally:
        victim.kill()
        victim.wait()
    bad = _run(nr, "master1", faults.freeze_static_pod, component="x; reboot")
    assert bad.failed and "invalid component" in str(bad.exception)


def test_static_pod_moves_its_manifest_aside_and_back(nr, fleet) -> None:
    _run(nr, "master1", faults.stop_static_pod, component="kube-apiserver")
    _run(nr, "master1", faults.start_static_pod, component="kube-apiserver")
    assert fleet.host("master1").commands() == [
        "mv /etc/kubernetes/manifests/kube-apiserver.yaml "
        "/etc/kubernetes/kube-apiserver.yaml.k8sha-fault",
        "if [ -e /etc/kubernetes/kube-apiserver.yaml.k8sha-fault ]; then mv "
        "/etc/kubernetes/kube-apiserver.yaml.k8sha-fault "
        "/etc/kubernetes/manifests/kube-apiserver.yaml; fi"]


def test_link_down_arms_the_restore_timer_first(nr, fleet, spec) -> None:
    r = _run(nr, "lvs1", faults.link_down, spec=spec, restore_after=30)
    arm, down = fleet.host("lvs1").commands()
    iface = spec.settings.vrrp.interface
    assert arm.startswith(f"systemctl stop k8sha-fault-link-{iface}.timer ")
    assert (f"systemd-run --unit=k8sha-fault-link-{iface} --on-active=30s "
            f"--timer-property=AccuracySec=100ms /bin/sh -c 'ip link set dev {iface} up'") in arm
    assert down == f"ip link set dev {iface} down"
    assert "brings it up in 30s" in r.result


def test_link_down_counts_a_lost_connection_as_done(nr, fleet) -> None:
    fleet.host("lvs1").on(r"link set dev eth9 down", exit_code=124, stderr="timed out")
    r = _run(nr, "lvs1", faults.link_down, interface="eth9")
    assert not r.failed and "connection lost, as expected" in r.result


def test_link_down_is_refused_when_the_timer_cannot_be_armed(nr, fleet) -> None:
    fleet.host("lvs1").on(r"systemd-run", exit_code=1, stderr="no systemd")
    r = _run(nr, "lvs1", faults.link_down, interface="eth0")
    assert r.failed
    assert not any("down" in c for c in fleet.host("lvs1").commands()[1:])
    assert len(fleet.host("lvs1").commands()) == 1  # the link was never touched


def test_link_up_brings_the_link_up_then_cancels_the_timer(nr, fleet) -> None:
    _run(nr, "lvs1", faults.link_up, interface="eth0")
    assert fleet.host("lvs1").commands() == [
        "ip link set dev eth0 up",
        "systemctl stop k8sha-fault-link-eth0.timer >/dev/null 2>&1 || true"]


def test_partition_arms_self_heal_first_then_drops_peers(nr, fleet, spec) -> None:
    peers = [str(h.address) for h in spec.role("etcd")]
    r = _run(nr, "etcd1", faults.partition, spec=spec, peers=[*peers, "master1"],
             restore_after=45)
    host = fleet.host("etcd1")
    arm, nft = host.commands()
    assert "systemd-run --unit=k8sha-fault-partition --on-active=45s" in arm
    assert "'nft delete table inet k8sha_fault'" in arm
    assert nft == "nft -f -"
    rules = host.calls[-1].stdin.decode()
    own = str(spec.host("etcd1").address)
    others = [p for p in peers if p != own] + [str(spec.host("master1").address)]
    assert f"ip saddr {{ {', '.join(others)} }} drop" in rules
    assert f"ip daddr {{ {', '.join(others)} }} drop" in rules
    assert own not in rules
    assert rules.startswith("table inet k8sha_fault\ndelete table inet k8sha_fault\n")
    assert not r.failed and r.changed


def test_partition_refuses_a_peer_that_is_not_a_host_or_address(nr, fleet, spec) -> None:
    r = _run(nr, "etcd1", faults.partition, spec=spec, peers=["etcd9"])
    assert r.failed and "neither a host" in str(r.exception)
    assert fleet.host("etcd1").commands() == []


def test_heal_deletes_the_table_then_cancels_the_timer(nr, fleet) -> None:
    _run(nr, "etcd1", faults.heal)
    assert fleet.host("etcd1").commands() == [
        "if nft list table inet k8sha_fault >/dev/null 2>&1; then nft delete table inet "
        "k8sha_fault; fi",
        "systemctl stop k8sha-fault-partition.timer >/dev/null 2>&1 || true"]


def test_reboot_is_armed_so_the_command_returns_and_wait_reachable_undoes_it(nr,
                                                                            fleet) -> None:
    _run(nr, "worker1", faults.reboot)
    assert "systemd-run --unit=k8sha-fault-reboot --on-active=1s" in \
        fleet.host("worker1").commands()[0]
    assert "'systemctl reboot'" in fleet.host("worker1").commands()[0]
    r = _run(nr, "worker1", faults.wait_reachable, timeout=5)
    assert not r.failed and fleet.host("worker1").commands()[-1] == "true"


def test_faults_in_a_dry_run_say_what_they_would_do_and_run_nothing(nr, fleet, spec) -> None:
    nr.data.dry_run = True
    r = _run(nr, "lvs1", faults.link_down, spec=spec)
    assert "would run: systemctl stop" in r.diff
    assert fleet.host("lvs1").commands() == []


def test_ipvs_drain_and_read_back(nr, fleet, spec) -> None:
    vip = f"{spec.vip}:{spec.settings.apiserver_port}"
    _run(nr, "lvs1", ipvs.set_weight, spec=spec, real_server="haproxy1", weight=0)
    assert fleet.host("lvs1").commands() == [f"ipvsadm -e -t {vip} -r 10.88.0.21:6443 -g -w 0"]
    fleet.host("lvs1").on(r"^ipvsadm -Ln", stdout=(
        f"TCP  {vip} wlc\n  -> RemoteAddress:Port Forward Weight ActiveConn InActConn\n"
        "  -> 10.88.0.21:6443              Route   0      2          5\n"
        "  -> 10.88.0.22:6443              Route   1      0          0\n"))
    res = _run(nr, "lvs1", ipvs.real_server, spec=spec, real_server="haproxy1").result
    assert res.values == {"present": True, "weight": 0, "active": 2, "inactive": 5}
    res = _run(nr, "lvs1", ipvs.real_server, spec=spec, real_server="10.88.0.99").result
    assert res.values["present"] is False


def test_ipvs_re_add_of_a_server_keepalived_took_out_is_left_to_keepalived(
        nr, fleet, spec) -> None:  # noqa: ANN001
    fleet.host("lvs2").on(r"^ipvsadm -e", exit_code=255, stderr="No such destination\n")
    r = _run(nr, "lvs2", ipvs.set_weight, spec=spec, real_server="haproxy1", weight=1)
    assert not r.changed and "keepalived re-adds it" in r.result
    fleet.host("lvs1").on(r"^ipvsadm -e", exit_code=255, stderr="Memory allocation problem\n")
    r = _run(nr, "lvs1", ipvs.set_weight, spec=spec, real_server="haproxy1", weight=1)
    assert r.failed and "Memory allocation problem" in str(r.exception)
