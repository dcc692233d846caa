"""kubeadm stand-in building blocks: config, certificates, kubeconfigs, manifests, tokens.

Shared by `kubeadm init` (kubeadm.py) and `kubeadm join` (kubeadm_join.py); see kubeadm.py.
"""

from __future__ import annotations

import ipaddress
import os
import re
import secrets
import socket
import sys
import time
from typing import Any

import k8sha_standin as sa
import services

PKI = "/etc/kubernetes/pki"
ADMIN_CONF = "/etc/kubernetes/admin.conf"
KUBELET_CONF = "/etc/kubernetes/kubelet.conf"
KUBELET_PEM = "/var/lib/kubelet/pki/kubelet-client-current.pem"
APISERVER_MANIFEST = f"{services.MANIFESTS}/kube-apiserver.yaml"
CERTS_TTL = 7200  # uploaded certs are deleted after two hours, as in kubeadm
DEFAULT_TOKEN_TTL = 24 * 3600
CONTROL_PLANE_LABEL = "node-role.kubernetes.io/control-plane"


class KubeadmError(Exception):
    """Ends the command with a kubeadm-like error line and exit status 1."""


def out(line: str = "") -> None:
    sa.say(line)


def note(text: str) -> None:
    sa.say(text, sys.stderr)


def duration(text: Any, default: int) -> int:
    """Seconds of a Go duration such as 24h0m0s, 15s, 1h."""
    if text in (None, ""):
        return default
    m = re.fullmatch(r"(?:(\d+)h)?(?:(\d+)m)?(?:(\d+)s)?", str(text))
    if not m or not any(m.groups()):
        raise KubeadmError(f"invalid duration {text!r}")
    h, mi, s = (int(g or 0) for g in m.groups())
    return h * 3600 + mi * 60 + s


def extra_args(value: Any) -> dict[str, str]:
    """extraArgs / kubeletExtraArgs: a list of {name, value} (v1beta4) or a map (v1beta3)."""
    if isinstance(value, list):
        return {str(a["name"]): str(a.get("value", "")) for a in value}
    return {str(k): str(v) for k, v in (value or {}).items()}


def load_config(path: str) -> dict[str, dict[str, Any]]:
    """The documents of a kubeadm config file by kind."""
    try:
        docs = sa.yaml_load_all(sa.host_path(path).read_text())
    except OSError as exc:
        raise KubeadmError(f"unable to read config from {path!r}: {exc.strerror}") from None
    except sa.YamlError as exc:
        raise KubeadmError(f"unable to decode config from {path!r}: {exc}") from None
    by_kind: dict[str, dict[str, Any]] = {}
    for doc in docs:
        if not isinstance(doc, dict) or "kind" not in doc:
            raise KubeadmError(f"{path}: every document needs a kind")
        if not str(doc.get("apiVersion", "")).startswith("kubeadm.k8s.io/") and doc[
                "kind"] in ("InitConfiguration", "ClusterConfiguration", "JoinConfiguration"):
            raise KubeadmError(f"{path}: unknown apiVersion {doc.get('apiVersion')!r}")
        by_kind[doc["kind"]] = doc
    return by_kind


def external_etcd(cluster: dict[str, Any]) -> dict[str, Any]:
    ext = (cluster.get("etcd") or {}).get("external")
    if not ext or not ext.get("endpoints"):
        raise KubeadmError("the lab stand-in supports external etcd only: set "
                           "ClusterConfiguration.etcd.external")
    return ext


def etcd_of(cluster: dict[str, Any]) -> sa.Etcd:
    ext = external_etcd(cluster)
    for f in ("caFile", "certFile", "keyFile"):
        if not sa.host_path(ext[f]).is_file():
            raise KubeadmError(f"external etcd {f} {ext[f]} does not exist (the deploy places "
                               "the external-etcd client certificates on every master)")
    return sa.Etcd(list(ext["endpoints"]), ext["caFile"], ext["certFile"], ext["keyFile"])


