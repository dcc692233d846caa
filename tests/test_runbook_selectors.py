"""Host selectors: static ones from the inventory, stateful ones from the checks (fake fleet
for SSH, httpx.MockTransport for HTTP)."""

from __future__ import annotations

import random
from pathlib import Path

import httpx
import pytest

from nornir_k8sha.checks.sweep import CheckContext
from nornir_k8sha.inventory import open_nornir
from nornir_k8sha.runbook.selectors import (
    Resolver,
    SelectorError,
    Term,
    check_static,
    parse,
    static_hosts,
)
from nornir_k8sha.tasks import apiserver
from nornir_k8sha.testing import FakeFleet, install_fake
from nornir_k8sha.topology import load_cluster_spec

from .conftest import LAB_INVENTORY

STATS = """# pxname,svname,qcur,qmax,scur,smax,slim,stot,bin,bout,dreq,dresp,ereq,econ,\
eresp,wretr,wredis,status,weight
apiserver,master1,0,0,0,1,,1,0,0,,0,,0,0,0,0,UP,1
apiserver,master2,0,0,0,0,,0,0,0,,0,,0,0,0,0,DOWN,1
apiserver,master3,0,0,0,0,,0,0,0,,0,,0,0,0,0,UP,1
"""


@pytest.fixture
def cx(tmp_path: Path) -> CheckContext:
    spec = load_cluster_spec(LAB_INVENTORY)
    return CheckContext(spec, open_nornir(LAB_INVENTORY), tmp_path)


def _http(routes: dict[tuple[str, str], object]) -> httpx.MockTransport:
    def handler(request: httpx.Request) -> httpx.Response:
        answer = routes.get((request.url.host, request.url.path))
        if answer is None:
            raise httpx.ConnectError("refused", request=request)
        if isinstance(answer, str):
            return httpx.Response(200, text=answer)
        return httpx.Response(200, json=answer)

    return httpx.MockTransport(handler)


def test_parse_terms_and_errors() -> None:
    assert parse("role:etcd, etcd1,vip-holder,@fault") == [
        Term("role", "etcd"), Term("name", "etcd1"), Term("vip-holder"), Term("fault")]
    for bad, why in (("rack:1", "unknown selector kind"), ("role:", "write role:<name>"),
                     ("vip-holder:lvs1", "write vip-holder"), ("a,,b", "empty term")):
        with pytest.raises(SelectorError, match=why):
            parse(bad)


def test_static_selectors_in_inventory_order(cx: CheckContext) -> None:
    spec = cx.spec
    assert static_hosts(parse("name:etcd2,role:lvs"), spec) == ["lvs1", "lvs2", "etcd2"]
    on_pm3 = static_hosts(parse("machine:pm3"), spec)
    assert on_pm3 and {spec.host(h).machine for h in on_pm3} == {"pm3"}
    assert static_hosts(parse("vip-holder"), spec) is None  # known at run time only
    assert check_static(parse("role:etcd"), spec) is None
    r = Resolver(cx)
    assert r.resolve("role:etcd", "majority") == ["etcd1", "etcd2"]
    assert r.resolve("role:etcd", "one") == ["etcd1"]
    assert r.resolve("role:etcd", 2) == ["etcd1", "etcd2"]
    r.rng = random.Random(1)
    assert r.resolve("role:etcd", "any")[0] in {"etcd1", "etcd2", "etcd3"}


def test_vip_holder_from_keepalived_check(cx: CheckContext) -> None:
    fleet = install_fake(cx.nr, FakeFleet())
    fleet.host("lvs2").on(r"^ip -o -4 addr", stdout=(
        f"2: eth0 inet {cx.spec.vip}/32 scope global eth0\n"
        f"TCP  {cx.spec.vip}:6443 wlc\n  -> 10.88.0.21:6443 Route 1 0 0\n"))
    seen = []
    r = Resolver(cx, observe=lambda term, hosts: seen.append((term, hosts)))
    assert r.resolve("vip-holder") == ["lvs2"]
    assert seen == [("vip-holder", ["lvs2"])]
    fleet.host("lvs2").on(r"^ip -o -4 addr", stdout="")
    with pytest.raises(SelectorError, match="matches no host now"):
        r.resolve("vip-holder")


def test_etcd_leader_lease_holder_and_backends(cx: CheckContext) -> None:
    routes: dict = {}
    for i, h in enumerate(cx.spec.role("etcd")):
        a = str(h.address)
        routes[(a, "/health")] = {"health": "true"}
        routes[(a, "/v3/maintenance/status")] = {"header": {"member_id": str(101 + i)},
                                                 "leader": "102"}
        routes[(a, "/v3/cluster/member/list")] = {"members": []}
    vip = str(cx.spec.vip)
    routes[(vip, apiserver.LEASE_PATH.format(name="kube-scheduler"))] = {
        "spec": {"holderIdentity": "master3_4f1c-77"}}
    routes[(vip, apiserver.LEASE_PATH.format(name="kube-controller-manager"))] = {
        "spec": {"holderIdentity": "master1_0a0b"}}
    routes[(str(cx.spec.host("haproxy1").address), "/stats;csv")] = STATS
    cx.transport = _http(routes)
    r = Resolver(cx)
    assert r.resolve("etcd-leader") == ["etcd2"]
    assert r.resolve("lease-holder:kube-scheduler") == ["master3"]
    assert r.resolve("lease-holder:kube-controller-manager") == ["master1"]
    assert r.resolve("backend-of:haproxy1") == ["master1", "master3"]


def test_fault_hosts_come_from_the_case(cx: CheckContext) -> None:
    r = Resolver(cx, fault_hosts=["haproxy2"])
    assert r.resolve("@fault") == ["haproxy2"]
    with pytest.raises(SelectorError):
        Resolver(cx).resolve("@fault")
