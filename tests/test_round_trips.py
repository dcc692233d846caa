"""A no-op re-run costs as few round trips as it can (issue 12.3): a node's preparation asks
its probes (swap, kubeadm version, the containerd and kubelet units, the live sysctls) and loads
its modules in one exec channel, and trusts what it read while nothing has changed — counted on
the fake fleet, never timed. Behaviour stays the same: a drifted host is still put right."""

from __future__ import annotations

from pathlib import Path

import pytest
from nornir.core import Nornir

from nornir_k8sha import constants as C
from nornir_k8sha.inventory import open_nornir
from nornir_k8sha.pki import ClusterPKI
from nornir_k8sha.render import files_for_component
from nornir_k8sha.tasks import kubeadm as K
from nornir_k8sha.testing import FakeFleet, FakeHost, FakeUnit, install_fake
from nornir_k8sha.topology import ClusterSpec, load_cluster_spec

from .conftest import LAB_INVENTORY

NODE = "worker1"


@pytest.fixture
def spec() -> ClusterSpec:
    return load_cluster_spec(LAB_INVENTORY)


@pytest.fixture
def node(spec: ClusterSpec, tmp_path: Path) -> tuple[Nornir, FakeHost]:
    """worker1 as a fresh Debian host whose kubeadm answers once its package is in."""
    ClusterPKI(spec, tmp_path).ensure()
    nr = open_nornir(LAB_INVENTORY).filter(name=NODE)
    host = install_fake(nr, FakeFleet(debian=True)).host(NODE)
    for unit in ("containerd", "kubelet"):
        host.debian.units[unit] = FakeUnit()
    version = spec.settings.kubernetes.version
    host.on(r"^kubeadm version", lambda h, c, s: f"v{version}\n"
            if "kubeadm" in h.debian.packages else (127, "", "kubeadm: not found\n"))
    host.on(r"gpg --dearmor", lambda h, c, s: h.write(K.KUBERNETES_KEYRING, b"key") or "")
    return nr, host


def prepare(nr: Nornir, spec: ClusterSpec) -> bool:
    result = nr.run(task=K.prepare_node, spec=spec)[NODE]
    assert not result.failed, result[0].exception
    return bool(result[0].changed)


def test_a_prepared_node_costs_one_exec_channel_and_its_file_reads(
        node: tuple[Nornir, FakeHost], spec: ClusterSpec) -> None:
    nr, host = node
    assert prepare(nr, spec)
    before, commands = host.round_trips, len(host.commands())
    assert not prepare(nr, spec)
    files = 2 + len(files_for_component(spec, spec.host(NODE), "containerd"))  # + modules, sysctl
    # a get and a stat per managed file; one batch for everything the node is asked
    assert host.round_trips - before == 2 * files + 1
    again = host.commands()[commands:]
    assert not any(c.startswith(("systemctl start", "systemctl restart", "systemctl enable",
                                 "apt-get")) for c in again)
    assert sum(c.startswith("systemctl show") for c in again) == 2  # inside the probe batch
    assert sum(c.startswith("sysctl -n") for c in again) == 3
    unit = host.debian.units["containerd"]
    assert unit.active and unit.starts == 1 and unit.restarts == 0


def test_drift_is_still_put_right_after_the_batched_probes(
        node: tuple[Nornir, FakeHost], spec: ClusterSpec) -> None:
    nr, host = node
    prepare(nr, spec)
    host.debian.units["kubelet"].enabled = False  # someone disabled it: nothing else changed
    host.debian.sysctls["net.ipv4.ip_forward"] = "0"  # and turned forwarding off at runtime
    assert prepare(nr, spec)
    assert host.debian.units["kubelet"].enabled
    assert host.debian.sysctls["net.ipv4.ip_forward"] == "1"
    config = next(f.path for f in files_for_component(spec, spec.host(NODE), "containerd")
                  if f.path.endswith("config.toml"))
    host.write(config, "# edited by hand\n")
    host.debian.units["containerd"].active = False  # and it died
    assert prepare(nr, spec)
    unit = host.debian.units["containerd"]
    assert unit.active and unit.starts == 2
    assert C.KUBERNETES_MODULES in host.files
