"""`node remove` on the fake fleet: the order (cordon, drain, [HAProxy without a master], reset,
delete), what HAProxy is given, and the refusals (exit 2, nothing touched)."""

from __future__ import annotations

import threading
from pathlib import Path

import httpx
import pytest
from typer.testing import CliRunner

from nornir_k8sha import constants as C
from nornir_k8sha.cli import app
from nornir_k8sha.cli import node as cli_node
from nornir_k8sha.inventory import open_nornir
from nornir_k8sha.pki import ClusterPKI
from nornir_k8sha.testing import FakeFleet, FakeHost, SimulatedDebian, install_fake
from nornir_k8sha.topology import load_cluster_spec

from .conftest import LAB_INVENTORY

SPEC = load_cluster_spec(LAB_INVENTORY)
runner = CliRunner()
HAPROXY_CFG = "/etc/haproxy/haproxy.cfg"


class Api:
    """The API through the VIP and the HAProxy stats pages; one timeline with the hosts'
    commands."""

    def __init__(self) -> None:
        self.timeline: list[str] = []
        self.lock = threading.Lock()
        self.pods = [
            {"metadata": {"namespace": "default", "name": "web-1"}},
            {"metadata": {"namespace": "kube-system", "name": "proxy-x",
                          "ownerReferences": [{"kind": "DaemonSet"}]}}]
        self.by_address = {str(h.address): h.name for h in SPEC.hosts}

    def note(self, what: str) -> None:
        with self.lock:
            self.timeline.append(what)

    def handler(self, request: httpx.Request) -> httpx.Response:
        name = self.by_address.get(request.url.host)
        path = request.url.path
        if path == "/stats;csv":
            return httpx.Response(200, text="# pxname,svname,qcur,qmax,scur,smax,slim,stot,bin,"
                                  "bout,dreq,dresp,ereq,econ,eresp,wretr,wredis,status,weight\n"
                                  "apiserver,master1,0,0,0,0,,0,0,0,,0,,0,0,0,0,UP,1\n")
        assert name is None, request.url  # the API only through the VIP
        if request.method == "GET" and path.startswith("/api/v1/nodes/"):
            return httpx.Response(200, json={"metadata": {"name": path.rsplit("/", 1)[1]}})
        if request.method == "GET" and path == "/api/v1/pods":
            self.note(f"list pods {request.url.params['fieldSelector']}")
            return httpx.Response(200, json={"items": self.pods})
        if request.method == "PATCH":
            self.note(f"PATCH {path} {request.content.decode()}")
            return httpx.Response(200, json={})
        if request.method == "POST" and path.endswith("/eviction"):
            self.note(f"evict {path}")
            return httpx.Response(201, json={})
        if request.method == "DELETE":
            self.note(f"DELETE {path}")
            return httpx.Response(200, json={})
        return httpx.Response(404, json={})


@pytest.fixture
def cluster(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> tuple[Api, FakeFleet]:
    monkeypatch.chdir(tmp_path)
    ClusterPKI(SPEC).ensure()
    api = Api()
    fleet = FakeFleet()

    def recorder(debian: SimulatedDebian):  # noqa: ANN202
        def answer(host: FakeHost, command: str, stdin: bytes | None):  # noqa: ANN202
            if command.startswith(("kubeadm reset", "systemctl reload", "haproxy -c")):
                api.note(f"{host.name}: {command.split(' -f ')[0]}")
            return debian(host, command, stdin)
        return answer

    for h in SPEC.hosts:
        debian = SimulatedDebian()
        debian.unit("haproxy").active = debian.unit("haproxy").enabled = True
        fleet.hosts[h.name] = FakeHost(h.name, handler=recorder(debian))
    for h in SPEC.kubernetes_nodes():
        fleet.host(h.name).write(C.KUBELET_KUBECONFIG, "kubeconfig")

    def opener(directory: Path, **kw: object) -> object:
        nr = open_nornir(directory, **kw)
        install_fake(nr, fleet)
        return nr

    monkeypatch.setattr(cli_node, "open_nornir", opener)
    monkeypatch.setattr(cli_node, "HTTP_TRANSPORT", httpx.MockTransport(api.handler))
    return api, fleet


def test_removing_a_worker_cordons_drains_resets_and_deletes_in_that_order(cluster) -> None:
    api, fleet = cluster
    done = runner.invoke(app, ["node", "remove", "worker2", "-i", str(LAB_INVENTORY)])
    assert done.exit_code == 0, done.output
    assert api.timeline == [
        'PATCH /api/v1/nodes/worker2 {"spec":{"unschedulable":true}}',
        "list pods spec.nodeName=worker2",
        "evict /api/v1/namespaces/default/pods/web-1/eviction",  # the DaemonSet pod stays
        "worker2: kubeadm reset -f",
        "DELETE /api/v1/nodes/worker2"]
    assert "1 pod(s) evicted" in done.output and "delete it from" in done.output
    assert not any(HAPROXY_CFG in w for h in fleet.hosts.values() for w in h.writes())


def test_removing_a_master_takes_it_out_of_haproxy_first_one_haproxy_at_a_time(cluster) -> None:
    api, fleet = cluster
    before = {h: fleet.host(h).files.get(HAPROXY_CFG) for h in ("haproxy1", "haproxy2")}
    done = runner.invoke(app, ["node", "remove", "master3", "-i", str(LAB_INVENTORY)])
    assert done.exit_code == 0, done.output
    assert api.timeline == [
        'PATCH /api/v1/nodes/master3 {"spec":{"unschedulable":true}}',
        "list pods spec.nodeName=master3",
        "evict /api/v1/namespaces/default/pods/web-1/eviction",
        # out of HAProxy before its apiserver goes: validated, reloaded, one at a time
        "haproxy1: haproxy -c", "haproxy1: systemctl reload-or-restart haproxy",
        "haproxy2: haproxy -c", "haproxy2: systemctl reload-or-restart haproxy",
        "master3: kubeadm reset -f",
        "DELETE /api/v1/nodes/master3"]
    assert "HAProxy updated on haproxy1, haproxy2" in done.output
    address = str(SPEC.host("master3").address)
    for proxy in ("haproxy1", "haproxy2"):
        cfg = fleet.host(proxy).read(HAPROXY_CFG)
        assert cfg and cfg != before[proxy]
        assert address not in cfg and str(SPEC.host("master2").address) in cfg


@pytest.mark.parametrize("name,why", [("etcd1", "is not a worker or master"),
                                      ("worker9", "is not a worker or master")])
def test_not_a_node_exits_2_touching_nothing(cluster, name: str, why: str) -> None:
    api, fleet = cluster
    done = runner.invoke(app, ["node", "remove", name, "-i", str(LAB_INVENTORY)])
    assert done.exit_code == 2 and why in done.output
    assert api.timeline == [] and all(not h.calls for h in fleet.hosts.values())


def test_a_removal_that_breaks_a_rule_exits_2_touching_nothing(cluster, make_inventory) -> None:
    api, fleet = cluster

    def two_masters(hosts: dict, groups: dict, defaults: dict) -> None:
        del hosts["master3"]

    inv = make_inventory(two_masters)
    done = runner.invoke(app, ["node", "remove", "master2", "-i", str(inv)])
    assert done.exit_code == 2, done.output
    assert "masters" in done.output and "without master2 would break" in done.output
    assert api.timeline == [] and all(not h.calls for h in fleet.hosts.values())
