"""Preflight: facts from every Linux host, compared with what the deploy needs. Read-only."""

from __future__ import annotations

from nornir.core.task import Result, Task

from nornir_k8sha import constants as C
from nornir_k8sha.deploy import DeployContext, NornirPhase
from nornir_k8sha.tasks import host as H


class Preflight(NornirPhase):
    name = "preflight"
    title = "preflight"
    roles = C.LINUX_ROLES

    def task(self, task: Task, ctx: DeployContext) -> Result:
        facts = H.facts(task).result
        problems = []
        skew = facts.get("clock_skew_s")
        if skew is None:
            why = facts.get("errors", {}).get("time") or "no time in its output"
            problems.append(f"clock not read ({why}): its skew cannot be checked")
        elif abs(skew) > ctx.spec.settings.ntp_max_skew_s:
            problems.append(f"clock skew {abs(skew):.1f}s > {ctx.spec.settings.ntp_max_skew_s}s")
        if problems:
            return Result(host=task.host, failed=True, result="; ".join(problems))
        return Result(host=task.host, result=f"{facts.get('os', '?')}, {facts.get('cpus', '?')} "
                      f"CPU, {facts.get('memory_mb', '?')} MB")
