"""The apiserver stand-in driven by REAL kubectl (every version on the machine), without the lab.

A real etcd (TLS, loopback) holds the state; the apiserver, a kubelet (node `node1`) and the
controller-manager/scheduler leader election run as stand-in processes, as in the lab. kubectl
gets nothing but a kubeconfig and a fresh home, and its output must be what a real cluster
prints, with nothing on stderr where a real cluster prints nothing.
"""

from __future__ import annotations

import base64
import json
import shutil
import socket
import ssl
import subprocess
import time
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
import yaml
from cryptography import x509

from tests.kubectl_bins import EDGE_VERSIONS, KUBECTLS, kubectl, versions
from tests.test_standins import (
    PROGRAMS,
    PYTHON,
    EtcdServer,
    _cert,
    _env,
    _free_port,
    _key,
    _write_pair,
    end,
    etcd_get,
    https,
    wait_for,
)

pytestmark = pytest.mark.skipif(not shutil.which("etcd") or not shutil.which("openssl"),
                                reason="needs /usr/bin/etcd (etcd-server) and openssl")
VERSION = "1.31.4"


@dataclass
class Cluster:
    """What the tests use: the kubeconfigs, etcd, the apiserver's URL and CA."""

    base: Path
    etcd: EtcdServer
    url: str
    second: str  # another apiserver on the same etcd, as on the other masters
    ca: Path
    admin: Path
    node: Path
    anonymous: Path
    foreign: Path

    def kubectl(self, version: str, *args: str, kubeconfig: Path | None = None,
                stdin: str | None = None) -> subprocess.CompletedProcess[str]:
        home = self.base / f"home-{version or 'default'}"
        home.mkdir(exist_ok=True)
        return kubectl(version, kubeconfig or self.admin, *args, home=home, stdin=stdin)

    def ok(self, version: str, *args: str, stdin: str | None = None) -> str:
        """stdout of a kubectl run that must succeed with an empty stderr."""
        proc = self.kubectl(version, *args, stdin=stdin)
        assert proc.returncode == 0 and proc.stderr == "", (args, proc.stdout, proc.stderr)
        return proc.stdout


def _kubeconfig(path: Path, server: str, ca: Path, cert: Path | None = None,
                key: Path | None = None) -> Path:
    """A kubeconfig; without a certificate its user has a token nobody issued (no prompt)."""
    user = ({"client-certificate": str(cert), "client-key": str(key)} if cert
            else {"token": "not-a-token-of-this-cluster"})
    path.write_text(yaml.safe_dump({
        "apiVersion": "v1", "kind": "Config", "current-context": "c",
        "clusters": [{"name": "k", "cluster": {"server": server, "certificate-authority-data":
                                               base64.b64encode(ca.read_bytes()).decode()}}],
        "contexts": [{"name": "c", "context": {"cluster": "k", "user": "u"}}],
        "users": [{"name": "u", "user": user}]}, default_flow_style=False))
    return path


