"""The lab stand-ins against a real etcd (TLS, started from /usr/bin/etcd in tmp_path).

No root: the stand-ins' host paths are moved under a per-node directory with
$K8SHA_STANDIN_ROOT and their daemons are spawned as processes ($K8SHA_STANDIN_SERVICES=spawn)
instead of systemd units. Every process started here is stopped by its PID.

The deploy's own parsers (`nornir_k8sha.tasks.kubeadm`: parse_token, parse_certificate_key and
their patterns) read the stand-in's output here, as they read real kubeadm's.
"""

from __future__ import annotations

import base64
import hashlib
import http.client
import http.server
import importlib
import ipaddress
import json
import os
import re
import shutil
import signal
import socket
import ssl
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from nornir_k8sha.lab import standins
from nornir_k8sha.tasks import kubeadm as K
from tests.conftest import read_http_request
from tests.kubectl_bins import EDGE_VERSIONS, kubectl

PROGRAMS = Path(standins.__file__).parent / "programs"
ETCD = shutil.which("etcd") or "/usr/bin/etcd"
pytestmark = pytest.mark.skipif(not Path(ETCD).exists() or not shutil.which("openssl"),
                                reason="needs /usr/bin/etcd (etcd-server) and openssl")

# --- the shapes of the stand-in's output, built on the deploy's own token/cert-key patterns ---
INIT_DONE_RE = re.compile(r"Your Kubernetes control-plane has initialized successfully!")
JOIN_ENDPOINT_RE = re.compile(r"kubeadm join (?P<endpoint>[^\s\\]+)")
CA_HASH_RE = re.compile(r"--discovery-token-ca-cert-hash\s+(?P<hash>sha256:[0-9a-f]{64})\b")
CERT_KEY_FLAG_RE = re.compile(rf"--certificate-key\s+(?P<key>{K.CERT_KEY_PATTERN})\b")
UPLOAD_CERTS_KEY_RE = re.compile(rf"Using certificate key:\s*\n(?P<key>{K.CERT_KEY_PATTERN})\s*$",
                                 re.MULTILINE)
PRINT_JOIN_RE = re.compile(rf"^kubeadm join (?P<endpoint>\S+) --token (?P<token>{K.TOKEN_PATTERN})"
                           r" --discovery-token-ca-cert-hash (?P<hash>sha256:[0-9a-f]{64})"
                           rf"(?: --control-plane --certificate-key (?P<key>{K.CERT_KEY_PATTERN}))?"
                           r" ?$")
VERSION_SHORT_RE = re.compile(r"^v\d+\.\d+\.\d+$")

VERSION = "1.31.4"


# --- certificates (cryptography) ----------------------------------------------------------------


def _key() -> ec.EllipticCurvePrivateKey:
    return ec.generate_private_key(ec.SECP256R1())


def _pem_key(key: ec.EllipticCurvePrivateKey) -> bytes:
    return key.private_bytes(serialization.Encoding.PEM,
                             serialization.PrivateFormat.TraditionalOpenSSL,
                             serialization.NoEncryption())


def _cert(cn: str, key: ec.EllipticCurvePrivateKey, ca: tuple[x509.Certificate, Any] | None,
          *, ips: tuple[str, ...] = (), server: bool = False, org: str = "") -> x509.Certificate:
    now = datetime.now(UTC)
    subject = x509.Name(([x509.NameAttribute(NameOID.ORGANIZATION_NAME, org)] if org else [])
                        + [x509.NameAttribute(NameOID.COMMON_NAME, cn)])
    builder = (x509.CertificateBuilder().subject_name(subject)
               .issuer_name(ca[0].subject if ca else subject).public_key(key.public_key())
               .serial_number(x509.random_serial_number())
               .not_valid_before(now - timedelta(minutes=5))
               .not_valid_after(now + timedelta(days=2)))
    if ca is None:
        builder = builder.add_extension(x509.BasicConstraints(ca=True, path_length=None), True)
        builder = builder.add_extension(x509.KeyUsage(True, False, False, False, False, True,
                                                      True, False, False), True)
        return builder.sign(key, hashes.SHA256())
    usages = [ExtendedKeyUsageOID.CLIENT_AUTH] + ([ExtendedKeyUsageOID.SERVER_AUTH]
                                                  if server else [])
    builder = builder.add_extension(x509.ExtendedKeyUsage(usages), False)
    if ips:
        builder = builder.add_extension(x509.SubjectAlternativeName(
            [x509.IPAddress(ipaddress.ip_address(i)) for i in ips]
            + [x509.DNSName("localhost")]), False)
    return builder.sign(ca[1], hashes.SHA256())


def _write_pair(cert: x509.Certificate, key: ec.EllipticCurvePrivateKey, crt: Path,
                keyfile: Path) -> None:
    crt.parent.mkdir(parents=True, exist_ok=True)
    crt.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    keyfile.write_bytes(_pem_key(key))
    keyfile.chmod(0o600)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


# --- a real etcd ---------------------------------------------------------------------------------


