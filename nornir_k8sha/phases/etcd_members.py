"""etcd-members: after the control plane, the apiservers' `--etcd-servers` follow the
inventory's etcd members (one master at a time), then the members that left the inventory are
removed from the running cluster, one at a time (`tasks/etcd_scale.py`). Nothing to do: one
read of each master's apiserver manifest and nothing else."""

from __future__ import annotations

import time

from nornir_k8sha import constants as C
from nornir_k8sha.deploy import DeployContext
from nornir_k8sha.phases.etcd import OBSERVED, membership
from nornir_k8sha.report import HostOutcome
from nornir_k8sha.tasks import etcd_scale

#: The report's row for the cluster's kubeadm-config ConfigMap (not a host).
KUBEADM_CONFIG = "kubeadm-config"


class EtcdMembers:
    name = "etcd-members"
    title = "etcd members: apiservers' endpoints, removals"
    depends_on = ("etcd", "control-plane")

    def hosts(self, ctx: DeployContext) -> list[str]:
        return ctx.hosts_for((C.ROLE_MASTERS,))

    def should_run(self, ctx: DeployContext) -> str | None:
        return None

    def run(self, ctx: DeployContext, hosts: list[str]) -> list[HostOutcome]:
        start = time.monotonic()
        outcomes = {h: HostOutcome(h, "ok", message="etcd endpoints as in the inventory")
                    for h in hosts}
        stale = {m: v for m, v in etcd_scale.stale_apiservers(ctx.nr, ctx.spec).items()
                 if m in outcomes}
        plan = None
        first = ctx.shared.get("etcd_plan")
        if "etcd_plan" not in ctx.shared or (first is not None and first.removes):
            ctx.shared.pop(OBSERVED, None)  # the cluster as it is now, after the etcd phase
            plan = membership(ctx)
        removes = plan.removes if plan is not None and not plan.problem else []
        if ctx.limit is not None and removes:
            return [*outcomes.values(), *(HostOutcome(r, "skipped", message="not removed under "
                                                      "--limit: run deploy without it") for r in
                                          removes)]
        if ctx.dry_run:
            for m, was in stale.items():
                outcomes[m] = HostOutcome(m, "changed", message=f"would point kube-apiserver "
                                          f"at {','.join(ctx.spec.etcd_endpoints())} (was {was})")
            return [*outcomes.values(), *(HostOutcome(r, "changed", message="would remove this "
                                                      "etcd member") for r in removes)]
        said: list[str] = []
        extra: list[HostOutcome] = []
        try:
            if stale and etcd_scale.point_kubeadm_config(ctx.spec, ctx.state_dir, ctx.http):
                extra.append(HostOutcome(KUBEADM_CONFIG, "changed", message="etcd endpoints "
                                         f"set to {','.join(ctx.spec.etcd_endpoints())} (new "
                                         "control-plane joins read them)"))
            took = etcd_scale.point_apiservers(ctx.nr, ctx.spec, ctx.state_dir, stale,
                                               say=said.append, transport=ctx.http)
        except Exception as exc:  # noqa: BLE001 - the master it stopped at fails, named
            return [*self._failed(outcomes, stale, said, exc), *extra]
        for m, seconds in took.items():
            outcomes[m] = HostOutcome(m, "changed", message=next(
                line for line in said if line.startswith(f"{m}:")), duration=seconds)
        if plan is not None and plan.problem and plan.removes:
            return [*outcomes.values(), *extra, HostOutcome(plan.removes[0], "failed",
                                                            message=plan.problem)]
        removed: list[HostOutcome] = []
        if removes:
            said.clear()
            try:
                after = etcd_scale.shrink(ctx.nr, ctx.spec, ctx.state_dir, plan,
                                          say=said.append, transport=ctx.http)
            except Exception as exc:  # noqa: BLE001 - named on the member it stopped at
                done = [r for r in removes if any(x.startswith(f"{r} removed") for x in said)]
                removed = [HostOutcome(r, "changed" if r in done else "failed",
                                       message="removed" if r in done else
                                       f"{type(exc).__name__}: {exc}") for r in removes]
                return [*outcomes.values(), *extra, *removed]
            for r in removes:
                if r not in after:
                    removed.append(HostOutcome(r, "ok", message="not a member any more"))
                    continue
                lines = [x for x in said if x.startswith(f"{r}:") or f"member {r} " in x
                         or x.startswith(f"{r} led")]
                removed.append(HostOutcome(r, "changed", message="; ".join(
                    [*lines, f"etcd now {after[r]}"])))
        for o in outcomes.values():
            if not o.duration:
                o.duration = time.monotonic() - start
        return [*outcomes.values(), *extra, *removed]

    @staticmethod
    def _failed(outcomes: dict[str, HostOutcome], stale: dict[str, str], said: list[str],
                exc: Exception) -> list[HostOutcome]:
        done = {line.split(":", 1)[0] for line in said}
        for m in stale:
            if m in done:
                outcomes[m] = HostOutcome(m, "changed", message="kube-apiserver repointed")
            else:
                outcomes[m] = HostOutcome(m, "failed", message=f"{type(exc).__name__}: {exc}")
        return list(outcomes.values())
