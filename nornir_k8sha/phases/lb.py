"""lb: keepalived + IPVS on the LVS directors, HAProxy (+ real-server VIP) on the HAProxy nodes.

The HAProxy nodes are configured in parallel but reload one at a time (a lock shared by the
phase's hosts): a master added to the inventory changes every node's backend list, and the VIP
must always have a node that is not in the middle of a reload. A node whose haproxy is not
running yet (a fresh deploy) starts without waiting: it serves nothing a start interrupts."""

from __future__ import annotations

import threading

from nornir.core.task import Result, Task

from nornir_k8sha import constants as C
from nornir_k8sha.deploy import DeployContext, NornirPhase
from nornir_k8sha.report import HostOutcome
from nornir_k8sha.tasks import haproxy, keepalived

#: ctx.shared key: the lock the HAProxy nodes of this deploy take turns to reload with.
RELOADS = "haproxy_reloads"


class LoadBalancers(NornirPhase):
    name = "lb"
    title = "LVS + HAProxy"
    roles = (C.ROLE_LVS, C.ROLE_HAPROXY)
    depends_on = ("preflight", "pki")

    def task(self, task: Task, ctx: DeployContext) -> Result:
        me = ctx.spec.host(task.host.name)
        if me.has_role(C.ROLE_LVS):
            return keepalived.configure(task, ctx.spec)
        return haproxy.configure(task, ctx.spec, ctx.state_dir,
                                 one_at_a_time=ctx.shared.get(RELOADS))

    def run(self, ctx: DeployContext, hosts: list[str]) -> list[HostOutcome]:
        ctx.shared[RELOADS] = threading.Lock()
        return super().run(ctx, hosts)
