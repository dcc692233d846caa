"""Growing and shrinking a running etcd cluster: the topology's rule (which changes may be tried,
in which order) and `deploy` refusing a change that would break quorum before touching anything
(exit 2, the file and field named). The sequence itself runs on the real lab
(tests/lab/test_lab_etcd_scale.py)."""

from __future__ import annotations

import threading
import time
from pathlib import Path

import httpx
import pytest
from typer.testing import CliRunner

from nornir_k8sha import constants as C
from nornir_k8sha.cli import app
from nornir_k8sha.cli import deploy as cli_deploy
from nornir_k8sha.inventory import open_nornir
from nornir_k8sha.phases.lb import LoadBalancers
from nornir_k8sha.pki import ClusterPKI
from nornir_k8sha.tasks import etcd, etcd_scale
from nornir_k8sha.testing import FakeFleet, FakeUnit, install_fake
from nornir_k8sha.topology import etcd_membership_plan, load_cluster_spec

from .conftest import LAB_INVENTORY, InventoryFactory, fake_opener

E = [f"etcd{i}" for i in range(1, 8)]


def plan(running: int | list[str], wanted: int | list[str], down: tuple[str, ...] = ()):  # noqa: ANN201
    now = E[:running] if isinstance(running, int) else running
    want = E[:wanted] if isinstance(wanted, int) else wanted
    return etcd_membership_plan(now, [m for m in now if m not in down], want)


def test_growing_3_to_5_adds_one_member_at_a_time_quorum_kept() -> None:
    p = plan(3, 5)
    assert p.problem is None and p.removes == []
    assert [(s.member, s.members_after, s.healthy_after, s.quorum_after) for s in p.steps] == \
        [("etcd4", 4, 4, 3), ("etcd5", 5, 5, 3)]


def test_shrinking_5_to_3_removes_one_at_a_time_the_unhealthy_first() -> None:
    p = plan(5, 3, down=("etcd4",))
    assert p.problem is None and p.adds == []
    assert [(s.member, s.members_after, s.healthy_after) for s in p.steps] == \
        [("etcd4", 4, 4), ("etcd5", 3, 3)]


def test_the_same_members_is_no_change() -> None:
    p = plan(3, 3)
    assert p.problem is None and p.steps == ()
    assert etcd_membership_plan([], [], E[:3]).steps == ()  # nothing runs yet: bootstrap


@pytest.mark.parametrize(("running", "wanted", "says"), [
    (3, 1, "keeps 1 of the 3 running etcd members"),
    (5, 1, "keeps 1 of the 5 running etcd members"),
    (7, 3, "at least 4 (a quorum of the running cluster)"),
    (3, ["etcd1", "etcd6", "etcd7"], "drops etcd2, etcd3"),  # a majority swapped at once
])
def test_a_majority_leaving_at_once_is_refused(running: int, wanted: int | list[str],
                                               says: str) -> None:
    p = plan(running, wanted)
    assert p.problem is not None and says in p.problem, p.problem
    assert p.steps == ()


def test_a_removal_that_leaves_too_few_healthy_members_is_refused() -> None:
    p = plan(5, 3, down=("etcd1", "etcd2"))
    assert p.problem is not None
    assert "removing etcd member etcd4 would leave 2 healthy of 4 members, below their " \
        "quorum 3" in p.problem


def test_a_cluster_without_quorum_is_refused_and_restore_is_named() -> None:
    p = plan(3, 5, down=("etcd1", "etcd2"))
    assert p.problem is not None and "no quorum" in p.problem and "etcd restore" in p.problem


# --- deploy refuses before touching anything --------------------------------------------------


