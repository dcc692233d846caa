"""Anyone's Nornir script can use the task library: a ClusterSpec from Nornir's own inventory
objects (here plain InitNornir + SimpleInventory), a component check run on it, print_result."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml
from nornir import InitNornir

from nornir_k8sha.checkresult import CheckResult
from nornir_k8sha.exceptions import ValidationFailed
from nornir_k8sha.inventory import open_nornir
from nornir_k8sha.tasks import keepalived
from nornir_k8sha.testing import FakeFleet, install_fake
from nornir_k8sha.topology import ClusterSpec, load_cluster_spec

from .conftest import EXAMPLE_INVENTORY, LAB_INVENTORY, load_lab_inventory


def _simple(directory: Path):  # noqa: ANN202 - a plain user script's Nornir
    return InitNornir(
        inventory={"plugin": "SimpleInventory", "options": {
            "host_file": str(directory / "hosts.yaml"),
            "group_file": str(directory / "groups.yaml"),
            "defaults_file": str(directory / "defaults.yaml")}},
        logging={"enabled": False})


def _write(directory: Path, hosts: dict, groups: dict, defaults: dict) -> Path:
    directory.mkdir()
    for name, data in (("hosts.yaml", hosts), ("groups.yaml", groups),
                       ("defaults.yaml", defaults)):
        (directory / name).write_text(yaml.safe_dump(data, sort_keys=False))
    return directory


@pytest.mark.parametrize("inventory", [LAB_INVENTORY, EXAMPLE_INVENTORY])
def test_our_inventory_objects_resolve_like_nornirs_simple_inventory(inventory: Path) -> None:
    ours, theirs = open_nornir(inventory).inventory, _simple(inventory).inventory
    assert list(ours.hosts) == list(theirs.hosts)
    for name, h in theirs.hosts.items():
        mine = ours.hosts[name]
        assert (mine.hostname, mine.port, mine.username, mine.platform) == (
            h.hostname, h.port, h.username, h.platform)
        assert [g.name for g in mine.extended_groups()] == [g.name for g in h.extended_groups()]
        assert dict(mine.items()) == dict(h.items())


def test_spec_from_a_plain_nornir_equals_the_directory_spec() -> None:
    theirs, ours = ClusterSpec.from_nornir(_simple(LAB_INVENTORY)), load_cluster_spec(LAB_INVENTORY)
    assert (theirs.settings, theirs.hosts) == (ours.settings, ours.hosts)


def test_a_users_script_runs_a_component_check_and_prints_it(tmp_path: Path, capsys) -> None:
    hosts, groups, defaults = load_lab_inventory()
    # Their inventory has hosts and data of its own: not ours, left alone.
    hosts["printer1"] = {"hostname": "10.88.0.250", "groups": ["office"],
                         "data": {"toner": "low"}}
    groups["office"] = {}
    hosts["lvs1"].setdefault("data", {})["netbox_id"] = 17
    nr = _simple(_write(tmp_path / "inv", hosts, groups, defaults))
    spec = ClusterSpec.from_nornir(nr)
    assert "printer1" not in {h.name for h in spec.hosts}
    fleet = install_fake(nr, FakeFleet())
    fleet.host("lvs1").on(r"^ip -o -4 addr",
                          stdout=f"2: eth0 inet {spec.vip}/32 scope global eth0\n"
                                 "  -> 10.88.0.21:6443 Route 1 0 0\n")
    result = nr.filter(name="lvs1").run(task=keepalived.check, spec=spec)
    check = result["lvs1"][0].result
    assert isinstance(check, CheckResult) and check.values["holds_vip"]
    assert check.values["routes"] == ["10.88.0.21:6443"]
    from nornir_utils.plugins.functions import print_result  # colorama: import lazily

    print_result(result)
    assert f"holds VIP {spec.vip}" in capsys.readouterr().out


def test_a_broken_foreign_inventory_names_host_and_field(tmp_path: Path) -> None:
    hosts, groups, defaults = load_lab_inventory()
    hosts["lvs2"]["data"] = {"vrrp_priority": "high"}
    nr = _simple(_write(tmp_path / "inv", hosts, groups, defaults))
    with pytest.raises(ValidationFailed) as err:
        ClusterSpec.from_nornir(nr)
    assert "host lvs2: field 'vrrp_priority'" in str(err.value)