def local_etcd() -> sa.Etcd:
    """etcd as this control-plane node's apiserver reaches it (token create, upload-certs)."""
    if not sa.host_path(ADMIN_CONF).exists():
        raise KubeadmError(f"failed to load admin kubeconfig: open {ADMIN_CONF}: no such file "
                           "or directory")
    try:
        flags, _ = sa.manifest_flags(APISERVER_MANIFEST)
    except OSError:
        raise KubeadmError(f"{APISERVER_MANIFEST} is missing: this node is not a control-plane "
                           "node") from None
    return sa.etcd_from_flags(flags)


def cluster_config(etcd: sa.Etcd) -> dict[str, Any]:
    cm = etcd.get(sa.KUBEADM_CONFIG_KEY)
    if not cm:
        raise KubeadmError('the "kubeadm-config" ConfigMap is missing: run kubeadm init first')
    return sa.yaml_load(cm["data"]["ClusterConfiguration"])


def ca_hash(pki_dir: str) -> str:
    return sa.ca_cert_hash(sa.host_path(f"{pki_dir}/ca.crt").read_bytes())


def join_command(endpoint: str, token: str, ca: str, cert_key: str | None, *,
                 multiline: bool) -> str:
    parts = [f"kubeadm join {endpoint} --token {token}",
             f"--discovery-token-ca-cert-hash {ca}"]
    if cert_key:
        parts.append(f"--control-plane --certificate-key {cert_key}")
    return " \\\n\t".join(parts) if multiline else " ".join(parts) + " "


# --- pieces shared by init and control-plane join ------------------------------------------------


def server_sans(node: str, address: str, cluster: dict[str, Any], endpoint: str) -> list[str]:
    """kubeadm's apiserver SANs: service names, node name, first service IP, addresses, certSANs."""
    net = cluster.get("networking") or {}
    domain = net.get("dnsDomain", "cluster.local")
    first_svc = str(ipaddress.ip_network(net.get("serviceSubnet", "10.96.0.0/12"))[1])
    names = ["kubernetes", "kubernetes.default", "kubernetes.default.svc",
             f"kubernetes.default.svc.{domain}", node]
    ips = [first_svc, address]
    for extra in [endpoint.rpartition(":")[0], *((cluster.get("apiServer") or {}).get(
            "certSANs") or [])]:
        extra = str(extra).strip("[]")
        try:
            ipaddress.ip_address(extra)
            ips.append(extra)
        except ValueError:
            names.append(extra)
    return [f"DNS:{n}" for n in dict.fromkeys(names)] + [f"IP:{i}" for i in dict.fromkeys(ips)]


def issue_apiserver_cert(pki: str, node: str, address: str, cluster: dict[str, Any],
                         endpoint: str) -> None:
    sans = server_sans(node, address, cluster, endpoint)
    out('[certs] Generating "apiserver" certificate and key')
    dns = " ".join(s[4:] for s in sans if s.startswith("DNS:"))
    ips = " ".join(s[3:] for s in sans if s.startswith("IP:"))
    out(f"[certs] apiserver serving cert is signed for DNS names [{dns}] and IPs [{ips}]")
    sa.new_key(f"{pki}/apiserver.key")
    csr = sa.make_csr(f"{pki}/apiserver.key", "/CN=kube-apiserver")
    sa.write_file(f"{pki}/apiserver.crt", sa.sign_csr(csr, f"{pki}/ca.crt", f"{pki}/ca.key",
                                                       server=True, sans=sans))


def client_cert(pki: str, subject: str) -> tuple[bytes, bytes]:
    """(cert, key) PEM of a client certificate signed locally by the cluster CA."""
    key_path = sa.host_path(f"/run/k8sha-standins/tmp-{secrets.token_hex(4)}.key")
    try:
        sa.new_key(key_path)
        cert = sa.sign_csr(sa.make_csr(key_path, subject), f"{pki}/ca.crt", f"{pki}/ca.key")
        return cert, key_path.read_bytes()
    finally:
        key_path.unlink(missing_ok=True)


