"""Real kubectl against the deployed lab cluster through the VIP, as a new user runs it (issue 9).

Only `.k8sha/lab/admin.conf` (what `deploy` fetched) and a fresh home: the oldest and the newest
kubectl on the machine (1.27 and 1.33 in the machine image) must print what a real cluster
prints, with nothing on stderr where a real cluster prints nothing. Runs after the deploy tests
(file order); alone it deploys first when no cluster answers.
"""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import pytest
import yaml

from tests.conftest import LAB_INVENTORY, REPO
from tests.kubectl_bins import KUBECTLS, kubectl, versions
from tests.lab.test_lab_deploy import cli, vip_readyz, wait_for

pytestmark = pytest.mark.lab


class Kubectl:
    """kubectl with the deploy's admin.conf (or another kubeconfig), one home per version."""

    def __init__(self, admin: Path, homes: Path) -> None:
        self.admin, self.homes = admin, homes

    def run(self, version: str, *args: str, kubeconfig: Path | None = None,
            stdin: str | None = None) -> subprocess.CompletedProcess[str]:
        home = self.homes / f"home-{version or 'default'}"
        home.mkdir(exist_ok=True)
        return kubectl(version, kubeconfig or self.admin, *args, home=home, stdin=stdin)

    def ok(self, version: str, *args: str, stdin: str | None = None) -> str:
        proc = self.run(version, *args, stdin=stdin)
        assert proc.returncode == 0 and proc.stderr == "", (args, proc.stdout, proc.stderr)
        return proc.stdout


@pytest.fixture(scope="module")
def k(lab, tmp_path_factory: pytest.TempPathFactory) -> Kubectl:
    admin = REPO / lab.spec.state_dir / "admin.conf"
    if not admin.exists() or vip_readyz(lab.spec) != 200:
        proc = cli("deploy", "-i", str(LAB_INVENTORY))
        assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-2000:]
    return Kubectl(admin, tmp_path_factory.mktemp("kubectl"))


def _nodes(spec) -> set[str]:  # noqa: ANN001
    return {h.name for role in ("masters", "workers") for h in spec.role(role)}


def _manifest(name: str, data: dict[str, str], resource_version: str = "") -> str:
    meta = {"name": name, **({"resourceVersion": resource_version} if resource_version else {})}
    return json.dumps({"apiVersion": "v1", "kind": "ConfigMap", "metadata": meta, "data": data})


@pytest.mark.parametrize("version", versions(edges_only=True))
def test_nodes_leases_cluster_info_through_the_vip(lab, k: Kubectl, version: str) -> None:
    wide = k.ok(version, "get", "nodes", "-o", "wide").splitlines()  # discovery: stderr empty
    assert wide[0].split()[:6] == ["NAME", "STATUS", "ROLES", "AGE", "VERSION", "INTERNAL-IP"]
    rows = {line.split()[0]: line.split() for line in wide[1:]}
    assert set(rows) == _nodes(lab.spec) and len(rows) == 5
    assert all(r[1] == "Ready" for r in rows.values()), rows
    for name, row in rows.items():
        assert row[5] == str(lab.spec.host(name).address)
        assert (row[2] == "control-plane") == (name in {h.name for h in lab.spec.role("masters")})
    waited = k.ok(version, "wait", "--for=condition=Ready", "node", "--all", "--timeout=30s")
    assert sorted(waited.splitlines()) == sorted(f"node/{n} condition met"
                                                 for n in _nodes(lab.spec))
    leases = k.ok(version, "-n", "kube-system", "get", "leases").splitlines()
    assert leases[0].split() == ["NAME", "HOLDER", "AGE"]
    holders = {row.split()[0]: row.split()[1] for row in leases[1:]}
    masters = {h.name for h in lab.spec.role("masters")}
    for lease in ("kube-controller-manager", "kube-scheduler"):
        assert holders[lease].split("_")[0] in masters, holders
    info = k.ok(version, "cluster-info")
    plain = info.replace("\x1b[0;32m", "").replace("\x1b[0;33m", "").replace("\x1b[0m", "")
    assert plain.splitlines()[0] == ("Kubernetes control plane is running at "
                                     f"https://{lab.spec.api_endpoint}")