class EtcdServer:
    """TLS etcd on loopback (1 or 3 members), client-cert auth, the gRPC gateway on."""

    def __init__(self, base: Path, members: int = 1) -> None:
        self.base = base
        pki = base / "pki"
        ca_key = _key()
        ca = _cert("etcd-ca", ca_key, None)
        _write_pair(ca, ca_key, pki / "ca.crt", pki / "ca.key")
        skey = _key()
        _write_pair(_cert("etcd", skey, (ca, ca_key), ips=("127.0.0.1",), server=True), skey,
                    pki / "server.crt", pki / "server.key")
        ckey = _key()
        _write_pair(_cert("kube-apiserver-etcd-client", ckey, (ca, ca_key)), ckey,
                    pki / "client.crt", pki / "client.key")
        self.ca, self.cert, self.key = pki / "ca.crt", pki / "client.crt", pki / "client.key"
        self.ports = [(_free_port(), _free_port()) for _ in range(members)]
        self.urls = [f"https://127.0.0.1:{c}" for c, _ in self.ports]
        self.url = ",".join(self.urls)  # the --etcd-servers form
        self.procs: list[subprocess.Popen[bytes]] = []

    def start(self) -> None:
        pki = self.base / "pki"
        cluster = ",".join(f"m{i}=http://127.0.0.1:{p}" for i, (_, p) in enumerate(self.ports))
        for i, (url, (_, peer_port)) in enumerate(zip(self.urls, self.ports, strict=True)):
            peer = f"http://127.0.0.1:{peer_port}"
            with open(self.base / f"etcd{i}.log", "ab") as log:
                self.procs.append(subprocess.Popen(
                    [ETCD, "--name", f"m{i}", "--data-dir", str(self.base / f"data{i}"),
                     "--listen-client-urls", url, "--advertise-client-urls", url,
                     "--listen-peer-urls", peer, "--initial-advertise-peer-urls", peer,
                     "--initial-cluster", cluster, "--cert-file", str(pki / "server.crt"),
                     "--key-file", str(pki / "server.key"), "--trusted-ca-file", str(self.ca),
                     "--client-cert-auth", "--enable-grpc-gateway"],
                    stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL))
        ctx = ssl.create_default_context(cafile=str(self.ca))
        ctx.load_cert_chain(str(self.cert), str(self.key))
        deadline = time.monotonic() + 15
        while time.monotonic() < deadline:
            try:
                req = urllib.request.Request(self.urls[0] + "/v3/kv/range",
                                             data=b'{"key":"aGVhbHRo"}')
                with urllib.request.urlopen(req, timeout=1, context=ctx):
                    return
            except OSError:
                time.sleep(0.1)
        logs = (self.base / "etcd0.log").read_text()[-2000:]
        raise RuntimeError(f"etcd did not start: {logs}")

    def stop(self, members: int | None = None) -> None:
        """Stop the first `members` members (all by default), by PID."""
        end(self.procs[:members])


def end(procs: list[subprocess.Popen[bytes]]) -> None:
    """Terminate processes we started (by PID), killing those that linger."""
    for proc in procs:
        if proc.poll() is None:
            proc.terminate()
            try:
                proc.wait(5)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()


@pytest.fixture(scope="module")
def etcd(tmp_path_factory: pytest.TempPathFactory) -> Iterator[EtcdServer]:
    server = EtcdServer(tmp_path_factory.mktemp("etcd"))
    server.start()
    yield server
    server.stop()


# --- running the stand-ins -----------------------------------------------------------------------


class Procs:
    """Processes a test started, and the stand-in roots whose spawned daemons must die too."""

    def __init__(self) -> None:
        self.procs: list[subprocess.Popen[bytes]] = []
        self.roots: list[Path] = []

    def cleanup(self) -> None:
        for proc in self.procs:
            if proc.poll() is None:
                proc.kill()
                proc.wait()
        for root in self.roots:
            for pidfile in (root / "run/k8sha-standins").glob("*.pid"):
                try:
                    os.kill(int(pidfile.read_text()), signal.SIGKILL)
                except (ProcessLookupError, ValueError):
                    pass


@pytest.fixture
def procs() -> Iterator[Procs]:
    p = Procs()
    yield p
    p.cleanup()


def _env(root: Path | None) -> dict[str, str]:
    env = {**os.environ, "K8SHA_STANDIN_SERVICES": "spawn", "K8SHA_STANDIN_HEARTBEAT": "1s",
           "PYTHONUNBUFFERED": "1"}
    if root is not None:
        env["K8SHA_STANDIN_ROOT"] = str(root)
    return env


#: The interpreter the lab rootfs has (Debian's python3, no pip packages); -E -s: no env, no site.
PYTHON = ["/usr/bin/python3", "-E", "-s"] if Path("/usr/bin/python3").exists() else [
    sys.executable]


def run(program: str, *args: str, root: Path | None = None, timeout: float = 60
        ) -> subprocess.CompletedProcess[str]:
    return subprocess.run([*PYTHON, str(PROGRAMS / program), *args], env=_env(root),
                          capture_output=True, text=True, timeout=timeout)


def spawn(procs: Procs, log: Path, program: str, *args: str) -> subprocess.Popen[bytes]:
    with open(log, "ab") as out:
        proc = subprocess.Popen([*PYTHON, str(PROGRAMS / program), *args],
                                env=_env(None), stdout=out, stderr=subprocess.STDOUT)
    procs.procs.append(proc)
    return proc


def wait_for(check: Callable[[], Any], timeout: float, what: str) -> Any:
    deadline = time.monotonic() + timeout
    last: Any = None
    while time.monotonic() < deadline:
        try:
            last = check()
            if last:
                return last
        except (OSError, ValueError, KeyError) as exc:
            last = exc
        time.sleep(0.1)
    raise AssertionError(f"timed out waiting for {what}: {last!r}")


def https(url: str, ca: Path, cert: tuple[Path, Path] | None = None, method: str = "GET",
          timeout: float = 5) -> tuple[int, dict[str, str], str]:
    ctx = ssl.create_default_context(cafile=str(ca))
    if cert:
        ctx.load_cert_chain(str(cert[0]), str(cert[1]))
    req = urllib.request.Request(url, method=method)
    try:
        with urllib.request.urlopen(req, timeout=timeout, context=ctx) as resp:
            return resp.status, dict(resp.headers), resp.read().decode()
    except urllib.error.HTTPError as exc:
        return exc.code, dict(exc.headers), exc.read().decode()


