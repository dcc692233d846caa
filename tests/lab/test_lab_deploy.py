"""`deploy` and `check` on the real lab, as a user runs them (issues 4 and 5).

One deploy builds the whole topology; the tests after it read, break and repair what it built.
They run in file order and share the lab; each fault is undone before the test ends.
"""

from __future__ import annotations

import json
import shutil
import ssl
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest
import yaml

from nornir_k8sha.pki import ClusterPKI
from tests.conftest import LAB_INVENTORY, REPO

pytestmark = pytest.mark.lab

DEPLOY_TIMEOUT = 600


def cli(*args: str, timeout: float = DEPLOY_TIMEOUT) -> subprocess.CompletedProcess[str]:
    """The real entry point, from the repo root, with JSON output where asked."""
    return subprocess.run([sys.executable, "-m", "nornir_k8sha", *args], cwd=REPO,
                          capture_output=True, text=True, timeout=timeout)


def report_of(proc: subprocess.CompletedProcess[str]) -> dict:
    try:
        return json.loads(proc.stdout)
    except json.JSONDecodeError:
        raise AssertionError(f"not JSON (exit {proc.returncode}):\n{proc.stdout[-3000:]}\n"
                             f"{proc.stderr[-3000:]}") from None


def outcomes(report: dict) -> dict[tuple[str, str], dict]:
    return {(p["name"], h): o for p in report["phases"] for h, o in p["hosts"].items()}


def vip_readyz(spec) -> int:
    """GET /readyz through the VIP (LVS-DR → HAProxy → an apiserver), TLS verified."""
    pki = ClusterPKI(spec, REPO / spec.state_dir)
    ctx = ssl.create_default_context(cafile=str(pki.kubernetes_ca.cert))
    try:
        return httpx.get(f"https://{spec.api_endpoint}/readyz", verify=ctx, timeout=2).status_code
    except httpx.HTTPError:
        return 0


def wait_for(predicate, timeout: float, step: float = 0.5) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(step)
    return False


def vip_holder(lab) -> str | None:
    for h in lab.spec.role("lvs"):
        code, out, _ = lab.run(h.name, "ip -o -4 addr show", check=False)
        if code == 0 and f" {lab.spec.vip}/" in out:
            return h.name
    return None


@pytest.fixture(scope="module")
def deployed(lab):
    """A full deploy on a fresh lab (down + up: empty overlays); its JSON report."""
    lab.lab.down()
    lab.lab.up()
    proc = cli("deploy", "-i", str(LAB_INVENTORY), "--json")
    report = report_of(proc)
    failed = {k: v["message"] for k, v in outcomes(report).items() if v["status"] == "failed"}
    assert proc.returncode == 0, f"deploy failed: {failed}\n{proc.stderr[-2000:]}"
    return report


# --- the first deploy and the tier it builds ------------------------------------------------


def test_deploy_builds_everything_and_check_is_green(lab, deployed) -> None:
    assert deployed["exit_code"] == 0 and deployed["changed"] > 0
    proc = cli("check", "-i", str(LAB_INVENTORY), "--json", timeout=60)
    report = report_of(proc)
    results = outcomes(report)
    bad = {k: v["message"] for k, v in results.items() if v["status"] != "ok"}
    assert proc.returncode == 0 and not bad, bad
    assert sum(1 for (p, _h) in results if p == "etcd") == 3
    assert sum(1 for (p, _h) in results if p == "nodes") == 5
    assert {h for (p, h) in results if p == "leases"} == {"kube-controller-manager",
                                                          "kube-scheduler"}
    assert sum(1 for (p, _h) in results if p == "registry") == 5
    apiservers = {h for (p, h) in results if p == "apiserver"}
    assert {"master1", "master2", "master3"} <= apiservers
    assert any(h.startswith("VIP") for h in apiservers)
    assert (REPO / lab.spec.state_dir / "admin.conf").exists()


def test_etcd_refuses_a_client_without_certificate(lab, deployed) -> None:
    pki = ClusterPKI(lab.spec, REPO / lab.spec.state_dir)
    ctx = ssl.create_default_context(cafile=str(pki.etcd_ca.cert))
    for member in lab.spec.role("etcd"):
        with pytest.raises((httpx.HTTPError, ssl.SSLError)):
            resp = httpx.get(f"https://{member.address}:2379/health", verify=ctx, timeout=3)
            assert resp.status_code >= 400  # a refusal at the HTTP layer is a refusal too
            raise httpx.HTTPError("refused")


def test_vip_answers_through_ipvs_dr_and_haproxy(lab, deployed) -> None:
    assert vip_readyz(lab.spec) == 200
    holder = vip_holder(lab)
    assert holder is not None
    _, table, _ = lab.run(holder, "ipvsadm -Ln")
    assert "Route" in table and "10.88.0.21:6443" in table and "10.88.0.22:6443" in table


def test_second_deploy_changes_nothing(lab, deployed) -> None:
    proc = cli("deploy", "-i", str(LAB_INVENTORY), "--json")
    report = report_of(proc)
    changed = [k for k, v in outcomes(report).items() if v["status"] == "changed"]
    assert proc.returncode == 0 and report["changed"] == 0, changed


