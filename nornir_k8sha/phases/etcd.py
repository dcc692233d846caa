"""etcd: certificates, config and unit on every member, started together; wait for quorum.

A new cluster (nothing observed running) starts its seed first and the others once it serves
(`etcd.StartOrder`).

On a RUNNING cluster (`etcd_scale.observe` finds one) the members it has keep running (a change
of bootstrap-only lines restarts nothing) and each member new to the inventory joins as a
learner, one at a time (`etcd_scale.grow`). Members that left the inventory are removed later,
after the apiservers stopped using them (the `etcd-members` phase).
"""

from __future__ import annotations

from nornir.core.task import Result, Task

from nornir_k8sha import constants as C
from nornir_k8sha.deploy import DeployContext, NornirPhase
from nornir_k8sha.report import HostOutcome
from nornir_k8sha.tasks import etcd, etcd_scale
from nornir_k8sha.topology import EtcdMembershipPlan

#: ctx.shared key: the running cluster as observed before anything was touched (the deploy
#: command observes it once to refuse a change that breaks quorum; None: nothing runs).
OBSERVED = "etcd_observed"
#: ctx.shared key: the order in which a new cluster's members start (etcd.StartOrder)
START_ORDER = "etcd_start_order"


def membership(ctx: DeployContext) -> EtcdMembershipPlan | None:
    """The change from the running cluster to the inventory's members; None on a fresh one."""
    if OBSERVED not in ctx.shared:
        ctx.shared[OBSERVED] = etcd_scale.observe(ctx.spec, ctx.state_dir, ctx.http)
    seen = ctx.shared[OBSERVED]
    return None if seen is None else seen.plan(ctx.spec)


class EtcdPhase(NornirPhase):
    name = "etcd"
    title = "etcd"
    roles = (C.ROLE_ETCD,)
    depends_on = ("pki",)

    def task(self, task: Task, ctx: DeployContext) -> Result:
        plan = ctx.shared.get("etcd_plan")
        if plan is None:
            order = ctx.shared.get(START_ORDER)
            try:
                return etcd.configure(task, ctx.spec, ctx.state_dir, order=order)
            finally:
                if order is not None and task.host.name == order.seed:
                    order.seed_ended.set()
        mode = "joining" if task.host.name in plan.adds else "running"
        return etcd.configure(task, ctx.spec, ctx.state_dir, mode=mode)

    def run(self, ctx: DeployContext, hosts: list[str]) -> list[HostOutcome]:
        plan = membership(ctx)
        if plan is not None and plan.problem:
            return [HostOutcome(h, "failed", message=plan.problem) for h in hosts]
        if plan is not None and set(plan.adds) - set(hosts):
            left_out = sorted(set(plan.adds) - set(hosts))
            return [HostOutcome(h, "failed", message=f"new etcd member(s) {', '.join(left_out)} "
                                "left out by --limit: members join only with the whole etcd "
                                "group in the run") for h in hosts]
        ctx.shared["etcd_plan"] = plan
        if plan is None and hosts:  # a new cluster: the seed starts first (etcd.StartOrder)
            ctx.shared[START_ORDER] = etcd.StartOrder(ctx.nr, ctx.spec, hosts)
        outcomes = super().run(ctx, hosts)
        if ctx.dry_run or all(o.status == "failed" for o in outcomes):
            for o in outcomes:
                if plan is not None and o.host in plan.adds and o.status != "failed":
                    o.status, o.message = "changed", "would join as a learner, then be promoted"
            return outcomes
        by_host = {o.host: o for o in outcomes}
        seen = ctx.shared.get(OBSERVED)
        if plan is not None and (plan.adds or (seen is not None and seen.learners)):
            if any(by_host[h].status == "failed" for h in plan.adds if h in by_host):
                for h in plan.adds:
                    if h in by_host and by_host[h].status != "failed":
                        by_host[h].status = "failed"
                        by_host[h].message = "not joined: another new member failed first"
                return outcomes
            self._grow(ctx, plan, by_host)
            return outcomes
        try:
            etcd.wait_for_quorum(ctx.spec, ctx.state_dir, transport=ctx.http)
        except TimeoutError as exc:
            for o in outcomes:
                if o.status != "failed":
                    o.status, o.message = "failed", str(exc)
        return outcomes

    @staticmethod
    def _grow(ctx: DeployContext, plan: EtcdMembershipPlan,
              by_host: dict[str, HostOutcome]) -> None:
        """The new members join one at a time; each one's outcome says the cluster after it."""
        said: list[str] = []
        try:
            after = etcd_scale.grow(ctx.nr, ctx.spec, ctx.state_dir, plan, say=said.append,
                                    transport=ctx.http)
        except Exception as exc:  # noqa: BLE001 - the member it stopped at fails, named
            joined = [h for h in plan.adds if any(line.startswith(f"{h} joined")
                                                  for line in said)]
            for h in plan.adds:
                if h not in joined and h in by_host:
                    by_host[h].status = "failed"
                    by_host[h].message = f"{type(exc).__name__}: {exc}"
            return
        for h, summary in zip(plan.adds, after, strict=True):
            if h in by_host:
                by_host[h].status = "changed"
                by_host[h].message = f"joined as a learner, promoted; etcd now {summary}"