def etcd_get(etcd: EtcdServer, key: str) -> dict[str, Any] | None:
    ctx = ssl.create_default_context(cafile=str(etcd.ca))
    ctx.load_cert_chain(str(etcd.cert), str(etcd.key))
    body = json.dumps({"key": base64.b64encode(key.encode()).decode()}).encode()
    req = urllib.request.Request(etcd.urls[0] + "/v3/kv/range", data=body)
    with urllib.request.urlopen(req, timeout=3, context=ctx) as resp:
        kvs = json.loads(resp.read()).get("kvs", [])
    return json.loads(base64.b64decode(kvs[0]["value"])) if kvs else None


def _programs(*names: str) -> list[Any]:
    """The stand-ins' modules, imported in this process (they import each other by name)."""
    sys.path.insert(0, str(PROGRAMS))
    try:
        return [importlib.import_module(n) for n in names]
    finally:
        sys.path.remove(str(PROGRAMS))


# --- in-process: the YAML subset the stand-ins read -----------------------------------------------


def test_programs_import_only_the_standard_library() -> None:
    """The rootfs has python3 and nothing else: any other import would fail in the lab."""
    siblings = {p.stem for p in PROGRAMS.glob("*.py")}
    for program in PROGRAMS.glob("*.py"):
        for m in re.finditer(r"^(?:from (\S+) import|import (\S+))", program.read_text(),
                             re.MULTILINE):
            top = (m[1] or m[2]).split(".")[0]
            assert top in sys.stdlib_module_names or top in siblings or top == "__future__", (
                f"{program.name} imports {top}")


def test_yaml_subset_reads_kubeadm_v1beta4_config_and_round_trips() -> None:
    (sa,) = _programs("k8sha_standin")
    docs = sa.yaml_load_all("""
# rendered by the deploy
apiVersion: kubeadm.k8s.io/v1beta4
kind: InitConfiguration
bootstrapTokens:
  - token: "abcdef.0123456789abcdef"   # a comment
    ttl: 24h0m0s
    usages: [signing, authentication]
nodeRegistration:
  name: master1
  kubeletExtraArgs:
  - name: node-ip
    value: 10.88.0.11
  taints: []
localAPIEndpoint: {advertiseAddress: 10.88.0.11, bindPort: 6443}
---
apiVersion: kubeadm.k8s.io/v1beta4
kind: ClusterConfiguration
controlPlaneEndpoint: '10.88.0.100:6443'
etcd:
  external:
    endpoints:
      - https://10.88.0.21:2379
    caFile: /etc/kubernetes/pki/etcd-external/ca.crt
""")
    init, cluster = docs
    assert init["bootstrapTokens"][0] == {"token": "abcdef.0123456789abcdef", "ttl": "24h0m0s",
                                          "usages": ["signing", "authentication"]}
    assert init["nodeRegistration"]["kubeletExtraArgs"] == [{"name": "node-ip",
                                                             "value": "10.88.0.11"}]
    assert init["localAPIEndpoint"] == {"advertiseAddress": "10.88.0.11", "bindPort": 6443}
    assert cluster["controlPlaneEndpoint"] == "10.88.0.100:6443"
    assert cluster["etcd"]["external"]["endpoints"] == ["https://10.88.0.21:2379"]
    assert sa.yaml_load(sa.yaml_dump(cluster)) == cluster


# --- the apiserver stand-in -----------------------------------------------------------------------


def _cluster_ca(pki: Path) -> tuple[x509.Certificate, ec.EllipticCurvePrivateKey]:
    key = _key()
    ca = _cert("kubernetes", key, None)
    _write_pair(ca, key, pki / "ca.crt", pki / "ca.key")
    return ca, key


def test_apiserver_health_and_readyz_follows_etcd_quorum(tmp_path: Path, procs: Procs) -> None:
    etcd = EtcdServer(tmp_path / "etcd", members=3)
    etcd.start()
    try:
        pki = tmp_path / "pki"
        ca, ca_key = _cluster_ca(pki)
        skey = _key()
        _write_pair(_cert("kube-apiserver", skey, (ca, ca_key), ips=("127.0.0.1",),
                          server=True), skey, pki / "apiserver.crt", pki / "apiserver.key")
        port = _free_port()
        spawn(procs, tmp_path / "apiserver.log", "apiserver.py", "--bind-address=127.0.0.1",
              f"--secure-port={port}", f"--etcd-servers={etcd.url}",
              f"--etcd-cafile={etcd.ca}", f"--etcd-certfile={etcd.cert}",
              f"--etcd-keyfile={etcd.key}", f"--tls-cert-file={pki / 'apiserver.crt'}",
              f"--tls-private-key-file={pki / 'apiserver.key'}",
              f"--client-ca-file={pki / 'ca.crt'}", f"--k8sha-version={VERSION}")
        base = f"https://127.0.0.1:{port}"
        code, headers, body = wait_for(lambda: https(base + "/healthz", pki / "ca.crt"), 10,
                                       "the apiserver stand-in")
        assert (code, body) == (200, "ok")
        assert headers["X-K8sha-Lab-Standin"] == "true"
        assert https(base + "/livez", pki / "ca.crt")[::2] == (200, "ok")
        # ready once its post-start hook has written the system namespaces (milliseconds)
        wait_for(lambda: https(base + "/readyz", pki / "ca.crt")[::2] == (200, "ok"), 10,
                 "/readyz")
        code, _, body = https(base + "/version", pki / "ca.crt")
        assert code == 200 and json.loads(body)["gitVersion"] == f"v{VERSION}"
        # no client certificate: nodes are not anonymous
        assert https(base + "/api/v1/nodes", pki / "ca.crt")[0] == 401

        etcd.stop(members=2)  # one member alive but without quorum, as in the lab's fault
        started = time.monotonic()
        code, _, body = wait_for(lambda: (r := https(base + "/readyz", pki / "ca.crt"))[0] == 500
                                 and r, 10, "/readyz to fail without etcd")
        assert time.monotonic() - started < 5
        assert "[-]etcd failed" in body and "lab stand-in" in body
        took = time.monotonic()
        assert https(base + "/readyz", pki / "ca.crt")[0] == 500
        assert time.monotonic() - took < 2.0  # answers within a health checker's timeout
        assert https(base + "/healthz", pki / "ca.crt")[::2] == (200, "ok")
    finally:
        etcd.stop()


