"""post-checks: the `check` sweep at the end of a deploy; a failing check fails the deploy."""

from __future__ import annotations

from nornir_k8sha.checks import run_checks
from nornir_k8sha.deploy import DeployContext
from nornir_k8sha.report import HostOutcome


class PostChecks:
    name = "post-checks"
    title = "post-checks"
    depends_on: tuple[str, ...] = ()
    runs_without_hosts = True  # its "hosts" are the check targets, known after it ran

    def hosts(self, ctx: DeployContext) -> list[str]:
        return []

    def should_run(self, ctx: DeployContext) -> str | None:
        if ctx.dry_run:
            return "dry run"
        if ctx.limit is not None:
            return "--limit given: run `check` for the whole cluster"
        return None

    def run(self, ctx: DeployContext, hosts: list[str]) -> list[HostOutcome]:
        report = run_checks(ctx.spec, ctx.nr, state_dir=ctx.state_dir, transport=ctx.http)
        return [
            HostOutcome(f"{p.name}:{o.host}", o.status, o.duration, o.message)
            for p in report.phases
            for o in p.hosts.values()
        ]
