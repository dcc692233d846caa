"""network: FRR on the LVS directors announces the VIP /32; the ToR switches peer with them."""

from __future__ import annotations

from nornir.core.task import Result, Task

from nornir_k8sha import constants as C
from nornir_k8sha.deploy import DeployContext, NornirPhase
from nornir_k8sha.tasks import frr, switch


class Network(NornirPhase):
    name = "network"
    title = "BGP"
    roles = (C.ROLE_SWITCHES, C.ROLE_LVS)
    depends_on = ("preflight",)

    def should_run(self, ctx: DeployContext) -> str | None:
        if not ctx.spec.role(C.ROLE_SWITCHES):
            return "no switches in the inventory"
        return None

    def task(self, task: Task, ctx: DeployContext) -> Result:
        if ctx.spec.host(task.host.name).has_role(C.ROLE_SWITCHES):
            return switch.configure(task, ctx.spec)
        return frr.configure(task, ctx.spec)
