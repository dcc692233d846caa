"""kubeadm stand-in: `kubeadm join` (token discovery, control-plane and worker joins).

Discovery works like kubeadm's: fetch cluster-info anonymously, check the JWS signature made
with our token and the CA pin, then talk TLS-verified with the token as bearer credential.
"""

from __future__ import annotations

import argparse
import secrets

import k8sha_standin as sa
import services
from kubeadm_phases import (
    APISERVER_MANIFEST,
    CONTROL_PLANE_LABEL,
    KUBELET_CONF,
    PKI,
    KubeadmError,
    external_etcd,
    extra_args,
    issue_apiserver_cert,
    load_config,
    node_name,
    out,
    outbound_address,
    wait_healthy,
    write_kubeconfigs,
    write_kubelet_conf,
    write_kubelet_files,
    write_manifests,
)


def discover(endpoint: str, token: str, pins: list[str], skip_verify: bool
             ) -> tuple[bytes, str]:
    """kubeadm's token discovery: cluster-info, its JWS for our token, the CA pin. (CA, server)"""
    m = sa.TOKEN_RE.match(token or "")
    if not m:
        raise KubeadmError(f'the bootstrap token "{(token or "")[:6]}..." was not of the form '
                           '"^([a-z0-9]{6})\\.([a-z0-9]{16})$"')
    out(f'[preflight] Reading cluster-info from "https://{endpoint}"')
    try:
        code, cm = sa.KubeClient(f"https://{endpoint}", None, timeout=10).request(
            "GET", "/api/v1/namespaces/kube-public/configmaps/cluster-info")
    except OSError as exc:
        raise KubeadmError(f"couldn't validate the identity of the API Server: failed to "
                           f"request the cluster-info ConfigMap: {getattr(exc, 'reason', exc)}"
                           ) from None
    if code != 200:
        raise KubeadmError(f"couldn't validate the identity of the API Server: cluster-info: "
                           f"HTTP {code}")
    data = cm.get("data", {})
    signature = data.get(f"jws-kubeconfig-{m.group(1)}")
    if not signature:
        raise KubeadmError("couldn't validate the identity of the API Server: could not find a "
                           f'JWS signature in the cluster-info ConfigMap for token ID '
                           f'"{m.group(1)}"')
    if signature != sa.jws_detached(data["kubeconfig"], m.group(1), m.group(2)):
        raise KubeadmError("couldn't validate the identity of the API Server: failed to verify "
                           "JWS signature of received cluster info object, can't trust this "
                           "API Server")
    info = sa.yaml_load(data["kubeconfig"])["clusters"][0]["cluster"]
    ca = sa.base64.b64decode(info["certificate-authority-data"])
    actual = sa.ca_cert_hash(ca)
    if not skip_verify and actual not in pins:
        raise KubeadmError("couldn't validate the identity of the API Server: cluster CA found "
                           f'in cluster-info ConfigMap is invalid: none of the public keys '
                           f'"{actual}" are pinned')
    return ca, info["server"]


