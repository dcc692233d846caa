"""Day 2 on the real lab (issue 11): the cluster lock held on the hosts, certificate renewal.

One deploy on a fresh lab; the tests after it run in file order and share it.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

from nornir_k8sha import constants as C
from tests.conftest import LAB_INVENTORY, REPO
from tests.kubectl_bins import KUBECTLS, NO_KUBECTL, kubectl

pytestmark = pytest.mark.lab

DEPLOY_TIMEOUT = 600


def start(*args: str, cwd: Path = REPO) -> subprocess.Popen[str]:
    """The real entry point, started (not waited for), importing this worktree's package."""
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    return subprocess.Popen([sys.executable, "-m", "nornir_k8sha", *args], cwd=cwd, env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def cli(*args: str, cwd: Path = REPO, timeout: float = DEPLOY_TIMEOUT
        ) -> subprocess.CompletedProcess[str]:
    proc = start(*args, cwd=cwd)
    out, err = proc.communicate(timeout=timeout)
    return subprocess.CompletedProcess(proc.args, proc.returncode, out, err)


def flat(text: str) -> str:
    return " ".join(text.split())


def lock_files(lab) -> dict[str, str]:
    """The cluster lock file on each etcd member ('' where there is none)."""
    found = {}
    for m in lab.spec.role(C.ROLE_ETCD):
        _, out, _ = lab.run(m.name, f"cat {C.HOST_LOCK_FILE} 2>/dev/null || true")
        found[m.name] = out.strip()
    return found


def second_machine(tmp_path: Path, spec) -> Path:  # noqa: ANN001
    """A working dir standing for another operator's machine: the same state (SSH key, PKI,
    secrets: symlinks) but its own local operation lock, so only the lock on the hosts can
    stop it."""
    mine = REPO / spec.state_dir
    theirs = tmp_path / "machine2" / spec.state_dir
    theirs.mkdir(parents=True)
    for entry in mine.iterdir():
        if entry.name != C.STATE_OPERATION_LOCK:
            (theirs / entry.name).symlink_to(entry)
    return tmp_path / "machine2"


@pytest.fixture(scope="module")
def deployed(lab):
    lab.lab.down()
    lab.lab.up()
    proc = cli("deploy", "-i", str(LAB_INVENTORY))
    assert proc.returncode == 0, proc.stderr[-3000:]
    return lab


def test_two_concurrent_deploys_from_two_machines_exactly_one_proceeds(
        deployed, tmp_path: Path) -> None:
    lab = deployed
    other = second_machine(tmp_path, lab.spec)
    first = start("deploy", "-i", str(LAB_INVENTORY))
    time.sleep(0.5)
    second = start("deploy", "-i", str(LAB_INVENTORY), cwd=other)
    runs = {}
    for name, proc in (("first", first), ("second", second)):
        out, err = proc.communicate(timeout=DEPLOY_TIMEOUT)
        runs[name] = (proc.pid, proc.returncode, flat(out + err))
    codes = sorted(code for _, code, _ in runs.values())
    assert codes == [0, 1], {k: (c, o[-1500:]) for k, (_, c, o) in runs.items()}
    (winner,) = [k for k, (_, c, _) in runs.items() if c == 0]
    (loser,) = [k for k, (_, c, _) in runs.items() if c == 1]
    message = runs[loser][2]
    assert "the cluster is locked by " in message and f"pid {runs[winner][0]}, `deploy`" \
        in message, message[-1500:]
    assert "nothing was touched on any host" in message
    print(f"\nwinner: {winner} deploy; loser said: "
          f"{message[message.index('the cluster is locked'):][:200]}")
    assert lock_files(lab) == {m.name: "" for m in lab.spec.role(C.ROLE_ETCD)}  # released


def test_a_killed_deploy_leaves_a_stale_lock_broken_only_with_the_flag(deployed) -> None:
    lab = deployed
    doomed = start("deploy", "-i", str(LAB_INVENTORY))
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline and not all(lock_files(lab).values()):
        time.sleep(0.2)
    held = lock_files(lab)
    os.kill(doomed.pid, signal.SIGKILL)
    doomed.communicate(timeout=30)
    assert all(held.values()), held
    assert {json.loads(v)["pid"] for v in held.values()} == {doomed.pid}
    refused = cli("deploy", "-i", str(LAB_INVENTORY))
    text = flat(refused.stdout + refused.stderr)
    assert refused.returncode == 1, text[-1500:]
    assert f"pid {doomed.pid}" in text and "looks stale" in text and "--break-lock" in text
    broken = cli("deploy", "-i", str(LAB_INVENTORY), "--break-lock")
    text = flat(broken.stdout + broken.stderr)
    assert broken.returncode == 0, text[-1500:]
    assert "broke a stale cluster lock" in text and f"process {doomed.pid}" in text
    assert lock_files(lab) == {m.name: "" for m in lab.spec.role(C.ROLE_ETCD)}


# --- pki renew ----------------------------------------------------------------------------------


def serials(lab) -> dict[str, str]:  # noqa: ANN001
    """The serial of each certificate `pki renew` rolls out, as the hosts have it."""
    found = {}
    paths = {C.ROLE_ETCD: [C.ETCD_SERVER_CERT, C.ETCD_PEER_CERT],
             C.ROLE_MASTERS: [C.APISERVER_ETCD_CLIENT_CERT, C.KUBE_APISERVER_CERT],
             C.ROLE_HARBOR: [C.REGISTRY_CERT]}
    for role, files in paths.items():
        for h in lab.spec.role(role):
            for path in files:
                _, out, _ = lab.run(h.name, f"openssl x509 -noout -serial -in {path}")
                found[f"{h.name}:{path}"] = out.strip()
    return found


def test_pki_renew_within_400_renews_everything_under_load_and_check_is_green(deployed) -> None:
    from nornir_k8sha.runbook import measure  # lazy: only the lab tests measure
    from nornir_k8sha.runbook.load import LoadProbe

    lab = deployed
    before = serials(lab)
    probe = LoadProbe(lab.spec, REPO / lab.spec.state_dir)
    probe.start()
    time.sleep(2.0)
    started = time.monotonic()
    proc = cli("pki", "renew", "-i", str(LAB_INVENTORY), "--within", "400")
    took = time.monotonic() - started
    time.sleep(2.0)
    samples, marks = probe.stop()
    acknowledged, lost = probe.audit_writes()
    probe.cleanup()
    fig = measure.figures(samples, fault_at=None, lifted_at=None, acknowledged=acknowledged,
                          lost=lost, marks=marks)
    text = flat(proc.stdout + proc.stderr)
    print(f"\npki renew --within 400: exit {proc.returncode} in {took:.1f} s; load probe: "
          f"{fig.requests} requests, {fig.failed} failed, longest gap {fig.downtime_s:.2f} s, "
          f"{acknowledged} writes acknowledged, {lost} lost\n{proc.stdout[-2500:]}")
    assert proc.returncode == 0, text[-2000:]
    assert "renewed 13 certificate(s)" in text  # 10 leaves here + 3 masters' apiserver certs
    assert "handed over to" in text  # the etcd leader was restarted last, after a hand-over
    after = serials(lab)
    same = [k for k in before if before[k] == after[k]]
    assert not same, f"not renewed on the hosts: {same}"
    assert lost == 0
    check = cli("check", "-i", str(LAB_INVENTORY), timeout=120)
    assert check.returncode == 0, flat(check.stdout + check.stderr)[-2000:]
    again = cli("deploy", "-i", str(LAB_INVENTORY), "--json")
    assert again.returncode == 0 and json.loads(again.stdout)["changed"] == 0, \
        again.stdout[-2000:]


# --- scaling ------------------------------------------------------------------------------------


def node_names(lab, tmp_path: Path) -> set[str]:  # noqa: ANN001
    """`kubectl get nodes -o name` with the deploy's admin.conf, through the VIP."""
    version = next(reversed(KUBECTLS), None) or pytest.skip(NO_KUBECTL)
    got = kubectl(version, REPO / lab.spec.state_dir / C.STATE_ADMIN_KUBECONFIG, "get",
                  "nodes", "-o", "name", home=tmp_path)
    assert got.returncode == 0, got.stderr
    return {line.removeprefix("node/") for line in got.stdout.split()}


def test_a_third_worker_joins_alone_then_node_remove_takes_it_out(deployed,
                                                                  tmp_path: Path) -> None:
    lab = deployed
    inv = tmp_path / "inventory"
    shutil.copytree(LAB_INVENTORY, inv)
    hosts = yaml.safe_load((inv / "hosts.yaml").read_text())
    hosts["worker3"] = {"hostname": "10.88.0.53", "groups": ["workers"],
                        "data": {"physical_host": "pm3"}}
    (inv / "hosts.yaml").write_text(yaml.safe_dump(hosts, sort_keys=False))
    up = cli("lab", "up", "-i", str(inv), timeout=300)
    assert up.returncode == 0, flat(up.stdout + up.stderr)[-1500:]
    assert "started 1" in up.stdout, up.stdout
    joined = cli("deploy", "-i", str(inv), "--json")
    report = json.loads(joined.stdout)
    changed = sorted({h for p in report["phases"] for h, o in p["hosts"].items()
                      if o["status"] == "changed"})
    print(f"\ndeploy with worker3 added: changed on {changed}, "
          f"{report.get('duration', report.get('seconds', '?'))}")
    assert joined.returncode == 0, joined.stdout[-2000:]
    assert changed == ["worker3"]
    assert "worker3" in node_names(lab, tmp_path)
    removed = cli("node", "remove", "worker3", "-i", str(inv))
    text = flat(removed.stdout + removed.stderr)
    print(text[-800:])
    assert removed.returncode == 0, text[-1500:]
    assert "cordoned worker3" in text and "kubeadm reset -f" in text
    assert "worker3" not in node_names(lab, tmp_path)
    assert {"worker1", "worker2", "master1"} <= node_names(lab, tmp_path)


# --- the restore drill (last: it rebuilds etcd from a snapshot) -------------------------------


def test_restore_drill_passes_markers_back_and_check_is_green(deployed) -> None:
    proc = cli("runbook", "run", "restore-drill", "-i", str(LAB_INVENTORY), "--json",
               timeout=600)
    try:
        doc = json.loads(proc.stdout)
    except json.JSONDecodeError:
        raise AssertionError(flat(proc.stdout + proc.stderr)[-3000:]) from None
    (case,) = doc["cases"]
    steps = [(s["name"], round(s["duration"], 2), s["ok"], s["message"][:120])
             for s in case["steps"]]
    names = [s[0] for s in steps]
    destroyed = next(i for i, n in enumerate(names) if n.startswith("destroy a majority"))
    recovered = sum(d for _, d, _, _ in steps[destroyed + 1:names.index(
        "every marker written before the backup is back") + 1])
    print(f"\nrestore-drill: {case['verdict']} in {case['duration_s']} s; from quorum "
          f"destroyed to every marker back through the VIP: {recovered:.1f} s")
    for s in steps:
        print("  ", s)
    assert proc.returncode == 0 and case["verdict"] == "passed", (case["reason"], steps)
    check = cli("check", "-i", str(LAB_INVENTORY), timeout=120)
    assert check.returncode == 0, flat(check.stdout + check.stderr)[-2000:]