# --- leader election ------------------------------------------------------------------------------


def test_leader_election_one_holder_then_failover(etcd: EtcdServer, tmp_path: Path,
                                                  procs: Procs) -> None:
    name = f"kube-controller-manager-{tmp_path.name[-6:].lower().replace('_', '-')}"
    flags = [f"--component={name}", f"--etcd-servers={etcd.url}", f"--etcd-cafile={etcd.ca}",
             f"--etcd-certfile={etcd.cert}", f"--etcd-keyfile={etcd.key}",
             "--leader-elect-lease-duration=3s", "--leader-elect-renew-deadline=2s",
             "--leader-elect-retry-period=0.5s"]
    candidates = {who: spawn(procs, tmp_path / f"{who}.log", "leader.py", *flags,
                             f"--k8sha-identity={who}") for who in ("master1", "master2")}
    key = f"/registry/leases/kube-system/{name}"
    lease = wait_for(lambda: etcd_get(etcd, key), 10, "a leader")
    holder = lease["spec"]["holderIdentity"]
    assert holder in candidates and lease["kind"] == "Lease"
    time.sleep(2)  # several retry periods: the holder keeps it, the other never takes it
    assert etcd_get(etcd, key)["spec"]["holderIdentity"] == holder
    logs = {w: (tmp_path / f"{w}.log").read_text() for w in candidates}
    assert sum("successfully acquired lease" in text for text in logs.values()) == 1
    assert all(line.startswith("[lab stand-in]") for t in logs.values()
               for line in t.splitlines())

    candidates[holder].send_signal(signal.SIGKILL)  # no release: the lease must expire
    killed = time.monotonic()
    other = next(w for w in candidates if w != holder)
    wait_for(lambda: (etcd_get(etcd, key) or {}).get("spec", {}).get("holderIdentity") == other,
             20, "the other candidate to take over")
    took = time.monotonic() - killed
    assert took < 3 + 2, f"takeover took {took:.1f}s"
    taken = etcd_get(etcd, key)
    assert taken["spec"]["leaseTransitions"] == lease["spec"].get("leaseTransitions", 0) + 1
    assert taken["metadata"]["uid"] == lease["metadata"]["uid"]  # the same object, taken over

    candidates[other].send_signal(signal.SIGTERM)  # a clean stop releases at once
    candidates[other].wait(5)
    released = wait_for(lambda: (etcd_get(etcd, key) or {}).get("spec", {}).get(
        "holderIdentity") == "" and etcd_get(etcd, key), 2, "the lease released on SIGTERM")
    assert released["kind"] == "Lease" and released["spec"]["leaseDurationSeconds"] == 1


def test_a_dead_holders_lease_object_stays_until_taken_over(etcd: EtcdServer, tmp_path: Path,
                                                            procs: Procs) -> None:
    """Real Kubernetes keeps a Lease after its holder died (holderIdentity stays, renewTime
    ages): `kubectl get lease` and `check` never read it as 404. Alone, the dead holder's
    Lease is still there well past its duration; a candidate started then takes it over."""
    name = f"kube-scheduler-{tmp_path.name[-6:].lower().replace('_', '-')}"
    flags = [f"--component={name}", f"--etcd-servers={etcd.url}", f"--etcd-cafile={etcd.ca}",
             f"--etcd-certfile={etcd.cert}", f"--etcd-keyfile={etcd.key}",
             "--leader-elect-lease-duration=2s", "--leader-elect-renew-deadline=1s",
             "--leader-elect-retry-period=0.5s"]
    key = f"/registry/leases/kube-system/{name}"
    first = spawn(procs, tmp_path / "a.log", "leader.py", *flags, "--k8sha-identity=a")
    wait_for(lambda: etcd_get(etcd, key), 10, "a leader")
    first.send_signal(signal.SIGKILL)
    first.wait(5)
    time.sleep(2 + 2)  # the lease duration and more: expired, yet the object stays
    lease = etcd_get(etcd, key)
    assert lease is not None and lease["spec"]["holderIdentity"] == "a"
    spawn(procs, tmp_path / "b.log", "leader.py", *flags, "--k8sha-identity=b")
    wait_for(lambda: (etcd_get(etcd, key) or {}).get("spec", {}).get("holderIdentity") == "b",
             10, "b to take the expired lease over")
    assert "[lab stand-in]" in (tmp_path / "b.log").read_text()


# --- kubeadm: init, token create, upload-certs, joins, reset --------------------------------------


