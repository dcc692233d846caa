"""network: FRR on the LVS directors announces the VIP /32; the ToR switches peer with them."""

from __future__ import annotations

import time
from concurrent.futures import ThreadPoolExecutor
from types import ModuleType

from nornir.core.task import Result, Task

from nornir_k8sha import constants as C
from nornir_k8sha.checks import CheckContext, bgp_sessions, switch_sessions
from nornir_k8sha.deploy import DeployContext, NornirPhase, run_task
from nornir_k8sha.report import HostOutcome
from nornir_k8sha.tasks import frr

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

    def prepare(self, ctx: DeployContext) -> None:
        """Log in to the switches while preflight reads the Linux hosts: a switch session
        (netmiko) takes ~0.5 s to open, as long as a no-op's whole configure."""
        switches = ctx.hosts_for((C.ROLE_SWITCHES,))
        if switches:
            run_task(ctx, switches, _open_session, "connect")

    def run(self, ctx: DeployContext, hosts: list[str]) -> list[HostOutcome]:
        """Configure, then wait (bounded) until every director's sessions are Established and,
        when something changed, every switch has them and the VIP /32 installed (the route
        comes a moment after the session), so the post-checks see a settled BGP rather than a
        session still in OpenSent or a route not yet received.

        The first look at the sessions is taken while the hosts are being configured: when no
        host changed, BGP is as it was then, and sessions Established then need no second look
        (a no-op re-run saves the directors' vtysh round trip, issue 12.3)."""
        waits = not (ctx.dry_run or ctx.limit is not None)
        cx = CheckContext(ctx.spec, ctx.nr, ctx.state_dir, ctx.http)
        with ThreadPoolExecutor(max_workers=1) as early:
            first = early.submit(bgp_sessions, cx) if waits else None
            outcomes = super().run(ctx, hosts)
            seen = first.result() if first is not None else []
        if not waits or any(o.status == "failed" for o in outcomes):
            return outcomes
        bad = {r.target: r.message for r in seen if r.status == "failed"}
        unchanged = all(o.status == "ok" for o in outcomes)
        deadline = time.monotonic() + BGP_SETTLE_TIMEOUT
        while bad or not unchanged:
            bad = _unsettled(cx)
            if not bad or time.monotonic() > deadline:
                break
            time.sleep(1.0)
        for o in outcomes:
            if o.host in bad:
                o.status = "failed"
                o.message = f"{bad[o.host]} (after {BGP_SETTLE_TIMEOUT:.0f}s)"
        return outcomes

    def task(self, task: Task, ctx: DeployContext) -> Result:
        if ctx.spec.host(task.host.name).has_role(C.ROLE_SWITCHES):
            return _switch().configure(task, ctx.spec)
        return frr.configure(task, ctx.spec)


def _switch() -> ModuleType:
    """The switches' task module: it imports netmiko (~30 ms), which a deploy without this
    phase (`--phase lb`, ...) never uses; imported by `prepare`, beside the earlier stages."""
    from nornir_k8sha.tasks import switch  # lazy: start-up, netmiko only when switches are reached
    return switch


def _unsettled(cx: CheckContext) -> dict[str, str]:
    """Host -> what is not settled yet: the directors' sessions (their side) first, then each
    switch's view of them with the VIP /32 (the same checks the post-checks run)."""
    bad = {r.target: r.message for r in bgp_sessions(cx) if r.status == "failed"}
    return bad or {r.target: r.message for r in switch_sessions(cx) if r.status == "failed"}


def _open_session(task: Task) -> Result:
    """Open the switch's session; a switch that cannot be reached is reported by `configure`,
    which tries again."""
    try:
        _switch().connect(task)
    except Exception as exc:  # noqa: BLE001 - the configure step reports it
        return Result(host=task.host, result=f"not connected yet: {type(exc).__name__}")
    return Result(host=task.host, result="connected")
