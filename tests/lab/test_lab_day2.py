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


def front_end_log(lab, since: str = "-3min") -> str:  # noqa: ANN001
    """What the front end logged since `since` (journalctl's --since) that a failed check may
    stem from: HAProxy sessions that did not end cleanly (a tcplog termination state other
    than "--"), backends going DOWN or UP, apiservers starting, stopping or failing a request."""
    lines = []
    for h in lab.spec.role(C.ROLE_HAPROXY):
        _, out, _ = lab.run(h.name, f"journalctl -u haproxy --no-pager -o short-precise "
                                    f"--since '{since}' | grep -E ' apiserver/| is (UP|DOWN)' "
                                    f"| grep -v -e ' -- ' -e WARNING || true")
        lines += out.splitlines()
    for m in lab.spec.role(C.ROLE_MASTERS):
        _, out, _ = lab.run(m.name, f"journalctl -u kube-apiserver --no-pager -o short-precise "
                                    f"--since '{since}' | grep -E 'serving|stopping|error|Trace'"
                                    f" || true")
        lines += out.splitlines()
    return "\n".join(sorted(lines)[-40:]) or "(nothing)"


def check_failed(check, lab) -> str:  # noqa: ANN001
    """Why `check` failed after a day-2 operation: its own output's end, then the front end's
    log (front_end_log)."""
    return (flat(check.stdout + check.stderr)[-2000:] + "\nthe front end's log:\n"
            + front_end_log(lab))


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
    assert check.returncode == 0, check_failed(check, deployed)
    again = cli("deploy", "-i", str(LAB_INVENTORY), "--json")
    assert again.returncode == 0 and json.loads(again.stdout)["changed"] == 0, \
        again.stdout[-2000:]


# --- scaling ------------------------------------------------------------------------------------


def inventory_with_host(tmp_path: Path, name: str, address: str, role: str) -> Path:
    """A copy of inventory/lab with one more host (on pm3), for `lab up` to add it."""
    inv = tmp_path / "inventory"
    shutil.copytree(LAB_INVENTORY, inv)
    hosts = yaml.safe_load((inv / "hosts.yaml").read_text())
    hosts[name] = {"hostname": address, "groups": [role], "data": {"physical_host": "pm3"}}
    (inv / "hosts.yaml").write_text(yaml.safe_dump(hosts, sort_keys=False))
    return inv


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
    inv = inventory_with_host(tmp_path, "worker3", "10.88.0.53", "workers")
    up = cli("lab", "up", "-i", str(inv), timeout=300)
    assert up.returncode == 0, flat(up.stdout + up.stderr)[-1500:]
    assert "started 1" in up.stdout, up.stdout
    joined = cli("deploy", "-i", str(inv), "--json")
    report = json.loads(joined.stdout)
    changed = sorted({h for p in report["phases"] for h, o in p["hosts"].items()
                      if o["status"] == "changed"})
    print(f"\ndeploy with worker3 added: changed on {changed}")
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


# --- etcd day 2: backups, the timer, replace -----------------------------------------------------


def test_etcd_backup_is_accepted_by_etcdctl_and_kept_n_here_and_on_the_members(
        deployed) -> None:
    lab = deployed
    keep = lab.spec.settings.etcd.backup_keep
    taken = []
    for _ in range(keep + 1):
        proc = cli("etcd", "backup", "-i", str(LAB_INVENTORY), "--json", timeout=120)
        assert proc.returncode == 0, flat(proc.stdout + proc.stderr)[-1500:]
        taken.append(json.loads(proc.stdout)["path"])
    listed = json.loads(cli("etcd", "backups", "-i", str(LAB_INVENTORY), "--json").stdout)
    assert [b["path"] for b in listed] == taken[1:]  # the oldest was pruned
    for path in taken[1:]:
        status = subprocess.run(["etcdctl", "snapshot", "status", path, "-w", "json"],
                                env={**os.environ, "ETCDCTL_API": "3"}, capture_output=True,
                                text=True, timeout=30)
        assert status.returncode == 0 and json.loads(status.stdout)["revision"] > 0, \
            status.stderr
    on_host = lab.spec.settings.etcd.backup_keep_on_host
    for m in lab.spec.role(C.ROLE_ETCD):
        _, timers, _ = lab.run(m.name, f"systemctl list-timers {C.ETCD_BACKUP_TIMER_UNIT} "
                               "--all --no-pager")
        assert C.ETCD_BACKUP_TIMER_UNIT in timers, timers
        unit = f"{C.ETCD_BACKUP_SERVICE}.service"
        for _ in range(on_host + 1):  # what the timer starts (systemd's start-rate limit is
            # 5 in 10 s: the count is reset between these back-to-back runs)
            lab.run(m.name, f"systemctl reset-failed {unit}; systemctl start {unit}")
        _, files, _ = lab.run(m.name, f"ls {C.ETCD_BACKUP_DIR}")
        dbs = sorted(f for f in files.split() if f.endswith(".db"))
        assert len(dbs) == on_host, files
        newest = f"{C.ETCD_BACKUP_DIR}/{dbs[-1]}"
        code, _, err = lab.run(m.name, f"ETCDCTL_API=3 etcdctl snapshot status {newest}",
                               check=False)
        assert code == 0, err
    print(f"\netcd backup x{keep + 1}: {keep} kept here, each accepted by etcdctl snapshot "
          f"status; timer listed on every member, {on_host} kept on each after "
          f"{on_host + 1} runs")