def _client(pki: Path, name: str, cn: str, org: str, ca: tuple) -> tuple[Path, Path]:
    key = _key()
    pair = (pki / f"{name}.crt", pki / f"{name}.key")
    _write_pair(_cert(cn, key, ca, org=org), key, *pair)
    return pair


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Cluster]:
    base = tmp_path_factory.mktemp("api")
    etcd = EtcdServer(base / "etcd")
    etcd.start()
    procs: list[subprocess.Popen[bytes]] = []

    def spawn(name: str, program: str, *args: str) -> None:
        with open(base / f"{name}.log", "ab") as log:
            procs.append(subprocess.Popen([*PYTHON, str(PROGRAMS / program), *args],
                                          env=_env(None), stdout=log, stderr=subprocess.STDOUT))

    try:
        pki = base / "pki"
        ca_key = _key()
        ca = (_cert("kubernetes", ca_key, None), ca_key)
        _write_pair(ca[0], ca_key, pki / "ca.crt", pki / "ca.key")
        skey = _key()
        _write_pair(_cert("kube-apiserver", skey, ca, ips=("127.0.0.1",), server=True), skey,
                    pki / "apiserver.crt", pki / "apiserver.key")
        ports = (_free_port(), _free_port())
        url, second = (f"https://127.0.0.1:{p}" for p in ports)
        etcd_flags = [f"--etcd-servers={etcd.url}", f"--etcd-cafile={etcd.ca}",
                      f"--etcd-certfile={etcd.cert}", f"--etcd-keyfile={etcd.key}"]
        for i, port in enumerate(ports):
            spawn(f"apiserver{i}", "apiserver.py", "--bind-address=127.0.0.1",
                  f"--secure-port={port}", *etcd_flags, f"--tls-cert-file={pki / 'apiserver.crt'}",
                  f"--tls-private-key-file={pki / 'apiserver.key'}",
                  f"--client-ca-file={pki / 'ca.crt'}", f"--k8sha-version={VERSION}")
        admin = _kubeconfig(base / "admin.conf", url, pki / "ca.crt",
                            *_client(pki, "admin", "kubernetes-admin", "kubeadm:cluster-admins",
                                     ca))
        node = _kubeconfig(base / "node.conf", url, pki / "ca.crt",
                           *_client(pki, "node1", "system:node:node1", "system:nodes", ca))
        foreign_key = _key()
        foreign_ca = (_cert("somebody-else", foreign_key, None), foreign_key)
        foreign = _kubeconfig(base / "foreign.conf", url, pki / "ca.crt",
                              *_client(pki, "foreign", "kubernetes-admin", "system:masters",
                                       foreign_ca))
        anonymous = _kubeconfig(base / "anonymous.conf", url, pki / "ca.crt")
        for server in (url, second):
            wait_for(lambda s=server: https(f"{s}/readyz", pki / "ca.crt")[0] == 200, 15,
                     f"the apiserver at {server}")
        (base / "kubelet.yaml").write_text("nodeStatusUpdateFrequency: 1s\n")
        spawn("kubelet", "kubelet.py", f"--kubeconfig={node}", f"--config={base / 'kubelet.yaml'}",
              "--node-ip=127.0.0.1", "--hostname-override=node1",
              "--node-labels=node-role.kubernetes.io/control-plane=")
        for component in ("kube-controller-manager", "kube-scheduler"):
            spawn(component, "leader.py", f"--component={component}", *etcd_flags,
                  f"--k8sha-identity=node1_{component}")
        yield Cluster(base, etcd, url, second, pki / "ca.crt", admin, node, anonymous, foreign)
    finally:
        end(procs)
        etcd.stop()


def _manifest(name: str, data: dict[str, str], resource_version: str = "") -> str:
    meta = {"name": name, **({"resourceVersion": resource_version} if resource_version else {})}
    return json.dumps({"apiVersion": "v1", "kind": "ConfigMap", "metadata": meta, "data": data})


# --- discovery, version, health -----------------------------------------------------------------


@pytest.mark.parametrize("version", versions(edges_only=False))
def test_discovery_without_errors_on_every_kubectl(cluster: Cluster, version: str) -> None:
    out = cluster.ok(version, "api-resources")
    rows = {line.split()[0]: line.split() for line in out.splitlines()[1:]}
    assert {"configmaps", "namespaces", "nodes", "leases", "services",
            "certificatesigningrequests", "selfsubjectreviews"} <= set(rows)
    assert rows["configmaps"][1:3] == ["cm", "v1"] and rows["leases"][1] == "coordination.k8s.io/v1"
    groups = cluster.ok(version, "api-versions").split()
    assert {"v1", "coordination.k8s.io/v1", "certificates.k8s.io/v1",
            "authentication.k8s.io/v1"} <= set(groups)
    proc = cluster.kubectl(version, "version", "-o", "json")  # stderr: the skew warning
    assert proc.returncode == 0, proc.stderr
    assert json.loads(proc.stdout)["serverVersion"]["gitVersion"] == f"v{VERSION}"


def test_readyz_and_livez_list_their_checks(cluster: Cluster) -> None:
    version = EDGE_VERSIONS[-1] if EDGE_VERSIONS else pytest.skip("no kubectl")
    ready = cluster.ok(version, "get", "--raw", "/readyz?verbose")
    assert "[+]etcd ok" in ready and ready.rstrip().endswith("readyz check passed (lab stand-in)")
    assert "[+]ping ok" in cluster.ok(version, "get", "--raw", "/livez?verbose")
    assert cluster.ok(version, "get", "--raw", "/readyz") == "ok"


# --- nodes and leases ----------------------------------------------------------------------------


