"""The LVS directors' side of BGP: FRR announces the VIP /32 to the switches."""

from __future__ import annotations

from nornir.core.task import Result, Task

from nornir_k8sha.tasks import host as H
from nornir_k8sha.tasks.component import apply_component
from nornir_k8sha.topology import ClusterSpec


def configure(task: Task, spec: ClusterSpec, *, dry_run: bool | None = None) -> Result:
    H.honour_dry_run(task, dry_run)
    pk = H.packages(task, names=["frr"])
    r = apply_component(task, spec, "frr", services={"frr": "restart"})
    r.changed = bool(r.changed or pk.changed)
    return r
