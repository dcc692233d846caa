"""Remove one Kubernetes node (a worker or a master) from the cluster, the way the Kubernetes
docs order it: cordon, drain, `kubeadm reset`, delete the Node object. A master first leaves
HAProxy's backend list (the cluster's HAProxy config rendered WITHOUT it, reloaded one HAProxy
at a time, each seeing a healthy backend again before the next), so no request is sent to an
apiserver about to go away.

`remaining` is the cluster as it will be (the inventory without the node, validated by the
caller): the topology's rules (at least 2 masters, 1 worker) refuse a removal before anything
is touched.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import quote

import httpx
from nornir.core import Nornir

from nornir_k8sha import constants as C
from nornir_k8sha.checkresult import CheckResult
from nornir_k8sha.clients import api_client
from nornir_k8sha.exceptions import CommandFailed
from nornir_k8sha.polling import poll_until
from nornir_k8sha.tasks import haproxy, kubeadm
from nornir_k8sha.tasks.one_host import run_on
from nornir_k8sha.topology import ClusterSpec

Say = Callable[[str], None]
MERGE_PATCH = "application/merge-patch+json"
#: Bound (seconds) for one HAProxy to show a healthy apiserver backend after its reload.
HAPROXY_BACK_S = 30.0
POLL_S = 0.5


@dataclass
class Removed:
    name: str
    registered: bool
    evicted: list[str] = field(default_factory=list)
    haproxy: list[str] = field(default_factory=list)


def remove(nr: Nornir, spec: ClusterSpec, remaining: ClusterSpec, name: str, state_dir: Path,
           *, say: Say = print, transport: httpx.BaseTransport | None = None) -> Removed:
    """Cordon, drain, (master: HAProxy without it), reset, delete. Raises CommandFailed or
    httpx errors naming the step that failed."""
    api = f"https://{spec.api_endpoint}"
    node_url = f"{api}/api/v1/nodes/{quote(name)}"
    with api_client(spec, state_dir, transport) as client:
        found = client.get(node_url)
        done = Removed(name, registered=found.status_code == 200)
        if done.registered:
            _ok(client.patch(node_url, content=b'{"spec":{"unschedulable":true}}',
                             headers={"Content-Type": MERGE_PATCH}), f"cordon {name}")
            say(f"cordoned {name}")
            done.evicted = _drain(client, api, name)
            say(f"drained {name}: {len(done.evicted)} pod(s) evicted")
        else:
            say(f"{name} is not a registered node (HTTP {found.status_code}): nothing to "
                "cordon or drain")
        if spec.host(name).has_role(C.ROLE_MASTERS):
            for proxy in remaining.role(C.ROLE_HAPROXY):
                _reconfigure_haproxy(nr, remaining, state_dir, proxy.name, transport)
                done.haproxy.append(proxy.name)
                say(f"{proxy.name}: HAProxy reloaded without {name}; a backend is up")
        _reset(nr, name)
        say(f"{name}: kubeadm reset -f")
        if done.registered:
            _ok(client.delete(node_url), f"delete node {name}")
            say(f"deleted node {name}")
    return done


def _ok(resp: httpx.Response, what: str) -> None:
    if resp.status_code >= 300 and resp.status_code != 404:
        raise CommandFailed("api", what, resp.status_code, resp.text.strip()[:200])


def _drain(client: httpx.Client, api: str, name: str) -> list[str]:
    """Evict every pod bound to the node but mirror pods and DaemonSet pods (as `kubectl drain
    --ignore-daemonsets`); an API without the eviction subresource gets a delete."""
    listed = client.get(f"{api}/api/v1/pods", params={"fieldSelector": f"spec.nodeName={name}"})
    _ok(listed, f"list pods on {name}")
    evicted = []
    for pod in listed.json().get("items", []):
        meta = pod.get("metadata", {})
        owners = {o.get("kind") for o in meta.get("ownerReferences", [])}
        if "DaemonSet" in owners or "kubernetes.io/config.mirror" in meta.get("annotations", {}):
            continue
        ns, pod_name = meta.get("namespace", "default"), meta.get("name", "")
        url = f"{api}/api/v1/namespaces/{quote(ns)}/pods/{quote(pod_name)}"
        resp = client.post(f"{url}/eviction", json={
            "apiVersion": "policy/v1", "kind": "Eviction",
            "metadata": {"name": pod_name, "namespace": ns}})
        if resp.status_code in (404, 405):
            resp = client.delete(url)
        _ok(resp, f"evict {ns}/{pod_name}")
        evicted.append(f"{ns}/{pod_name}")
    return evicted


def _reset(nr: Nornir, name: str) -> None:
    run_on(nr, name, kubeadm.reset_node)


def _reconfigure_haproxy(nr: Nornir, remaining: ClusterSpec, state_dir: Path, proxy: str,
                         transport: httpx.BaseTransport | None) -> None:
    """haproxy.cfg of the remaining cluster on `proxy` (validated, reloaded), then wait until
    its stats show an apiserver backend up."""
    run_on(nr, proxy, haproxy.configure, spec=remaining, state_dir=state_dir)

    def stats() -> CheckResult | None:
        res = nr.filter(name=proxy).run(task=haproxy.check, spec=remaining,
                                        transport=transport, on_failed=True)[proxy][0].result
        return res if isinstance(res, CheckResult) else None

    poll_until(stats, lambda res: res is not None and res.ok, timeout=HAPROXY_BACK_S,
               interval=POLL_S, error=lambda res: TimeoutError(
                   f"{proxy}: no apiserver backend up {HAPROXY_BACK_S:.0f} s after its reload "
                   f"({res.message if res else 'no answer'}); the other HAProxy nodes were not "
                   "changed"))
