"""The `check` sweep and the task library's checks, without a lab: HTTP probes on
`httpx.MockTransport`, SSH probes on the fake fleet. Each check is shown passing and failing."""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import tempfile
import threading
import time
from pathlib import Path

import httpx
import pytest
from nornir.core.inventory import ConnectionOptions

from nornir_k8sha.checkresult import CheckResult
from nornir_k8sha.checks import CheckContext, bgp_sessions, run_checks
from nornir_k8sha.checks.sweep import etcd_members, haproxy_backends, vip_and_ipvs
from nornir_k8sha.clients import parse_bgp_summary, parse_haproxy_csv
from nornir_k8sha.inventory import open_nornir
from nornir_k8sha.ociimage import probe_image
from nornir_k8sha.tasks import apiserver, certificates, etcd, frr, haproxy, harbor, keepalived
from nornir_k8sha.testing import FakeFleet, FakeRegistry, install_fake
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

#: The directors' BGP read, as the fakes see it (bgpd over its socket, or vtysh).
BGPD_ASKED = "bgp ipv4 unicast summary json"
FRR_SUMMARY = """{"ipv4Unicast":{"routerId":"10.88.0.11","as":65010,"peers":{
"10.88.0.71":{"remoteAs":65000,"state":"Established","pfxRcd":0,"pfxSnt":1},
"10.88.0.72":{"remoteAs":65000,"state":"Active","pfxRcd":0,"pfxSnt":0}}}}"""


@pytest.fixture
def lab_spec():  # noqa: ANN201
    return load_cluster_spec(LAB_INVENTORY)


@pytest.fixture
def cx(lab_spec, tmp_path: Path) -> CheckContext:
    return CheckContext(lab_spec, open_nornir(LAB_INVENTORY), tmp_path)


def _mock(routes: dict[tuple[str, str], object]) -> httpx.MockTransport:
    """(host address, path) → JSON body, an int status, or an exception to raise."""

    def handler(request: httpx.Request) -> httpx.Response:
        answer = routes.get((request.url.host, request.url.path))
        if answer is None:
            raise httpx.ConnectError("connection refused", request=request)
        if isinstance(answer, int):
            return httpx.Response(answer, text="[-]etcd failed\nreadyz check failed\n")
        if isinstance(answer, str):
            return httpx.Response(200, text=answer)
        return httpx.Response(200, json=answer)

    return httpx.MockTransport(handler)


# --- parsers -----------------------------------------------------------------------------------


def test_parse_haproxy_csv_reads_backend_servers_only() -> None:
    assert parse_haproxy_csv(STATS_CSV) == {"master1": "UP", "master2": "DOWN",
                                            "master3": "UP 1/2"}


def test_parse_bgp_summary() -> None:
    assert parse_bgp_summary(FRR_SUMMARY)["10.88.0.71"] == {"state": "Established",
                                                           "pfxSnt": 1, "pfxRcd": 0}


# --- etcd ----------------------------------------------------------------------------------------


def _etcd_routes(spec, *, healthy=("etcd1", "etcd2", "etcd3"), leader="101",
                 members=("etcd1", "etcd2", "etcd3"), down=()) -> dict:
    routes: dict = {}
    for i, h in enumerate(spec.role("etcd")):
        if h.name in down:
            continue
        a = str(h.address)
        routes[(a, "/health")] = {"health": "true" if h.name in healthy else "false",
                                  "reason": "" if h.name in healthy else "RAFT NO LEADER"}
        routes[(a, "/v3/maintenance/status")] = {
            "header": {"member_id": str(101 + i)}, "leader": leader, "dbSize": "2000000",
            "raftTerm": "3"}
        routes[(a, "/v3/cluster/member/list")] = {"members": [{"name": m} for m in members]}
    return routes


def test_etcd_check_is_a_nornir_task_with_measured_values(cx: CheckContext) -> None:
    transport = _mock(_etcd_routes(cx.spec))
    result = cx.nr.filter(name="etcd1").run(task=etcd.check, spec=cx.spec, transport=transport)
    res = result["etcd1"][0].result
    assert isinstance(res, CheckResult) and res.status == "ok"
    assert res.values["is_leader"] and res.values["db_size"] == 2_000_000
    assert res.values["members"] == ["etcd1", "etcd2", "etcd3"]
    assert "(leader)" in res.message


