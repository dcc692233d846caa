"""network: FRR on the LVS directors announces the VIP /32; the ToR switches peer with them."""

from __future__ import annotations

import time

from nornir.core.task import Result, Task

from nornir_k8sha import constants as C
from nornir_k8sha.checks import CheckContext, bgp_sessions
from nornir_k8sha.deploy import DeployContext, NornirPhase
from nornir_k8sha.report import HostOutcome
from nornir_k8sha.tasks import frr, switch

BGP_SETTLE_TIMEOUT = 30.0


class Network(NornirPhase):
    name = "network"
    title = "BGP"
    roles = (C.ROLE_SWITCHES, C.ROLE_LVS)
    depends_on = ("preflight",)

    def should_run(self, ctx: DeployContext) -> str | None:
        if not ctx.spec.role(C.ROLE_SWITCHES):
            return "no switches in the inventory"
        return None

    def run(self, ctx: DeployContext, hosts: list[str]) -> list[HostOutcome]:
        """Configure, then wait (bounded) until every director's sessions are Established, so
        the post-checks see a settled BGP rather than a session still in OpenSent."""
        outcomes = super().run(ctx, hosts)
        directors = [o for o in outcomes if ctx.spec.host(o.host).has_role(C.ROLE_LVS)]
        if ctx.dry_run or ctx.limit is not None or any(o.status == "failed" for o in outcomes):
            return outcomes
        cx = CheckContext(ctx.spec, ctx.nr, ctx.state_dir, ctx.http)
        deadline = time.monotonic() + BGP_SETTLE_TIMEOUT
        while True:
            bad = {r.target: r.message for r in bgp_sessions(cx) if r.status == "failed"}
            if not bad or time.monotonic() > deadline:
                break
            time.sleep(1.0)
        for o in directors:
            if o.host in bad:
                o.status = "failed"
                o.message = f"{bad[o.host]} (after {BGP_SETTLE_TIMEOUT:.0f}s)"
        return outcomes

    def task(self, task: Task, ctx: DeployContext) -> Result:
        if ctx.spec.host(task.host.name).has_role(C.ROLE_SWITCHES):
            return switch.configure(task, ctx.spec)
        return frr.configure(task, ctx.spec)
