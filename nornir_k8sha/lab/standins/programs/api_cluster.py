"""What the apiserver stand-in does per verb and kind: the cluster state behind the HTTP layer.

`Cluster` holds etcd, the store and the per-kind rules (node readiness from heartbeats, the
namespaces and `kubernetes` Service the real apiserver creates at start, the protected
namespaces, CSRs signed at once); `apiserver.py` turns requests into these calls.
"""

from __future__ import annotations

import argparse
import base64
import ipaddress
import secrets
import threading
import time
from typing import Any

import api_objects as ao
import k8sha_standin as sa
from api_resources import Resource, find
from api_store import Store

NAME = "kube-apiserver"
ADMIN_GROUPS = {"system:masters", "kubeadm:cluster-admins"}
SYSTEM_NAMESPACES = ("default", "kube-system", "kube-public", "kube-node-lease")
NAMESPACES = find("", "v1", "namespaces")
NODES = find("", "v1", "nodes")
CONFIGMAPS = find("", "v1", "configmaps")
SERVICES = find("", "v1", "services")
LEASES = find("coordination.k8s.io", "v1", "leases")
CSRS = find("certificates.k8s.io", "v1", "certificatesigningrequests")
#: What a namespace deletion removes first (the namespace controller's job, done at once here).
NAMESPACED = tuple(r for r in (CONFIGMAPS, LEASES) if r is not None)