def test_etcd_sweep_healthy_then_quorum_lost(cx: CheckContext) -> None:
    routes = _etcd_routes(cx.spec)
    cx.transport = _mock(routes)
    assert {r.target: r.status for r in etcd_members(cx)} == {
        "etcd1": "ok", "etcd2": "ok", "etcd3": "ok"}
    routes.clear()
    routes.update(_etcd_routes(cx.spec, healthy=("etcd1",), down=("etcd3",)))
    out = {r.target: r for r in etcd_members(cx)}
    assert out["etcd3"].status == "failed" and "unreachable" in out["etcd3"].message
    assert out["etcd2"].status == "failed"
    assert "lost quorum: 1/3 healthy, quorum 2" in out["etcd2"].message


def test_etcd_sweep_fails_on_two_leaders_and_member_list_disagreement(cx) -> None:
    routes = _etcd_routes(cx.spec)
    etcd2 = str(cx.spec.host("etcd2").address)
    routes[(etcd2, "/v3/maintenance/status")]["leader"] = "102"
    cx.transport = _mock(routes)
    assert all("2 leaders seen" in r.message for r in etcd_members(cx))
    routes.update(_etcd_routes(cx.spec))
    routes[(etcd2, "/v3/cluster/member/list")] = {"members": [{"name": "etcd2"}]}
    assert {r.status for r in etcd_members(cx)} == {"failed"}


# --- the SLB tier ----------------------------------------------------------------------------


def _director(holds: bool, vip: str, routes: bool = True) -> str:
    addr = f"2: eth0    inet {vip}/32 scope global eth0\n" if holds else ""
    table = ("TCP  {vip}:6443 wlc\n  -> RemoteAddress:Port Forward Weight ActiveConn InActConn\n"
             "  -> 10.88.0.21:6443 Route 1 0 0\n  -> 10.88.0.22:6443 Route 1 0 0\n"
             if routes else "TCP  {vip}:6443 wlc\n").format(vip=vip)
    return "1: lo    inet 127.0.0.1/8 scope host lo\n" + addr + table


def test_vip_check_one_holder_with_dr_routes(cx: CheckContext, monkeypatch) -> None:
    vip = str(cx.spec.vip)
    fleet = install_fake(cx.nr, FakeFleet())
    fleet.host("lvs1").on(r"^ip -o -4 addr", stdout=_director(True, vip))
    fleet.host("lvs2").on(r"^ip -o -4 addr", stdout=_director(False, vip))
    monkeypatch.setattr("nornir_k8sha.tasks.keepalived.check_vip_tcp",
                        lambda spec: CheckResult("VIP", "ok", "tcp ok"))
    out = {r.target: r for r in vip_and_ipvs(cx)}
    assert out["lvs1"].status == "ok" and out["lvs1"].values["routes"] == [
        "10.88.0.21:6443", "10.88.0.22:6443"]
    assert out["lvs2"].status == "ok" and "standby" in out["lvs2"].message


@pytest.mark.parametrize("lvs1,lvs2,why", [
    ((True, True), (True, True), "2 directors hold the VIP"),
    ((False, True), (False, True), "0 directors hold the VIP"),
    ((True, False), (False, True), "no DR real server"),
])
def test_vip_check_fails_on_split_brain_no_holder_or_empty_ipvs(cx, monkeypatch, lvs1, lvs2,
                                                                  why) -> None:
    vip = str(cx.spec.vip)
    fleet = install_fake(cx.nr, FakeFleet())
    fleet.host("lvs1").on(r"^ip -o -4 addr", stdout=_director(*lvs1[:1], vip, lvs1[1]))
    fleet.host("lvs2").on(r"^ip -o -4 addr", stdout=_director(*lvs2[:1], vip, lvs2[1]))
    monkeypatch.setattr("nornir_k8sha.tasks.keepalived.check_vip_tcp",
                        lambda spec: CheckResult("VIP", "ok", "tcp ok"))
    out = {r.target: r for r in vip_and_ipvs(cx)}
    assert out["lvs1"].status == "failed" and why in out["lvs1"].message


