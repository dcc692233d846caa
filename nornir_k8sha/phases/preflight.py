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
        elif clock_surely_off(skew, facts.get("clock_round_trip_s") or 0.0,
                              ctx.spec.settings.ntp_max_skew_s):
            problems.append(f"clock skew {abs(skew):.1f}s > {ctx.spec.settings.ntp_max_skew_s}s")
        if problems:
            return Result(host=task.host, failed=True, result="; ".join(problems))
        return Result(host=task.host, result=f"{facts.get('os', '?')}, {facts.get('cpus', '?')} "
                      f"CPU, {facts.get('memory_mb', '?')} MB")


def clock_surely_off(skew: float, round_trip: float, limit: float) -> bool:
    """Whether the host's clock is off by more than `limit` whatever the round trip hid: the
    host read its clock somewhere inside the round trip, so the skew measured at its midpoint
    is known to +/- half of it (as NTP reasons). Why: a controller starved of CPU (many key
    exchanges at once) took seconds for a round trip and failed hosts whose clocks were fine."""
    return abs(skew) - round_trip / 2 > limit
