"""The Kubernetes half of `check`: apiservers per master and through the VIP, nodes Ready,
one holder per leader lease, the registry from every node, certificate expiry.

Until `deploy` has fetched the admin kubeconfig (no control plane yet), the API checks report
`skipped` with the reason instead of failing: the SLB tier and etcd can be proven on their own.
"""

from __future__ import annotations

import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import httpx

from nornir_k8sha import constants as C
from nornir_k8sha.checks import (
    HTTP_TIMEOUT,
    Check,
    CheckContext,
    _bad,
    _error_text,
    _ok,
    tls_context,
)
from nornir_k8sha.report import HostOutcome
from nornir_k8sha.topology import ClusterSpec, HostSpec, hosts_in_roles

API_PATHS = ("/healthz", "/livez", "/readyz", "/version")
LEASES = ("kube-controller-manager", "kube-scheduler")
EXPIRY_WARN_DAYS = 30


def _no_control_plane(cx: CheckContext) -> HostOutcome | None:
    if not (cx.state_dir / C.STATE_ADMIN_KUBECONFIG).exists():
        return HostOutcome("-", "skipped", 0.0,
                           "no control plane yet: run `deploy` (admin.conf is not in the state "
                           "dir)")
    return None


def api_client(spec: ClusterSpec, state_dir: Path) -> httpx.Client:
    """httpx client for the apiservers: our cluster CA, the admin client certificate."""
    from nornir_k8sha.pki import ClusterPKI

    pki = ClusterPKI(spec, state_dir)
    admin = pki.admin_client
    return httpx.Client(verify=tls_context(pki.kubernetes_ca.cert, admin.cert, admin.key),
                        timeout=HTTP_TIMEOUT)


def node_readiness(items: list[dict[str, Any]]) -> dict[str, bool]:
    """node name → Ready, from a NodeList's items."""
    ready = {}
    for node in items:
        conds = {c.get("type"): c.get("status") for c in node.get("status", {}).get(
            "conditions", [])}
        ready[node.get("metadata", {}).get("name")] = conds.get("Ready") == "True"
    return ready


def kubernetes_nodes(spec: ClusterSpec) -> list[HostSpec]:
    """The hosts that become Kubernetes nodes (masters and workers)."""
    return hosts_in_roles(spec, C.KUBERNETES_ROLES)


def check_apiservers(cx: CheckContext) -> list[HostOutcome]:
    """/healthz /livez /readyz /version on each master and through the VIP, TLS verified."""
    skip = _no_control_plane(cx)
    if skip:
        return [skip]
    port = cx.spec.settings.apiserver_bind_port
    targets = [(h.name, f"https://{h.address}:{port}") for h in cx.spec.role(C.ROLE_MASTERS)]
    targets.append((f"VIP {cx.spec.api_endpoint}", f"https://{cx.spec.api_endpoint}"))
    with api_client(cx.spec, cx.state_dir) as client:

        def probe(target: tuple[str, str]) -> HostOutcome:
            name, base = target
            start = time.monotonic()
            failed = []
            version = "?"
            for path in API_PATHS:
                try:
                    resp = client.get(base + path)
                except httpx.HTTPError as exc:
                    return _bad(name, f"{path}: {_error_text(exc)}", start)
                if resp.status_code != 200:
                    body = resp.text.strip().splitlines()
                    failed.append(f"{path} {resp.status_code}"
                                  + (f" ({body[-1][:120]})" if body else ""))
                elif path == "/version":
                    version = resp.json().get("gitVersion", "?")
            if failed:
                return _bad(name, "; ".join(failed), start)
            return _ok(name, f"healthz livez readyz ok, {version}", start)

        with ThreadPoolExecutor(max_workers=len(targets)) as pool:
            return list(pool.map(probe, targets))


def _get_json(cx: CheckContext, path: str) -> dict[str, Any]:
    with api_client(cx.spec, cx.state_dir) as client:
        resp = client.get(f"https://{cx.spec.api_endpoint}{path}")
        resp.raise_for_status()
        return resp.json()


