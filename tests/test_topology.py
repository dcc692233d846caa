"""Every topology rule, each broken by a small inventory, and the physical-machine analysis.

Each test starts from the lab inventory (valid, no findings), breaks exactly one rule and checks
the finding a user would read: its severity, and that it names the host, field and file:line.
"""

from __future__ import annotations

import dataclasses
import importlib.util
from pathlib import Path

import pytest

from nornir_k8sha.exceptions import ValidationFailed
from nornir_k8sha.topology import (
    MIN_COUNTS,
    Analysis,
    Finding,
    MachineLoss,
    analyse,
    etcd_quorum,
    etcd_tolerance,
    load_cluster_spec,
)

from .conftest import LAB_INVENTORY, REPO, InventoryFactory


def line_of(path: Path, *keys: str) -> int:
    """1-based line of the last of `keys`, each searched after the previous one (dumped YAML)."""
    lines = path.read_text().splitlines()
    at = -1
    for key in keys:
        at = next(i for i in range(at + 1, len(lines))
                  if lines[i].strip().startswith((f"{key}:", f"- {key}:")))
    return at + 1


def only(analysis: Analysis, rule: str) -> Finding:
    """The single finding of `rule`; fails when there are none or several."""
    found = [f for f in analysis.findings if f.rule == rule]
    assert len(found) == 1, f"expected one {rule!r} finding, got {analysis.findings}"
    return found[0]


def error_rules(analysis: Analysis) -> set[str]:
    return {f.rule for f in analysis.errors}


def test_lab_inventory_is_valid_without_findings() -> None:
    analysis = analyse(LAB_INVENTORY)
    assert analysis.findings == []
    spec = analysis.spec
    assert spec is not None
    assert {role: spec.count(role) for role in MIN_COUNTS} == {
        "lvs": 2, "haproxy": 2, "etcd": 3, "masters": 3, "workers": 2, "harbor": 1, "switches": 2}
    assert str(spec.vip) == "10.88.0.100" and spec.api_endpoint == "10.88.0.100:6443"


# --- minimum counts ----------------------------------------------------------------------------

REMOVE_TO_BREAK = {
    "lvs": ["lvs2"],
    "haproxy": ["haproxy2"],
    "etcd": ["etcd3"],
    "masters": ["master2", "master3"],
    "workers": ["worker1", "worker2"],
    "harbor": ["harbor1"],
}


@pytest.mark.parametrize("role", sorted(REMOVE_TO_BREAK))
def test_below_minimum_count_is_an_error(make_inventory: InventoryFactory, role: str) -> None:
    inv = make_inventory(lambda h, g, d: [h.pop(n) for n in REMOVE_TO_BREAK[role]])
    analysis = analyse(inv)
    finding = next(f for f in analysis.errors if f.rule == "min-count")
    assert error_rules(analysis) == {"min-count"}
    have = {"lvs": 1, "haproxy": 1, "etcd": 2, "masters": 1, "workers": 0, "harbor": 0}[role]
    assert finding.message == (f"role '{role}' has {have} host(s); the topology needs at least "
                               f"{MIN_COUNTS[role]}")
    assert finding.where == "hosts.yaml"
    with pytest.raises(ValidationFailed, match=f"role '{role}' has {have} host"):
        load_cluster_spec(inv)


def test_minimum_counts_are_the_seeds() -> None:
    assert MIN_COUNTS == {"lvs": 2, "haproxy": 2, "etcd": 3, "masters": 2, "workers": 1,
                          "harbor": 1, "switches": 0}


def test_two_masters_are_valid_with_a_warning(make_inventory: InventoryFactory) -> None:
    analysis = analyse(make_inventory(lambda h, g, d: h.pop("master3")))
    assert analysis.errors == []
    finding = only(analysis, "masters-recommended")
    assert finding.severity == "warning" and "3 are recommended" in finding.message