@pytest.mark.parametrize("version", versions(edges_only=True, lab_node=True))
def test_nodes_table_wide_and_wait_for_ready(cluster: Cluster, version: str) -> None:
    out = cluster.ok(version, "wait", "--for=condition=Ready", "node", "--all", "--timeout=30s")
    assert out.strip() == "node/node1 condition met"
    lines = cluster.ok(version, "get", "nodes", "-o", "wide").splitlines()
    assert lines[0].split()[:8] == ["NAME", "STATUS", "ROLES", "AGE", "VERSION", "INTERNAL-IP",
                                    "EXTERNAL-IP", "OS-IMAGE"]
    cells = lines[1].split()
    assert cells[:3] == ["node1", "Ready", "control-plane"] and cells[4:7] == [
        f"v{VERSION}", "127.0.0.1", "<none>"]
    plain = cluster.ok(version, "get", "nodes").splitlines()
    assert plain[0].split() == ["NAME", "STATUS", "ROLES", "AGE", "VERSION"]


def test_node_labels_survive_heartbeats_and_node_users_are_confined(cluster: Cluster) -> None:
    version = EDGE_VERSIONS[-1] if EDGE_VERSIONS else pytest.skip("no kubectl")
    cluster.ok(version, "label", "node", "node1", "k8sha.io/probe=yes", "--overwrite")
    time.sleep(1.5)  # at least one heartbeat (1 s) in between
    labels = cluster.ok(version, "get", "node", "node1", "-o", "jsonpath={.metadata.labels}")
    assert json.loads(labels)["k8sha.io/probe"] == "yes"
    cluster.ok(version, "label", "node", "node1", "k8sha.io/probe-")
    denied = cluster.kubectl(version, "get", "cm", kubeconfig=cluster.node)
    assert denied.returncode == 1 and 'Error from server (Forbidden): configmaps is forbidden: ' \
        'User "system:node:node1" cannot list resource "configmaps"' in denied.stderr


@pytest.mark.parametrize("version", versions(edges_only=True))
def test_describe_and_get_all(cluster: Cluster, version: str) -> None:
    node = cluster.ok(version, "describe", "node", "node1")
    assert "Non-terminated Pods:          (0 in total)" in node and "Events:" in node
    cluster.ok(version, "create", "configmap", "described", "--from-literal=k=v")
    shown = cluster.ok(version, "describe", "cm", "described")
    assert shown.splitlines()[0].split() == ["Name:", "described"] and "Events:  <none>" in shown
    cluster.ok(version, "delete", "cm", "described")
    assert "service/kubernetes" in cluster.ok(version, "get", "all", "-A")


@pytest.mark.parametrize("version", versions(edges_only=True))
def test_leases_list_with_holders(cluster: Cluster, version: str) -> None:
    def holders() -> dict[str, str]:
        out = cluster.ok(version, "-n", "kube-system", "get", "leases")
        return {row.split()[0]: row.split()[1] for row in out.splitlines()[1:]}

    found = wait_for(lambda: len(holders()) == 2 and holders(), 15, "both leases held")
    assert found == {"kube-controller-manager": "node1_kube-controller-manager",
                     "kube-scheduler": "node1_kube-scheduler"}
    assert cluster.ok(version, "-n", "kube-system", "get", "leases").splitlines()[0].split() == [
        "NAME", "HOLDER", "AGE"]


# --- configmaps ---------------------------------------------------------------------------------