def test_dry_run_shows_the_diff_and_restart_and_touches_nothing(
        lab, deployed, tmp_path: Path) -> None:
    inv = tmp_path / "inv"
    shutil.copytree(LAB_INVENTORY, inv)
    defaults = yaml.safe_load((inv / "defaults.yaml").read_text())
    defaults["data"]["haproxy"]["check_inter_ms"] = 700
    (inv / "defaults.yaml").write_text(yaml.safe_dump(defaults, sort_keys=False))
    _, before, _ = lab.run("haproxy1", "md5sum /etc/haproxy/haproxy.cfg")
    proc = cli("deploy", "-i", str(inv), "--dry-run", "--phase", "lb", "--json")
    report = report_of(proc)
    assert proc.returncode == 0 and report["dry_run"]
    o = outcomes(report)[("lb", "haproxy1")]
    assert o["status"] == "changed"
    assert "inter 700" in o["diff"] and "inter 500" in o["diff"]
    assert "reload-or-restart haproxy" in o["diff"]
    _, after, _ = lab.run("haproxy1", "md5sum /etc/haproxy/haproxy.cfg")
    assert before == after


def test_invalid_inventory_exits_2_and_touches_nothing(lab, deployed, tmp_path: Path
                                                      ) -> None:
    inv = tmp_path / "bad"
    shutil.copytree(LAB_INVENTORY, inv)
    hosts = yaml.safe_load((inv / "hosts.yaml").read_text())
    del hosts["etcd3"]  # 2 etcd members: below the minimum of 3
    (inv / "hosts.yaml").write_text(yaml.safe_dump(hosts))
    reports = REPO / lab.spec.state_dir / "reports"
    before = set(reports.iterdir())
    proc = cli("deploy", "-i", str(inv))
    assert proc.returncode == 2
    assert "etcd" in proc.stderr and "nothing was touched" in proc.stderr
    assert set(reports.iterdir()) == before


# --- failover of the SLB tier ---------------------------------------------------------------


def test_stopping_keepalived_on_the_vip_holder_moves_the_vip(lab, deployed) -> None:
    holder = vip_holder(lab)
    other = next(h.name for h in lab.spec.role("lvs") if h.name != holder)
    lab.faults.stop_service(holder, "keepalived")
    try:
        assert wait_for(lambda: vip_holder(lab) == other, 10)
        assert wait_for(lambda: vip_readyz(lab.spec) == 200, 10)
    finally:
        lab.faults.start_service(holder, "keepalived")
    assert wait_for(lambda: vip_readyz(lab.spec) == 200, 10)


def test_stopping_haproxy_takes_it_out_of_ipvs(lab, deployed) -> None:
    holder = vip_holder(lab)
    lab.faults.stop_service("haproxy1", "haproxy")
    try:
        def gone() -> bool:
            return "10.88.0.21:6443" not in lab.run(holder, "ipvsadm -Ln")[1]
        assert wait_for(gone, 15)
        assert all(vip_readyz(lab.spec) == 200 for _ in range(5))
    finally:
        lab.faults.start_service("haproxy1", "haproxy")
    assert wait_for(lambda: "10.88.0.21:6443" in lab.run(holder, "ipvsadm -Ln")[1], 15)


def test_unreachable_host_fails_alone_and_exit_1(lab, deployed) -> None:
    lab.faults.cut_link("haproxy2")
    try:
        proc = cli("deploy", "-i", str(LAB_INVENTORY), "--phase", "lb", "--json")
    finally:
        lab.faults.restore_link("haproxy2")
    report = report_of(proc)
    results = outcomes(report)
    assert proc.returncode == 1
    assert results[("lb", "haproxy2")]["status"] == "failed"
    assert "haproxy2" in results[("lb", "haproxy2")]["message"]
    for host in ("haproxy1", "lvs1", "lvs2"):
        assert results[("lb", host)]["status"] in ("ok", "changed")


# --- the control plane under faults -----------------------------------------------------------


def test_apiserver_down_on_one_master_keeps_the_vip_ready(lab, deployed) -> None:
    unit = "kube-apiserver"
    lab.faults.stop_service("master1", unit)
    try:
        time.sleep(2.0)  # HAProxy marks it down after fall x inter (1 s here)
        codes = [vip_readyz(lab.spec) for _ in range(10)]
        assert codes == [200] * 10, codes
    finally:
        lab.faults.start_service("master1", unit)


def test_etcd_quorum_loss_fails_readyz_and_recovers_without_redeploy(
        lab, deployed) -> None:
    lab.faults.stop_service("etcd2", "etcd")
    lab.faults.stop_service("etcd3", "etcd")
    try:
        assert wait_for(lambda: vip_readyz(lab.spec) not in (200, 0), 20)
        proc = cli("check", "-i", str(LAB_INVENTORY), "--json", timeout=60)
        assert proc.returncode == 1
        etcd = {h: o for (p, h), o in outcomes(report_of(proc)).items() if p == "etcd"}
        assert "lost quorum" in etcd["etcd1"]["message"]
    finally:
        lab.faults.start_service("etcd2", "etcd")
        lab.faults.start_service("etcd3", "etcd")

    def green() -> bool:
        return cli("check", "-i", str(LAB_INVENTORY), "--json", timeout=60).returncode == 0

    assert wait_for(green, 60, step=2)