def member_ids(lab) -> dict[str, str]:  # noqa: ANN001
    _, out, _ = lab.run("etcd1", "ETCDCTL_API=3 etcdctl --endpoints https://127.0.0.1:2379 "
                        f"--cacert {C.ETCD_CA_CERT} --cert {C.ETCD_SERVER_CERT} "
                        f"--key {C.ETCD_SERVER_KEY} member list -w json")
    return {m["name"]: format(int(m["ID"]), "x") for m in json.loads(out)["members"]}


def test_etcd_replace_after_a_power_cut_and_a_wiped_data_dir_under_load(deployed) -> None:
    from nornir_k8sha.runbook.load import LoadProbe  # lazy: only the lab tests measure

    lab = deployed
    before = member_ids(lab)
    probe = LoadProbe(lab.spec, REPO / lab.spec.state_dir)
    probe.start()
    time.sleep(1.0)
    lab.faults.kill_host("etcd2")
    lab.faults.restore_host("etcd2", wait=True)
    lab.run("etcd2", f"systemctl stop etcd; rm -rf {lab.spec.settings.etcd.data_dir}")
    proc = cli("etcd", "replace", "etcd2", "-i", str(LAB_INVENTORY), timeout=300)
    time.sleep(1.0)
    samples, _ = probe.stop()
    acknowledged, lost = probe.audit_writes()
    probe.cleanup()
    text = flat(proc.stdout + proc.stderr)
    print(f"\netcd replace etcd2: exit {proc.returncode}; {len(samples)} requests, "
          f"{sum(1 for x in samples if not x.ok)} failed; {acknowledged} writes acknowledged, "
          f"{lost} lost\n{proc.stdout[-1500:]}")
    assert proc.returncode == 0, text[-1500:]
    assert "as a learner" in text and "promote learner" in text
    after = member_ids(lab)
    assert set(after) == set(before) and after["etcd2"] != before["etcd2"]
    assert lost == 0
    check = cli("check", "-i", str(LAB_INVENTORY), timeout=120)
    assert check.returncode == 0, check_failed(check, deployed)


# --- a master removed and added back ------------------------------------------------------------


def haproxy_servers(lab) -> dict[str, str]:  # noqa: ANN001
    found = {}
    for h in lab.spec.role(C.ROLE_HAPROXY):
        _, cfg, _ = lab.run(h.name, "cat /etc/haproxy/haproxy.cfg")
        found[h.name] = cfg
    return found


def test_a_master_removed_leaves_haproxy_and_a_deploy_brings_it_back(deployed,
                                                                    tmp_path: Path) -> None:
    lab = deployed
    address = str(lab.spec.host("master3").address)
    assert all(address in cfg for cfg in haproxy_servers(lab).values())
    removed = cli("node", "remove", "master3", "-i", str(LAB_INVENTORY))
    text = flat(removed.stdout + removed.stderr)
    print(f"\n{text[-900:]}")
    assert removed.returncode == 0, text[-1500:]
    assert "HAProxy updated on haproxy1, haproxy2" in text
    assert not any(address in cfg for cfg in haproxy_servers(lab).values())
    assert "master3" not in node_names(lab, tmp_path)
    back = cli("deploy", "-i", str(LAB_INVENTORY), "--json")
    assert back.returncode == 0, back.stdout[-2000:]
    assert all(address in cfg for cfg in haproxy_servers(lab).values())
    assert "master3" in node_names(lab, tmp_path)


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
    assert check.returncode == 0, check_failed(check, deployed)