def running_cluster(names: list[str], down: set[str]) -> httpx.MockTransport:
    """etcd's HTTP API of a running cluster of `names` on 10.88.0.31...: `down` refuse."""
    address = {n: f"10.88.0.{30 + int(n.removeprefix('etcd'))}" for n in names}
    listed = {"members": [{"ID": str(100 + i), "name": n,
                           "peerURLs": [f"https://{address[n]}:2380"],
                           "clientURLs": [f"https://{address[n]}:2379"]}
                          for i, n in enumerate(names)]}
    by_address = {a: n for n, a in address.items()}

    def answer(request: httpx.Request) -> httpx.Response:
        if by_address.get(request.url.host) in down | {None}:
            raise httpx.ConnectError("connection refused", request=request)
        if request.url.path == "/v3/cluster/member/list":
            return httpx.Response(200, json=listed)
        if request.url.path == "/health":
            return httpx.Response(200, json={"health": "true"})
        return httpx.Response(200, json={"header": {"member_id": "100"}, "leader": "102"})

    return httpx.MockTransport(answer)


@pytest.fixture
def deploying(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> FakeFleet:
    fleet = FakeFleet()
    monkeypatch.setattr(cli_deploy, "open_nornir", fake_opener(fleet))
    monkeypatch.chdir(tmp_path)
    ClusterPKI(load_cluster_spec(LAB_INVENTORY)).ensure()  # an earlier deploy's PKI
    return fleet


@pytest.mark.parametrize(("running", "down", "says"), [
    # 5 running, the inventory keeps 3, two of them down: removing etcd4 would leave 2 of 4
    (E[:5], {"etcd1", "etcd2"}, "removing etcd member etcd4 would leave 2 healthy of 4"),
    # 7 running, the inventory keeps 3: a majority would leave at once
    (E[:7], set(), "keeps 3 of the 7 running etcd members"),
])
def test_deploy_refuses_a_member_change_that_breaks_quorum_and_touches_nothing(
        deploying: FakeFleet, monkeypatch: pytest.MonkeyPatch, running: list[str],
        down: set[str], says: str) -> None:
    monkeypatch.setattr(cli_deploy, "HTTP_TRANSPORT", running_cluster(running, down))
    for args in ([], ["--dry-run"]):
        done = CliRunner().invoke(app, ["deploy", "-i", str(LAB_INVENTORY), *args])
        text = " ".join(done.output.split())
        assert done.exit_code == 2, text
        assert f"{LAB_INVENTORY / 'hosts.yaml'}: field 'groups (etcd)': " in text
        assert says in text and "nothing was touched on any host" in text, text
    assert not any(h.calls for h in deploying.hosts.values())


def test_observe_reads_the_members_their_health_and_the_leader() -> None:
    spec = load_cluster_spec(LAB_INVENTORY)
    seen = etcd_scale.observe(spec, Path("unused"), running_cluster(E[:5], {"etcd5"}))
    assert seen is not None and seen.leader == 102
    assert [m.name for m in seen.members] == E[:5] and seen.healthy == E[:4]
    assert seen.summary() == ("5 members (etcd1, etcd2, etcd3*, etcd4, etcd5 (down)), 4 healthy, "
                              "quorum 3")
    assert seen.plan(spec).removes == ["etcd5", "etcd4"]


def test_a_member_of_a_running_cluster_is_not_restarted_for_bootstrap_lines(
        make_inventory: InventoryFactory) -> None:
    three = load_cluster_spec(LAB_INVENTORY)

    def five(hosts: dict, groups: dict, defaults: dict) -> None:
        hosts["etcd4"] = {"hostname": "10.88.0.34", "groups": ["etcd"]}
        hosts["etcd5"] = {"hostname": "10.88.0.35", "groups": ["etcd"]}

    bigger = load_cluster_spec(make_inventory(five))

    def files(spec) -> str:  # noqa: ANN001
        rendered = {f.path: f.content for f in etcd.files_for_component(
            spec, spec.host("etcd1"), "etcd")}
        return rendered[C.ETCD_CONF] + rendered[C.ETCD_UNIT]

    assert files(three) != files(bigger)
    assert etcd._bootstrap_only_change(bigger, "etcd1", files(three))
    slower = files(three).replace("heartbeat-interval: ", "heartbeat-interval: 1")
    assert not etcd._bootstrap_only_change(bigger, "etcd1", slower)  # a real change restarts


# --- a master added: HAProxy's backend list, reloaded one node at a time ------------------------


def test_a_new_master_reloads_the_haproxy_nodes_one_at_a_time(
        make_inventory: InventoryFactory, tmp_path: Path) -> None:
    from .test_components import UNITS, deploy

    fleet = FakeFleet(debian=True)
    for name in load_cluster_spec(LAB_INVENTORY).hosts:
        for unit in UNITS:
            fleet.host(name.name).debian.units[unit] = FakeUnit()
    assert deploy(LAB_INVENTORY, fleet, [LoadBalancers()], tmp_path).exit_code == 0

    def four(hosts: dict, groups: dict, defaults: dict) -> None:
        hosts["master4"] = {"hostname": "10.88.0.44", "groups": ["masters"]}

    windows: list[tuple[str, float, float]] = []
    for proxy in ("haproxy1", "haproxy2"):
        def slow_reload(host, command: str, stdin: bytes | None) -> object:  # noqa: ANN001
            start = time.monotonic()
            time.sleep(0.3)  # a reload that takes a while: the other node must wait for it
            windows.append((host.name, start, time.monotonic()))
            return host.debian(host, command, stdin)
        fleet.host(proxy).on(r"^systemctl reload-or-restart haproxy", slow_reload)
    report = deploy(make_inventory(four), fleet, [LoadBalancers()], tmp_path)
    changed = {h for h, o in report.phase("lb").hosts.items() if o.status == "changed"}
    assert changed == {"haproxy1", "haproxy2"}, changed  # the directors are left alone
    assert all("10.88.0.44" in (fleet.host(p).read(C.HAPROXY_CFG) or "")
               for p in ("haproxy1", "haproxy2"))
    (first, a0, a1), (second, b0, b1) = sorted(windows, key=lambda w: w[1])
    assert {first, second} == {"haproxy1", "haproxy2"} and b0 >= a1, windows



def test_fresh_haproxy_nodes_start_at_once_only_running_ones_take_turns(
        tmp_path: Path) -> None:
    """The turns are for reloads of nodes that serve: a node whose haproxy is not running yet
    serves nothing a start could interrupt, so fresh nodes start at once."""
    from .test_components import UNITS, deploy

    fleet = FakeFleet(debian=True)
    for name in load_cluster_spec(LAB_INVENTORY).hosts:
        for unit in UNITS:
            fleet.host(name.name).debian.units[unit] = FakeUnit()
    together = threading.Barrier(2, timeout=3)  # one after the other: broken, the start fails
    for proxy in ("haproxy1", "haproxy2"):
        def meet(host, command: str, stdin: bytes | None) -> object:  # noqa: ANN001
            together.wait()
            return host.debian(host, command, stdin)
        fleet.host(proxy).on(r"^systemctl start haproxy$", meet)
    report = deploy(LAB_INVENTORY, fleet, [LoadBalancers()], tmp_path)
    assert report.exit_code == 0, report.phase("lb").hosts
    assert all(fleet.host(p).debian.units["haproxy"].active for p in ("haproxy1", "haproxy2"))

# --- shrink: the leader hands over first, one member at a time, each host retired ---------------


class Cluster:
    """etcd's HTTP API of a running cluster that `etcdctl` on the fake hosts changes: `member
    remove` drops a member, `move-leader` moves the leadership."""

    def __init__(self, names: list[str], leader: str) -> None:
        self.ids = {n: 0x100 + i for i, n in enumerate(names)}
        self.names = list(names)
        self.leader = leader
        self.log: list[str] = []

    def address(self, name: str) -> str:
        return f"10.88.0.{30 + int(name.removeprefix('etcd'))}"

    def transport(self) -> httpx.MockTransport:
        def answer(request: httpx.Request) -> httpx.Response:
            if request.url.path == "/v3/cluster/member/list":
                return httpx.Response(200, json={"members": [
                    {"ID": str(self.ids[n]), "name": n,
                     "peerURLs": [f"https://{self.address(n)}:2380"],
                     "clientURLs": [f"https://{self.address(n)}:2379"]} for n in self.names]})
            if request.url.path == "/health":
                return httpx.Response(200, json={"health": "true"})
            return httpx.Response(200, json={"leader": str(self.ids[self.leader])})

        return httpx.MockTransport(answer)

    def etcdctl(self, host, command: str, stdin: bytes | None) -> object:  # noqa: ANN001
        words = command.split()
        if "move-leader" in words:
            target = int(words[words.index("move-leader") + 1], 16)
            self.leader = next(n for n, i in self.ids.items() if i == target)
            self.log.append(f"move-leader to {self.leader} via {host.name}")
        elif "remove" in words:
            gone = next(n for n, i in self.ids.items() if i == int(words[-1], 16))
            self.names.remove(gone)
            self.log.append(f"remove {gone} via {host.name} (leader {self.leader})")
        return 0, "", ""


def test_shrink_moves_the_leadership_first_and_retires_each_member_one_at_a_time(
        tmp_path: Path) -> None:
    from nornir.core.inventory import Host

    spec = load_cluster_spec(LAB_INVENTORY)
    cluster = Cluster(E[:5], leader="etcd4")
    seen = etcd_scale.observe(spec, tmp_path, cluster.transport())
    assert seen is not None
    plan = seen.plan(spec)
    assert plan.removes == ["etcd4", "etcd5"]
    nr = open_nornir(LAB_INVENTORY)
    for name in ("etcd4", "etcd5"):  # what `retire` adds for a host no longer in the inventory
        nr.inventory.hosts[name] = Host(name=name, hostname=cluster.address(name),
                                        defaults=nr.inventory.defaults)
    fleet = install_fake(nr, FakeFleet())
    for name in E[:3]:
        fleet.host(name).on(r"etcdctl", cluster.etcdctl)
    said: list[str] = []
    after = etcd_scale.shrink(nr, spec, tmp_path, plan, say=said.append,
                              transport=cluster.transport(), now=0)
    assert cluster.log == ["move-leader to etcd1 via etcd1", "remove etcd4 via etcd1 (leader "
                           "etcd1)", "remove etcd5 via etcd1 (leader etcd1)"]
    assert after == {"etcd4": "4 members (etcd1*, etcd2, etcd3, etcd5), 4 healthy, quorum 3",
                     "etcd5": "3 members (etcd1*, etcd2, etcd3), 3 healthy, quorum 2"}
    assert "etcd4 led the cluster: leadership moved to etcd1 first" in said
    for name in ("etcd4", "etcd5"):
        done = fleet.host(name).commands()
        assert done[0] == f"systemctl disable --now etcd {C.ETCD_BACKUP_TIMER_UNIT}", done
        assert f"{C.ETCD_DATA_DIR}.removed-19700101T000000Z" in done[1]


def test_the_kubeadm_config_configmap_follows_the_members_for_later_joins(
        make_inventory: InventoryFactory, tmp_path: Path) -> None:
    import json

    import yaml

    def five(hosts: dict, groups: dict, defaults: dict) -> None:
        hosts["etcd4"] = {"hostname": "10.88.0.34", "groups": ["etcd"]}
        hosts["etcd5"] = {"hostname": "10.88.0.35", "groups": ["etcd"]}

    spec = load_cluster_spec(make_inventory(five))
    three = load_cluster_spec(LAB_INVENTORY).etcd_endpoints()
    stored = {"ClusterConfiguration": yaml.safe_dump({
        "kind": "ClusterConfiguration", "etcd": {"external": {"endpoints": three}}})}
    patches: list[str] = []

    def answer(request: httpx.Request) -> httpx.Response:
        assert request.url.path == etcd_scale.KUBEADM_CONFIG
        if request.method == "PATCH":
            patches.append(request.headers["content-type"])
            stored.update(json.loads(request.content)["data"])
        return httpx.Response(200, json={"data": stored})

    assert etcd_scale.point_kubeadm_config(spec, tmp_path, httpx.MockTransport(answer))
    cluster = yaml.safe_load(stored["ClusterConfiguration"])
    assert cluster["etcd"]["external"]["endpoints"] == spec.etcd_endpoints() and \
        len(spec.etcd_endpoints()) == 5
    assert patches == [etcd_scale.MERGE_PATCH]
    assert not etcd_scale.point_kubeadm_config(spec, tmp_path, httpx.MockTransport(answer))
    assert len(patches) == 1  # already right: left alone