class Cluster:
    """The state behind the handlers: etcd, the store, the signing CA, the version."""

    def __init__(self, opts: argparse.Namespace) -> None:
        self.etcd = sa.Etcd(opts.etcd_servers.split(","), opts.etcd_cafile, opts.etcd_certfile,
                            opts.etcd_keyfile, timeout=opts.k8sha_etcd_timeout)
        self.store = Store(self.etcd, self.view)
        self.ca_cert = opts.client_ca_file
        self.ca_key = opts.k8sha_signing_key_file
        self.version = opts.k8sha_version or sa.version()
        self.grace = opts.k8sha_node_grace
        self.service_ip = str(ipaddress.ip_network(opts.service_cluster_ip_range,
                                                   strict=False)[1])
        self.port = opts.secure_port
        self.bootstrapped = threading.Event()

    # --- health ---

    def checks(self, livez: bool) -> list[tuple[str, str]]:
        """(check, failure reason or "") in the real apiserver's order."""
        out = [("ping", ""), ("log", "")]
        if livez:
            return out
        try:
            self.etcd.get("health", timeout=1.5)  # linearizable: needs a quorum
            etcd = ""
        except sa.EtcdError as exc:
            etcd = str(exc)
        out += [("etcd", etcd), ("etcd-readiness", etcd), ("informer-sync", ""),
                ("poststarthook/bootstrap-controller",
                 "" if self.bootstrapped.is_set() else "not finished")]
        return out

    def health(self, kind: str, verbose: bool, only: str = "") -> tuple[int, str]:
        checks = self.checks(kind != "readyz")  # only readiness depends on etcd's quorum
        if only:
            found = [c for c in checks if c[0] == only]
            if not found:
                return 404, f"no {kind} check named {only} (lab stand-in)\n"
            return (500, f"internal server error: {found[0][1]} (lab stand-in)\n") \
                if found[0][1] else (200, "ok")
        failed = any(reason for _, reason in checks)
        if not failed and not verbose:
            return 200, "ok"
        lines = [f"[-]{name} failed: {reason}" if reason else f"[+]{name} ok"
                 for name, reason in checks]
        verdict = "failed" if failed else "passed"
        return (500 if failed else 200), "\n".join(
            [*lines, f"{kind} check {verdict} (lab stand-in)"]) + "\n"

    # --- objects on the way out ---

    def view(self, r: Resource, obj: dict[str, Any]) -> dict[str, Any]:
        if r is NODES:
            return self.node_view(obj)
        return obj

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

    @staticmethod
    def stamp_heartbeat(node: dict[str, Any], old: dict[str, Any] | None) -> dict[str, Any]:
        """The apiserver's clock decides freshness; a transition time moves only on a change."""
        now = sa.now_rfc3339()
        before = {c.get("type"): c for c in ((old or {}).get("status") or {}).get(
            "conditions", [])}
        for cond in (node.get("status") or {}).get("conditions", []):
            cond["lastHeartbeatTime"] = now
            prev = before.get(cond.get("type"))
            if prev and prev.get("status") == cond.get("status") and prev.get(
                    "lastTransitionTime"):
                cond["lastTransitionTime"] = prev["lastTransitionTime"]
            else:
                cond.setdefault("lastTransitionTime", now)
        return node

    # --- what the real apiserver creates at start ---

    def bootstrap_objects(self) -> list[tuple[Resource, dict[str, Any]]]:
        objs: list[tuple[Resource, dict[str, Any]]] = [
            (NAMESPACES, namespace_object(ns)) for ns in SYSTEM_NAMESPACES]
        objs.append((SERVICES, {
            "apiVersion": "v1", "kind": "Service",
            "metadata": sa.object_metadata("kubernetes", "default", labels={
                "component": "apiserver", "provider": "kubernetes"}),
            "spec": {"type": "ClusterIP", "clusterIP": self.service_ip,
                     "clusterIPs": [self.service_ip], "sessionAffinity": "None",
                     "ports": [{"name": "https", "port": 443, "protocol": "TCP",
                                "targetPort": self.port}]},
            "status": {"loadBalancer": {}}}))
        return objs

    def bootstrap(self, stop: threading.Event) -> None:
        """Create what is missing, retrying while etcd is unreachable (a thread at start)."""
        while not stop.is_set():
            try:
                for r, obj in self.bootstrap_objects():
                    meta = obj["metadata"]
                    self.etcd.txn(r.key(meta.get("namespace"), meta["name"]), 0,
                                  Store.stored(obj))
                self.bootstrapped.set()
                return
            except sa.EtcdError as exc:
                sa.log(NAME, f"bootstrap objects not written yet, retrying: {exc}")
                stop.wait(2)

    # --- per-kind rules of the writes ---

    def prepare_create(self, r: Resource, obj: dict[str, Any]) -> None:
        meta = obj["metadata"]
        if r is NAMESPACES:
            obj.setdefault("spec", {}).setdefault("finalizers", ["kubernetes"])
            obj["status"] = {"phase": "Active"}
            meta.setdefault("labels", {})["kubernetes.io/metadata.name"] = meta.get("name", "")
        if r.namespaced and meta.get("namespace"):
            _rev, kvs = self.etcd.range(NAMESPACES.key(None, meta["namespace"]))
            if not kvs:
                raise ao.not_found(NAMESPACES, meta["namespace"])

    def delete_namespace(self, name: str) -> dict[str, Any]:
        if name in SYSTEM_NAMESPACES:
            raise ao.ApiError(403, "Forbidden", f'namespaces "{name}" is forbidden: this '
                                                "namespace may not be deleted",
                              {"name": name, "kind": "namespaces"})
        obj, _kv = self.store.get(NAMESPACES, None, name)
        for r in NAMESPACED:
            for key in list(self.etcd.prefix(r.collection_key(name))):
                self.etcd.delete(key)
        self.store.delete(NAMESPACES, None, name)
        obj["status"] = {"phase": "Terminating"}
        obj["metadata"]["deletionTimestamp"] = sa.now_rfc3339()
        return obj

    def cluster_info(self) -> dict[str, Any] | None:
        """cluster-info plus a JWS of its kubeconfig per valid token (the bootstrap signer)."""
        _rev, kvs = self.etcd.range(sa.CLUSTER_INFO_KEY)
        if not kvs:
            return None
        cm = self.store.decorate(CONFIGMAPS, kvs[0])
        content = cm["data"]["kubeconfig"]
        for secret in self.etcd.prefix(sa.TOKEN_PREFIX).values():
            data = secret.get("stringData", {})
            if sa.parse_time(data.get("expiration", "1970-01-01T00:00:00Z")) > time.time():
                cm["data"][f"jws-kubeconfig-{data['token-id']}"] = sa.jws_detached(
                    content, data["token-id"], data["token-secret"])
        return cm

    def sign_kubelet_csr(self, body: dict[str, Any], user: str, groups: set[str]
                         ) -> dict[str, Any]:
        """Approve and sign at once, as the csrapproving controller does for bootstrap tokens;
        the CSR is kept under /registry/certificatesigningrequests/ like a real one."""
        try:
            csr = base64.b64decode(body["spec"]["request"])
            subject = sa.csr_subject(csr)
        except (KeyError, ValueError, RuntimeError):
            raise ao.ApiError(400, "BadRequest", "spec.request is not a PEM CSR") from None
        if subject["O"] != "system:nodes" or not subject["CN"].startswith("system:node:"):
            raise ao.ApiError(403, "Forbidden", "only kubelet client certificates "
                                                "(O=system:nodes, CN=system:node:<name>)")
        cert = sa.sign_csr(csr, self.ca_cert, self.ca_key)
        meta = body.get("metadata") or {}
        name = meta.get("name") or (meta.get("generateName") or "csr-") + secrets.token_hex(3)
        obj = {**body, "apiVersion": "certificates.k8s.io/v1",
               "kind": "CertificateSigningRequest", "metadata": {"name": name},
               "spec": {**body["spec"], "username": user, "groups": sorted(groups)},
               "status": {"certificate": base64.b64encode(cert).decode(), "conditions": [
                   {"type": "Approved", "status": "True", "reason": "AutoApproved",
                    "message": "Auto approving kubelet client certificate after "
                               "bootstrap token authentication (lab stand-in)",
                    "lastUpdateTime": sa.now_rfc3339()}]}}
        return self.store.create(CSRS, obj)


def namespace_object(name: str) -> dict[str, Any]:
    return {"apiVersion": "v1", "kind": "Namespace",
            "metadata": sa.object_metadata(name, labels={"kubernetes.io/metadata.name": name}),
            "spec": {"finalizers": ["kubernetes"]}, "status": {"phase": "Active"}}