def test_even_etcd_count_warns_four_tolerate_one(make_inventory: InventoryFactory) -> None:
    def edit(h: dict, g: dict, d: dict) -> None:
        h["etcd4"] = {"hostname": "10.88.0.34", "groups": ["etcd"], "data": {"physical_host":
                                                                               "pm3"}}

    analysis = analyse(make_inventory(edit))
    assert analysis.errors == []
    finding = only(analysis, "etcd-odd")
    assert finding.severity == "warning"
    assert finding.message.startswith("4 etcd members tolerate 1 failure(s), the same as 3")


# --- addresses ---------------------------------------------------------------------------------


def test_duplicate_address_names_both_hosts_and_the_line(make_inventory: InventoryFactory
                                                         ) -> None:
    inv = make_inventory(lambda h, g, d: h["worker2"].update(hostname="10.88.0.51"))
    analysis = analyse(inv)
    finding = only(analysis, "unique-address")
    assert finding.severity == "error"
    assert finding.host == "worker2" and finding.field == "hostname"
    assert "already used by host worker1" in finding.message
    assert finding.where == f"hosts.yaml:{line_of(inv / 'hosts.yaml', 'worker2', 'hostname')}"
    assert error_rules(analysis) == {"unique-address"}


def test_hostname_must_be_an_ipv4_address(make_inventory: InventoryFactory) -> None:
    inv = make_inventory(lambda h, g, d: h["worker1"].update(hostname="worker1.example.com"))
    analysis = analyse(inv)
    finding = only(analysis, "address")
    assert (finding.severity, finding.host, finding.field) == ("error", "worker1", "hostname")
    assert finding.where == f"hosts.yaml:{line_of(inv / 'hosts.yaml', 'worker1', 'hostname')}"
    # No cross-host rule runs on a partial host list (it would report false losses).
    assert analysis.spec is None and error_rules(analysis) == {"address"}


def test_missing_hostname_is_named(make_inventory: InventoryFactory) -> None:
    analysis = analyse(make_inventory(lambda h, g, d: h["worker1"].pop("hostname")))
    finding = only(analysis, "address")
    assert finding.message.startswith("no hostname")
    assert finding.host == "worker1"


@pytest.mark.parametrize("vip", ["10.99.0.100", "10.88.0.0", "10.88.0.255"])
def test_vip_outside_the_lvs_subnet_or_not_usable(make_inventory: InventoryFactory, vip: str
                                                  ) -> None:
    inv = make_inventory(lambda h, g, d: d["data"].update(vip=vip))
    analysis = analyse(inv)
    finding = only(analysis, "vip-subnet")
    assert finding.severity == "error" and finding.field == "vip"
    assert f"VIP {vip} is not a usable address of the LVS subnet 10.88.0.0/24" in finding.message
    assert finding.where == f"defaults.yaml:{line_of(inv / 'defaults.yaml', 'data', 'vip')}"
    assert error_rules(analysis) == {"vip-subnet"}


def test_vip_equal_to_a_host_address(make_inventory: InventoryFactory) -> None:
    inv = make_inventory(lambda h, g, d: d["data"].update(vip="10.88.0.51"))
    finding = only(analyse(inv), "vip-unique")
    assert finding.severity == "error" and finding.field == "vip"
    assert "also the address of host worker1" in finding.message
    assert finding.where == f"defaults.yaml:{line_of(inv / 'defaults.yaml', 'data', 'vip')}"


def test_lvs_director_outside_the_directors_subnet(make_inventory: InventoryFactory) -> None:
    inv = make_inventory(lambda h, g, d: h["lvs2"].update(hostname="10.88.1.12"))
    finding = only(analyse(inv), "lvs-subnet")
    assert (finding.severity, finding.host, finding.field) == ("error", "lvs2", "hostname")
    assert finding.where == f"hosts.yaml:{line_of(inv / 'hosts.yaml', 'lvs2', 'hostname')}"


def test_pod_subnet_overlapping_the_host_network(make_inventory: InventoryFactory) -> None:
    inv = make_inventory(
        lambda h, g, d: d["data"].update(kubernetes={"pod_subnet": "10.88.0.0/16"}))
    analysis = analyse(inv)
    findings = [f for f in analysis.errors if f.rule == "cidr-overlap"]
    assert [f.field for f in findings] == ["kubernetes.pod_subnet"]
    assert "10.88.0.0/16 overlaps the host network 10.88.0.0/24" in findings[0].message
    assert findings[0].where == (
        f"defaults.yaml:{line_of(inv / 'defaults.yaml', 'kubernetes', 'pod_subnet')}")