def write_kubeconfigs(pki: str, node: str, server: str, cluster_name: str) -> None:
    out('[kubeconfig] Using kubeconfig folder "/etc/kubernetes"')
    ca = sa.host_path(f"{pki}/ca.crt").read_bytes()
    cert, key = client_cert(pki, "/O=kubeadm:cluster-admins/CN=kubernetes-admin")
    out('[kubeconfig] Writing "admin.conf" kubeconfig file')
    sa.write_file(ADMIN_CONF, sa.kubeconfig(server, ca, "kubernetes-admin", cert_data=cert,
                                            key_data=key, cluster=cluster_name), 0o600)
    cert, key = client_cert(pki, f"/O=system:nodes/CN=system:node:{node}")
    write_kubelet_conf(server, ca, cert, key, cluster_name)


def write_kubelet_conf(server: str, ca: bytes, cert: bytes, key: bytes,
                       cluster_name: str = "kubernetes") -> None:
    out('[kubeconfig] Writing "kubelet.conf" kubeconfig file')
    sa.write_file(KUBELET_PEM, cert + key, 0o600)
    sa.write_file(KUBELET_CONF, sa.kubeconfig(server, ca, "default-auth", cert_file=KUBELET_PEM,
                                              cluster=cluster_name), 0o600)


def static_pod(name: str, flags: dict[str, str], version: str, annotations: dict[str, str]
               ) -> dict[str, Any]:
    return {
        "apiVersion": "v1", "kind": "Pod",
        "metadata": {"annotations": {"k8sha.io/lab-standin": "true", **annotations},
                     "labels": {"component": name, "tier": "control-plane"},
                     "name": name, "namespace": "kube-system"},
        "spec": {"containers": [{
            "command": [name, *(f"--{k}={v}" for k, v in flags.items())],
            "image": f"registry.k8s.io/{name}:v{version}", "name": name}],
            "hostNetwork": True, "priorityClassName": "system-node-critical"},
    }


def write_manifests(pki: str, cluster: dict[str, Any], address: str, port: int,
                    version: str) -> None:
    out(f'[control-plane] Using manifest folder "{services.MANIFESTS}"')
    ext = external_etcd(cluster)
    etcd_flags = {"etcd-servers": ",".join(ext["endpoints"]), "etcd-cafile": ext["caFile"],
                  "etcd-certfile": ext["certFile"], "etcd-keyfile": ext["keyFile"]}
    api_extra = extra_args((cluster.get("apiServer") or {}).get("extraArgs"))
    api = {"advertise-address": address, "bind-address": "0.0.0.0", "secure-port": str(port),
           "client-ca-file": f"{pki}/ca.crt", "tls-cert-file": f"{pki}/apiserver.crt",
           "tls-private-key-file": f"{pki}/apiserver.key",
           "service-cluster-ip-range": (cluster.get("networking") or {}).get(
               "serviceSubnet", "10.96.0.0/12"),
           "k8sha-signing-key-file": f"{pki}/ca.key", **etcd_flags, **api_extra}
    election = {"leader-elect": "true", "leader-elect-lease-duration": "15s",
                "leader-elect-renew-deadline": "10s", "leader-elect-retry-period": "2s"}
    pods = {
        "kube-apiserver": (api, {"kubeadm.kubernetes.io/kube-apiserver.advertise-address"
                                 ".endpoint": f"{address}:{port}"}),
        "kube-controller-manager": ({"kubeconfig": "/etc/kubernetes/controller-manager.conf",
                                     **election, **etcd_flags, **extra_args(
                                         (cluster.get("controllerManager") or {}).get(
                                             "extraArgs"))}, {}),
        "kube-scheduler": ({"kubeconfig": "/etc/kubernetes/scheduler.conf", **election,
                            **etcd_flags, **extra_args((cluster.get("scheduler") or {}).get(
                                "extraArgs"))}, {}),
    }
    for name, (flags, notes) in pods.items():
        out(f'[control-plane] Creating static Pod manifest for "{name}"')
        sa.write_file(f"{services.MANIFESTS}/{name}.yaml",
                      sa.yaml_dump(static_pod(name, flags, version, notes)), 0o600)


