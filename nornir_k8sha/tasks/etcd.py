"""The external etcd cluster: TLS peer and client with client-cert auth, bootstrapped together.

All members start in the same phase (Nornir runs them in parallel), so the `new` cluster forms
as soon as a quorum is up; `wait_for_quorum` then polls `/health` over mTLS from this machine.
"""

from __future__ import annotations

import time
from pathlib import Path

from nornir.core.task import Result, Task

from nornir_k8sha import constants as C
from nornir_k8sha.tasks import host as H
from nornir_k8sha.tasks.component import apply_component, upload_pki
from nornir_k8sha.topology import ClusterSpec

PACKAGES = ["etcd-server", "etcd-client"]


def configure(
    task: Task, spec: ClusterSpec, state_dir: Path, *, dry_run: bool | None = None
) -> Result:
    H.honour_dry_run(task, dry_run)
    pk = H.packages(task, names=PACKAGES)
    # owned by the etcd user: its unit's ExecStartPre chowns them too, so root-owned uploads
    # would flip back and forth
    certs = upload_pki(task, spec, state_dir, under=C.ETCD_PKI_DIR,
                       owner=f"{C.ETCD_USER}:{C.ETCD_USER}")
    # the data dir is made and chowned by the unit itself (ExecStartPre in etcd.service.j2)
    r = apply_component(task, spec, "etcd", services={"etcd": "restart"})
    if certs and not r.changed and not task.is_dry_run():
        H.service(task, name="etcd", state="restarted")
    r.changed = bool(r.changed or certs or pk.changed)
    return r


def wait_for_quorum(spec: ClusterSpec, state_dir: Path, timeout: float = 60.0) -> int:
    """Poll members' /health over mTLS until a quorum reports healthy; return the count."""
    import httpx

    from nornir_k8sha.checks import etcd_http_client, etcd_reports_healthy
    from nornir_k8sha.topology import etcd_quorum

    members = spec.role(C.ROLE_ETCD)
    need = etcd_quorum(len(members))
    deadline = time.monotonic() + timeout
    healthy = 0
    with etcd_http_client(spec, state_dir) as client:
        while time.monotonic() < deadline:
            healthy = 0
            for m in members:
                try:
                    url = f"https://{m.address}:{spec.settings.etcd.client_port}/health"
                    if etcd_reports_healthy(client.get(url).json()):
                        healthy += 1
                except (httpx.HTTPError, ValueError):
                    pass
            if healthy >= need:
                return healthy
            time.sleep(0.5)
    raise TimeoutError(f"etcd: {healthy}/{len(members)} members healthy after {timeout:.0f}s, "
                       f"quorum is {need}")


def check(task: Task, spec: ClusterSpec) -> Result:
    """`etcdctl endpoint status` of this member over TLS, with its own certificate (its server
    certificate also allows client auth). `result`: the JSON status (leader, raft term, DB
    size). Read-only."""
    import json

    pki = C.ETCD_PKI_DIR
    cmd = (f"ETCDCTL_API=3 etcdctl --endpoints https://127.0.0.1:{spec.settings.etcd.client_port}"
           f" --cacert {pki}/ca.crt --cert {pki}/server.crt --key {pki}/server.key"
           " --command-timeout=2s endpoint status -w json")
    out = H.connect(task).run(cmd).stdout
    status = json.loads(out)
    return Result(host=task.host, result=status[0] if isinstance(status, list) else status)
