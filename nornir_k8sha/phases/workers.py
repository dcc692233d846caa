"""workers: prepare every worker and trust the registry, then join them all in parallel with
one token minted by any initialised master."""

from __future__ import annotations

import time

from nornir.core.task import Result, Task

from nornir_k8sha import constants as C
from nornir_k8sha.deploy import DeployContext, NornirPhase, run_task
from nornir_k8sha.exceptions import NodesNotReady
from nornir_k8sha.phases.control_plane import ControlPlane, wait_until_joinable
from nornir_k8sha.report import HostOutcome, fold_step, outcomes_from_nornir
from nornir_k8sha.tasks import harbor
from nornir_k8sha.tasks import kubeadm as K


def prepare_worker(task: Task, ctx: DeployContext) -> Result:
    results = [K.prepare_node(task, ctx.spec), harbor.trust_registry(task, ctx.spec,
                                                                     ctx.state_dir)]
    changed = [str(r.result) for r in results if r.changed]
    return Result(host=task.host, changed=bool(changed), result="; ".join(changed) or "prepared")


class Workers(NornirPhase):
    """Several steps, each a `run_task` over some of the hosts (see `run`)."""

    name = "workers"
    title = "workers (kubeadm join)"
    depends_on = ("control-plane",)
    roles = (C.ROLE_WORKERS,)

    def run(self, ctx: DeployContext, hosts: list[str]) -> list[HostOutcome]:
        start = time.monotonic()
        outcomes = {o.host: o for o in outcomes_from_nornir(
            run_task(ctx, hosts, lambda t: prepare_worker(t, ctx), "prepare"), {})}
        ready = [h for h in hosts if outcomes[h].status != "failed"]
        joined = run_task(ctx, ready, lambda t: Result(host=t.host, result=K.is_joined(t)),
                          "joined?")
        todo = [h for h in ready if not joined[h].failed and not joined[h][0].result]
        if todo:
            material = None
            if not ctx.dry_run:
                masters = ctx.shared.get("initialised_masters") or [
                    h.name for h in ctx.spec.role(C.ROLE_MASTERS)]
                wait_until_joinable(ctx)
                material = ControlPlane._mint(ctx, masters, control_plane=False)
            res = run_task(ctx, todo, lambda t: K.join_node(t, ctx.spec, material,
                                                            control_plane=False, joined=False),
                           "join")
            for h in todo:
                fold_step(outcomes[h], res[h])
        if not ctx.dry_run and ctx.limit is None:
            try:
                K.wait_for_nodes(ctx.spec, ctx.state_dir, transport=ctx.http)
            except NodesNotReady as exc:
                for o in outcomes.values():
                    if o.status != "failed" and o.host in exc.missing:
                        o.status, o.message = "failed", f"not a Ready node: {exc}"
        for o in outcomes.values():
            o.duration = time.monotonic() - start
        return list(outcomes.values())