def _master_root(base: Path, name: str, etcd: EtcdServer, ca_src: Path | None) -> Path:
    """A master's root with what the deploy places: the external-etcd client certs and the CA."""
    root = base / name
    ext = root / "etc/kubernetes/pki/etcd-external"
    ext.mkdir(parents=True)
    shutil.copy(etcd.ca, ext / "ca.crt")
    shutil.copy(etcd.cert, ext / "apiserver-etcd-client.crt")
    shutil.copy(etcd.key, ext / "apiserver-etcd-client.key")
    pki = root / "etc/kubernetes/pki"
    if ca_src is None:
        _cluster_ca(pki)
    else:
        shutil.copy(ca_src / "ca.crt", pki / "ca.crt")
        shutil.copy(ca_src / "ca.key", pki / "ca.key")
    return root


def _init_config(port: int, etcd: EtcdServer) -> str:
    return f"""apiVersion: kubeadm.k8s.io/v1beta4
kind: InitConfiguration
nodeRegistration:
  name: master1
localAPIEndpoint:
  advertiseAddress: 127.0.0.1
  bindPort: {port}
---
apiVersion: kubeadm.k8s.io/v1beta4
kind: ClusterConfiguration
kubernetesVersion: v{VERSION}
controlPlaneEndpoint: "127.0.0.1:{port}"
apiServer:
  certSANs: ["10.88.0.100", "k8s-api.lab"]
  extraArgs:
  - name: bind-address
    value: 127.0.0.1
controllerManager:
  extraArgs:
  - name: leader-elect-lease-duration
    value: 3s
etcd:
  external:
    endpoints: ["{etcd.url}"]
    caFile: /etc/kubernetes/pki/etcd-external/ca.crt
    certFile: /etc/kubernetes/pki/etcd-external/apiserver-etcd-client.crt
    keyFile: /etc/kubernetes/pki/etcd-external/apiserver-etcd-client.key
"""


def _spki_hash(ca_pem: bytes) -> str:
    cert = x509.load_pem_x509_certificate(ca_pem)
    der = cert.public_key().public_bytes(serialization.Encoding.DER,
                                         serialization.PublicFormat.SubjectPublicKeyInfo)
    return "sha256:" + hashlib.sha256(der).hexdigest()


def _nodes(base: str, m1: Path, admin: tuple[Path, Path]) -> dict[str, str]:
    code, _, body = https(base + "/api/v1/nodes", m1 / "etc/kubernetes/pki/ca.crt", admin)
    assert code == 200, body
    return {n["metadata"]["name"]: next(c["status"] for c in n["status"]["conditions"]
                                        if c["type"] == "Ready") for n in json.loads(body)["items"]}


def _real_kubectl_sees_the_cluster(m1: Path, tmp_path: Path) -> None:
    """Real kubectl with nothing but the admin.conf kubeadm wrote (O=kubeadm:cluster-admins)
    reads what the kubeadm, kubelet and leader stand-ins wrote (skipped without kubectl)."""
    for version in EDGE_VERSIONS:
        def run(*args: str, v: str = version) -> str:
            proc = kubectl(v, m1 / "etc/kubernetes/admin.conf", *args,
                           home=tmp_path / f"home-{v}")
            assert proc.returncode == 0 and proc.stderr == "", (args, proc.stderr)
            return proc.stdout

        rows = {r.split()[0]: r.split() for r in run("get", "nodes").splitlines()[1:]}
        assert {n: r[1:3] for n, r in rows.items()} == {
            "master1": ["Ready", "control-plane"], "master2": ["Ready", "control-plane"],
            "worker1": ["Ready", "<none>"]}
        leases = run("-n", "kube-system", "get", "leases", "-o", "name").split()
        assert "lease.coordination.k8s.io/kube-controller-manager" in leases
        cfg = run("-n", "kube-system", "get", "cm", "kubeadm-config", "-o",
                  "jsonpath={.data.ClusterConfiguration}")
        assert f"kubernetesVersion: v{VERSION}" in cfg
        assert run("-n", "kube-public", "get", "cm", "cluster-info", "-o",
                   "jsonpath={.metadata.creationTimestamp}")
        csrs = run("get", "csr").splitlines()
        assert csrs[0].split()[0] == "NAME" and any("Approved,Issued" in r for r in csrs[1:])