def test_service_subnet_overlapping_the_pod_subnet(make_inventory: InventoryFactory) -> None:
    inv = make_inventory(
        lambda h, g, d: d["data"].update(kubernetes={"service_subnet": "10.244.128.0/20"}))
    finding = only(analyse(inv), "cidr-overlap")
    assert finding.severity == "error"
    assert "pod subnet 10.244.0.0/16 overlaps service subnet 10.244.128.0/20" in finding.message


@pytest.mark.parametrize("prefix", [0, 33])
def test_prefix_length_out_of_range(make_inventory: InventoryFactory, prefix: int) -> None:
    inv = make_inventory(lambda h, g, d: d["data"].update(prefix_length=prefix))
    analysis = analyse(inv)
    finding = only(analysis, "prefix-length")
    assert finding.field == "prefix_length" and analysis.spec is None
    assert finding.where == (
        f"defaults.yaml:{line_of(inv / 'defaults.yaml', 'data', 'prefix_length')}")


def test_host_names_differing_only_in_case(make_inventory: InventoryFactory) -> None:
    def edit(h: dict, g: dict, d: dict) -> None:
        h["Worker1"] = {"hostname": "10.88.0.53", "groups": ["workers"],
                        "data": {"physical_host": "pm3"}}

    finding = only(analyse(make_inventory(edit)), "unique-name")
    assert finding.severity == "error" and finding.host == "Worker1"
    assert "also host 'worker1'" in finding.message


# --- VRRP --------------------------------------------------------------------------------------


@pytest.mark.parametrize("router_id", [0, 256])
def test_vrrp_router_id_out_of_range(make_inventory: InventoryFactory, router_id: int) -> None:
    inv = make_inventory(lambda h, g, d: d["data"]["vrrp"].update(router_id=router_id))
    analysis = analyse(inv)
    finding = only(analysis, "vrrp-router-id")
    assert finding.severity == "error" and finding.field == "vrrp.router_id"
    assert f"router id {router_id} is outside 1-255" in finding.message
    assert finding.where == (
        f"defaults.yaml:{line_of(inv / 'defaults.yaml', 'vrrp', 'router_id')}")
    assert error_rules(analysis) == {"vrrp-router-id"}


def test_vrrp_version_other_than_2_or_3(make_inventory: InventoryFactory) -> None:
    inv = make_inventory(lambda h, g, d: d["data"]["vrrp"].update(version=4))
    finding = only(analyse(inv), "vrrp-version")
    assert finding.field == "vrrp.version"


def test_fractional_advert_needs_vrrp_v3(make_inventory: InventoryFactory) -> None:
    inv = make_inventory(lambda h, g, d: d["data"]["vrrp"].update(version=2, advert_int=0.1))
    analysis = analyse(inv)
    finding = only(analysis, "vrrp-advert")
    assert finding.severity == "error" and finding.field == "vrrp.advert_int"
    assert "fractional adverts need VRRP version 3" in finding.message
    assert finding.where == (
        f"defaults.yaml:{line_of(inv / 'defaults.yaml', 'vrrp', 'advert_int')}")


def test_whole_second_advert_with_v2_is_fine(make_inventory: InventoryFactory) -> None:
    inv = make_inventory(lambda h, g, d: d["data"]["vrrp"].update(version=2, advert_int=1))
    assert analyse(inv).findings == []


def test_advert_interval_must_be_positive(make_inventory: InventoryFactory) -> None:
    inv = make_inventory(lambda h, g, d: d["data"]["vrrp"].update(advert_int=0))
    assert "must be positive" in only(analyse(inv), "vrrp-advert").message


