"""etcd 3 -> 5 -> 3 on the real lab under the verify load probe (issue 11): the inventory grows by
etcd4 and etcd5 (`lab up` adds the hosts), `deploy` joins them one at a time as learners and
points the apiservers at five members; the inventory shrinks back, `deploy` points the apiservers
at three and removes the two, one at a time. After every step the deploy reports the member list
and health it saw; quorum held at each, no acknowledged write lost, and the next deploy is a
no-op.
"""

from __future__ import annotations

import json
import re
import shutil
import time
from pathlib import Path

import pytest
import yaml

from nornir_k8sha import constants as C
from tests.conftest import LAB_INVENTORY, REPO
from tests.lab.test_lab_day2 import cli, flat, inventory_with_host

pytestmark = pytest.mark.lab

NEW = {"etcd4": ("10.88.0.34", "pm1"), "etcd5": ("10.88.0.35", "pm2")}
#: What the etcd phases say after each step (etcd_scale.Observed.summary).
SUMMARY = re.compile(r"(\d+) members \((.*?)\), (\d+) healthy, quorum (\d+)")


@pytest.fixture(scope="module")
def deployed(lab):  # noqa: ANN001, ANN201
    lab.lab.down()
    lab.lab.up()
    proc = cli("deploy", "-i", str(LAB_INVENTORY))
    assert proc.returncode == 0, proc.stderr[-3000:]
    return lab


def run_on(lab, address: str, name: str, command: str) -> str:  # noqa: ANN001
    from nornir_k8sha.lab import ssh

    return ssh.run(lab.lab.ssh, address, command, host=name)[1]


def etcdctl(lab, *args: str) -> str:  # noqa: ANN001
    return run_on(lab, "10.88.0.31", "etcd1",
                  "ETCDCTL_API=3 etcdctl --endpoints https://127.0.0.1:2379 "
                  f"--cacert {C.ETCD_CA_CERT} --cert {C.ETCD_SERVER_CERT} "
                  f"--key {C.ETCD_SERVER_KEY} " + " ".join(args))


def members(lab) -> dict[str, bool]:  # noqa: ANN001
    """name -> is a learner, from the real `etcdctl member list`."""
    doc = json.loads(etcdctl(lab, "member", "list", "-w", "json"))
    return {m.get("name", ""): bool(m.get("isLearner")) for m in doc["members"]}


def healthy_endpoints(lab) -> int:  # noqa: ANN001
    out = etcdctl(lab, "endpoint", "health", "--cluster", "-w", "json")
    return sum(1 for e in json.loads(out) if e.get("health"))


def apiserver_etcd_servers(lab) -> dict[str, int]:  # noqa: ANN001
    found = {}
    for m in lab.spec.role(C.ROLE_MASTERS):
        text = run_on(lab, str(m.address), m.name,
                      f"cat {C.K8S_MANIFESTS_DIR}/kube-apiserver.yaml")
        servers = re.search(r"--etcd-servers=(\S+)", text)
        assert servers, text
        found[m.name] = len(servers.group(1).split(","))
    return found


def steps(report: dict, phase: str) -> list[tuple[str, int, int, int]]:
    """(host, members, healthy, quorum) of each step the phase reported."""
    out = []
    for p in report["phases"]:
        if p["name"] != phase:
            continue
        for host, o in p["hosts"].items():
            for found in SUMMARY.finditer(o.get("message") or ""):
                out.append((host, int(found.group(1)), int(found.group(3)),
                            int(found.group(4))))
    return sorted(out, key=lambda s: (-s[1] if phase == "etcd-members" else s[1]))


def write_inventory(inv: Path, with_new: bool) -> None:
    hosts = yaml.safe_load((LAB_INVENTORY / "hosts.yaml").read_text())
    if with_new:
        for name, (address, machine) in NEW.items():
            hosts[name] = {"hostname": address, "groups": ["etcd"],
                           "data": {"physical_host": machine}}
    (inv / "hosts.yaml").write_text(yaml.safe_dump(hosts, sort_keys=False))


def timed_deploy(inv: Path) -> tuple[dict, float]:
    started = time.monotonic()
    proc = cli("deploy", "-i", str(inv), "--json")
    took = time.monotonic() - started
    try:
        report = json.loads(proc.stdout)
    except json.JSONDecodeError:
        raise AssertionError(flat(proc.stdout + proc.stderr)[-3000:]) from None
    assert proc.returncode == 0, json.dumps(report["phases"], indent=1)[-4000:]
    return report, took