@pytest.mark.parametrize("version", versions(edges_only=True, lab_node=True))
def test_configmap_create_get_apply_conflict_delete(cluster: Cluster, version: str) -> None:
    name = f"demo-{version.replace('.', '-') or 'x'}"
    assert cluster.ok(version, "create", "configmap", name, "--from-literal=k=v") == \
        f"configmap/{name} created\n"
    assert cluster.ok(version, "get", "cm", name, "-o", "jsonpath={.data.k}") == "v"
    table = cluster.ok(version, "get", "cm").splitlines()
    assert table[0].split() == ["NAME", "DATA", "AGE"]
    assert any(row.split()[:2] == [name, "1"] for row in table[1:])
    again = cluster.kubectl(version, "create", "configmap", name, "--from-literal=k=v")
    assert again.returncode == 1 and f'configmaps "{name}" already exists' in again.stderr

    # kubectl apply: create, change, apply the same again
    applied = f"{name}-applied"
    manifest = _manifest(applied, {"a": "1", "b": "2"})
    assert cluster.ok(version, "apply", "-f", "-", stdin=manifest) == \
        f"configmap/{applied} created\n"
    changed = _manifest(applied, {"a": "10", "c": "3"})
    assert cluster.ok(version, "apply", "-f", "-", stdin=changed) == \
        f"configmap/{applied} configured\n"
    assert cluster.ok(version, "apply", "-f", "-", stdin=changed) == \
        f"configmap/{applied} unchanged\n"
    obj = json.loads(cluster.ok(version, "get", "cm", applied, "-o", "json"))
    assert obj["data"] == {"a": "10", "c": "3"}  # b removed: apply's three-way patch
    meta = obj["metadata"]
    assert "kubectl.kubernetes.io/last-applied-configuration" in meta["annotations"]
    assert meta["uid"] and meta["creationTimestamp"]

    # the state is in etcd under the real key, its resourceVersion is the etcd revision
    stored = etcd_get(cluster.etcd, f"/registry/configmaps/default/{applied}")
    assert stored["data"] == {"a": "10", "c": "3"} and "resourceVersion" not in stored["metadata"]

    # an update with a stale resourceVersion is refused with 409 Conflict
    stale = _manifest(applied, {"a": "stale"}, meta["resourceVersion"])
    cluster.ok(version, "patch", "cm", applied, "-p", '{"data":{"d":"4"}}')
    conflict = cluster.kubectl(version, "replace", "-f", "-", stdin=stale)
    assert conflict.returncode == 1 and "Error from server (Conflict)" in conflict.stderr
    assert "the object has been modified" in conflict.stderr
    fresh = json.loads(cluster.ok(version, "get", "cm", applied, "-o", "json"))
    assert fresh["data"] == {"a": "10", "c": "3", "d": "4"}
    current = _manifest(applied, {"a": "new"}, fresh["metadata"]["resourceVersion"])
    assert cluster.ok(version, "replace", "-f", "-", stdin=current) == \
        f"configmap/{applied} replaced\n"

    assert cluster.ok(version, "delete", "cm", name, applied) == \
        f'configmap "{name}" deleted\nconfigmap "{applied}" deleted\n'
    gone = cluster.kubectl(version, "get", "cm", name)
    assert gone.returncode == 1 and f'Error from server (NotFound): configmaps "{name}" not ' \
        "found" in gone.stderr


def test_what_one_apiserver_writes_the_other_serves_and_watches(cluster: Cluster) -> None:
    """Every master's apiserver reads the same etcd: no state of its own."""
    version = EDGE_VERSIONS[-1] if EDGE_VERSIONS else pytest.skip("no kubectl")
    other = f"--server={cluster.second}"
    cluster.ok(version, "create", "configmap", "shared", "--from-literal=where=first")
    assert cluster.ok(version, other, "get", "cm", "shared", "-o", "jsonpath={.data.where}") \
        == "first"
    home = cluster.base / f"home-{version}"
    env = {"HOME": str(home), "KUBECONFIG": str(cluster.admin), "PATH": "/usr/bin:/bin"}
    with subprocess.Popen([KUBECTLS[version], other, "get", "cm", "shared", "-w", "-o",
                           "jsonpath={.data.where}{\"\\n\"}"], env=env, stdout=subprocess.PIPE,
                          stderr=subprocess.PIPE, text=True) as watcher:
        try:
            assert watcher.stdout is not None
            assert watcher.stdout.readline() == "first\n"
            cluster.ok(version, "patch", "cm", "shared", "-p", '{"data":{"where":"changed"}}')
            assert watcher.stdout.readline() == "changed\n"
        finally:
            watcher.terminate()
    cluster.ok(version, other, "delete", "cm", "shared")