def cmd_join(args: argparse.Namespace) -> int:
    cfg = load_config(args.config).get("JoinConfiguration", {}) if args.config else {}
    disc = (cfg.get("discovery") or {}).get("bootstrapToken") or {}
    endpoint = args.endpoint or disc.get("apiServerEndpoint")
    token = args.token or args.discovery_token or disc.get("token") or (
        cfg.get("discovery") or {}).get("tlsBootstrapToken")
    pins = args.discovery_token_ca_cert_hash or list(disc.get("caCertHashes") or [])
    cp = cfg.get("controlPlane")
    control_plane = bool(args.control_plane or cp is not None)
    cp = cp or {}
    cert_key = args.certificate_key or cp.get("certificateKey")
    reg = cfg.get("nodeRegistration") or {}
    node = node_name(reg, args.node_name)
    if not endpoint or not token:
        raise KubeadmError("discovery: a bootstrap token and an API server endpoint are "
                           "required (--token and HOST:PORT, or --config)")
    if not pins and not disc.get("unsafeSkipCAVerification"):
        raise KubeadmError("discovery: using token-based discovery without caCertHashes can be "
                           "unsafe; set --discovery-token-ca-cert-hash")
    out("[preflight] Running pre-flight checks")
    if sa.host_path(KUBELET_CONF).exists():
        raise KubeadmError("[preflight] Some fatal errors occurred:\n\t[ERROR FileAvailable--"
                           f"etc-kubernetes-kubelet.conf]: {KUBELET_CONF} already exists")
    ca, server = discover(endpoint, token, pins, bool(disc.get("unsafeSkipCAVerification")))
    api = sa.KubeClient(f"https://{endpoint}", ca, token=token, timeout=10)
    kubelet_args = extra_args(reg.get("kubeletExtraArgs"))
    if control_plane:
        local = cp.get("localAPIEndpoint") or {}
        address = args.apiserver_advertise_address or local.get("advertiseAddress") or (
            outbound_address(endpoint))
        port = int(args.apiserver_bind_port or local.get("bindPort") or 6443)
        join_control_plane(api, node, address, port, cert_key, ca)
    else:
        address = kubelet_args.get("node-ip") or outbound_address(endpoint)
        join_worker(api, node, address, server, ca)
    return 0


def join_control_plane(api: sa.KubeClient, node: str, address: str, port: int,
                       cert_key: str | None, ca: bytes) -> None:
    out('[preflight] Reading configuration from the "kubeadm-config" ConfigMap in namespace '
        '"kube-system"...')
    code, cm = api.request("GET", "/api/v1/namespaces/kube-system/configmaps/kubeadm-config")
    if code != 200:
        raise KubeadmError(f"unable to fetch the kubeadm-config ConfigMap: HTTP {code}")
    cluster = sa.yaml_load(cm["data"]["ClusterConfiguration"])
    pki = cluster.get("certificatesDir") or PKI
    endpoint = cluster["controlPlaneEndpoint"]
    out("[preflight] Running pre-flight checks before initializing the new control plane "
        "instance")
    if sa.host_path(APISERVER_MANIFEST).exists():
        raise KubeadmError("[preflight] Some fatal errors occurred:\n\t[ERROR FileAvailable--"
                           "etc-kubernetes-manifests-kube-apiserver.yaml]: "
                           f"{APISERVER_MANIFEST} already exists")
    if not cert_key:
        raise KubeadmError("error execution phase control-plane-prepare/download-certs: "
                           "--certificate-key is needed to download the certificates")
    out('[download-certs] Downloading the certificates in Secret "kubeadm-certs" in the '
        '"kube-system" Namespace')
    code, secret = api.request("GET", "/api/v1/namespaces/kube-system/secrets/kubeadm-certs")
    if code == 404:
        raise KubeadmError("error execution phase control-plane-prepare/download-certs: error "
                           "downloading certs: error downloading the secret: secrets "
                           '"kubeadm-certs" not found')
    if code != 200:
        raise KubeadmError(f"error downloading certs: HTTP {code}")
    check = secret.get("stringData", {}).get("k8sha-certificate-key-check")
    try:
        good = check == sa.certificate_key_check(cert_key)
    except ValueError:
        good = False
    if not good:
        raise KubeadmError("error execution phase control-plane-prepare/download-certs: error "
                           "downloading certs: error decoding secret data with provided key: "
                           "cipher: message authentication failed")
    missing = [p for p in (f"{pki}/ca.crt", f"{pki}/ca.key", *(external_etcd(cluster)[f] for f
               in ("caFile", "certFile", "keyFile"))) if not sa.host_path(p).is_file()]
    if missing:
        raise KubeadmError("error execution phase control-plane-prepare/download-certs: the lab "
                           "stand-in does not carry certificates in kubeadm-certs; missing on "
                           f"this host: {', '.join(missing)}")
    if sa.ca_cert_hash(sa.host_path(f"{pki}/ca.crt").read_bytes()) != sa.ca_cert_hash(ca):
        raise KubeadmError(f"{pki}/ca.crt on this host is not the cluster's CA")
    out(f'[certs] Using certificateDir folder "{pki}"')
    issue_apiserver_cert(pki, node, address, cluster, endpoint)
    write_kubeconfigs(pki, node, f"https://{endpoint}",
                      cluster.get("clusterName") or "kubernetes")
    write_manifests(pki, cluster, address, port,
                    str(cluster.get("kubernetesVersion") or sa.version()).lstrip("v"))
    write_kubelet_files(node, address, [f"{CONTROL_PLANE_LABEL}=",
                                        "node.kubernetes.io/exclude-from-external-load-"
                                        "balancers="])
    out("[kubelet-start] Starting the kubelet")
    services.start(list(services.ALL_UNITS))
    out("[control-plane-check] Waiting for healthy control plane components. This can take up "
        "to 4m0s")
    took = wait_healthy(address, port, ca)
    out(f"[control-plane-check] kube-apiserver is healthy after {took:.3f}s")
    out(f"[mark-control-plane] Marking the node {node} as control-plane by adding the labels: "
        f"[{CONTROL_PLANE_LABEL} node.kubernetes.io/exclude-from-external-load-balancers]")
    out("""
This node has joined the cluster and a new control plane instance was created:

* Certificate signing request was sent to apiserver and approval was received.
* The Kubelet was informed of the new secure connection details.
* Control plane label and taint were applied to the new node.
* The Kubernetes control plane instances scaled up.

To start administering your cluster from this node, you need to run the following as a regular user:

	mkdir -p $HOME/.kube
	sudo cp -i /etc/kubernetes/admin.conf $HOME/.kube/config
	sudo chown $(id -u):$(id -g) $HOME/.kube/config

Run 'kubectl get nodes' to see this node join the cluster.
""")  # noqa: E501