def test_duplicate_vrrp_priorities(make_inventory: InventoryFactory) -> None:
    inv = make_inventory(lambda h, g, d: h["lvs2"]["data"].update(vrrp_priority=150))
    analysis = analyse(inv)
    finding = only(analysis, "vrrp-priority")
    assert (finding.severity, finding.host, finding.field) == ("error", "lvs2", "vrrp_priority")
    assert "priority 150 is also used by lvs1" in finding.message
    assert finding.where == (
        f"hosts.yaml:{line_of(inv / 'hosts.yaml', 'lvs2', 'vrrp_priority')}")


def test_vrrp_priority_out_of_range(make_inventory: InventoryFactory) -> None:
    inv = make_inventory(lambda h, g, d: h["lvs1"]["data"].update(vrrp_priority=255))
    finding = only(analyse(inv), "vrrp-priority")
    assert finding.host == "lvs1" and "outside 1-254" in finding.message


def test_vrrp_priority_on_a_non_lvs_host(make_inventory: InventoryFactory) -> None:
    inv = make_inventory(lambda h, g, d: h["worker1"]["data"].update(vrrp_priority=50))
    analysis = analyse(inv)
    finding = only(analysis, "vrrp-priority")
    assert (finding.severity, finding.host, finding.field) == ("error", "worker1",
                                                               "vrrp_priority")
    assert "only LVS directors" in finding.message
    assert finding.where == (
        f"hosts.yaml:{line_of(inv / 'hosts.yaml', 'worker1', 'vrrp_priority')}")


def test_default_vrrp_priorities_are_distinct(make_inventory: InventoryFactory) -> None:
    def edit(h: dict, g: dict, d: dict) -> None:
        for name in ("lvs1", "lvs2"):
            h[name]["data"].pop("vrrp_priority")

    spec = load_cluster_spec(make_inventory(edit))
    assert spec.vrrp_priorities == {"lvs1": 150, "lvs2": 100}


# --- ports -------------------------------------------------------------------------------------


def test_haproxy_on_a_master_with_the_same_port(make_inventory: InventoryFactory) -> None:
    inv = make_inventory(lambda h, g, d: h["haproxy1"].update(groups=["haproxy", "masters"]))
    analysis = analyse(inv)
    finding = only(analysis, "apiserver-port")
    assert finding.severity == "error" and finding.field == "apiserver_bind_port"
    assert "share host(s) haproxy1 and both want port 6443" in finding.message
    assert error_rules(analysis) == {"apiserver-port"}


def test_haproxy_on_a_master_with_another_bind_port_is_fine(make_inventory: InventoryFactory
                                                           ) -> None:
    def edit(h: dict, g: dict, d: dict) -> None:
        h["haproxy1"]["groups"] = ["haproxy", "masters"]
        d["data"]["apiserver_bind_port"] = 6444

    analysis = analyse(make_inventory(edit))
    assert analysis.errors == []
    assert analysis.spec is not None
    assert [h.name for h in analysis.spec.role("masters")] == ["haproxy1", "master1", "master2",
                                                               "master3"]


def test_stats_port_equal_to_apiserver_port(make_inventory: InventoryFactory) -> None:
    inv = make_inventory(lambda h, g, d: d["data"]["haproxy"].update(stats_port=6443))
    analysis = analyse(inv)
    finding = only(analysis, "port-clash")
    assert finding.severity == "error" and finding.field == "haproxy.stats_port"
    assert finding.where == (
        f"defaults.yaml:{line_of(inv / 'defaults.yaml', 'haproxy', 'stats_port')}")


def test_etcd_client_port_equal_to_peer_port(make_inventory: InventoryFactory) -> None:
    inv = make_inventory(lambda h, g, d: d["data"].update(etcd={"client_port": 2380}))
    finding = only(analyse(inv), "port-clash")
    assert finding.field == "etcd.peer_port" and "client and peer" in finding.message


def test_port_out_of_range(make_inventory: InventoryFactory) -> None:
    inv = make_inventory(lambda h, g, d: d["data"].update(registry={"port": 70000}))
    finding = only(analyse(inv), "port-range")
    assert finding.field == "registry.port" and "70000" in finding.message


