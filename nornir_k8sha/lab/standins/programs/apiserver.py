"""Lab stand-in for kube-apiserver: HTTPS with the cluster's certificates, state in the real etcd.

Serves what the deploy, `check`, HAProxy and the other stand-ins use: /healthz, /livez, /readyz
(fails when its etcd has no quorum), /version, nodes (kubelet heartbeats), the controller-manager
and scheduler leases, and the bootstrap pieces of kubeadm join (cluster-info with JWS signatures,
kubeadm-config, the kubeadm-certs marker, kubelet CSRs signed at once). Authentication: client
certificates of the cluster CA; bootstrap tokens as bearer tokens; anonymous health, version and
cluster-info, like a real apiserver's default RBAC.
"""

from __future__ import annotations

import argparse
import base64
import json
import re
import secrets
import signal
import socket
import ssl
import sys
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import k8sha_standin as sa

NAME = "kube-apiserver"
ANONYMOUS = ("/healthz", "/livez", "/readyz", "/version")
CLUSTER_INFO = "/api/v1/namespaces/kube-public/configmaps/cluster-info"
KUBEADM_CONFIG = "/api/v1/namespaces/kube-system/configmaps/kubeadm-config"
KUBEADM_CERTS = "/api/v1/namespaces/kube-system/secrets/kubeadm-certs"
CSRS = "/apis/certificates.k8s.io/v1/certificatesigningrequests"
LEASE = re.compile(r"^/apis/coordination\.k8s\.io/v1/namespaces/kube-system/leases/([a-z0-9-]+)$")
NODE = re.compile(r"^/api/v1/nodes/([a-z0-9.-]+)(/status)?$")
ADMIN_GROUPS = {"system:masters", "kubeadm:cluster-admins"}


class Api:
    """The state behind the handlers: etcd, the signing CA, the version, node grace."""

    def __init__(self, opts: argparse.Namespace) -> None:
        self.etcd = sa.Etcd(opts.etcd_servers.split(","), opts.etcd_cafile, opts.etcd_certfile,
                            opts.etcd_keyfile, timeout=opts.k8sha_etcd_timeout)
        self.ca_cert = opts.client_ca_file
        self.ca_key = opts.k8sha_signing_key_file
        self.version = opts.k8sha_version or sa.version()
        self.grace = opts.k8sha_node_grace

    def readyz(self) -> tuple[int, str]:
        try:
            self.etcd.get("health", timeout=1.5)  # linearizable: needs a quorum
        except sa.EtcdError as exc:
            return 500, f"[+]ping ok\n[-]etcd failed: {exc} (lab stand-in)\n" \
                        "readyz check failed (lab stand-in)\n"
        return 200, "ok"

    def node_view(self, node: dict[str, Any]) -> dict[str, Any]:
        """The node with Ready computed from its last heartbeat (node-monitor-grace-period)."""
        for cond in node.get("status", {}).get("conditions", []):
            if cond.get("type") != "Ready":
                continue
            age = time.time() - sa.parse_time(cond.get("lastHeartbeatTime", "1970-01-01T00:00:00Z"))
            if age > self.grace:
                cond.update(status="Unknown", reason="NodeStatusUnknown",
                            message=f"Kubelet stopped posting node status ({age:.0f}s ago). "
                                    "(lab stand-in)")
        return node

    def cluster_info(self) -> dict[str, Any] | None:
        """cluster-info plus a JWS of its kubeconfig per valid token (the bootstrap signer)."""
        cm = self.etcd.get(sa.CLUSTER_INFO_KEY)
        if not cm:
            return None
        content = cm["data"]["kubeconfig"]
        for secret in self.etcd.prefix(sa.TOKEN_PREFIX).values():
            data = secret.get("stringData", {})
            if sa.parse_time(data.get("expiration", "1970-01-01T00:00:00Z")) > time.time():
                cm["data"][f"jws-kubeconfig-{data['token-id']}"] = sa.jws_detached(
                    content, data["token-id"], data["token-secret"])
        return cm

    def sign_kubelet_csr(self, body: dict[str, Any]) -> tuple[int, dict[str, Any]]:
        """Approve and sign at once, as the csrapproving controller does for bootstrap tokens."""
        try:
            csr = base64.b64decode(body["spec"]["request"])
            subject = sa.csr_subject(csr)
        except (KeyError, ValueError, RuntimeError):
            return 400, status(400, "BadRequest", "spec.request is not a PEM CSR")
        if subject["O"] != "system:nodes" or not subject["CN"].startswith("system:node:"):
            return 403, status(403, "Forbidden", "only kubelet client certificates "
                                                 "(O=system:nodes, CN=system:node:<name>)")
        cert = sa.sign_csr(csr, self.ca_cert, self.ca_key)
        name = "csr-" + secrets.token_hex(3)
        return 201, {**body, "metadata": {"name": name, **sa_annotations()},
                     "status": {"certificate": base64.b64encode(cert).decode(), "conditions": [
                         {"type": "Approved", "status": "True", "reason": "AutoApproved",
                          "message": "Auto approving kubelet client certificate after "
                                     "bootstrap token authentication (lab stand-in)"}]}}


