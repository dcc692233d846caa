"""The registry every node trusts.

Production: `harbor.yml` rendered and Harbor's offline installer run (`install.sh`), the admin
password read on the host from a 0600 file the operator placed — never from the inventory.
Lab: the Distribution registry (Debian's `docker-registry`, the registry engine inside Harbor),
serving TLS with a certificate from our PKI. Which one runs is decided by what the host has:
an unpacked Harbor installer at /opt/harbor selects the production path.

Every Kubernetes node gets the registry CA and `certs.d/<registry>/hosts.toml` for containerd
(`trust_registry`), and the registry name in /etc/hosts when DNS does not know it.
"""

from __future__ import annotations

import time
from pathlib import Path

from nornir.core.task import Result, Task

from nornir_k8sha import constants as C
from nornir_k8sha.checkresult import failed, passed
from nornir_k8sha.render import files_for_component
from nornir_k8sha.tasks import host as H
from nornir_k8sha.tasks.component import upload_pki
from nornir_k8sha.topology import ClusterSpec

HARBOR_INSTALLER = "/opt/harbor/install.sh"
DISTRIBUTION_SERVICE = "docker-registry"
DISTRIBUTION_PACKAGE = "docker-registry"
HOSTS_MARK = "# k8sha registry"



def configure_registry(
    task: Task, spec: ClusterSpec, state_dir: Path, *, dry_run: bool | None = None
) -> Result:
    """Harbor (production) or Distribution (lab) on the harbor host, TLS from our PKI."""
    H.honour_dry_run(task, dry_run)

    me = spec.host(task.host.name)
    if H.connect(task).get(HARBOR_INSTALLER) is not None:
        changed = upload_pki(task, spec, state_dir, under=C.REGISTRY_PKI_DIR)
        for f in files_for_component(spec, me, "harbor"):
            if H.file(task, path=f.path, content=f.content, mode=f.mode).changed:
                changed.append(f.path)
        if changed and not task.is_dry_run():
            H.connect(task).run("cd /opt/harbor && ./install.sh", timeout=1200)
        return Result(host=task.host, changed=bool(changed), result="harbor")
    changed = []
    if H.packages(task, names=[DISTRIBUTION_PACKAGE]).changed:
        changed.append(DISTRIBUTION_PACKAGE)
    # owned by the service user: its unit's ExecStartPre chowns them anyway
    changed += upload_pki(task, spec, state_dir, under=C.REGISTRY_PKI_DIR,
                          owner=f"{C.REGISTRY_USER}:{C.REGISTRY_USER}")
    for f in files_for_component(spec, me, "registry"):
        if H.file(task, path=f.path, content=f.content, mode=f.mode).changed:
            changed.append(f.path)
    svc = H.service(task, name=DISTRIBUTION_SERVICE, restart_if_changed=bool(changed))
    return Result(host=task.host, changed=bool(changed) or bool(svc.changed),
                  result="distribution registry")


def trust_registry(
    task: Task, spec: ClusterSpec, state_dir: Path, *, dry_run: bool | None = None
) -> Result:
    """Registry CA for containerd on a Kubernetes node, and the registry name in /etc/hosts.

    containerd's `certs.d/<registry>/hosts.toml` comes with the containerd component
    (`kubeadm.prepare_node`), so a changed registry restarts containerd in one place."""
    H.honour_dry_run(task, dry_run)
    changed = upload_pki(task, spec, state_dir, under=C.CONTAINERD_CERTS_DIR)
    registry = spec.settings.registry.name
    harbor = spec.role(C.ROLE_HARBOR)[0]
    line = f"{harbor.address} {registry} {HOSTS_MARK}"
    hosts = (H.connect(task).get("/etc/hosts") or b"").decode()
    if line not in hosts.splitlines():
        kept = [ln for ln in hosts.splitlines() if not ln.endswith(HOSTS_MARK)]
        if H.file(task, path="/etc/hosts", content="\n".join([*kept, line]) + "\n",
                  backup=False).changed:
            changed.append("/etc/hosts")
    return Result(host=task.host, changed=bool(changed), result=", ".join(changed) or "trusted")


def check(task: Task, spec: ClusterSpec) -> Result:
    """The registry's `/v2/` from this Kubernetes node over TLS, trusting only the cluster's
    registry CA where containerd finds it (`certs.d/<registry>/ca.crt`). Read-only.

    200 or 401 (Harbor asks for a login) proves name resolution, the route and the trust."""
    start = time.monotonic()
    url = f"https://{spec.registry_host}/v2/"
    out = H.connect(task).run(f"curl -sS -o /dev/null -w '%{{http_code}}' --max-time 3 "
                              f"--cacert {spec.registry_ca_on_node} {url}", check=False)
    code = out.stdout.strip()
    if out.exit_code == 0 and code in ("200", "401"):
        res = passed(task.host.name, f"{url} → {code} (TLS trusted)", start, http_status=code)
    else:
        res = failed(task.host.name,
                     f"{url}: {out.stderr.strip() or code or f'exit {out.exit_code}'}", start,
                     http_status=code)
    return Result(host=task.host, result=res, failed=not res.ok)
