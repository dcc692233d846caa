"""The Kubernetes API as its clients see it: each master's apiserver, the API through the VIP,
the nodes, the leader leases — every probe from this machine over TLS with the cluster CA and the
admin client certificate (`clients.api_client`).

`check` is a Nornir task for one master; `check_endpoint` is the same probe for any base URL
(the VIP); `check_nodes` and `check_leases` read cluster-wide objects once. Each returns
CheckResults; `transport` is the test seam (httpx.MockTransport).
"""

from __future__ import annotations

import time
from pathlib import Path

import httpx
from nornir.core.task import Result, Task

from nornir_k8sha import constants as C
from nornir_k8sha.checkresult import CheckResult, failed, passed
from nornir_k8sha.clients import api_client, error_text, node_readiness
from nornir_k8sha.topology import ClusterSpec

#: What every apiserver must answer 200 on, in this order.
API_PATHS = ("/healthz", "/livez", "/readyz", "/version")
#: The leader-election leases of the control plane (kube-system).
LEASES = ("kube-controller-manager", "kube-scheduler")
LEASE_PATH = "/apis/coordination.k8s.io/v1/namespaces/kube-system/leases/{name}"


def check_endpoint(client: httpx.Client, target: str, base: str) -> CheckResult:
    """/healthz /livez /readyz /version on one apiserver URL; values: version, failed paths."""
    start = time.monotonic()
    bad: list[str] = []
    version = "?"
    for path in API_PATHS:
        try:
            resp = client.get(base + path)
        except httpx.HTTPError as exc:
            return failed(target, f"{path}: {error_text(exc)}", start, failed_paths=[path])
        if resp.status_code != 200:
            body = resp.text.strip().splitlines()
            bad.append(f"{path} {resp.status_code}" + (f" ({body[-1][:120]})" if body else ""))
        elif path == "/version":
            version = resp.json().get("gitVersion", "?")
    if bad:
        return failed(target, "; ".join(bad), start, failed_paths=[b.split()[0] for b in bad],
                      version=version)
    return passed(target, f"healthz livez readyz ok, {version}", start, failed_paths=[],
                  version=version)


def check(task: Task, spec: ClusterSpec, state_dir: Path | None = None, *,
          transport: httpx.BaseTransport | None = None) -> Result:
    """This master's apiserver on its own address, TLS verified against the cluster CA."""
    me = spec.host(task.host.name)
    base = f"https://{me.address}:{spec.settings.apiserver_bind_port}"
    with api_client(spec, state_dir or spec.state_dir, transport) as client:
        res = check_endpoint(client, me.name, base)
    return Result(host=task.host, result=res, failed=not res.ok)


def check_vip(spec: ClusterSpec, state_dir: Path | None = None, *,
              transport: httpx.BaseTransport | None = None) -> CheckResult:
    """The API through the VIP: LVS-DR → HAProxy → an apiserver."""
    with api_client(spec, state_dir or spec.state_dir, transport) as client:
        return check_endpoint(client, f"VIP {spec.api_endpoint}", f"https://{spec.api_endpoint}")


def check_nodes(spec: ClusterSpec, state_dir: Path | None = None, *,
                transport: httpx.BaseTransport | None = None) -> list[CheckResult]:
    """Every master and worker is a node and Ready (one list through the VIP)."""
    start = time.monotonic()
    try:
        with api_client(spec, state_dir or spec.state_dir, transport) as client:
            resp = client.get(f"https://{spec.api_endpoint}/api/v1/nodes")
            resp.raise_for_status()
            ready = node_readiness(resp.json().get("items", []))
    except (httpx.HTTPError, ValueError) as exc:
        return [failed("nodes", f"cannot list nodes: {error_text(exc)}", start)]
    out = []
    for h in spec.kubernetes_nodes():
        if h.name not in ready:
            out.append(failed(h.name, "not a node of the cluster", start, ready=False))
        elif not ready[h.name]:
            out.append(failed(h.name, "node NotReady", start, ready=False))
        else:
            out.append(passed(h.name, "node Ready", start, ready=True))
    return out


def check_leases(spec: ClusterSpec, state_dir: Path | None = None, *,
                 transport: httpx.BaseTransport | None = None) -> list[CheckResult]:
    """One holder for each of kube-controller-manager and kube-scheduler; values: holder."""
    out = []
    with api_client(spec, state_dir or spec.state_dir, transport) as client:
        for lease in LEASES:
            start = time.monotonic()
            url = f"https://{spec.api_endpoint}{LEASE_PATH.format(name=lease)}"
            try:
                resp = client.get(url)
                resp.raise_for_status()
                holder = resp.json().get("spec", {}).get("holderIdentity")
            except (httpx.HTTPError, ValueError) as exc:
                out.append(failed(lease, f"lease unreadable: {error_text(exc)}", start))
                continue
            if holder:
                out.append(passed(lease, f"leader {holder}", start, holder=holder))
            else:
                out.append(failed(lease, "no leader holds the lease", start, holder=None))
    return out


def has_control_plane(state_dir: Path) -> bool:
    """`deploy` fetched the admin kubeconfig: there is a control plane to check."""
    return (state_dir / C.STATE_ADMIN_KUBECONFIG).exists()
