"""Top-of-rack switches: BGP neighbours = the LVS directors, the VIP /32 accepted by a filter.

`configure` reads the running config, plans what the rendered intent (templates/switch/
<platform>.j2) adds or changes, section by section (plan.py), and applies only that, with a
post-check and a rollback per platform (apply.py):

| platform      | rollback                                           | save                   |
|---------------|----------------------------------------------------|------------------------|
| frr           | explicit inverse through vtysh                     | write memory           |
| cisco_ios     | explicit inverse (`no ...`, old values)            | write memory           |
| cisco_nxos    | checkpoint + `rollback running-config checkpoint`  | copy run start         |
| arista_eos    | configure session (abort) + checkpoint restore     | write memory           |
| juniper_junos | `commit confirmed N` + `rollback 1`                | (commit is persistent) |

`check` reads BGP state from the switch (JSON where the platform has it) and returns structured
data: per neighbour its state and prefixes, the VIP /32 route and its next hops, the filter. It
reads over exec channels riding a persistent SSH master when the switch takes a key login
(reads.py), else over netmiko.
Connections: nornir-netmiko with the native device types, `error_pattern` on every config
send, `exit_config_mode()` in a `finally` (DESIGN.md 5).
"""

from __future__ import annotations

import time
from typing import Any

from nornir.core.task import Result, Task

from nornir_k8sha import constants as C
from nornir_k8sha.checkresult import failed, passed
from nornir_k8sha.render import files_for_component
from nornir_k8sha.tasks import host as H
from nornir_k8sha.tasks.switch import reads
from nornir_k8sha.tasks.switch.apply import apply
from nornir_k8sha.tasks.switch.base import ERROR_PATTERN, Attempt, Platform
from nornir_k8sha.tasks.switch.eos import EOS
from nornir_k8sha.tasks.switch.frr import FRR
from nornir_k8sha.tasks.switch.ios import IOS
from nornir_k8sha.tasks.switch.junos import Junos
from nornir_k8sha.tasks.switch.nxos import NXOS
from nornir_k8sha.tasks.switch.plan import Plan, plan
from nornir_k8sha.tasks.switch.state import verdict
from nornir_k8sha.topology import ClusterSpec

PLATFORMS: dict[str, Platform] = {p.name: p for p in (IOS(), FRR(), NXOS(), EOS(), Junos())}
#: Platforms netmiko knows under another device type.
NETMIKO_DEVICE_TYPE = {p.name: p.device_type for p in PLATFORMS.values()
                       if p.device_type != p.name}

__all__ = ["ERROR_PATTERN", "PLATFORMS", "check", "configure", "connect", "intent", "plan_for",
           "platform_of", "wanted_lines"]


def platform_of(task: Task) -> Platform:
    return PLATFORMS[task.host.platform or "cisco_ios"]


def _netmiko(task: Task, *, fresh: bool = False, conn_timeout: float | None = None) -> Any:
    """The host's netmiko connection, opened with the device type netmiko knows the platform
    by (an `frr` switch is driven as `cisco_ios`). `fresh`: drop the old session first (it
    timed out and may still be stuck mid-command). `conn_timeout` bounds opening it (checks)."""
    host = task.host
    if fresh and reads.NETMIKO in host.connections:
        # No graceful logout: it would wait on the stuck session. Drop the transport.
        old = host.connections.pop(reads.NETMIKO)
        try:
            old.connection.paramiko_cleanup()
        except Exception:  # noqa: BLE001 - a dead session may fail to close; it is gone anyway
            pass
    if reads.NETMIKO not in host.connections and (host.platform in NETMIKO_DEVICE_TYPE
                                              or conn_timeout is not None):
        extras = dict(host.get_connection_parameters(reads.NETMIKO).extras or {})
        if conn_timeout is not None:
            extras.update(conn_timeout=conn_timeout, auth_timeout=conn_timeout,
                          banner_timeout=conn_timeout)
        host.open_connection(reads.NETMIKO, task.nornir.config, extras=extras,
                             platform=NETMIKO_DEVICE_TYPE.get(host.platform, host.platform))
    return host.get_connection(reads.NETMIKO, task.nornir.config)


def connect(task: Task) -> None:
    """Open this switch's session now (the deploy opens it while earlier phases run)."""
    _netmiko(task)


def intent(spec: ClusterSpec, name: str) -> str:
    """The rendered config for this switch (templates/switch/<platform>.j2)."""
    return "\n".join(f.content for f in files_for_component(spec, spec.host(name), "switch"))


def wanted_lines(spec: ClusterSpec, name: str) -> list[str]:
    """The rendered config lines for this switch, comments dropped."""
    return [ln.rstrip() for ln in intent(spec, name).splitlines()
            if ln.strip() and not ln.lstrip().startswith(("!", "#"))]


def plan_for(platform: Platform, running: str, spec: ClusterSpec, name: str) -> Plan:
    return plan(running, intent(spec, name), platform.syntax, name)


def configure(task: Task, spec: ClusterSpec, *, dry_run: bool | None = None,
              postcheck_timeout: float = C.SWITCH_POSTCHECK_TIMEOUT,
              timeout: float = C.SWITCH_COMMAND_TIMEOUT) -> Result:
    """Apply what the intent adds or changes; the diff is running vs running + intent. A dry
    run reads the running config and sends nothing else."""
    H.honour_dry_run(task, dry_run)
    platform = platform_of(task)
    conn = _netmiko(task)
    the_plan = plan_for(platform, platform.running(conn, timeout), spec, task.host.name)
    if not the_plan.changed:
        return Result(host=task.host, changed=False, diff="", result="in sync")
    summary = f"{len(the_plan.edits)} change(s), {len(the_plan.commands)} line(s) to send"
    if task.is_dry_run():
        return Result(host=task.host, changed=True, diff=the_plan.diff,
                      result=f"{summary}; rollback: {platform.rollback_mechanism}")
    run = Attempt(run_id=time.strftime("%Y%m%d%H%M%S"), plan=the_plan, timeout=timeout)
    outcome = apply(platform, conn, run, lambda: _netmiko(task, fresh=True),
                    postcheck_timeout=postcheck_timeout)
    return Result(host=task.host, changed=outcome.applied,
                  failed=not outcome.ok, diff=the_plan.diff,
                  result=f"{summary}; {outcome.message}")


def check(task: Task, spec: ClusterSpec) -> Result:
    """BGP as this switch sees it (read-only): each expected neighbour Established with its
    prefix count, the VIP /32 received and installed via a director, and a filter that takes
    nothing but the VIP. `result` is a CheckResult whose values are state.verdict's dict
    (neighbors, vip_route, filter, platform); opening the session is bounded by
    CHECK_TIMEOUT_S. The reads ride a persistent SSH master when the switch takes a key
    login (reads.py)."""
    start = time.monotonic()
    platform = platform_of(task)
    conn = reads.session(task, lambda: _netmiko(task, conn_timeout=C.CHECK_TIMEOUT_S),
                         C.CHECK_TIMEOUT_S)
    peers = [str(p.address) for p in spec.switch_peers(spec.host(task.host.name))]
    running_text, neighbors, route = reads.read_state(conn, platform, spec.vip)
    running = platform.parse(running_text)
    data = verdict(neighbors, route, platform.filter_state(running, spec.vip, peers), peers,
                   spec.vip, spec.settings.bgp.announce_vip)
    data["platform"] = platform.name
    ok, message = data.pop("ok"), data.pop("message")
    res = (passed if ok else failed)(task.host.name, message, start, **data)
    return Result(host=task.host, result=res, failed=not res.ok)
