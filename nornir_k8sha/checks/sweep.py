"""The rows of the `check` sweep and the runner that takes them all at once.

A row is `(name, title, fn)` with `fn(CheckContext) -> list[CheckResult]`. Host-side checks run
as Nornir tasks on the hosts of their role (`CheckContext.run`), cluster-wide ones are plain
calls; every row runs in its own thread, so the sweep takes as long as its slowest row.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from types import ModuleType
from typing import TYPE_CHECKING, Any

import httpx
from nornir.core import Nornir

from nornir_k8sha import budget
from nornir_k8sha import constants as C
from nornir_k8sha.checkresult import CheckResult, skipped
from nornir_k8sha.checks.summary import summarise
from nornir_k8sha.clients import error_text
from nornir_k8sha.report import HostOutcome, RunReport, checks_table
from nornir_k8sha.tasks import (
    apiserver,
    certificates,
    etcd,
    frr,
    haproxy,
    harbor,
    keepalived,
)
from nornir_k8sha.topology import ClusterSpec, HostSpec

if TYPE_CHECKING:
    from rich.console import Console


@dataclass
class CheckContext:
    """What every row needs: the spec, a Nornir on the same inventory, the state dir and
    the HTTP transport seam."""

    spec: ClusterSpec
    nr: Nornir
    state_dir: Path
    #: Where HTTP checks send their requests: None for the network, httpx.MockTransport in tests.
    transport: httpx.BaseTransport | None = None

    def run(self, task: Callable[..., Any], hosts: Iterable[HostSpec],
            **kwargs: Any) -> dict[str, CheckResult]:
        """A check task on `hosts` (in parallel); host name → its CheckResult.

        A task that raised (host unreachable, command failed) becomes a failed result naming
        the error. Checks only read, so a failing one must not make later deploy steps skip
        the host: the hosts it marked failed in Nornir are unmarked again.
        """
        names = [h.name for h in hosts]
        if not names:
            return {}
        wanted = set(names)
        failed_before = set(self.nr.data.failed_hosts)
        results = self.nr.filter(filter_func=lambda h: h.name in wanted).run(
            task=task, spec=self.spec, on_failed=True, **kwargs)
        for name in wanted - failed_before:
            self.nr.data.failed_hosts.discard(name)
        out: dict[str, CheckResult] = {}
        for name in names:
            first = results[name][0]
            if isinstance(first.result, CheckResult):
                out[name] = first.result
            elif first.exception is not None:
                out[name] = CheckResult(name, "failed", error_text(first.exception))
            else:
                out[name] = CheckResult(name, "failed", str(first.result)[:200])
        return out


Row = Callable[[CheckContext], list[CheckResult]]
SweepRow = tuple[str, str, Row]


def etcd_members(cx: CheckContext) -> list[CheckResult]:
    members = cx.run(etcd.check, cx.spec.role(C.ROLE_ETCD), state_dir=cx.state_dir,
                     transport=cx.transport)
    return etcd.assess(cx.spec, members)


def vip_and_ipvs(cx: CheckContext) -> list[CheckResult]:
    directors = cx.run(keepalived.check, cx.spec.role(C.ROLE_LVS))
    return [*keepalived.assess(directors), keepalived.check_vip_tcp(cx.spec)]


def haproxy_backends(cx: CheckContext) -> list[CheckResult]:
    return list(cx.run(haproxy.check, cx.spec.role(C.ROLE_HAPROXY),
                       transport=cx.transport).values())


def bgp_sessions(cx: CheckContext) -> list[CheckResult]:
    """The directors' sessions to the switches (also the network phase's settle wait)."""
    speakers = [h for h in cx.spec.role(C.ROLE_LVS) if cx.spec.announces_vip(h)]
    if not speakers:
        return [skipped("-", "no switches / VIP announcement off")]
    return list(cx.run(frr.check, speakers).values())


def switch_sessions(cx: CheckContext) -> list[CheckResult]:
    """Every switch's side of BGP: neighbours Established, the VIP /32 installed via a
    director, a prefix filter that takes nothing else (over the switch's own CLI)."""
    switches = cx.spec.role(C.ROLE_SWITCHES)
    if not switches:
        return [skipped("-", "no switches in the inventory")]
    return list(cx.run(_switch_tasks().check, switches).values())


def _switch_tasks() -> ModuleType:
    """The switches' task module, with netmiko (~30 ms): imported only for an inventory with
    switches, by `run_checks` before the rows start (in a row's own thread the import competed
    with the other rows for the interpreter and ended ~0.4 s later on the lab's two cores)."""
    from nornir_k8sha.tasks import switch  # lazy: start-up, netmiko only with switches
    return switch


def _control_plane_skip(cx: CheckContext) -> list[CheckResult] | None:
    if apiserver.has_control_plane(cx.state_dir):
        return None
    return [skipped("-", "no control plane yet: run `deploy` (admin.conf is not in the state "
                         "dir)")]


def apiservers(cx: CheckContext) -> list[CheckResult]:
    skip = _control_plane_skip(cx)
    if skip:
        return skip
    with ThreadPoolExecutor(max_workers=1) as other:  # the VIP while the masters answer
        vip = other.submit(apiserver.check_vip, cx.spec, cx.state_dir, transport=cx.transport)
        masters = cx.run(apiserver.check, cx.spec.role(C.ROLE_MASTERS),
                         state_dir=cx.state_dir, transport=cx.transport)
        return [*masters.values(), vip.result()]


def nodes(cx: CheckContext) -> list[CheckResult]:
    return _control_plane_skip(cx) or apiserver.check_nodes(cx.spec, cx.state_dir,
                                                            transport=cx.transport)


def leases(cx: CheckContext) -> list[CheckResult]:
    return _control_plane_skip(cx) or apiserver.check_leases(cx.spec, cx.state_dir,
                                                             transport=cx.transport)


def registry_from_nodes(cx: CheckContext) -> list[CheckResult]:
    return _control_plane_skip(cx) or list(
        cx.run(harbor.check, cx.spec.kubernetes_nodes()).values())


def certificate_expiry(cx: CheckContext) -> list[CheckResult]:
    return certificates.check(cx.state_dir)


#: Every row of `check`, in display order.
CHECKS: list[SweepRow] = [
    ("etcd", "etcd members (mTLS)", etcd_members),
    ("vip", "VIP and IPVS", vip_and_ipvs),
    ("haproxy", "HAProxy backends", haproxy_backends),
    ("bgp", "BGP to the switches", bgp_sessions),
    ("switches", "switches (their side)", switch_sessions),
    ("apiserver", "kube-apiserver", apiservers),
    ("nodes", "nodes", nodes),
    ("leases", "leader leases", leases),
    ("registry", "registry from nodes", registry_from_nodes),
    ("certificates", "certificate expiry", certificate_expiry),
]


def run_checks(spec: ClusterSpec, nr: Nornir, *, checks: list[SweepRow] | None = None,
               state_dir: Path | None = None,
               transport: httpx.BaseTransport | None = None) -> RunReport:
    """Run every row at once; one RunReport phase per row, one outcome per target."""
    cx = CheckContext(spec, nr, state_dir or spec.state_dir, transport)
    report = RunReport("check", spec.name)
    start = time.monotonic()
    rows = checks if checks is not None else CHECKS
    if spec.role(C.ROLE_SWITCHES) and any(fn is switch_sessions for _, _, fn in rows):
        _switch_tasks()
    with budget.measured(nr, spec.settings.ssh.max_connections) as resources, \
            ThreadPoolExecutor(max_workers=len(rows) or 1) as pool:
        futures = [(name, title, pool.submit(_guarded, fn, cx)) for name, title, fn in rows]
        found = {name: fut.result() for name, _, fut in futures}
    if checks is None:  # the whole sweep: say first what it adds up to
        _add_phase(report, "summary", "cluster", summarise(spec, found))
    for name, title, _ in futures:
        _add_phase(report, name, title, found[name])
    report.duration = time.monotonic() - start
    report.resources = resources
    return report


def _add_phase(report: RunReport, name: str, title: str, results: list[CheckResult]) -> None:
    phase = report.add_phase(name, title, [])
    for r in results:
        phase.hosts[r.target] = HostOutcome(r.target, r.status, r.duration, r.message,
                                            values=r.values)
    phase.duration = max((r.duration for r in results), default=0.0)


def _guarded(fn: Row, cx: CheckContext) -> list[CheckResult]:
    start = time.monotonic()
    try:
        return fn(cx)
    except Exception as exc:  # a broken check is a failed check, never a traceback
        return [CheckResult("-", "failed", f"{type(exc).__name__}: {error_text(exc)}",
                            duration=time.monotonic() - start)]


def show_checks(report: RunReport, console: Console) -> None:
    """The check table (`report.checks_table`) on `console`, at its width."""
    console.print(checks_table(report, console.width))