def sa_annotations() -> dict[str, Any]:
    return {"annotations": {"k8sha.io/lab-standin": "true"}}


def status(code: int, reason: str, message: str) -> dict[str, Any]:
    return {"kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Failure",
            "message": f"{message} (lab stand-in)", "reason": reason, "code": code}


class Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    timeout = 30
    server: Server

    def setup(self) -> None:
        # The TLS handshake runs here, in the connection's own thread, never in accept().
        self.request.settimeout(10)
        self.request = self.server.tls.wrap_socket(self.request, server_side=True)
        self.request.settimeout(self.timeout)
        super().setup()

    def finish(self) -> None:
        try:
            super().finish()
        finally:
            self.request.close()

    def log_message(self, format: str, *args: Any) -> None:  # noqa: A002
        pass  # health probes arrive several times a second: errors are logged in send()

    # --- identity ---

    def user(self) -> tuple[str, set[str]] | None:
        """(name, groups) from the verified client certificate or a bootstrap token."""
        cert = self.request.getpeercert()
        if cert:
            fields = [kv for rdn in cert.get("subject", ()) for kv in rdn]
            cn = next((v for k, v in fields if k == "commonName"), "")
            return cn, {v for k, v in fields if k == "organizationName"}
        auth = self.headers.get("Authorization", "")
        if auth.startswith("Bearer "):
            token = auth[7:].strip()
            try:
                if sa.token_valid(self.server.api.etcd, token):
                    return f"system:bootstrap:{token[:6]}", {"system:bootstrappers"}
            except sa.EtcdError:
                return None
        return None

    # --- replies ---

    def send(self, code: int, body: Any) -> None:
        if isinstance(body, dict | list):
            data, ctype = json.dumps(body, indent=2).encode(), "application/json"
        else:
            data, ctype = str(body).encode(), "text/plain; charset=utf-8"
        if code >= 400 or self.command in ("POST", "DELETE"):
            sa.log(NAME, f"{self.command} {self.path} -> {code}")
        self.send_response(code)
        self.send_header("Content-Type", ctype)
        self.send_header("Content-Length", str(len(data)))
        self.send_header(sa.HEADER, "true")
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(data)

    def body(self) -> dict[str, Any]:
        length = int(self.headers.get("Content-Length") or 0)
        return json.loads(self.rfile.read(length) or b"{}")

    # --- routes ---

    def do_GET(self) -> None:  # noqa: N802
        self.route("GET")

    def do_HEAD(self) -> None:  # noqa: N802
        self.route("GET")

    def do_PUT(self) -> None:  # noqa: N802
        self.route("PUT")

    def do_POST(self) -> None:  # noqa: N802
        self.route("POST")

    def do_DELETE(self) -> None:  # noqa: N802
        self.route("DELETE")

    def route(self, method: str) -> None:
        path = self.path.split("?")[0].rstrip("/") or "/"
        api = self.server.api
        try:
            if method == "GET" and path in ("/healthz", "/livez"):
                return self.send(200, "ok")
            if method == "GET" and path == "/readyz":
                return self.send(*api.readyz())
            if method == "GET" and path == "/version":
                major, minor = api.version.split(".")[:2]
                return self.send(200, {"major": major, "minor": minor,
                                       "gitVersion": f"v{api.version}",
                                       "gitTreeState": "clean", "platform": "linux/amd64",
                                       "k8shaLabStandin": True})
            if method == "GET" and path == CLUSTER_INFO:
                cm = api.cluster_info()
                return self.send(200, cm) if cm else self.send(404, status(
                    404, "NotFound", 'configmaps "cluster-info" not found'))
            user = self.user()
            if user is None:
                return self.send(401, status(401, "Unauthorized", "Unauthorized"))
            self.authenticated(method, path, *user)
        except sa.EtcdError as exc:
            self.send(503, status(503, "ServiceUnavailable", f"etcd: {exc}"))
        except (ValueError, KeyError) as exc:
            self.send(400, status(400, "BadRequest", f"bad request: {exc}"))

    def authenticated(self, method: str, path: str, name: str, groups: set[str]) -> None:
        api = self.server.api
        admin = bool(groups & ADMIN_GROUPS)
        bootstrap = "system:bootstrappers" in groups
        if method == "GET" and path == KUBEADM_CONFIG and (admin or bootstrap):
            cm = api.etcd.get(sa.KUBEADM_CONFIG_KEY)
            return self.send(200, cm) if cm else self.send(404, status(
                404, "NotFound", 'configmaps "kubeadm-config" not found'))
        if method == "GET" and path == KUBEADM_CERTS and (admin or bootstrap):
            secret = api.etcd.get(sa.CERTS_KEY)
            return self.send(200, secret) if secret else self.send(404, status(
                404, "NotFound", 'secrets "kubeadm-certs" not found'))
        if method == "POST" and path == CSRS and (admin or bootstrap):
            return self.send(*api.sign_kubelet_csr(self.body()))
        if bootstrap:
            return self.send(403, status(403, "Forbidden", f'User "{name}" cannot {method} '
                                                           f"{path}"))
        if method == "GET" and path == "/api/v1/nodes":
            items = [api.node_view(n) for n in api.etcd.prefix(sa.NODES_PREFIX).values()]
            return self.send(200, {"kind": "NodeList", "apiVersion": "v1",
                                   "metadata": sa_annotations(), "items": items})
        m = NODE.match(path)
        if m:
            return self.node(method, m.group(1), name, admin)
        m = LEASE.match(path)
        if m and method == "GET":
            lease = api.etcd.get(sa.LEASES_PREFIX + m.group(1))
            return self.send(200, lease) if lease else self.send(404, status(
                404, "NotFound", f'leases.coordination.k8s.io "{m.group(1)}" not found'))
        self.send(404, status(404, "NotFound", f"the server could not find the requested "
                                               f"resource {path}"))

    def node(self, method: str, node: str, user: str, admin: bool) -> None:
        api = self.server.api
        key = sa.NODES_PREFIX + node
        if method == "GET":
            obj = api.etcd.get(key)
            return self.send(200, api.node_view(obj)) if obj else self.send(404, status(
                404, "NotFound", f'nodes "{node}" not found'))
        if not admin and user != f"system:node:{node}":
            return self.send(403, status(403, "Forbidden", f'User "{user}" cannot {method} '
                                                           f'node "{node}"'))
        if method == "DELETE":
            api.etcd.delete(key)
            return self.send(200, {"kind": "Status", "apiVersion": "v1", "status": "Success"})
        if method == "PUT":
            obj = self.body()
            if obj.get("metadata", {}).get("name") != node:
                return self.send(400, status(400, "BadRequest", "metadata.name must be the node"))
            now = sa.now_rfc3339()
            for cond in obj.setdefault("status", {}).setdefault("conditions", []):
                cond["lastHeartbeatTime"] = now  # the apiserver's clock decides freshness
            api.etcd.put(key, obj)
            return self.send(200, obj)
        self.send(405, status(405, "MethodNotAllowed", f"{method} is not supported"))