@pytest.mark.parametrize("version", versions(edges_only=True))
def test_lists_are_paged_by_limit_and_continue_like_the_real_server(
        cluster: Cluster, version: str) -> None:
    # the load probe's kept-alive reader lists with limit=1: one item, not every ConfigMap
    # (a response that grew with every write the probe made); kubectl follows the tokens
    ns = f"paged-{version.replace('.', '-') or 'x'}"
    cluster.ok(version, "create", "namespace", ns)
    for i in range(3):
        cluster.ok(version, "create", "configmap", f"cm{i}", "-n", ns, "--from-literal=k=v")
    pki = cluster.ca.parent
    url = f"{cluster.url}/api/v1/namespaces/{ns}/configmaps"
    code, _, body = https(f"{url}?limit=1", cluster.ca, (pki / "admin.crt", pki / "admin.key"))
    first = json.loads(body)
    assert code == 200 and [o["metadata"]["name"] for o in first["items"]] == ["cm0"]
    assert first["metadata"]["remainingItemCount"] == 2 and first["metadata"]["continue"]
    code, _, body = https(f"{url}?limit=5&continue={first['metadata']['continue']}", cluster.ca,
                          (pki / "admin.crt", pki / "admin.key"))
    rest = json.loads(body)
    assert [o["metadata"]["name"] for o in rest["items"]] == ["cm1", "cm2"]
    assert "continue" not in rest["metadata"]
    table = cluster.ok(version, "get", "cm", "-n", ns, "--chunk-size=1").split()
    assert [w for w in table if w.startswith("cm")] == ["cm0", "cm1", "cm2"]


def test_an_answer_goes_out_in_one_write_with_its_headers(cluster: Cluster) -> None:
    # like Go's buffered response writer (and TCP_NODELAY): a small answer is one TLS record,
    # not a header record with the body ~40 ms behind it, which a proxy stopping in between
    # (haproxy-maintenance) cut after the headers
    pki = cluster.ca.parent
    ctx = ssl.create_default_context(cafile=str(cluster.ca))
    ctx.load_cert_chain(str(pki / "admin.crt"), str(pki / "admin.key"))
    host, port = cluster.url.removeprefix("https://").rsplit(":", 1)
    with socket.create_connection((host, int(port)), timeout=5) as raw, \
            ctx.wrap_socket(raw, server_hostname=host) as tls:
        for _ in range(3):  # on a kept-alive connection, as the load probe's reader asks
            tls.sendall(f"GET /api/v1/namespaces/default/configmaps?limit=1 HTTP/1.1\r\n"
                        f"Host: {host}\r\n\r\n".encode())
            record = tls.recv(65536)  # one TLS record at the most
            head, _, body = record.partition(b"\r\n\r\n")
            length = next(int(line.split(b":")[1]) for line in head.split(b"\r\n")
                          if line.lower().startswith(b"content-length:"))
            assert head.startswith(b"HTTP/1.1 200") and len(body) == length > 0


@pytest.mark.parametrize("version", versions(edges_only=True))
def test_invalid_configmaps_are_422_with_the_reason(cluster: Cluster, version: str) -> None:
    bad = cluster.kubectl(version, "create", "configmap", "Bad_Name", "--from-literal=k=v")
    assert bad.returncode == 1
    assert 'ConfigMap "Bad_Name" is invalid: metadata.name: Invalid value: "Bad_Name": a ' \
           "lowercase RFC 1123 subdomain" in bad.stderr
    # kubectl words a 422 Invalid Status (and only that) as "The <Kind> <name> is invalid"
    bad = cluster.kubectl(version, "create", "-f", "-", stdin=_manifest("Bad_Name", {}))
    assert bad.returncode == 1 and bad.stderr.startswith(
        'The ConfigMap "Bad_Name" is invalid: metadata.name: Invalid value: "Bad_Name"')
    big = _manifest("too-big", {"k": "x" * (1024 * 1024 + 1)})
    refused = cluster.kubectl(version, "create", "-f", "-", stdin=big)
    assert refused.returncode == 1 and "Too long: must have at most 1048576 bytes" in \
        refused.stderr
    assert etcd_get(cluster.etcd, "/registry/configmaps/default/too-big") is None