def test_vip_check_reports_an_unreachable_director_by_name(cx, monkeypatch) -> None:
    fleet = install_fake(cx.nr, FakeFleet())
    fleet.host("lvs1").on(r"^ip -o -4 addr", stdout=_director(True, str(cx.spec.vip)))
    del cx.nr.inventory.hosts["lvs2"].connections["k8sha_ssh"]
    cx.nr.inventory.hosts["lvs2"].hostname = "127.0.0.1"
    cx.nr.inventory.hosts["lvs2"].port = 9  # discard: nothing listens
    monkeypatch.setattr("nornir_k8sha.tasks.keepalived.check_vip_tcp",
                        lambda spec: CheckResult("VIP", "ok", "tcp ok"))
    out = {r.target: r for r in vip_and_ipvs(cx)}
    assert out["lvs2"].status == "failed" and "lvs2" in out["lvs2"].message
    assert out["lvs1"].status == "ok"
    assert "lvs2" not in cx.nr.data.failed_hosts  # a check never marks a host failed


def test_haproxy_check_up_down_and_unreachable(cx: CheckContext) -> None:
    h1, h2 = (str(h.address) for h in cx.spec.role("haproxy"))
    transport = _mock({(h1, "/stats;csv"): STATS_CSV,
                       (h2, "/stats;csv"): STATS_CSV.replace("UP", "DOWN")})
    cx.transport = transport
    out = {r.target: r for r in haproxy_backends(cx)}
    assert out["haproxy1"].status == "ok"
    assert out["haproxy1"].values == {"up": ["master1", "master3"], "down": ["master2"]}
    assert out["haproxy2"].status == "failed" and "no apiserver backend is up" in \
        out["haproxy2"].message
    out = cx.run(haproxy.check, cx.spec.role("haproxy"), transport=_mock({}))
    assert all(r.status == "failed" and "stats unreachable" in r.message for r in out.values())


def test_bgp_check_names_the_switch_whose_session_is_down(cx: CheckContext) -> None:
    fleet = install_fake(cx.nr, FakeFleet())
    fleet.host("lvs1").on(BGPD_ASKED, stdout=FRR_SUMMARY)
    fleet.host("lvs2").on(BGPD_ASKED, stdout=FRR_SUMMARY.replace("Active", "Established")
                           .replace('"pfxSnt":1', '"pfxSnt":0'))
    out = {r.target: r for r in bgp_sessions(cx)}
    assert out["lvs1"].status == "failed" and "switch2 (Active)" in out["lvs1"].message
    assert out["lvs2"].status == "ok" and "not announcing" in out["lvs2"].message
    assert out["lvs2"].values["announcing"] is False


def test_bgp_check_asks_bgpd_again_once_when_it_ends_without_an_exit_status(
        cx: CheckContext) -> None:
    fleet = install_fake(cx.nr, FakeFleet())
    answers = {"lvs1": [(-1, "", "")], "lvs2": [(-1, "", ""), (-1, "", "")]}

    def vtysh(name: str):  # noqa: ANN202
        return lambda host, command, stdin: (answers[name].pop(0) if answers[name]
                                             else FRR_SUMMARY)
    for name in answers:
        fleet.host(name).on(BGPD_ASKED, vtysh(name))
    out = {r.target: r for r in bgp_sessions(cx)}
    assert "switch2 (Active)" in out["lvs1"].message  # the second answer was read
    assert out["lvs2"].status == "failed" and out["lvs2"].message == "bgpd: exit -1"
    assert [len([c for c in fleet.host(n).commands() if frr.SHOW_SUMMARY in c])
            for n in ("lvs1", "lvs2")] == [2, 2]


