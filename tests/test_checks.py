"""The check sweep's aggregation and parsers (live checks run in the lab tests)."""

from __future__ import annotations

import time

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

    def slow_ok(cx: CheckContext) -> list[HostOutcome]:
        time.sleep(0.3)
        return [HostOutcome("etcd1", "ok", 0.3, "fine")]

    def broken(cx: CheckContext) -> list[HostOutcome]:
        time.sleep(0.3)
        raise RuntimeError("cannot read stats")

    start = time.monotonic()
    report = run_checks(spec, open_nornir(LAB_INVENTORY),
                        checks=[("a", "A", slow_ok), ("b", "B", broken)])
    assert time.monotonic() - start < 0.55
    assert report.phase("a").hosts["etcd1"].status == "ok"
    failed = report.phase("b").hosts["-"]
    assert failed.status == "failed" and "cannot read stats" in failed.message
    assert report.exit_code == 1
