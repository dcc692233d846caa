"""reset: `kubeadm reset -f` on every worker, then every master — the way back to prepared
nodes. etcd, the SLB tier and the registry are left alone; the external etcd keeps the old
cluster's keys (kubeadm never touches an external etcd)."""

from __future__ import annotations

from nornir.core.task import Result, Task

from nornir_k8sha import constants as C
from nornir_k8sha.deploy import DeployContext, NornirPhase
from nornir_k8sha.tasks import kubeadm


class ResetWorkers(NornirPhase):
    name = "reset-workers"
    title = "reset workers"
    roles = (C.ROLE_WORKERS,)

    def task(self, task: Task, ctx: DeployContext) -> Result:
        return kubeadm.reset_node(task)


class ResetMasters(NornirPhase):
    name = "reset-masters"
    title = "reset masters"
    roles = (C.ROLE_MASTERS,)

    def task(self, task: Task, ctx: DeployContext) -> Result:
        result = kubeadm.reset_node(task)
        admin = ctx.state_dir / C.STATE_ADMIN_KUBECONFIG
        if not task.is_dry_run() and admin.exists():
            with ctx.lock:
                admin.unlink(missing_ok=True)
        return result


def reset_stages() -> list[list[NornirPhase]]:
    return [[ResetWorkers()], [ResetMasters()]]