@pytest.mark.parametrize("version", versions(edges_only=True))
def test_watch_sees_a_change(cluster: Cluster, version: str) -> None:
    name = f"watched-{version.replace('.', '-') or 'x'}"
    cluster.ok(version, "create", "configmap", name, "--from-literal=k=v")
    home = cluster.base / f"home-{version or 'default'}"
    env = {"HOME": str(home), "KUBECONFIG": str(cluster.admin), "PATH": "/usr/bin:/bin"}
    with subprocess.Popen([KUBECTLS[version], "get", "cm", name, "-w",
                           "--output-watch-events"], env=env, stdout=subprocess.PIPE,
                          stderr=subprocess.PIPE, text=True) as watcher:
        try:
            assert watcher.stdout is not None
            header = watcher.stdout.readline()
            assert header.split()[:2] == ["EVENT", "NAME"]
            assert watcher.stdout.readline().split()[:3] == ["ADDED", name, "1"]
            cluster.ok(version, "patch", "cm", name, "-p", '{"data":{"k2":"v2"}}')
            assert watcher.stdout.readline().split()[:3] == ["MODIFIED", name, "2"]
            cluster.ok(version, "delete", "cm", name)
            assert watcher.stdout.readline().split()[:2] == ["DELETED", name]
        finally:
            watcher.terminate()


# --- namespaces, auth, cluster-info ------------------------------------------------------------


def test_namespaces_exist_create_delete_and_protect(cluster: Cluster) -> None:
    version = EDGE_VERSIONS[-1] if EDGE_VERSIONS else pytest.skip("no kubectl")
    out = cluster.ok(version, "get", "ns", "-o", "name")
    assert {"namespace/default", "namespace/kube-system", "namespace/kube-public",
            "namespace/kube-node-lease"} <= set(out.split())
    assert cluster.ok(version, "create", "ns", "team-a") == "namespace/team-a created\n"
    cluster.ok(version, "-n", "team-a", "create", "cm", "inside", "--from-literal=k=v")
    missing = cluster.kubectl(version, "-n", "nowhere", "create", "cm", "x",
                              "--from-literal=k=v")
    assert missing.returncode == 1 and 'namespaces "nowhere" not found' in missing.stderr
    assert cluster.ok(version, "delete", "ns", "team-a") == 'namespace "team-a" deleted\n'
    assert etcd_get(cluster.etcd, "/registry/configmaps/team-a/inside") is None
    kept = cluster.kubectl(version, "delete", "ns", "kube-system")
    assert kept.returncode == 1 and "(Forbidden)" in kept.stderr


@pytest.mark.parametrize("version", versions(edges_only=True))
def test_authentication_like_the_real_server(cluster: Cluster, version: str) -> None:
    who = cluster.ok(version, "auth", "whoami").splitlines()
    assert who[1].split() == ["Username", "kubernetes-admin"]
    assert who[2].split(None, 1) == ["Groups", "[kubeadm:cluster-admins system:authenticated]"]
    nobody = cluster.kubectl(version, "get", "cm", kubeconfig=cluster.anonymous)
    assert nobody.returncode == 1
    assert "error: You must be logged in to the server (Unauthorized" in nobody.stderr
    code, _, body = https(f"{cluster.url}/api/v1/namespaces/default/configmaps", cluster.ca)
    assert code == 401 and json.loads(body)["reason"] == "Unauthorized"
    # a certificate of another CA: the TLS layer refuses it (see docs/standins.md)
    foreign = cluster.kubectl(version, "get", "cm", kubeconfig=cluster.foreign)
    assert foreign.returncode == 1 and "certificate" in foreign.stderr.lower()
    # health and version stay anonymous, as kubeadm's defaults allow
    assert https(f"{cluster.url}/version", cluster.ca)[0] == 200


@pytest.mark.parametrize("version", versions(edges_only=True))
def test_cluster_info(cluster: Cluster, version: str) -> None:
    out = cluster.ok(version, "cluster-info")
    plain = out.replace("\x1b[0;32m", "").replace("\x1b[0;33m", "").replace("\x1b[0m", "")
    assert plain.splitlines()[0] == f"Kubernetes control plane is running at {cluster.url}"
    svc = cluster.ok(version, "get", "svc", "kubernetes", "-o", "jsonpath={.spec.clusterIP}")
    assert svc == "10.96.0.1"