# --- sizes, switches, version ------------------------------------------------------------------


def test_declared_size_below_the_recommended_table_warns(make_inventory: InventoryFactory
                                                         ) -> None:
    inv = make_inventory(lambda h, g, d: h["etcd1"]["data"].update(cpu=2, memory_gb=4))
    analysis = analyse(inv)
    assert analysis.errors == []
    sizes = {f.field: f for f in analysis.warnings if f.rule == "size"}
    assert set(sizes) == {"cpu", "memory_gb"}
    assert all(f.host == "etcd1" for f in sizes.values())
    assert sizes["cpu"].message == "2 CPU declared; 4 recommended for role 'etcd'"
    assert sizes["memory_gb"].message == "4 GB declared; 8 GB recommended for role 'etcd'"
    assert sizes["memory_gb"].where == (
        f"hosts.yaml:{line_of(inv / 'hosts.yaml', 'etcd1', 'memory_gb')}")


def test_declared_size_at_the_recommendation_is_quiet(make_inventory: InventoryFactory) -> None:
    def edit(h: dict, g: dict, d: dict) -> None:
        h["lvs1"]["data"].update(cpu=4, memory_gb=4)
        h["master1"]["data"].update(cpu=16, memory_gb=64)

    assert analyse(make_inventory(edit)).findings == []


def test_unknown_switch_platform(make_inventory: InventoryFactory) -> None:
    inv = make_inventory(lambda h, g, d: h["switch1"].update(platform="nokia_srl"))
    analysis = analyse(inv)
    finding = only(analysis, "switch-platform")
    assert (finding.severity, finding.host, finding.field) == ("error", "switch1", "platform")
    assert "'nokia_srl' is not one of" in finding.message
    assert finding.where == f"hosts.yaml:{line_of(inv / 'hosts.yaml', 'switch1')}"
    assert error_rules(analysis) == {"switch-platform"}


def test_switch_platform_is_inherited_from_its_group() -> None:
    spec = load_cluster_spec(LAB_INVENTORY)
    assert {h.name: h.platform for h in spec.role("switches")} == {"switch1": "cisco_ios",
                                                                  "switch2": "cisco_ios"}


def test_bgp_neighbour_that_is_not_a_director(make_inventory: InventoryFactory) -> None:
    inv = make_inventory(lambda h, g, d: h["switch1"]["data"].update(
        bgp_neighbors=["10.88.0.11", "10.88.0.51"]))
    finding = only(analyse(inv), "bgp-neighbor")
    assert (finding.host, finding.field) == ("switch1", "bgp_neighbors")
    assert "10.88.0.51 is not an LVS director" in finding.message


def test_equal_bgp_asns_warn(make_inventory: InventoryFactory) -> None:
    inv = make_inventory(lambda h, g, d: d["data"]["bgp"].update(lvs_asn=65000))
    finding = only(analyse(inv), "bgp-asn")
    assert finding.severity == "warning" and finding.field == "bgp.lvs_asn"


@pytest.mark.parametrize("version", ["v1.31.4", "1.31", "latest"])
def test_bad_kubernetes_version(make_inventory: InventoryFactory, version: str) -> None:
    inv = make_inventory(lambda h, g, d: d["data"].update(kubernetes={"version": version}))
    analysis = analyse(inv)
    finding = only(analysis, "kubernetes-version")
    assert finding.severity == "error" and finding.field == "kubernetes.version"
    assert finding.where == (
        f"defaults.yaml:{line_of(inv / 'defaults.yaml', 'kubernetes', 'version')}")


# --- schema: unknown fields and wrong types, with file:line ------------------------------------


def test_unknown_field_in_defaults_data(make_inventory: InventoryFactory) -> None:
    inv = make_inventory(lambda h, g, d: d["data"].update(cluster_nmae="x"))
    analysis = analyse(inv)
    finding = only(analysis, "schema")
    assert (finding.severity, finding.field, finding.message) == ("error", "cluster_nmae",
                                                                  "unknown field")
    assert finding.host is None
    assert finding.where == (
        f"defaults.yaml:{line_of(inv / 'defaults.yaml', 'data', 'cluster_nmae')}")
    assert analysis.spec is None


