"""LVS directors: keepalived holds the VIP by VRRP and programs IPVS (DR mode) to the HAProxy
nodes, taking a dead HAProxy out of the table by its TCP check."""

from __future__ import annotations

from nornir.core.task import Result, Task

from nornir_k8sha.tasks import host as H
from nornir_k8sha.tasks.component import apply_component
from nornir_k8sha.topology import ClusterSpec

PACKAGES = ["keepalived", "ipvsadm"]


def configure(task: Task, spec: ClusterSpec, *, dry_run: bool | None = None) -> Result:
    """Packages, the ip_vs module, keepalived.conf (validated by `keepalived -t`), reload."""
    H.honour_dry_run(task, dry_run)
    pk = H.packages(task, names=PACKAGES)
    conn = H.connect(task)
    if not task.is_dry_run():
        conn.run("modprobe ip_vs 2>/dev/null || true; grep -q '^ip_vs' /proc/modules", check=True)
    r = apply_component(task, spec, "keepalived", services={"keepalived": "reload"})
    r.changed = r.changed or bool(pk.changed)
    return r


def check(task: Task, spec: ClusterSpec) -> Result:
    """Does this director hold the VIP, and what does IPVS forward? (read-only)"""
    conn = H.connect(task)
    vip = str(spec.vip)
    addrs = conn.run("ip -o -4 addr show", check=False).stdout
    table = conn.run("ipvsadm -Ln", check=False).stdout
    return Result(host=task.host, result={"holds_vip": f" {vip}/" in addrs, "ipvs": table})