def _vty_server(path: str, answer: bytes, asked: list[bytes]) -> threading.Thread:
    """bgpd's vty socket as vtysh finds it: one NUL-ended command in, the output and three NULs
    and a status byte out (sent in two parts, as a long answer arrives)."""
    srv = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    srv.bind(path)
    srv.listen(1)

    def serve() -> None:
        with srv:
            conn, _ = srv.accept()
            with conn:
                data = b""
                while not data.endswith(b"\0"):
                    data += conn.recv(4096)
                asked.append(data)
                conn.sendall(answer[:10])
                time.sleep(0.05)
                conn.sendall(answer[10:])
    t = threading.Thread(target=serve, daemon=True)
    t.start()
    return t


@pytest.mark.skipif(shutil.which("perl") is None, reason="needs perl")
def test_bgp_summary_asks_bgpd_over_its_vty_socket_without_starting_vtysh() -> None:
    """The director's command, run by a real /bin/sh and perl against a stand-in bgpd socket:
    bgpd's JSON and its status come back, and vtysh (a stand-in on PATH that records each run)
    starts only where there is no socket."""
    with tempfile.TemporaryDirectory(dir="/tmp") as d:
        vty, ran = f"{d}/bgpd.vty", Path(d, "vtysh-ran")
        Path(d, "vtysh").write_text(f"#!/bin/sh\necho \"$@\" >> {ran}\necho '{{}}'\n")
        Path(d, "vtysh").chmod(0o755)
        env = {"PATH": f"{d}:/usr/bin:/bin"}

        def ask() -> subprocess.CompletedProcess[str]:
            return subprocess.run(["/bin/sh", "-c", frr.summary_command(vty)], env=env,
                                  capture_output=True, text=True, timeout=10)

        asked: list[bytes] = []
        served = _vty_server(vty, FRR_SUMMARY.encode() + b"\0\0\0\0", asked)
        out = ask()
        served.join(5)
        assert (out.returncode, out.stdout) == (0, FRR_SUMMARY), out.stderr
        assert asked == [frr.SHOW_SUMMARY.encode() + b"\0"]
        assert not ran.exists()  # no vtysh process
        os.unlink(vty)
        served = _vty_server(vty, b"% Unknown command\0\0\0\2", asked)
        assert ask().returncode == 2  # bgpd's status is the exit status
        served.join(5)
        os.unlink(vty)
        out = ask()  # no bgpd socket: vtysh answers
        assert ran.read_text().split("\n")[0] == f"-c {frr.SHOW_SUMMARY}"


# --- Kubernetes ------------------------------------------------------------------------------


def _api_routes(spec, *, readyz=200, nodes_ready=True, holder="master2") -> dict:
    version = {"gitVersion": "v1.31.4"}
    routes: dict = {}
    for address in [str(h.address) for h in spec.role("masters")] + [str(spec.vip)]:
        for path in ("/healthz", "/livez"):
            routes[(address, path)] = "ok"
        routes[(address, "/readyz")] = "ok" if readyz == 200 else readyz
        routes[(address, "/version")] = version
    cond = "True" if nodes_ready else "False"
    vip = str(spec.vip)
    routes[(vip, "/api/v1/nodes")] = {"items": [
        {"metadata": {"name": h.name}, "status": {"conditions": [
            {"type": "Ready", "status": cond}]}} for h in spec.kubernetes_nodes()]}
    for lease in apiserver.LEASES:
        routes[(vip, apiserver.LEASE_PATH.format(name=lease))] = {
            "spec": {"holderIdentity": holder}}
    return routes


def test_apiserver_checks_pass_and_fail(cx: CheckContext) -> None:
    t = _mock(_api_routes(cx.spec))
    masters = cx.run(apiserver.check, cx.spec.role("masters"), transport=t)
    assert {r.status for r in masters.values()} == {"ok"}
    assert masters["master1"].values["version"] == "v1.31.4"
    assert apiserver.check_vip(cx.spec, transport=t).status == "ok"
    t = _mock(_api_routes(cx.spec, readyz=500))
    res = apiserver.check_vip(cx.spec, transport=t)
    assert res.status == "failed" and res.values["failed_paths"] == ["/readyz"]
    assert "readyz check failed" in res.message