def check_nodes(cx: CheckContext) -> list[HostOutcome]:
    """Every master and worker is a node and Ready."""
    skip = _no_control_plane(cx)
    if skip:
        return [skip]
    start = time.monotonic()
    try:
        items = _get_json(cx, "/api/v1/nodes").get("items", [])
    except (httpx.HTTPError, ValueError) as exc:
        return [_bad("nodes", f"cannot list nodes: {_error_text(exc)}", start)]
    ready = node_readiness(items)
    outcomes = []
    for h in kubernetes_nodes(cx.spec):
        if h.name not in ready:
            outcomes.append(_bad(h.name, "not a node of the cluster", start))
        elif not ready[h.name]:
            outcomes.append(_bad(h.name, "node NotReady", start))
        else:
            outcomes.append(_ok(h.name, "node Ready", start))
    return outcomes


def check_leases(cx: CheckContext) -> list[HostOutcome]:
    """One holder for each of kube-controller-manager and kube-scheduler."""
    skip = _no_control_plane(cx)
    if skip:
        return [skip]
    outcomes = []
    for lease in LEASES:
        start = time.monotonic()
        path = f"/apis/coordination.k8s.io/v1/namespaces/kube-system/leases/{lease}"
        try:
            holder = _get_json(cx, path).get("spec", {}).get("holderIdentity")
        except (httpx.HTTPError, ValueError) as exc:
            outcomes.append(_bad(lease, f"lease unreadable: {_error_text(exc)}", start))
            continue
        if holder:
            outcomes.append(_ok(lease, f"leader {holder}", start))
        else:
            outcomes.append(_bad(lease, "no leader holds the lease", start))
    return outcomes


def check_registry(cx: CheckContext) -> list[HostOutcome]:
    """Registry /v2/ over TLS with our CA, from every Kubernetes node."""
    skip = _no_control_plane(cx)
    if skip:
        return [skip]
    reg = cx.spec.settings.registry
    from nornir_k8sha.render import registry_ca_on_node

    ca = registry_ca_on_node(cx.spec)
    url = f"https://{reg.name}:{reg.port}/v2/"
    nodes = kubernetes_nodes(cx.spec)

    def probe(name: str) -> HostOutcome:
        start = time.monotonic()
        try:
            code, out, err = cx.ssh(name, f"curl -sS -o /dev/null -w '%{{http_code}}' "
                                          f"--max-time 3 --cacert {ca} {url}")
        except Exception as exc:
            return _bad(name, _error_text(exc), start)
        if code == 0 and out.strip() in ("200", "401"):
            return _ok(name, f"{url} → {out.strip()} (TLS trusted)", start)
        return _bad(name, f"{url}: {err.strip() or out.strip() or f'exit {code}'}", start)

    with ThreadPoolExecutor(max_workers=len(nodes) or 1) as pool:
        return list(pool.map(probe, [h.name for h in nodes]))


def check_certificates(cx: CheckContext) -> list[HostOutcome]:
    """Expiry of everything in the PKI: warn (fail the check) under 30 days."""
    from nornir_k8sha.pki import expiry_report

    start = time.monotonic()
    pki_dir = Path(cx.state_dir)
    if not (pki_dir / "pki").exists():
        return [HostOutcome("-", "skipped", 0.0, "no PKI yet: run `pki` or `deploy`")]
    outcomes = []
    certs = sorted(expiry_report(pki_dir), key=lambda c: c.days_left)
    for cert in certs:
        if cert.days_left < EXPIRY_WARN_DAYS:
            advice = ("CA: rotate deliberately (every certificate under it changes)" if
                      cert.is_ca else "renewed by the next `deploy` or `pki`")
            outcomes.append(_bad(cert.name, f"expires in {cert.days_left} days ({advice})",
                                 start))
    if not outcomes and certs:
        first = certs[0]
        outcomes.append(_ok(f"{len(certs)} certificates", f"none expires within "
                            f"{EXPIRY_WARN_DAYS} days; first: {first.name} in "
                            f"{first.days_left} days", start))
    return outcomes


KUBE_CHECKS: list[tuple[str, str, Check]] = [
    ("apiserver", "kube-apiserver", check_apiservers),
    ("nodes", "nodes", check_nodes),
    ("leases", "leader leases", check_leases),
    ("registry", "registry from nodes", check_registry),
    ("certificates", "certificate expiry", check_certificates),
]

__all__ = ["KUBE_CHECKS"]