def test_unknown_nested_setting(make_inventory: InventoryFactory) -> None:
    inv = make_inventory(lambda h, g, d: d["data"]["vrrp"].update(bogus=1))
    finding = only(analyse(inv), "schema")
    assert (finding.field, finding.message) == ("vrrp.bogus", "unknown field")
    assert finding.where == f"defaults.yaml:{line_of(inv / 'defaults.yaml', 'vrrp', 'bogus')}"


def test_wrong_type_in_settings(make_inventory: InventoryFactory) -> None:
    inv = make_inventory(lambda h, g, d: d["data"].update(vip="10.88.0.300"))
    finding = only(analyse(inv), "schema")
    assert finding.field == "vip" and "IPv4" in finding.message


def test_missing_vip(make_inventory: InventoryFactory) -> None:
    inv = make_inventory(lambda h, g, d: d["data"].pop("vip"))
    finding = only(analyse(inv), "schema")
    assert finding.field == "vip" and "required" in finding.message.lower()


def test_unknown_field_in_host_data(make_inventory: InventoryFactory) -> None:
    inv = make_inventory(lambda h, g, d: h["master2"]["data"].update(physical_hots="pm2"))
    finding = only(analyse(inv), "schema")
    assert (finding.host, finding.field, finding.message) == ("master2", "physical_hots",
                                                              "unknown field")
    assert finding.where == (
        f"hosts.yaml:{line_of(inv / 'hosts.yaml', 'master2', 'physical_hots')}")


def test_unknown_field_in_group_data_is_located_in_groups_yaml(
        make_inventory: InventoryFactory) -> None:
    inv = make_inventory(lambda h, g, d: g.update(etcd={"data": {"cpus": 8}}))
    analysis = analyse(inv)
    finding = only(analysis, "schema")  # once for the group, not once per member
    assert finding.field == "cpus" and "group 'etcd'" in finding.message
    assert finding.where == f"groups.yaml:{line_of(inv / 'groups.yaml', 'etcd', 'cpus')}"


def test_wrong_type_in_host_data(make_inventory: InventoryFactory) -> None:
    inv = make_inventory(lambda h, g, d: h["etcd2"]["data"].update(cpu="many"))
    finding = only(analyse(inv), "schema")
    assert (finding.host, finding.field) == ("etcd2", "cpu")
    assert finding.where == f"hosts.yaml:{line_of(inv / 'hosts.yaml', 'etcd2', 'cpu')}"


def test_host_in_no_role_group(make_inventory: InventoryFactory) -> None:
    def edit(h: dict, g: dict, d: dict) -> None:
        g["rack9"] = {}
        h["worker2"]["groups"] = ["rack9"]

    inv = make_inventory(edit)
    finding = only(analyse(inv), "role")
    assert (finding.severity, finding.host, finding.field) == ("error", "worker2", "groups")
    assert finding.where == f"hosts.yaml:{line_of(inv / 'hosts.yaml', 'worker2', 'groups')}"


# --- group inheritance as Nornir does it -------------------------------------------------------


def test_roles_and_data_come_through_parent_groups(make_inventory: InventoryFactory) -> None:
    def edit(h: dict, g: dict, d: dict) -> None:
        g["rack-a"] = {"groups": ["workers"], "data": {"physical_host": "pm3", "cpu": 8}}
        g["big"] = {"data": {"cpu": 32}}
        h["worker2"]["groups"] = ["rack-a", "big"]
        h["worker2"]["data"] = {}

    spec = load_cluster_spec(make_inventory(edit))
    worker2 = spec.host("worker2")
    assert worker2.roles == ("workers",)
    # Nornir's precedence: the first group that has the key wins.
    assert worker2.physical_host == "pm3" and worker2.data.cpu == 8


# --- physical-machine analysis -----------------------------------------------------------------