class Server(ThreadingHTTPServer):
    daemon_threads = True
    request_queue_size = 64

    def __init__(self, address: tuple[str, int], api: Api, tls: ssl.SSLContext) -> None:
        self.api = api
        self.tls = tls
        super().__init__(address, Handler)

    def handle_error(self, request: Any, client_address: Any) -> None:
        exc = sys.exc_info()[1]
        if not isinstance(exc, ssl.SSLError | ConnectionError | TimeoutError | OSError):
            sa.log(NAME, f"error serving {client_address[0]}: {exc!r}")


def options(argv: list[str]) -> argparse.Namespace:
    p = sa.Parser(prog="kube-apiserver (lab stand-in)")
    p.add_argument("--manifest", help="read the flags from this static-pod manifest")
    p.add_argument("--advertise-address", default="")
    p.add_argument("--bind-address", default="0.0.0.0")
    p.add_argument("--secure-port", type=int, default=6443)
    for flag in ("etcd-servers", "etcd-cafile", "etcd-certfile", "etcd-keyfile",
                 "tls-cert-file", "tls-private-key-file", "client-ca-file",
                 "k8sha-signing-key-file"):
        p.add_argument(f"--{flag}")
    p.add_argument("--k8sha-version", default="")
    p.add_argument("--k8sha-node-grace", type=float, default=40.0,
                   help="node-monitor-grace-period in seconds")
    p.add_argument("--k8sha-etcd-timeout", type=float, default=2.0)
    opts, _unknown = p.parse_known_args(argv)  # real apiserver flags we do not need are fine
    if opts.manifest:
        flags, image_version = sa.manifest_flags(opts.manifest)
        argv = [f"--{k}={v}" for k, v in flags.items()] + argv
        opts, _unknown = p.parse_known_args(argv)
        opts.k8sha_version = opts.k8sha_version or image_version
    missing = [f for f in ("etcd_servers", "etcd_cafile", "etcd_certfile", "etcd_keyfile",
                           "tls_cert_file", "tls_private_key_file", "client_ca_file")
               if not getattr(opts, f)]
    if missing:
        p.error("missing flags: " + ", ".join("--" + m.replace("_", "-") for m in missing))
    if not opts.k8sha_signing_key_file:
        opts.k8sha_signing_key_file = opts.client_ca_file.rsplit(".", 1)[0] + ".key"
    return opts


def _interrupt(*_: Any) -> None:
    raise KeyboardInterrupt


def main(argv: list[str] | None = None) -> int:
    opts = options(sys.argv[1:] if argv is None else argv)
    tls = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    tls.load_cert_chain(str(sa.host_path(opts.tls_cert_file)),
                        str(sa.host_path(opts.tls_private_key_file)))
    tls.load_verify_locations(str(sa.host_path(opts.client_ca_file)))
    tls.verify_mode = ssl.CERT_OPTIONAL
    api = Api(opts)
    server = Server((opts.bind_address, opts.secure_port), api, tls)
    signal.signal(signal.SIGTERM, _interrupt)
    sa.log(NAME, f"serving https://{opts.bind_address}:{opts.secure_port} (advertised "
                 f"{opts.advertise_address or socket.gethostname()}), etcd {opts.etcd_servers}, "
                 f"version v{api.version}")
    try:
        server.serve_forever(poll_interval=0.5)
    except KeyboardInterrupt:
        sa.log(NAME, "stopping")
    finally:
        server.server_close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