def test_node_and_lease_checks_pass_and_fail(cx: CheckContext) -> None:
    t = _mock(_api_routes(cx.spec))
    assert {r.status for r in apiserver.check_nodes(cx.spec, transport=t)} == {"ok"}
    assert [r.values["holder"] for r in apiserver.check_leases(cx.spec, transport=t)] == [
        "master2", "master2"]
    t = _mock(_api_routes(cx.spec, nodes_ready=False, holder=""))
    nodes = apiserver.check_nodes(cx.spec, transport=t)
    assert {r.message for r in nodes} == {"node NotReady"}
    assert {r.message for r in apiserver.check_leases(cx.spec, transport=t)} == {
        "no leader holds the lease"}
    routes = _api_routes(cx.spec)
    del routes[(str(cx.spec.vip), "/api/v1/nodes")]
    nodes = apiserver.check_nodes(cx.spec, transport=_mock(routes))
    assert nodes[0].status == "failed" and "cannot list nodes" in nodes[0].message


def test_kubernetes_rows_are_skipped_without_a_control_plane(cx: CheckContext) -> None:
    report = run_checks(cx.spec, cx.nr, state_dir=cx.state_dir,
                        checks=[r for r in __import__("nornir_k8sha.checks", fromlist=["CHECKS"])
                                .CHECKS if r[0] in ("apiserver", "nodes", "leases", "registry")])
    assert {o.status for p in report.phases for o in p.hosts.values()} == {"skipped"}
    assert report.exit_code == 0


# --- the sweep ----------------------------------------------------------------------------------


def test_checks_run_concurrently_and_failures_set_exit_code(cx: CheckContext) -> None:
    together = threading.Barrier(2, timeout=10)  # only passes if both rows run at once

    def slow_ok(cx: CheckContext) -> list[CheckResult]:
        together.wait()
        return [CheckResult("etcd1", "ok", "fine", {"n": 1})]

    def broken(cx: CheckContext) -> list[CheckResult]:
        together.wait()
        raise RuntimeError("cannot read stats")

    report = run_checks(cx.spec, cx.nr, checks=[("a", "A", slow_ok), ("b", "B", broken)])
    assert not together.broken
    assert report.phase("a").hosts["etcd1"].status == "ok"
    assert report.as_dict()["phases"][0]["hosts"]["etcd1"]["values"] == {"n": 1}
    failed = report.phase("b").hosts["-"]
    assert failed.status == "failed" and "cannot read stats" in failed.message
    assert report.exit_code == 1
    json.dumps(report.as_dict())


def _ctr(fleet: FakeFleet, host: str, spec, *, pulls: bool = True, digest: str | None = None,
         untrusted_pulls: bool = False) -> None:
    """The node answers the registry probe (both pulls in one command) as ctr would."""
    ref = harbor.probe_reference(spec)
    digest = digest or probe_image(spec.name).digest
    pulled = (f"{ref}: resolved       |++++++|\nelapsed: 0.1 s    total:   0.0 B (0.0 B/s)\n"
              f"unpacking linux/amd64 {digest}...\ndone: 3.328841ms\t\n" if pulls else "")
    fleet.host(host).on(
        r"(?s)--hosts-dir /nonexistent .*--hosts-dir /etc/containerd/certs.d", exit_code=0 if pulls
        else 1, stdout=f"{pulled}\n{harbor.UNTRUSTED_MARK} {0 if untrusted_pulls else 1}\n",
        stderr="" if pulls else "ctr: failed to resolve reference: x509")