def test_csr_is_kept_and_listed(cluster: Cluster) -> None:
    """The kubelet CSR path (worker join) stores the CSR like the real apiserver."""
    version = EDGE_VERSIONS[-1] if EDGE_VERSIONS else pytest.skip("no kubectl")
    csr = subprocess.run(["openssl", "req", "-new", "-newkey", "ec", "-pkeyopt",
                          "ec_paramgen_curve:prime256v1", "-nodes", "-keyout", "/dev/null",
                          "-subj", "/O=system:nodes/CN=system:node:worker9"],
                         capture_output=True, check=True).stdout
    body = json.dumps({"apiVersion": "certificates.k8s.io/v1", "kind":
                       "CertificateSigningRequest", "metadata": {"name": "worker9"},
                       "spec": {"request": base64.b64encode(csr).decode(), "signerName":
                                "kubernetes.io/kube-apiserver-client-kubelet",
                                "usages": ["client auth"]}})
    cluster.ok(version, "create", "-f", "-", stdin=body)
    row = cluster.ok(version, "get", "csr", "worker9").splitlines()[1].split()
    assert row[0] == "worker9" and row[-1] == "Approved,Issued"
    issued = json.loads(cluster.ok(version, "get", "csr", "worker9", "-o", "json"))
    cert = x509.load_pem_x509_certificate(base64.b64decode(issued["status"]["certificate"]))
    assert cert.subject.rfc4514_string() == "CN=system:node:worker9,O=system:nodes"


def _etcd_put(etcd: EtcdServer, key: str, value: dict) -> None:
    ctx = ssl.create_default_context(cafile=str(etcd.ca))
    ctx.load_cert_chain(str(etcd.cert), str(etcd.key))
    body = json.dumps({"key": base64.b64encode(key.encode()).decode(),
                       "value": base64.b64encode(json.dumps(value).encode()).decode()})
    with urllib.request.urlopen(urllib.request.Request(etcd.urls[0] + "/v3/kv/put",
                                                       data=body.encode()), context=ctx):
        pass


def test_objects_older_stand_ins_wrote_straight_to_etcd_are_served(cluster: Cluster) -> None:
    """An earlier kubelet stand-in's Node (no uid, no creationTimestamp) and a ConfigMap put
    into etcd by kubeadm: listed, readable, and completed on their next write."""
    version = EDGE_VERSIONS[-1] if EDGE_VERSIONS else pytest.skip("no kubectl")
    _etcd_put(cluster.etcd, "/registry/minions/old-node", {
        "apiVersion": "v1", "kind": "Node", "metadata": {"name": "old-node"},
        "status": {"conditions": [{"type": "Ready", "status": "True",
                                   "lastHeartbeatTime": "2020-01-01T00:00:00Z"}]}})
    _etcd_put(cluster.etcd, "/registry/configmaps/kube-system/old-cm",
              {"apiVersion": "v1", "kind": "ConfigMap",
               "metadata": {"name": "old-cm", "namespace": "kube-system"}, "data": {"k": "v"}})
    try:
        rows = {r.split()[0]: r.split() for r in cluster.ok(version, "get", "nodes")
                .splitlines()[1:]}
        assert rows["old-node"][1:4] == ["NotReady", "<none>", "<unknown>"]  # stale heartbeat
        uid = cluster.ok(version, "get", "node", "old-node", "-o", "jsonpath={.metadata.uid}")
        assert uid == cluster.ok(version, "get", "node", "old-node", "-o",
                                 "jsonpath={.metadata.uid}")  # stable without a write
        cluster.ok(version, "label", "node", "old-node", "written=yes")
        meta = json.loads(cluster.ok(version, "get", "node", "old-node", "-o", "json"))[
            "metadata"]
        assert meta["uid"] == uid and meta["creationTimestamp"]
        assert cluster.ok(version, "-n", "kube-system", "get", "cm", "old-cm", "-o",
                          "jsonpath={.data.k}") == "v"
    finally:
        cluster.ok(version, "delete", "node", "old-node")
        cluster.ok(version, "-n", "kube-system", "delete", "cm", "old-cm")


def test_every_log_line_says_lab_standin(cluster: Cluster) -> None:
    """Last in the file: after all the traffic above, every stand-in log line is marked."""
    logs = {p.name: p.read_text() for p in cluster.base.glob("*.log")}
    assert {"apiserver0.log", "apiserver1.log", "kubelet.log",
            "kube-controller-manager.log"} <= set(logs)
    unmarked = [(name, line) for name, text in logs.items() for line in text.splitlines()
                if not line.startswith("[lab stand-in]")]
    assert not unmarked, unmarked[:5]
    code, headers, _ = https(f"{cluster.url}/api", cluster.ca)
    assert code == 401 and headers["X-K8sha-Lab-Standin"] == "true"
