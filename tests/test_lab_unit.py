"""The lab's pure parts, without root: names, addresses, commands, files, state, the root check."""

from __future__ import annotations

import os
from ipaddress import IPv4Address, IPv4Network
from pathlib import Path

import pytest
from typer.testing import CliRunner

from nornir_k8sha.cli import app
from nornir_k8sha.exceptions import LabError, NotRootError
from nornir_k8sha.lab import container, network, overlay, rootfs, ssh, uml
from nornir_k8sha.lab.lab import Lab, require_root
from nornir_k8sha.lab.state import Fault, HostRecord, LabState, StateStore
from nornir_k8sha.topology import load_cluster_spec
from tests.conftest import LAB_INVENTORY


def test_link_names_fit_ifnamsiz_and_stay_unique() -> None:
    assert network.veth_name("master1") == "k8l-master1"
    assert network.tap_name("lvs1") == "k8t-lvs1"
    assert network.bridge_name("lab") == "k8sha-lab0"
    long_a = network.veth_name("a-very-long-host-a")
    long_b = network.veth_name("a-very-long-host-b")
    assert len(long_a) <= 15 and len(long_b) <= 15 and long_a != long_b
    assert len(network.bridge_name("production-cluster")) <= 15


def test_controller_takes_first_address_and_macs_are_stable() -> None:
    assert network.controller_address(IPv4Network("10.88.0.0/24")) == IPv4Address("10.88.0.1")
    mac = network.mac_for(IPv4Address("10.88.0.11"))
    assert mac == "02:88:0a:58:00:0b" == network.mac_for(IPv4Address("10.88.0.11"))
    assert int(mac.split(":")[0], 16) & 0b10  # locally administered


def test_partition_ruleset_isolates_each_group() -> None:
    script = network.partition_ruleset([["k8l-etcd1", "k8l-etcd2"]])
    assert "table bridge k8sha_lab" in script
    assert 'iifname { "k8l-etcd1", "k8l-etcd2" } oifname != { "k8l-etcd1", "k8l-etcd2" } drop' \
        in script
    assert 'oifname { "k8l-etcd1", "k8l-etcd2" } iifname != { "k8l-etcd1", "k8l-etcd2" } drop' \
        in script


def test_rootfs_key_follows_the_package_list(monkeypatch: pytest.MonkeyPatch) -> None:
    key = rootfs.cache_key()
    assert key == rootfs.cache_key()
    assert rootfs.rootfs_path().name == f"rootfs-{key}"
    monkeypatch.setattr(rootfs, "PACKAGES", (*rootfs.PACKAGES, "tcpdump"))
    assert rootfs.cache_key() != key
    for needed in ("systemd", "openssh-server", "keepalived", "haproxy", "etcd-server", "frr",
                   "ipvsadm", "kmod", "docker-registry", "containerd", "python3"):
        assert needed in rootfs.PACKAGES


def test_nspawn_command_has_the_measured_flags() -> None:
    cmd = container.nspawn_command("etcd1", Path("/x/root"), "k8sha-etcd1")
    for flag in ("--register=no", "--keep-unit", "--boot", "--resolv-conf=off",
                 "--network-namespace-path=/run/netns/k8sha-etcd1",
                 "--capability=CAP_NET_ADMIN,CAP_NET_RAW,CAP_SYS_NICE", "--directory=/x/root"):
        assert flag in cmd
    assert container.ENV["SYSTEMD_NSPAWN_API_VFS_WRITABLE"] == "network"


def test_uml_command_boots_hostfs_with_systemd_on_a_tap() -> None:
    cmd = uml.uml_command(Path("/usr/bin/linux"), "lvs1", Path("/x/root"), "k8t-lvs1",
                          "02:88:0a:58:00:0b", Path("/u"))
    assert cmd[0] == "/usr/bin/linux"
    for arg in ("rootfstype=hostfs", "rootflags=/x/root", "init=/lib/systemd/systemd",
                "vec0:transport=tap,ifname=k8t-lvs1,mac=02:88:0a:58:00:0b,gro=1", "mem=256M"):
        assert arg in cmd
    assert not any(arg.startswith("seccomp") for arg in cmd)
    seccomp = uml.uml_command(Path("/k/linux.uml"), "lvs1", Path("/x/root"), "k8t-lvs1",
                              "02:88:0a:58:00:0b", Path("/u"), seccomp=True)
    assert seccomp[-1] == "seccomp=on"


def test_hosts_file_has_localhost_first_and_every_host() -> None:
    text = overlay.hosts_file({"etcd1": IPv4Address("10.88.0.31")},
                              {"harbor.k8sha.lab": IPv4Address("10.88.0.61")})
    lines = text.splitlines()
    assert lines[0] == "127.0.0.1\tlocalhost"
    assert "10.88.0.31\tetcd1" in lines and "10.88.0.61\tharbor.k8sha.lab" in lines


