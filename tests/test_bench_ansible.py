"""bench/ansible/playbook.py, the Ansible side of the side-by-side benchmark: from a rendered
tree of the lab inventory it writes playbooks that do the same work as `deploy` (the same
files, validators, PKI, services and restarts). No lab and no Ansible needed: the output is
read back as YAML and INI."""

from __future__ import annotations

import configparser
import importlib.util
import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml

from nornir_k8sha import constants as C
from nornir_k8sha.pki import ClusterPKI
from nornir_k8sha.topology import load_cluster_spec

REPO = Path(__file__).resolve().parent.parent
LAB = REPO / "inventory" / "lab"


def _load_generator() -> Any:
    loaded = importlib.util.spec_from_file_location("k8sha_bench_playbook",
                                                    REPO / "bench" / "ansible" / "playbook.py")
    assert loaded is not None and loaded.loader is not None
    module = importlib.util.module_from_spec(loaded)
    sys.modules[loaded.name] = module  # its dataclasses look their module up by name
    loaded.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def generated(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """The lab inventory rendered by the real CLI, its PKI made in a temp state dir, and the
    playbooks generated from both."""
    base = tmp_path_factory.mktemp("ansible")
    tree = base / "tree"
    proc = subprocess.run([sys.executable, "-m", "nornir_k8sha", "render", "-i", str(LAB),
                           "-o", str(tree), "--json"], cwd=REPO, capture_output=True, text=True,
                          check=True)
    spec = load_cluster_spec(LAB)
    state_dir = base / "state"
    ClusterPKI(spec, state_dir).ensure()
    gen = _load_generator()
    books = gen.write_bench_dir(base / "out", spec, json.loads(proc.stdout), tree, state_dir,
                                key_file=base / "id", known_hosts=base / "known_hosts",
                                control_path_dir=base / "cp")
    plays = {name: yaml.safe_load(path.read_text()) for name, path in books.items()}
    return {"base": base, "plays": plays, "spec": spec, "tree": tree}


def _tasks(play: dict[str, Any]) -> list[dict[str, Any]]:
    out = []
    for task in play["tasks"]:
        out.append(task)
        out.extend(task.get("block", ()))
    return out


def _copies(play: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {t["ansible.builtin.copy"]["dest"]: t for t in _tasks(play)
            if "ansible.builtin.copy" in t and "dest" in t["ansible.builtin.copy"]
            and "{{" not in t["ansible.builtin.copy"]["dest"]}


def test_one_play_per_tier_on_its_role_without_facts(generated: dict[str, Any]) -> None:
    plays = dict(generated["plays"])
    # haproxy's and etcd's plays together, as `deploy --phase lb --phase etcd` runs them
    assert plays.pop("haproxy+etcd") == [{"import_playbook": "haproxy.yml"},
                                         {"import_playbook": "etcd.yml"}]
    assert set(plays) == {"haproxy", "directors", "etcd", "workers"}
    hosts = {name: doc[0]["hosts"] for name, doc in plays.items()}
    assert hosts == {"haproxy": "haproxy", "directors": "lvs", "etcd": "etcd",
                     "workers": "workers"}
    assert all(len(doc) == 1 and doc[0]["gather_facts"] is False for doc in plays.values())


def test_every_rendered_file_is_copied_with_its_validator(generated: dict[str, Any]) -> None:
    """Each rendered file of a tier's components is uploaded from the tree, with the same
    validator as the deploy (`{path}` becomes the copy module's `%s`)."""
    haproxy = _copies(generated["plays"]["haproxy"][0])
    cfg = haproxy[C.HAPROXY_CFG]["ansible.builtin.copy"]
    assert cfg["validate"] == "haproxy -c -f %s"
    assert cfg["src"].endswith("{{ inventory_hostname }}" + C.HAPROXY_CFG)
    assert (generated["tree"] / "haproxy1" / C.HAPROXY_CFG.lstrip("/")).is_file()
    assert {C.REALSERVER_SYSCTL, C.REALSERVER_UNIT} <= set(haproxy)
    keepalived = _copies(generated["plays"]["directors"][0])[C.KEEPALIVED_CONF]
    assert keepalived["ansible.builtin.copy"]["validate"] == "keepalived -t -f %s"
    assert keepalived["ansible.builtin.copy"]["mode"] == "0640"
    # the lb phase leaves FRR to the network phase: so does the directors' play
    assert C.FRR_CONF not in _copies(generated["plays"]["directors"][0])
    etcd = _copies(generated["plays"]["etcd"][0])
    assert etcd[C.ETCD_BACKUP_SCRIPT]["ansible.builtin.copy"]["validate"] == "bash -n %s"
    assert {C.ETCD_CONF, C.ETCD_UNIT, C.ETCD_BACKUP_UNIT, C.ETCD_BACKUP_TIMER} <= set(etcd)
    workers = _copies(generated["plays"]["workers"][0])
    assert {C.CONTAINERD_CONFIG, C.KUBERNETES_SYSCTL, C.KUBERNETES_MODULES} <= set(workers)
    # the join file belongs to the join, not to node preparation
    assert C.KUBEADM_JOIN_WORKER not in workers


def test_services_follow_their_inputs_through_handlers(generated: dict[str, Any]) -> None:
    """A changed input notifies a handler that exists and does what the deploy does (reload
    haproxy/keepalived, restart etcd/containerd), with a daemon-reload where a unit file is
    managed; handlers run before the services are ensured started."""
    expect = {"haproxy": {"reload haproxy", "restart k8sha-vip-lo"},
              "directors": {"reload keepalived"},
              "etcd": {"restart etcd", f"restart {C.ETCD_BACKUP_TIMER_UNIT}"},
              "workers": {"restart containerd", "apply kubernetes sysctls"}}
    for name, doc in generated["plays"].items():
        if name not in expect:
            continue
        play = doc[0]
        handlers = {h["name"]: h for h in play["handlers"]}
        assert set(handlers) == expect[name], name
        notified = set()
        for task in _tasks(play):
            note = task.get("notify", [])
            notified.update([note] if isinstance(note, str) else note)
        assert notified <= set(handlers), name
        names = [t["name"] for t in play["tasks"]]
        flush = names.index("apply changed inputs")
        started = [i for i, t in enumerate(play["tasks"])
                   if t.get("ansible.builtin.systemd_service", {}).get("state") == "started"]
        assert started and min(started) > flush, name
    haproxy = {h["name"]: h for h in generated["plays"]["haproxy"][0]["handlers"]}
    assert haproxy["reload haproxy"]["ansible.builtin.systemd_service"]["state"] == "reloaded"
    assert haproxy["restart k8sha-vip-lo"]["ansible.builtin.systemd_service"]["daemon_reload"]
    cfg = _copies(generated["plays"]["haproxy"][0])[C.HAPROXY_CFG]
    assert cfg["notify"] == "reload haproxy"


def test_pki_comes_from_the_state_dir_for_each_host(generated: dict[str, Any]) -> None:
    """etcd members get their own certificates (owned by etcd), the HAProxy nodes the cluster
    CA, the workers the registry CA, and etcd's play waits for /health over mTLS."""
    base = generated["base"]
    etcd1 = yaml.safe_load((base / "out" / "host_vars" / "etcd1.yml").read_text())["k8sha_pki"]
    dests = {e["dest"]: e for e in etcd1}
    assert {C.ETCD_CA_CERT, C.ETCD_SERVER_CERT, C.ETCD_SERVER_KEY} <= set(dests)
    assert dests[C.ETCD_SERVER_KEY]["mode"] == "0600"
    assert "etcd1" in dests[C.ETCD_SERVER_CERT]["src"] and Path(
        dests[C.ETCD_SERVER_CERT]["src"]).is_file()
    hap = yaml.safe_load((base / "out" / "host_vars" / "haproxy1.yml").read_text())["k8sha_pki"]
    assert [e["dest"] for e in hap] == [C.HAPROXY_KUBERNETES_CA]
    worker = yaml.safe_load((base / "out" / "host_vars" / "worker1.yml").read_text())
    assert all(e["dest"].startswith(C.CONTAINERD_CERTS_DIR) for e in worker["k8sha_pki"])
    etcd_play = generated["plays"]["etcd"][0]
    pki_task = next(t for t in etcd_play["tasks"] if t["name"].startswith("PKI"))
    assert pki_task["ansible.builtin.copy"]["owner"] == C.ETCD_USER
    assert pki_task["notify"] == ["restart etcd"]
    wait = etcd_play["tasks"][-1]
    assert "ansible.builtin.uri" in wait and wait["delegate_to"] == "localhost"
    assert len(wait["loop"]) == generated["spec"].count("etcd")


def test_inventory_and_config_reach_hosts_as_deploy_does(generated: dict[str, Any]) -> None:
    """Groups are roles, addresses the inventory's; the lab's key and known_hosts with strict
    checking; tuned as Ansible's docs advise."""
    base, spec = generated["base"], generated["spec"]
    ini = (base / "out" / "inventory.ini").read_text()
    assert "[etcd]\netcd1 ansible_host=10.88.0.31" in ini
    assert "StrictHostKeyChecking=yes" in ini and str((base / "known_hosts").resolve()) in ini
    assert "switch1" not in ini  # switches are netmiko's, not in these tiers
    cfg = configparser.ConfigParser()
    cfg.read(base / "out" / "ansible.cfg")
    linux = [h for h in spec.hosts if not h.has_role("switches")]
    assert int(cfg["defaults"]["forks"]) >= len(linux)
    assert cfg["defaults"]["gathering"] == "explicit"
    assert cfg["ssh_connection"]["pipelining"] == "True"
    assert "ControlPersist" in cfg["ssh_connection"]["ssh_args"]


def test_workers_bench_inventory_adds_valid_workers(tmp_path: Path) -> None:
    """bench/workers_bench.py's lab inventory: the lab's own hosts plus N workers at free lab
    addresses, valid, with no address taken twice (`lab up -i` builds one host per entry)."""
    sys.path.insert(0, str(REPO / "bench" / "ansible"))
    try:
        loaded = importlib.util.spec_from_file_location("k8sha_workers_bench",
                                                        REPO / "bench" / "workers_bench.py")
        assert loaded is not None and loaded.loader is not None
        bench = importlib.util.module_from_spec(loaded)
        sys.modules[loaded.name] = bench
        loaded.loader.exec_module(bench)
    finally:
        sys.path.remove(str(REPO / "bench" / "ansible"))
    spec = load_cluster_spec(bench.write_inventory(tmp_path / "inv", 60))
    base = load_cluster_spec(LAB)
    assert len(spec.hosts) == len(base.hosts) + 60
    assert spec.count("workers") == base.count("workers") + 60
    addresses = [h.address for h in spec.hosts]
    assert len(set(addresses)) == len(addresses) and spec.vip not in addresses
    assert all(a in spec.network for a in addresses)