def test_kubeadm_init_token_join_reset(etcd: EtcdServer, tmp_path: Path, procs: Procs) -> None:
    port1, port2 = _free_port(), _free_port()
    m1 = _master_root(tmp_path, "master1", etcd, None)
    procs.roots.append(m1)
    (m1 / "etc/kubernetes/kubeadm-config.yaml").write_text(_init_config(port1, etcd))

    short = run("kubeadm.py", "version", "-o", "short", root=m1)
    assert short.returncode == 0 and short.stdout == f"v{VERSION}\n"
    assert VERSION_SHORT_RE.match(short.stdout.strip()) and "lab stand-in" in short.stderr

    init = run("kubeadm.py", "init", "--config", "/etc/kubernetes/kubeadm-config.yaml",
               "--upload-certs", root=m1)
    assert init.returncode == 0, init.stderr + init.stdout
    out = init.stdout
    ca_pem = (m1 / "etc/kubernetes/pki/ca.crt").read_bytes()
    assert INIT_DONE_RE.search(out)
    assert JOIN_ENDPOINT_RE.search(out)["endpoint"] == f"127.0.0.1:{port1}"
    token = K.parse_token(out)
    assert CA_HASH_RE.search(out)["hash"] == _spki_hash(ca_pem)
    cert_key = CERT_KEY_FLAG_RE.search(out)["key"]
    assert UPLOAD_CERTS_KEY_RE.search(out)["key"] == cert_key
    assert K.parse_certificate_key(out) == cert_key
    # every line is marked, except the certificate key that scripts read verbatim
    assert [ln for ln in out.splitlines() if not ln.startswith("[lab stand-in]")] == [cert_key]
    # the worker join command comes after the control-plane one and has no certificate key
    worker_part = out.split("join any number of worker nodes")[1]
    assert "--certificate-key" not in worker_part and token in worker_part

    admin_conf = (m1 / "etc/kubernetes/admin.conf").read_text()
    assert f"server: https://127.0.0.1:{port1}" in admin_conf
    served = x509.load_pem_x509_certificate((m1 / "etc/kubernetes/pki/apiserver.crt").read_bytes())
    sans = served.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert {"10.88.0.100", "127.0.0.1", "10.96.0.1"} <= {str(i) for i in sans.get_values_for_type(
        x509.IPAddress)}
    assert {"k8s-api.lab", "kubernetes", "master1"} <= set(sans.get_values_for_type(x509.DNSName))
    for pod in ("kube-apiserver", "kube-controller-manager", "kube-scheduler"):
        assert (m1 / f"etc/kubernetes/manifests/{pod}.yaml").is_file()

    # an admin client cert of the cluster CA, as `check` uses one from the PKI
    ca = x509.load_pem_x509_certificate(ca_pem)
    ca_key = serialization.load_pem_private_key((m1 / "etc/kubernetes/pki/ca.key").read_bytes(),
                                                None)
    akey = _key()
    admin = (tmp_path / "admin.crt", tmp_path / "admin.key")
    _write_pair(_cert("kubernetes-admin", akey, (ca, ca_key), org="system:masters"), akey,
                *admin)
    base1 = f"https://127.0.0.1:{port1}"
    wait_for(lambda: _nodes(base1, m1, admin).get("master1") == "True", 10, "master1 Ready")
    for name in ("kube-controller-manager", "kube-scheduler"):
        lease = wait_for(lambda n=name: (r := https(
            f"{base1}/apis/coordination.k8s.io/v1/namespaces/kube-system/leases/{n}",
            m1 / "etc/kubernetes/pki/ca.crt", admin))[0] == 200 and json.loads(r[2]), 10, name)
        assert lease["spec"]["holderIdentity"]

    # any initialised master mints join material
    tc = run("kubeadm.py", "token", "create", "--print-join-command", root=m1)
    assert tc.returncode == 0, tc.stderr
    m = PRINT_JOIN_RE.match(tc.stdout.rstrip("\n"))
    assert m and m["endpoint"] == f"127.0.0.1:{port1}" and m["hash"] == _spki_hash(ca_pem)
    assert len(tc.stdout.splitlines()) == 1
    new_token = m["token"]
    up = run("kubeadm.py", "init", "phase", "upload-certs", "--upload-certs", root=m1)
    assert up.returncode == 0, up.stderr
    assert len(up.stdout.splitlines()) == 3
    new_key = UPLOAD_CERTS_KEY_RE.search(up.stdout)["key"]
    assert up.stdout.splitlines()[-1] == new_key
    assert K.parse_certificate_key(up.stdout) == new_key

    # worker: wrong token, wrong pin, then the real thing
    w1 = tmp_path / "worker1"
    procs.roots.append(w1)
    endpoint = f"127.0.0.1:{port1}"
    bad = run("kubeadm.py", "join", endpoint, "--token", "zzzzzz.0123456789abcdef",
              "--discovery-token-ca-cert-hash", _spki_hash(ca_pem), "--node-name", "worker1",
              root=w1)
    assert bad.returncode == 1 and 'JWS signature in the cluster-info ConfigMap for token ID ' \
                                   '"zzzzzz"' in bad.stderr
    bad = run("kubeadm.py", "join", endpoint, "--token", new_token,
              "--discovery-token-ca-cert-hash", "sha256:" + "0" * 64, "--node-name", "worker1",
              root=w1)
    assert bad.returncode == 1 and "none of the public keys" in bad.stderr
    assert not (w1 / "etc/kubernetes/kubelet.conf").exists()
    good = run("kubeadm.py", "join", endpoint, "--token", new_token,
               "--discovery-token-ca-cert-hash", _spki_hash(ca_pem), "--node-name", "worker1",
               root=w1)
    assert good.returncode == 0, good.stderr
    assert "This node has joined the cluster:" in good.stdout
    assert (w1 / "etc/kubernetes/kubelet.conf").exists()
    assert not (w1 / "etc/kubernetes/pki/ca.key").exists()  # a worker never holds the CA key
    wait_for(lambda: _nodes(base1, m1, admin).get("worker1") == "True", 10, "worker1 Ready")

    # second master through a JoinConfiguration, like the deploy renders it
    m2 = _master_root(tmp_path, "master2", etcd, m1 / "etc/kubernetes/pki")
    procs.roots.append(m2)
    join_cfg = f"""apiVersion: kubeadm.k8s.io/v1beta4
kind: JoinConfiguration
discovery:
  bootstrapToken:
    apiServerEndpoint: "{endpoint}"
    token: "{new_token}"
    caCertHashes: ["{_spki_hash(ca_pem)}"]
nodeRegistration:
  name: master2
controlPlane:
  localAPIEndpoint:
    advertiseAddress: 127.0.0.1
    bindPort: {port2}
  certificateKey: "{{KEY}}"
"""
    (m2 / "etc/kubernetes/join.yaml").write_text(join_cfg.replace("{KEY}", "ab" * 32))
    bad = run("kubeadm.py", "join", "--config", "/etc/kubernetes/join.yaml", root=m2)
    assert bad.returncode == 1 and "message authentication failed" in bad.stderr
    (m2 / "etc/kubernetes/join.yaml").write_text(join_cfg.replace("{KEY}", new_key))
    good = run("kubeadm.py", "join", "--config", "/etc/kubernetes/join.yaml", root=m2)
    assert good.returncode == 0, good.stderr + good.stdout
    assert "a new control plane instance was created" in good.stdout
    base2 = f"https://127.0.0.1:{port2}"
    wait_for(lambda: https(base2 + "/readyz", m2 / "etc/kubernetes/pki/ca.crt")[::2] == (
        200, "ok"), 10, "master2's /readyz")
    wait_for(lambda: _nodes(base2, m1, admin).get("master2") == "True", 10, "master2 Ready")
    _real_kubectl_sees_the_cluster(m1, tmp_path)
    tc2 = run("kubeadm.py", "token", "create", "--print-join-command", root=m2)
    assert tc2.returncode == 0 and PRINT_JOIN_RE.match(tc2.stdout.rstrip("\n"))

    # the controller-manager leader dies with master1's stand-in: master2's takes over (3 s lease)
    lease_url = f"{base2}/apis/coordination.k8s.io/v1/namespaces/kube-system/leases/" \
                "kube-controller-manager"

    def holder() -> str:
        return json.loads(https(lease_url, m2 / "etc/kubernetes/pki/ca.crt", admin)[2])[
            "spec"]["holderIdentity"]

    first = holder()
    # both masters run on this machine: the holder is the one whose log names that identity
    owner = next(r for r in (m1, m2) if f"acquired lease kube-system/kube-controller-manager as "
                 f"{first}" in (r / "var/log/k8sha-standins/kube-controller-manager.service.log")
                 .read_text())
    os.kill(int((owner / "run/k8sha-standins/kube-controller-manager.service.pid")
                .read_text()), signal.SIGKILL)
    wait_for(lambda: holder() != first, 15, "the other controller-manager to lead")

    # reset a worker: node gone, kubelet stopped, files removed
    reset = run("kubeadm.py", "reset", "-f", root=w1)
    assert reset.returncode == 0, reset.stderr
    assert all(line.startswith("[lab stand-in]") for line in reset.stdout.splitlines())
    assert not (w1 / "etc/kubernetes/kubelet.conf").exists()
    assert not (w1 / "run/k8sha-standins/kubelet.service.pid").exists()
    assert "worker1" not in _nodes(base1, m1, admin)
    # and a second init on master1 refuses, like kubeadm's preflight
    again = run("kubeadm.py", "init", "--config", "/etc/kubernetes/kubeadm-config.yaml", root=m1)
    assert again.returncode == 1 and "FileAvailable--etc-kubernetes-manifests" in again.stderr