def test_etcd_3_to_5_to_3_under_load_keeps_quorum_at_every_step(deployed,
                                                              tmp_path: Path) -> None:
    from nornir_k8sha.runbook.load import LoadProbe  # lazy: only the lab tests measure

    lab = deployed
    inv = tmp_path / "inventory"
    shutil.copytree(LAB_INVENTORY, inv)
    write_inventory(inv, with_new=True)
    up = cli("lab", "up", "-i", str(inv), timeout=300)
    assert up.returncode == 0 and "started 2" in up.stdout, flat(up.stdout + up.stderr)[-1500:]
    assert sorted(members(lab)) == ["etcd1", "etcd2", "etcd3"]

    probe = LoadProbe(lab.spec, REPO / lab.spec.state_dir)
    probe.start()
    time.sleep(1.0)
    grown, grow_s = timed_deploy(inv)
    after_grow = members(lab)
    five = healthy_endpoints(lab)
    servers_grown = apiserver_etcd_servers(lab)

    write_inventory(inv, with_new=False)
    shrunk, shrink_s = timed_deploy(inv)
    time.sleep(1.0)
    samples, _ = probe.stop()
    acknowledged, lost = probe.audit_writes()
    probe.cleanup()
    after_shrink = members(lab)
    three = healthy_endpoints(lab)

    grow_steps, shrink_steps = steps(grown, "etcd"), steps(shrunk, "etcd-members")
    failed = sum(1 for x in samples if not x.ok)
    print(f"\n3 -> 5: deploy {grow_s:.1f} s, steps {grow_steps}; apiservers' etcd servers "
          f"{servers_grown}\n5 -> 3: deploy {shrink_s:.1f} s, steps {shrink_steps}\n"
          f"load probe: {len(samples)} requests, {failed} failed; {acknowledged} writes "
          f"acknowledged, {lost} lost")
    assert after_grow == {f"etcd{i}": False for i in range(1, 6)} and five == 5
    assert servers_grown == {m.name: 5 for m in lab.spec.role(C.ROLE_MASTERS)}
    for report in (grown, shrunk):  # the ConfigMap a later control-plane join reads
        (members_phase,) = [p for p in report["phases"] if p["name"] == "etcd-members"]
        assert members_phase["hosts"]["kubeadm-config"]["status"] == "changed"
    assert [(h, n) for h, n, _, _ in grow_steps] == [("etcd4", 4), ("etcd5", 5)]
    assert [(h, n) for h, n, _, _ in shrink_steps] == [("etcd4", 4), ("etcd5", 3)] or \
        [(h, n) for h, n, _, _ in shrink_steps] == [("etcd5", 4), ("etcd4", 3)]
    assert all(healthy == n and healthy >= quorum
               for _, n, healthy, quorum in grow_steps + shrink_steps), grow_steps + shrink_steps
    assert after_shrink == {"etcd1": False, "etcd2": False, "etcd3": False} and three == 3
    assert apiserver_etcd_servers(lab) == {m.name: 3 for m in lab.spec.role(C.ROLE_MASTERS)}
    assert lost == 0 and acknowledged > 0
    for name, (address, _) in NEW.items():
        state = run_on(lab, address, name, "systemctl is-active etcd || true").strip()
        assert state == "inactive", (name, state)
        assert run_on(lab, address, name, f"ls -d {lab.spec.settings.etcd.data_dir}.removed-* "
                      "2>/dev/null || true").strip(), name

    again, noop_s = timed_deploy(inv)
    print(f"next deploy: {noop_s:.1f} s, {again['changed']} changed")
    assert again["changed"] == 0, [(p["name"], h, o["status"]) for p in again["phases"]
                                   for h, o in p["hosts"].items() if o["status"] != "ok"]
    check = cli("check", "-i", str(inv), timeout=120)
    assert check.returncode == 0, flat(check.stdout + check.stderr)[-2000:]


# --- a master added joins alone; HAProxy's backends follow ------------------------------------


def test_a_fourth_master_joins_alone_only_haproxy_changes_beside_it(deployed,
                                                                   tmp_path: Path) -> None:
    lab = deployed
    inv = inventory_with_host(tmp_path, "master4", "10.88.0.44", "masters")
    up = cli("lab", "up", "-i", str(inv), timeout=300)
    assert up.returncode == 0 and "started 1" in up.stdout, flat(up.stdout + up.stderr)[-1500:]
    joined, took = timed_deploy(inv)
    changed = {h for p in joined["phases"] for h, o in p["hosts"].items()
               if o["status"] == "changed"}
    print(f"\ndeploy with master4 added: {took:.1f} s, changed on {sorted(changed)}")
    # `local`: the PKI phase on this machine (master4's certificates), not a cluster host
    assert {"master4", "haproxy1", "haproxy2"} <= changed <= {"master4", "haproxy1", "haproxy2",
                                                             "local"}, changed
    for proxy in lab.spec.role(C.ROLE_HAPROXY):
        cfg = run_on(lab, str(proxy.address), proxy.name, f"cat {C.HAPROXY_CFG}")
        assert "10.88.0.44:" in cfg, proxy.name
    removed = cli("node", "remove", "master4", "-i", str(inv))
    assert removed.returncode == 0, flat(removed.stdout + removed.stderr)[-1500:]
    back, _ = timed_deploy(LAB_INVENTORY)
    assert back["changed"] == 0, [(p["name"], h) for p in back["phases"]
                                  for h, o in p["hosts"].items() if o["status"] == "changed"]
