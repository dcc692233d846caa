"""The check sweep's aggregation and parsers (live checks run in the lab tests)."""

from __future__ import annotations

import threading

from nornir_k8sha.checks import CheckContext, parse_haproxy_csv, run_checks
from nornir_k8sha.inventory import open_nornir
from nornir_k8sha.report import HostOutcome
from nornir_k8sha.topology import load_cluster_spec

from .conftest import LAB_INVENTORY

STATS_CSV = """# pxname,svname,qcur,qmax,scur,smax,slim,stot,bin,bout,dreq,dresp,ereq,econ,\
eresp,wretr,wredis,status,weight
apiserver,FRONTEND,,,0,1,4000,3,0,0,0,0,0,,,,,OPEN,
apiserver,master1,0,0,0,1,,1,0,0,,0,,0,0,0,0,UP,1
apiserver,master2,0,0,0,0,,0,0,0,,0,,0,0,0,0,DOWN,1
apiserver,master3,0,0,0,0,,0,0,0,,0,,0,0,0,0,UP 1/2,1
apiserver,BACKEND,0,0,0,1,400,3,0,0,0,0,,0,0,0,0,UP,2
stats,FRONTEND,,,1,1,4000,2,0,0,0,0,0,,,,,OPEN,
"""


def test_parse_haproxy_csv_reads_backend_servers_only() -> None:
    assert parse_haproxy_csv(STATS_CSV) == {"master1": "UP", "master2": "DOWN",
                                            "master3": "UP 1/2"}


def test_checks_run_concurrently_and_failures_set_exit_code() -> None:
    spec = load_cluster_spec(LAB_INVENTORY)
    together = threading.Barrier(2, timeout=10)  # only passes if both checks run at once

    def slow_ok(cx: CheckContext) -> list[HostOutcome]:
        together.wait()
        return [HostOutcome("etcd1", "ok", 0.3, "fine")]

    def broken(cx: CheckContext) -> list[HostOutcome]:
        together.wait()
        raise RuntimeError("cannot read stats")

    report = run_checks(spec, open_nornir(LAB_INVENTORY),
                        checks=[("a", "A", slow_ok), ("b", "B", broken)])
    assert not together.broken
    assert report.phase("a").hosts["etcd1"].status == "ok"
    failed = report.phase("b").hosts["-"]
    assert failed.status == "failed" and "cannot read stats" in failed.message
    assert report.exit_code == 1


FRR_SUMMARY = """{"ipv4Unicast":{"routerId":"10.88.0.11","as":65010,"peers":{
"10.88.0.71":{"remoteAs":65000,"state":"Established","pfxRcd":0,"pfxSnt":1},
"10.88.0.72":{"remoteAs":65000,"state":"Active","pfxRcd":0,"pfxSnt":0}}}}"""


def test_bgp_check_names_the_switch_whose_session_is_down() -> None:
    from nornir_k8sha.checks import check_bgp, parse_bgp_summary
    from nornir_k8sha.testing import FakeFleet, install_fake

    assert parse_bgp_summary(FRR_SUMMARY)["10.88.0.71"] == {"state": "Established",
                                                           "pfxSnt": 1, "pfxRcd": 0}
    spec = load_cluster_spec(LAB_INVENTORY)
    nr = open_nornir(LAB_INVENTORY)
    fleet = install_fake(nr, FakeFleet())
    fleet.host("lvs1").on(r"^vtysh", stdout=FRR_SUMMARY)
    fleet.host("lvs2").on(r"^vtysh", stdout=FRR_SUMMARY.replace("Active", "Established")
                          .replace('"pfxSnt":1', '"pfxSnt":0'))
    out = {o.host: o for o in check_bgp(CheckContext(spec, nr, spec.state_dir))}
    assert out["lvs1"].status == "failed" and "switch2 (Active)" in out["lvs1"].message
    assert out["lvs2"].status == "ok" and "not announcing" in out["lvs2"].message
