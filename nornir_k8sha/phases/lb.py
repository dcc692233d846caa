"""lb: keepalived + IPVS on the LVS directors, HAProxy (+ real-server VIP) on the HAProxy nodes."""

from __future__ import annotations

from nornir.core.task import Result, Task

from nornir_k8sha import constants as C
from nornir_k8sha.deploy import DeployContext, NornirPhase
from nornir_k8sha.tasks import haproxy, keepalived


class LoadBalancers(NornirPhase):
    name = "lb"
    title = "LVS + HAProxy"
    roles = (C.ROLE_LVS, C.ROLE_HAPROXY)
    depends_on = ("preflight", "pki")

    def task(self, task: Task, ctx: DeployContext) -> Result:
        me = ctx.spec.host(task.host.name)
        if me.has_role(C.ROLE_LVS):
            return keepalived.configure(task, ctx.spec)
        return haproxy.configure(task, ctx.spec, ctx.state_dir)
