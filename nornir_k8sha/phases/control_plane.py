"""control-plane: prepare every master, place the PKI, `kubeadm init` once, then join the other
masters one at a time with join material minted by ANY initialised master."""

from __future__ import annotations

import time

from nornir.core.task import MultiResult, Result, Task

from nornir_k8sha import constants as C
from nornir_k8sha.checks import CheckContext
from nornir_k8sha.deploy import DeployContext, NornirPhase, run_task
from nornir_k8sha.report import HostOutcome, fold_step, outcomes_from_nornir
from nornir_k8sha.tasks import haproxy, harbor
from nornir_k8sha.tasks import kubeadm as K

#: How long joins wait for every HAProxy to forward to an apiserver (rise x inter is ~1 s).
HAPROXY_FORWARDS_TIMEOUT = 30.0


def prepare_master(task: Task, ctx: DeployContext) -> Result:
    results = [
        K.prepare_node(task, ctx.spec),
        K.place_control_plane_pki(task, ctx.spec, ctx.state_dir),
        harbor.trust_registry(task, ctx.spec, ctx.state_dir),
    ]
    changed = [str(r.result) for r in results if r.changed]
    return Result(host=task.host, changed=bool(changed), diff="\n".join(r.diff or "" for r in
                                                                        results).strip(),
                  result="; ".join(changed) or "prepared")


def wait_until_joinable(ctx: DeployContext, timeout: float = HAPROXY_FORWARDS_TIMEOUT) -> None:
    """Before a join: the API answers through the VIP (`kubeadm.wait_for_api`), and every
    HAProxy node has an apiserver backend UP. The VIP answering once proves one HAProxy: IPVS
    may send the joiner to the other, which may not have counted its `rise` good checks of a
    freshly initialised apiserver yet (the joiner then reads cluster-info from a closed
    connection). A node whose stats page cannot be read is not waited for: the join says what
    it meets."""
    K.wait_for_api(ctx.spec, ctx.state_dir, transport=ctx.http)
    cx = CheckContext(ctx.spec, ctx.nr, ctx.state_dir, ctx.http)
    nodes = ctx.spec.role(C.ROLE_HAPROXY)
    deadline = time.monotonic() + timeout
    while nodes and time.monotonic() < deadline:
        found = cx.run(haproxy.check, nodes, transport=ctx.http)
        if not any(r.values.get("up") == [] for r in found.values()):
            return
        time.sleep(0.2)


def _initialised(task: Task) -> Result:
    return Result(host=task.host, result=K.is_control_plane_initialised(task))


def _ok(multi: MultiResult | None) -> bool:
    return multi is not None and not multi.failed


class ControlPlane(NornirPhase):
    """Several steps, each a `run_task` over some of the hosts (see `run`)."""

    name = "control-plane"
    title = "control plane (kubeadm)"
    depends_on = ("etcd", "lb", "pki")
    roles = (C.ROLE_MASTERS,)

    def run(self, ctx: DeployContext, hosts: list[str]) -> list[HostOutcome]:
        started = {h: time.monotonic() for h in hosts}
        outcomes = {o.host: o for o in outcomes_from_nornir(
            run_task(ctx, hosts, lambda t: prepare_master(t, ctx), "prepare"), {})}
        ready = [h for h in hosts if outcomes[h].status != "failed"]
        all_masters = [h.name for h in ctx.spec.role(C.ROLE_MASTERS)]
        state = run_task(ctx, all_masters, _initialised, "initialised?")
        initialised = [h for h in all_masters if _ok(state.get(h)) and state[h][0].result]

        first = ctx.spec.first_master.name
        if not initialised and first in ready:
            res = run_task(ctx, [first], lambda t: K.init_first_master(t, ctx.spec), "init")
            fold_step(outcomes[first], res[first])
            if not res[first].failed and not ctx.dry_run:
                initialised.append(first)
        joiners = [h for h in ready if h not in initialised and outcomes[h].status != "failed"]
        if joiners and initialised and not ctx.dry_run:
            wait_until_joinable(ctx)
        for host in joiners:
            if not initialised and not ctx.dry_run:
                outcomes[host].status = "failed"
                outcomes[host].message = (f"not joined: no initialised master ({first} could "
                                          "not be initialised)")
                continue
            material = None if ctx.dry_run else self._mint(ctx, initialised)
            res = run_task(ctx, [host], lambda t, m=material: K.join_node(
                t, ctx.spec, m, control_plane=True), "join")
            fold_step(outcomes[host], res[host])
            if not res[host].failed and not ctx.dry_run:
                initialised.append(host)
        if initialised and not ctx.dry_run:
            fetch = run_task(ctx, initialised[:1],
                             lambda t: K.fetch_admin_kubeconfig(t, ctx.spec, ctx.state_dir),
                             "admin.conf")
            ctx.shared["admin_kubeconfig"] = fetch[initialised[0]][0].result
        ctx.shared["initialised_masters"] = initialised
        for h, o in outcomes.items():
            o.duration = time.monotonic() - started[h]
        return list(outcomes.values())

    @staticmethod
    def _mint(ctx: DeployContext, initialised: list[str], control_plane: bool = True
              ) -> K.JoinMaterial:
        """Join material from the first initialised master that answers."""
        errors = []
        for minter in initialised:
            res = run_task(ctx, [minter], lambda t: K.mint_join_material(
                t, ctx.spec, control_plane=control_plane), "mint")
            if not res[minter].failed:
                return res[minter][0].result
            errors.append(f"{minter}: {res[minter][0].exception}")
        raise RuntimeError("no initialised master could mint join material: " + "; ".join(errors))