def test_lab_survives_the_loss_of_any_machine() -> None:
    losses = {m.machine: m for m in load_cluster_spec(LAB_INVENTORY).machine_losses()}
    assert set(losses) == {"pm1", "pm2", "pm3"}
    for loss in losses.values():
        assert loss.api_survives and loss.etcd_ok, loss
        assert (loss.etcd_left, loss.etcd_quorum) == (2, 2)
        assert loss.verdict.startswith("API survives")
    assert losses["pm3"].hosts == ("etcd3", "harbor1", "master3")
    assert losses["pm3"].verdict == "API survives (registry down)"


def five_etcd_on_two_machines(h: dict, g: dict, d: dict) -> None:
    """The seed's warning: 5 etcd members on 2 machines, 3 on pm1 and 2 on pm2."""
    for name, ip in (("etcd4", "10.88.0.34"), ("etcd5", "10.88.0.35")):
        h[name] = {"hostname": ip, "groups": ["etcd"], "data": {}}
    placement = {"etcd1": "pm1", "etcd3": "pm1", "etcd4": "pm1", "etcd2": "pm2", "etcd5": "pm2",
                 "master3": "pm2", "harbor1": "pm2"}
    for name, machine in placement.items():
        h[name]["data"]["physical_host"] = machine


def test_five_etcd_on_two_machines_the_bigger_loss_kills_quorum(
        make_inventory: InventoryFactory) -> None:
    analysis = analyse(make_inventory(five_etcd_on_two_machines))
    assert analysis.errors == [] and analysis.spec is not None
    losses = {m.machine: m for m in analysis.spec.machine_losses()}
    assert set(losses) == {"pm1", "pm2"}
    pm1, pm2 = losses["pm1"], losses["pm2"]
    assert (pm1.etcd_left, pm1.etcd_quorum, pm1.etcd_ok) == (2, 3, False)
    assert not pm1.api_survives
    assert pm1.verdict == "cluster DOWN: etcd loses quorum"
    assert (pm2.etcd_left, pm2.etcd_quorum, pm2.etcd_ok) == (3, 3, True)
    assert pm2.api_survives
    # validate says so, naming the machine and its hosts, and asks for a third machine.
    loss = only(analysis, "machine-loss")
    assert loss.severity == "warning"
    assert "'pm1' (etcd1, etcd3, etcd4, haproxy1, lvs1, master1, switch1, worker1)" in (
        loss.message)
    assert "etcd loses quorum" in loss.message
    assert "2 physical machine(s)" in only(analysis, "machine-count").message


def test_both_masters_on_one_machine_take_the_api_down(make_inventory: InventoryFactory
                                                       ) -> None:
    def edit(h: dict, g: dict, d: dict) -> None:
        h.pop("master3")
        h["master2"]["data"]["physical_host"] = "pm1"

    analysis = analyse(make_inventory(edit))
    assert analysis.spec is not None
    pm1 = next(m for m in analysis.spec.machine_losses() if m.machine == "pm1")
    assert pm1.etcd_ok and pm1.masters_left == 0 and not pm1.api_survives
    assert pm1.verdict == "API DOWN: no masters left"
    assert "API DOWN: no masters left" in only(analysis, "machine-loss").message


def test_all_haproxy_on_one_machine(make_inventory: InventoryFactory) -> None:
    inv = make_inventory(lambda h, g, d: h["haproxy2"]["data"].update(physical_host="pm1"))
    spec = analyse(inv).spec
    assert spec is not None
    losses = {m.machine: m for m in spec.machine_losses()}
    assert losses["pm1"].haproxy_left == 0 and losses["pm1"].verdict == (
        "API DOWN: no haproxy left")
    assert losses["pm2"].api_survives and losses["pm3"].api_survives


def test_host_without_physical_host_is_its_own_machine(make_inventory: InventoryFactory) -> None:
    inv = make_inventory(lambda h, g, d: h["worker1"]["data"].pop("physical_host"))
    analysis = analyse(inv)
    finding = only(analysis, "physical-host")
    assert (finding.severity, finding.host) == ("warning", "worker1")
    assert "counted as a machine of its own" in finding.message
    assert finding.where == f"hosts.yaml:{line_of(inv / 'hosts.yaml', 'worker1')}"
    assert analysis.spec is not None
    own = next(m for m in analysis.spec.machine_losses() if m.machine == "worker1")
    assert own.hosts == ("worker1",) and own.api_survives and own.workers_left == 1