def join_worker(api: sa.KubeClient, node: str, address: str, server: str, ca: bytes) -> None:
    write_kubelet_files(node, address, [])
    out("[kubelet-start] Waiting for the kubelet to perform the TLS Bootstrap")
    key_path = sa.host_path(f"/run/k8sha-standins/tmp-{secrets.token_hex(4)}.key")
    try:
        sa.new_key(key_path)
        csr = sa.make_csr(key_path, f"/O=system:nodes/CN=system:node:{node}")
        code, body = api.request("POST", "/apis/certificates.k8s.io/v1/certificatesigningrequests",
                                 {"apiVersion": "certificates.k8s.io/v1",
                                  "kind": "CertificateSigningRequest",
                                  "metadata": {"generateName": "csr-"},
                                  "spec": {"request": sa._b64(csr),
                                           "signerName": "kubernetes.io/kube-apiserver-client-"
                                           "kubelet", "usages": ["client auth"]}})
        if code not in (200, 201) or not (body.get("status") or {}).get("certificate"):
            message = body.get("message", code) if isinstance(body, dict) else code
            raise KubeadmError(f"error execution phase kubelet-start: the TLS Bootstrap failed: "
                               f"{message}")
        cert = sa.base64.b64decode(body["status"]["certificate"])
        sa.write_file(f"{PKI}/ca.crt", ca)
        write_kubelet_conf(server, ca, cert, key_path.read_bytes())
    finally:
        key_path.unlink(missing_ok=True)
    out("[kubelet-start] Starting the kubelet")
    services.start([services.KUBELET_UNIT])
    out("""
This node has joined the cluster:
* Certificate signing request was sent to apiserver and a response was received.
* The Kubelet was informed of the new secure connection details.

Run 'kubectl get nodes' on the control-plane to see this node join the cluster.
""")