def test_install_into_puts_programs_units_and_version(tmp_path: Path) -> None:
    written = standins.install_into(tmp_path, kubernetes_version="v1.30.2")
    assert (tmp_path / "usr/bin/kubeadm").stat().st_mode & 0o111
    assert "lab stand-in" in (tmp_path / "usr/bin/kubeadm").read_text()
    assert (tmp_path / "etc/k8sha-standins/version").read_text() == "1.30.2\n"
    for unit in standins.UNIT_NAMES:
        text = (tmp_path / "usr/lib/systemd/system" / unit).read_text()
        assert "[lab stand-in]" in text
        program = re.search(r"/usr/(?:lib/k8sha-standins/\S+\.py|bin/kubelet)", text)[0]
        assert (tmp_path / program.lstrip("/")).exists(), program
    assert len(written) == len(set(written))
    assert not (tmp_path / "usr/bin/kubectl").exists()  # kubectl is real: kubernetes-client
    assert os.readlink(tmp_path / "root/.kube/config") == "/etc/kubernetes/admin.conf"
    env = {**os.environ, "K8SHA_STANDIN_ROOT": str(tmp_path)}
    version = subprocess.run([sys.executable, str(tmp_path / "usr/lib/k8sha-standins/kubeadm.py"),
                              "version", "-o", "short"], env=env, capture_output=True, text=True)
    assert version.stdout == "v1.30.2\n"
    assert len(standins.content_hash()) == 16


def test_reads_the_deploys_rendered_kubeadm_configs(tmp_path: Path) -> None:
    """What the deploy renders for the lab inventory is what the stand-in understands."""
    from nornir_k8sha.render import files_for_component
    from nornir_k8sha.topology import load_cluster_spec
    from tests.conftest import LAB_INVENTORY

    (ph,) = _programs("kubeadm_phases")
    spec = load_cluster_spec(LAB_INVENTORY)
    kinds = {}
    for host in spec.hosts:
        if not any(host.has_role(r) for r in ("masters", "workers")):
            continue
        for f in files_for_component(spec, host, "kubeadm"):
            path = tmp_path / f"{host.name}-{Path(f.path).name}"
            path.write_text(f.content)
            docs = ph.load_config(str(path))
            kinds.update(docs)
            if "ClusterConfiguration" in docs:
                cluster = docs["ClusterConfiguration"]
                assert ph.external_etcd(cluster)["endpoints"] == spec.etcd_endpoints()
                assert cluster["controlPlaneEndpoint"] == spec.api_endpoint
    assert {"InitConfiguration", "ClusterConfiguration", "JoinConfiguration"} <= set(kinds)
    join = kinds["JoinConfiguration"]["discovery"]["bootstrapToken"]
    assert join["apiServerEndpoint"] == spec.api_endpoint