@pytest.mark.parametrize(("members", "quorum", "tolerates"),
                         [(1, 1, 0), (3, 2, 1), (5, 3, 2), (7, 4, 3), (4, 3, 1), (2, 2, 0),
                          (0, 1, 0)])
def test_etcd_quorum_table(members: int, quorum: int, tolerates: int) -> None:
    assert etcd_quorum(members) == quorum
    assert etcd_tolerance(members) == tolerates


def test_etcd_table_marks_this_inventory(make_inventory: InventoryFactory) -> None:
    spec = analyse(make_inventory(five_etcd_on_two_machines)).spec
    assert spec is not None
    table = {row["members"]: row for row in spec.etcd_table()}
    assert sorted(table) == [1, 3, 5, 7]
    assert [n for n, row in table.items() if row["this_inventory"]] == [5]
    assert {n: row["tolerates"] for n, row in table.items()} == {1: 0, 3: 1, 5: 2, 7: 3}


def test_machine_loss_verdicts() -> None:
    def loss(**left: int) -> MachineLoss:
        base = {"etcd_left": 2, "etcd_quorum": 2, "masters_left": 1, "haproxy_left": 1,
                "lvs_left": 1, "workers_left": 1, "harbor_left": 1}
        return MachineLoss("m", ("h",), **{**base, **left})

    assert loss().verdict == "API survives"
    assert loss(etcd_left=1).verdict == "cluster DOWN: etcd loses quorum"
    assert loss(lvs_left=0, haproxy_left=0).verdict == "API DOWN: no haproxy, no lvs left"
    assert loss(workers_left=0).verdict == "API survives (no workers left)"
    assert loss(lvs_left=0).as_dict()["api_survives"] is False


# --- the spec others build on ------------------------------------------------------------------


def test_spec_derived_values() -> None:
    spec = load_cluster_spec(LAB_INVENTORY)
    assert spec.name == "lab" and str(spec.network) == "10.88.0.0/24"
    assert spec.first_master.name == "master1"
    assert spec.etcd_initial_cluster() == (
        "etcd1=https://10.88.0.31:2380,etcd2=https://10.88.0.32:2380,"
        "etcd3=https://10.88.0.33:2380")
    assert spec.etcd_endpoints()[0] == "https://10.88.0.31:2379"
    assert spec.state_dir == Path(".k8sha/lab")
    masters = spec.role("masters")
    masters.clear()  # a caller's list is its own
    assert spec.count("masters") == 3 and spec.role("nope") == []


def test_generated_scale_inventory_is_valid_and_survives_any_machine(tmp_path: Path) -> None:
    """bench/gen_inventory.py, which the scale benchmark times, writes a clean inventory."""
    loaded = importlib.util.spec_from_file_location("gen_inventory",
                                                    REPO / "bench" / "gen_inventory.py")
    assert loaded is not None and loaded.loader is not None
    gen = importlib.util.module_from_spec(loaded)
    loaded.loader.exec_module(gen)
    analysis = analyse(gen.write(tmp_path / "inv", 300))
    assert analysis.findings == []
    assert analysis.spec is not None and len(analysis.spec.hosts) == 300
    assert analysis.spec.count("etcd") == 5
    assert all(loss.api_survives for loss in analysis.spec.machine_losses())


def test_a_replaced_spec_has_its_own_indexes() -> None:
    """dataclasses.replace() (e.g. a spec limited to some hosts) must not touch the original."""
    spec = load_cluster_spec(LAB_INVENTORY)
    few = dataclasses.replace(spec, hosts=spec.hosts[:5])
    assert [h.name for h in few.role("etcd")] == ["etcd1"]
    assert spec.count("etcd") == 3 and spec.host("worker2").name == "worker2"
    with pytest.raises(KeyError):
        few.host("worker2")