def write_kubelet_files(node: str, address: str, labels: list[str]) -> None:
    out('[kubelet-start] Writing kubelet environment file with flags to file '
        f'"{services.KUBELET_FLAGS_ENV}"')
    flags = f"--node-ip={address} --hostname-override={node}"
    if labels:
        flags += " --node-labels=" + ",".join(labels)
    sa.write_file(services.KUBELET_FLAGS_ENV, f'KUBELET_KUBEADM_ARGS="{flags}"\n')
    out('[kubelet-start] Writing kubelet configuration to file "/var/lib/kubelet/config.yaml"')
    sa.write_file("/var/lib/kubelet/config.yaml", sa.yaml_dump({
        "apiVersion": "kubelet.config.k8s.io/v1beta1", "kind": "KubeletConfiguration",
        "cgroupDriver": "systemd", "nodeStatusUpdateFrequency": os.environ.get(
            "K8SHA_STANDIN_HEARTBEAT", "10s")}))


def wait_healthy(address: str, port: int, ca: bytes, timeout: float = 60.0) -> float:
    """Seconds until https://address:port/healthz answers ok, verified with the cluster CA."""
    client = sa.KubeClient(f"https://{address}:{port}", ca, timeout=2.0)
    started = time.monotonic()
    while time.monotonic() - started < timeout:
        try:
            code, body = client.request("GET", "/healthz")
            if code == 200:
                return time.monotonic() - started
        except OSError:
            pass
        time.sleep(0.2)
    raise KubeadmError(f"[api-check] The API server is not healthy after {timeout:.0f}s")


def node_name(reg: dict[str, Any], override: str | None) -> str:
    return (override or reg.get("name") or socket.gethostname()).lower()


def outbound_address(endpoint: str) -> str:
    """The local address that routes to the API endpoint (kubelet --node-ip for workers)."""
    host, _, port = endpoint.rpartition(":")
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.connect((host.strip("[]"), int(port or 6443)))
        return s.getsockname()[0]


def upload_certs(etcd: sa.Etcd, key: str | None) -> str:
    key = key or secrets.token_hex(32)
    if not re.fullmatch(r"[0-9a-f]{64}", key):
        raise KubeadmError("invalid certificate key: it must be 32 bytes in hex (64 characters)")
    out('[upload-certs] Storing the certificates in Secret "kubeadm-certs" in the "kube-system" '
        "Namespace")
    lease = etcd.grant(CERTS_TTL)
    etcd.put(sa.CERTS_KEY, {"apiVersion": "v1", "kind": "Secret", "metadata":
             sa.object_metadata("kubeadm-certs", "kube-system"),
        "stringData": {"k8sha-certificate-key-check": sa.certificate_key_check(key)}}, lease)
    out("[upload-certs] Using certificate key:")
    print(key, flush=True)  # verbatim: scripts read this line
    return key


def create_token(etcd: sa.Etcd, token: str | None, ttl: int, description: str) -> str:
    token = token or sa.new_token()
    m = sa.TOKEN_RE.match(token)
    if not m:
        raise KubeadmError(f'the bootstrap token "{token[:6]}..." was not of the form '
                           '"^([a-z0-9]{6})\\.([a-z0-9]{16})$"')
    lease = etcd.grant(ttl) if ttl > 0 else 0
    etcd.put(sa.TOKEN_PREFIX + m.group(1), sa.token_secret(m.group(1), m.group(2), ttl or
                                                           10 * 365 * 86400, description), lease)
    return token