def test_the_kubelet_stand_in_stops_and_starts_a_static_pod_with_its_manifest(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Moving kube-apiserver.yaml out of /etc/kubernetes/manifests stops the unit, putting it
    back starts it (like a kubeadm master's kubelet); what did not change is left alone."""
    monkeypatch.syspath_prepend(str(PROGRAMS))
    monkeypatch.setenv("K8SHA_STANDIN_ROOT", str(tmp_path))
    import kubelet
    import services

    calls: list[tuple[str, list[str]]] = []
    monkeypatch.setattr(services, "start", lambda units: calls.append(("start", list(units))))
    monkeypatch.setattr(services, "stop", lambda units: calls.append(("stop", list(units))))
    manifests = tmp_path / "etc/kubernetes/manifests"
    manifests.mkdir(parents=True)
    for name in ("kube-apiserver", "kube-controller-manager", "kube-scheduler"):
        (manifests / f"{name}.yaml").write_text("kind: Pod\n")
    before = kubelet.manifests_present()
    assert all(before.values())
    (manifests / "kube-apiserver.yaml").rename(tmp_path / "kube-apiserver.yaml")
    after = kubelet.manifests_present()
    kubelet.reconcile_static_pods(before, after)
    assert calls == [("stop", ["kube-apiserver.service"])]
    (tmp_path / "kube-apiserver.yaml").rename(manifests / "kube-apiserver.yaml")
    kubelet.reconcile_static_pods(after, kubelet.manifests_present())
    assert calls[-1] == ("start", ["kube-apiserver.service"]) and len(calls) == 2


class _EmptyRange(http.server.BaseHTTPRequestHandler):
    """An etcd member's JSON gateway that finds no key, whatever it is asked."""

    def do_POST(self) -> None:  # noqa: N802 - http.server's name
        self.rfile.read(int(self.headers["Content-Length"]))
        body = b'{"kvs": []}'
        self.send_response(200)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args: Any) -> None:
        pass


def _answering_member() -> http.server.ThreadingHTTPServer:
    """A plain-HTTP member on loopback that answers at once (shut it down when done)."""
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _EmptyRange)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    return server


def test_etcd_client_moves_a_silent_member_to_the_back() -> None:
    """A member that accepts connections but answers nothing (partitioned from its peers, its
    reads waiting for a quorum) costs one timeout, not every request until the partition
    heals: the next request tries the other members first (verify-ha's partition case)."""
    (sa,) = _programs("k8sha_standin")

    silent = socket.socket()
    silent.bind(("127.0.0.1", 0))
    silent.listen(8)  # the kernel completes connects; nobody ever reads
    good = _answering_member()
    try:
        client = object.__new__(sa.Etcd)  # plain HTTP: no certificates needed for the order
        mute, ok = (f"http://127.0.0.1:{silent.getsockname()[1]}",
                    f"http://127.0.0.1:{good.server_address[1]}")
        client.endpoints, client.timeout, client.ctx = [mute, ok], 0.3, None
        with pytest.raises(sa.EtcdError, match="timed out"):
            client.get("health")  # the whole timeout spent on the silent member
        assert client.endpoints == [ok, mute]
        assert client.get("health") is None  # answered by the other member at once
    finally:
        good.shutdown()
        silent.close()


def test_etcd_client_takes_an_answer_cut_off_as_that_members_failure() -> None:
    """A member stopped mid-answer (a restore, a restart) cuts its body short: the client tries
    the next member, and raises EtcdError (a 503 for the apiserver) only when none answers, never
    http.client's IncompleteRead out of the apiserver's request handler."""
    (sa,) = _programs("k8sha_standin")

    cut = socket.socket()
    cut.bind(("127.0.0.1", 0))
    cut.listen(8)

    def cut_short() -> None:
        while True:
            try:
                conn, _ = cut.accept()
            except OSError:
                return
            with conn, conn.makefile("rb") as reader:
                read_http_request(reader)
                conn.sendall(b"HTTP/1.1 200 OK\r\nContent-Length: 100\r\n\r\n{\"kvs\": [")

    threading.Thread(target=cut_short, daemon=True).start()
    good = _answering_member()
    try:
        client = object.__new__(sa.Etcd)  # plain HTTP: no certificates needed
        short = f"http://127.0.0.1:{cut.getsockname()[1]}"
        ok = f"http://127.0.0.1:{good.server_address[1]}"
        client.endpoints, client.timeout, client.ctx = [short], 1.0, None
        with pytest.raises(sa.EtcdError, match="IncompleteRead"):
            client.get("health")
        client.endpoints = [short, ok]
        assert client.get("health") is None  # the other member answered
        assert client.endpoints == [ok, short]
    finally:
        good.shutdown()
        cut.close()


def test_a_request_that_breaks_the_apiserver_is_answered_500_as_the_real_one_does(
        tmp_path: Path) -> None:
    """kube-apiserver recovers a handler's panic with a 500 (filters/wrap.go): the client gets an
    answer on a connection that stays open, not a connection closed without a word."""
    (apiserver,) = _programs("apiserver")

    class Broken:
        def health(self, *_: Any) -> tuple[int, str]:
            raise RuntimeError("something the stand-in did not expect")

    pki = tmp_path / "pki"
    ca, ca_key = _cluster_ca(pki)
    skey = _key()
    _write_pair(_cert("kube-apiserver", skey, (ca, ca_key), ips=("127.0.0.1",), server=True),
                skey, pki / "apiserver.crt", pki / "apiserver.key")
    tls = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    tls.load_cert_chain(str(pki / "apiserver.crt"), str(pki / "apiserver.key"))
    server = apiserver.Server(("127.0.0.1", 0), Broken(), tls)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        conn = http.client.HTTPSConnection(
            "127.0.0.1", server.server_address[1], timeout=5,
            context=ssl.create_default_context(cafile=str(pki / "ca.crt")))
        for _ in range(2):  # the same connection answers again
            conn.request("GET", "/healthz")
            resp = conn.getresponse()
            assert resp.status == 500
            assert resp.read().decode() == apiserver.PANIC_MESSAGE
        conn.close()
    finally:
        server.shutdown()
        server.server_close()