def test_identity_and_uml_network_files(tmp_path: Path) -> None:
    (tmp_path / "etc").mkdir()
    (tmp_path / "etc/machine-id").write_text("")
    overlay.write_identity(tmp_path, host="lvs1", hosts="127.0.0.1\tlocalhost\n",
                           authorized_key="ssh-ed25519 AAAA test")
    assert (tmp_path / "etc/hostname").read_text() == "lvs1\n"
    assert len((tmp_path / "etc/machine-id").read_text().strip()) == 32
    keys = tmp_path / "root/.ssh/authorized_keys"
    assert keys.read_text() == "ssh-ed25519 AAAA test\n" and oct(keys.stat().st_mode)[-3:] == "600"
    # brought back (a power cut): the host keeps what deploy added to its /etc/hosts
    edited = "127.0.0.1\tlocalhost\n10.88.0.61 harbor.k8sha.lab # k8sha\n"
    (tmp_path / "etc/hosts").write_text(edited)
    overlay.write_identity(tmp_path, host="lvs1", hosts="127.0.0.1\tlocalhost\n",
                           authorized_key="ssh-ed25519 AAAA test", keep_hosts=True)
    assert (tmp_path / "etc/hosts").read_text() == edited
    overlay.write_uml_network(tmp_path, IPv4Address("10.88.0.11"), 24)
    unit = (tmp_path / "etc/systemd/system" / overlay.NET_UNIT).read_text()
    assert "10.88.0.11/24 dev eth0" in unit and "modprobe ip_vs" in unit
    assert (tmp_path / "etc/systemd/system/multi-user.target.wants" / overlay.NET_UNIT).is_symlink()


def test_ssh_files_point_at_absolute_paths(tmp_path: Path) -> None:
    paths = ssh.SSHPaths(tmp_path / "ssh")
    paths.directory.mkdir()
    ssh.write_known_hosts(paths, {"master1": ("10.88.0.41", "ssh-ed25519 AAAAkey")})
    assert paths.known_hosts.read_text() == "master1,10.88.0.41 ssh-ed25519 AAAAkey\n"
    ssh.write_ssh_config(paths, {"master1": "10.88.0.41"})
    config = paths.config.read_text()
    assert "Host master1 10.88.0.41\n  HostName 10.88.0.41" in config
    assert f"IdentityFile {paths.key.resolve()}" in config
    assert "StrictHostKeyChecking yes" in config


def test_state_round_trips_with_faults(tmp_path: Path) -> None:
    store = StateStore(tmp_path / "lab")
    state = LabState(cluster="lab", bridge="k8sha-lab0", controller="10.88.0.1", rootfs="/r")
    state.hosts["etcd1"] = HostRecord(name="etcd1", kind="nspawn", address="10.88.0.31", pid=42)
    state.faults.append(Fault(id=1, kind="kill_host", targets=["etcd1"], applied_wall=1.0,
                              applied_monotonic=2.0, hosts=["etcd1"]))
    with store.locked():
        store.save(state)
    loaded = store.load()
    assert loaded == state
    assert loaded.faults[0].active and loaded.next_fault_id() == 2


def test_lab_derives_its_paths_and_refuses_a_host_on_the_controller_address(
        make_inventory, tmp_path: Path) -> None:  # noqa: ANN001
    lab = Lab(load_cluster_spec(LAB_INVENTORY), base=tmp_path)
    assert lab.state_dir == tmp_path / ".k8sha/lab/lab"
    assert lab.ssh.key == tmp_path / ".k8sha/lab/ssh/id_ed25519"
    assert str(lab.controller) == "10.88.0.1" and lab.bridge == "k8sha-lab0"
    assert {lab.kind_of(h) for h in lab.spec.role("lvs")} == {"uml"}
    assert {lab.kind_of(h) for h in lab.spec.role("etcd")} == {"nspawn"}

    def clash(hosts: dict, groups: dict, defaults: dict) -> None:
        hosts["worker2"]["hostname"] = "10.88.0.1"

    with pytest.raises(LabError, match="controller"):
        Lab(load_cluster_spec(make_inventory(clash)), base=tmp_path)


def test_not_root_is_a_clear_error(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(os, "geteuid", lambda: 1000)
    with pytest.raises(NotRootError, match="needs root"):
        require_root("lab up")
    result = CliRunner().invoke(app, ["lab", "up", "-i", str(LAB_INVENTORY)])
    assert result.exit_code == 2
    assert "needs root" in result.output