def test_registry_check_pulls_with_the_cluster_ca_and_is_refused_without(cx) -> None:
    fleet = install_fake(cx.nr, FakeFleet())
    nodes = cx.spec.kubernetes_nodes()
    for h in nodes:
        _ctr(fleet, h.name, cx.spec)
    _ctr(fleet, "worker1", cx.spec, pulls=False)
    _ctr(fleet, "worker2", cx.spec, digest="sha256:" + "0" * 64)
    _ctr(fleet, "master3", cx.spec, untrusted_pulls=True)
    out = {r.target: r for r in registry_from_nodes_row(cx, nodes)}
    assert out["master1"].status == "ok"
    assert out["master1"].values["digest"] == probe_image(cx.spec.name).digest
    assert out["master1"].values["untrusted_refused"] is True
    assert out["worker1"].status == "failed" and "x509" in out["worker1"].message
    assert out["worker2"].status == "failed" and "expected" in out["worker2"].message
    assert out["master3"].status == "failed" and "without the cluster CA" in \
        out["master3"].message
    # two ctr processes per node, in one exec channel: the pull names the digest it stored
    # (no `ctr image ls`), the refusal runs beside it
    for h in nodes:
        ran = fleet.host(h.name).commands()
        assert sum(c.count(" image pull ") for c in ran) == 2, ran
        assert not any(" image ls" in c for c in ran), ran
        assert fleet.host(h.name).round_trips == 1, ran


def test_registry_probe_runs_both_pulls_in_one_shell_and_reports_each(tmp_path: Path,
                                                                      cx: CheckContext) -> None:
    """The probe command itself, run by a real /bin/sh with a stand-in `ctr` on PATH: each
    pull runs once, with no progress display, the refusal beside the pull, and the output says
    how each one ended."""
    log = tmp_path / "ctr.log"
    (tmp_path / "ctr").write_text(
        "#!/bin/sh\n"
        f'echo "roots=$SSL_CERT_FILE:$SSL_CERT_DIR $*" >> {log}\n'
        'case "$*" in\n'
        f'  *nonexistent*) [ -e {tmp_path}/untrusted-pulls ] && exit 0; echo x509 >&2; exit 1;;\n'
        f'  *) [ -e {tmp_path}/trusted-fails ] && {{ echo "ctr: x509" >&2; exit 1; }}\n'
        '     echo "unpacking linux/amd64 sha256:abc..."; echo "done: 1ms";;\n'
        "esac\n")
    (tmp_path / "ctr").chmod(0o755)
    env = {"PATH": f"{tmp_path}:/usr/bin:/bin"}

    def probe() -> subprocess.CompletedProcess[str]:
        log.write_text("")
        return subprocess.run(["/bin/sh", "-c", harbor.probe_command(cx.spec)], env=env,
                              capture_output=True, text=True, timeout=10)

    ok = probe()
    assert ok.returncode == 0, ok.stderr
    assert harbor.pulled_digest(ok.stdout) == "sha256:abc"
    assert harbor.untrusted_exit(ok.stdout) == 1
    pulls = log.read_text().splitlines()
    assert len(pulls) == 2 and sum("--hosts-dir /nonexistent" in p for p in pulls) == 1, pulls
    # without its progress display (it spins until its next tick after a pull ends), and with
    # no system roots: the trusted pull trusts the CA of certs.d/<registry> alone
    assert all(p.startswith("roots=/dev/null:/nonexistent --debug ") for p in pulls), pulls
    (tmp_path / "untrusted-pulls").touch()
    assert harbor.untrusted_exit(probe().stdout) == 0
    (tmp_path / "trusted-fails").touch()
    bad = probe()
    assert bad.returncode == 1 and "x509" in bad.stderr
    assert harbor.untrusted_exit(bad.stdout) == 0
    assert harbor.untrusted_exit("unpacking linux/amd64 sha256:abc...\n") is None


def registry_from_nodes_row(cx: CheckContext, nodes) -> list[CheckResult]:  # noqa: ANN001
    return list(cx.run(harbor.check, nodes).values())


def test_probe_image_is_deterministic_and_published_once(cx: CheckContext) -> None:
    a, b = probe_image("lab", "amd64"), probe_image("lab", "amd64")
    assert a == b and a.digest.startswith("sha256:")
    assert probe_image("other", "amd64").digest != a.digest
    registry = FakeRegistry()
    t = registry.transport
    nr = cx.nr.filter(name="harbor1")
    first = nr.run(task=harbor.publish_probe_image, spec=cx.spec, state_dir=cx.state_dir,
                   transport=t)["harbor1"][0]
    assert first.changed and len(registry.blobs) == 2 and len(registry.manifests) == 1
    # the registry names itself in upload URLs; the push stays on the address it reached
    assert registry.hosts == {str(cx.spec.host("harbor1").address)}
    registry.calls.clear()
    again = nr.run(task=harbor.publish_probe_image, spec=cx.spec, state_dir=cx.state_dir,
                   transport=t)["harbor1"][0]
    assert not again.changed
    assert not any(c.startswith(("PUT", "POST")) for c in registry.calls)


