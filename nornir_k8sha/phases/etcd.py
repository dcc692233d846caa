"""etcd: certificates, config and unit on every member, started together; wait for quorum."""

from __future__ import annotations

from nornir.core.task import Result, Task

from nornir_k8sha import constants as C
from nornir_k8sha.deploy import DeployContext, NornirPhase
from nornir_k8sha.tasks import etcd


class EtcdPhase(NornirPhase):
    name = "etcd"
    title = "etcd"
    roles = (C.ROLE_ETCD,)
    depends_on = ("pki",)

    def task(self, task: Task, ctx: DeployContext) -> Result:
        return etcd.configure(task, ctx.spec, ctx.state_dir)

    def run(self, ctx: DeployContext, hosts: list[str]):  # noqa: ANN201
        outcomes = super().run(ctx, hosts)
        if not ctx.dry_run and any(o.status != "failed" for o in outcomes):
            try:
                etcd.wait_for_quorum(ctx.spec, ctx.state_dir, transport=ctx.http)
            except TimeoutError as exc:
                for o in outcomes:
                    if o.status != "failed":
                        o.status, o.message = "failed", str(exc)
        return outcomes