@pytest.mark.parametrize("version", versions(edges_only=True))
def test_configmap_create_get_apply_conflict_delete(lab, k: Kubectl, version: str) -> None:
    name = f"k8sha-probe-{version.replace('.', '-')}"
    k.run(version, "delete", "cm", name, f"{name}-applied", "--ignore-not-found")
    assert k.ok(version, "create", "configmap", name, "--from-literal=k=v") == \
        f"configmap/{name} created\n"
    assert k.ok(version, "get", "cm", name, "-o", "jsonpath={.data.k}") == "v"
    applied = f"{name}-applied"
    assert k.ok(version, "apply", "-f", "-", stdin=_manifest(applied, {"a": "1", "b": "2"})) \
        == f"configmap/{applied} created\n"
    changed = _manifest(applied, {"a": "10", "c": "3"})
    assert k.ok(version, "apply", "-f", "-", stdin=changed) == f"configmap/{applied} configured\n"
    assert k.ok(version, "apply", "-f", "-", stdin=changed) == f"configmap/{applied} unchanged\n"
    obj = json.loads(k.ok(version, "get", "cm", applied, "-o", "json"))
    assert obj["data"] == {"a": "10", "c": "3"}
    stale = _manifest(applied, {"a": "stale"}, obj["metadata"]["resourceVersion"])
    k.ok(version, "patch", "cm", applied, "-p", '{"data":{"d":"4"}}')
    conflict = k.run(version, "replace", "-f", "-", stdin=stale)
    assert conflict.returncode == 1 and "Error from server (Conflict)" in conflict.stderr
    assert k.ok(version, "delete", "cm", name, applied) == \
        f'configmap "{name}" deleted\nconfigmap "{applied}" deleted\n'
    bad = k.run(version, "create", "configmap", "Bad_Name", "--from-literal=k=v")
    assert bad.returncode == 1 and 'ConfigMap "Bad_Name" is invalid: metadata.name: Invalid ' \
        'value: "Bad_Name": a lowercase RFC 1123 subdomain' in bad.stderr
    bad = k.run(version, "create", "-f", "-", stdin=_manifest("Bad_Name", {}))  # 422 Invalid
    assert bad.returncode == 1 and bad.stderr.startswith('The ConfigMap "Bad_Name" is invalid: ')


@pytest.mark.parametrize("version", versions(edges_only=True))
def test_a_watch_sees_a_change(lab, k: Kubectl, version: str) -> None:
    name = f"k8sha-watched-{version.replace('.', '-')}"
    k.run(version, "delete", "cm", name, "--ignore-not-found")
    k.ok(version, "create", "configmap", name, "--from-literal=k=v")
    env = {"HOME": str(k.homes / f"home-{version}"), "KUBECONFIG": str(k.admin),
           "PATH": "/usr/bin:/bin"}
    with subprocess.Popen([KUBECTLS[version], "get", "cm", name, "-w", "--output-watch-events"],
                          env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                          text=True) as watcher:
        try:
            assert watcher.stdout is not None
            assert watcher.stdout.readline().split()[:2] == ["EVENT", "NAME"]
            assert watcher.stdout.readline().split()[:2] == ["ADDED", name]
            k.ok(version, "patch", "cm", name, "-p", '{"data":{"k2":"v2"}}')
            assert watcher.stdout.readline().split()[:3] == ["MODIFIED", name, "2"]
        finally:
            watcher.terminate()
    k.ok(version, "delete", "cm", name)


@pytest.mark.parametrize("version", versions(edges_only=True))
def test_no_certificate_is_401(lab, k: Kubectl, version: str, tmp_path: Path) -> None:
    cfg = yaml.safe_load(k.admin.read_text())
    cfg["users"][0]["user"] = {"token": "not-a-token-of-this-cluster"}  # no client certificate
    anonymous = tmp_path / "anonymous.conf"
    anonymous.write_text(yaml.safe_dump(cfg))
    proc = k.run(version, "get", "nodes", kubeconfig=anonymous)
    assert proc.returncode == 1
    assert "error: You must be logged in to the server (Unauthorized" in proc.stderr


def test_a_configmap_written_through_the_vip_is_read_on_every_master(lab, k: Kubectl) -> None:
    version = next(reversed(KUBECTLS), None) or pytest.skip("no kubectl binary")
    name = "k8sha-everywhere"
    k.run(version, "delete", "cm", name, "--ignore-not-found")
    k.ok(version, "create", "configmap", name, "--from-literal=where=vip")
    port = lab.spec.settings.apiserver_bind_port
    try:
        for master in lab.spec.role("masters"):
            got = k.ok(version, f"--server=https://{master.address}:{port}", "get", "cm", name,
                       "-o", "jsonpath={.data.where}")
            assert got == "vip", master.name
    finally:
        k.ok(version, "delete", "cm", name)


def test_kubectl_on_a_master_is_real_and_uses_admin_conf(lab, k: Kubectl) -> None:
    for master in lab.spec.role("masters"):
        _, out, _ = lab.run(master.name, "kubectl version --client -o json")
        client = json.loads(out)["clientVersion"]
        assert client["gitVersion"].startswith("v1.") and "k8shaLabStandin" not in client
        _, nodes, _ = lab.run(master.name, "kubectl get nodes -o name")
        assert {n.removeprefix("node/") for n in nodes.split()} == _nodes(lab.spec)
        port = lab.spec.settings.apiserver_bind_port
        _, local, _ = lab.run(master.name, f"kubectl --server=https://{master.address}:{port} "
                                           "-n kube-system get leases -o name")
        assert "lease.coordination.k8s.io/kube-scheduler" in local.split()
    assert wait_for(lambda: vip_readyz(lab.spec) == 200, 5)