def test_certificate_check_fails_within_the_renewal_window(cx: CheckContext) -> None:
    from nornir_k8sha.pki import ClusterPKI

    ClusterPKI(cx.spec, cx.state_dir).ensure()
    ok = certificates.check(cx.state_dir)
    assert [r.status for r in ok] == ["ok"] and ok[0].values["days_left"] > 300
    soon = certificates.check(cx.state_dir, within_days=400)
    assert soon and {r.status for r in soon} == {"failed"}
    assert any("renew it with `pki renew --within 400`" in r.message for r in soon)


def test_summary_says_what_redundancy_is_left(cx: CheckContext) -> None:
    from nornir_k8sha.checks.summary import summarise

    def r(target: str, status: str = "ok", **values) -> CheckResult:  # noqa: ANN003
        return CheckResult(target, status, "", values)

    rows = {
        "etcd": [r("etcd1", healthy=True), r("etcd2", healthy=True),
                 r("etcd3", "failed", healthy=False)],
        "vip": [r("lvs1", holds_vip=True, routes=["x"]), r("lvs2", "failed"),
                r(f"VIP {cx.spec.vip}:6443")],
        "haproxy": [r("haproxy1"), r("haproxy2", "failed")],
        "switches": [r("switch1", vip_route={"next_hops": [str(cx.spec.host("lvs1").address)]}),
                     r("switch2", vip_route={"next_hops": [str(cx.spec.host("lvs2").address)]})],
        "apiserver": [r("master1"), r("master2"), r("master3"),
                      r(f"VIP {cx.spec.api_endpoint}")],
    }
    out = {s.target: s for s in summarise(cx.spec, rows)}
    assert out["API via VIP"].status == "ok" and out["API via VIP"].values["serving"]
    assert out["etcd"].message.startswith("2/3 healthy, tolerates 0 more failure(s)")
    assert out["LVS directors"].message == "1 of 2 directors answering; VIP held by lvs1"
    assert out["HAProxy"].message == "1 of 2 serving; 1 down"
    # switch2 still routes the VIP to the director that lost it
    assert out["switches"].status == "failed"
    assert out["switches"].message == "1 of 2 switches route the VIP /32 to its holder lvs1"
    rows["etcd"][1] = r("etcd2", "failed", healthy=False)
    rows["apiserver"][-1] = r(f"VIP {cx.spec.api_endpoint}", "failed")
    out = {s.target: s for s in summarise(cx.spec, rows)}
    assert out["etcd"].status == "failed" and "quorum lost (needs 2)" in out["etcd"].message
    assert out["API via VIP"].status == "failed"


def test_a_host_that_never_answers_costs_one_probe_timeout(cx: CheckContext) -> None:
    """A host that accepts TCP and then says nothing (frozen sshd): the check gives up after
    CHECK_TIMEOUT_S instead of the inventory's connect timeout, and names the host."""
    import socket

    from nornir_k8sha import constants as C

    silent = socket.socket()
    silent.bind(("127.0.0.1", 0))
    silent.listen(4)
    try:
        host = cx.nr.inventory.hosts["lvs2"]
        host.hostname, host.port = "127.0.0.1", silent.getsockname()[1]
        host.connection_options["k8sha_ssh"] = ConnectionOptions(
            extras={"strict_host_key": False})
        out = cx.run(keepalived.check, [cx.spec.host("lvs2")])
    finally:
        silent.close()
    assert out["lvs2"].status == "failed"
    assert f"timed out after {C.CHECK_TIMEOUT_S:g}s" in out["lvs2"].message
