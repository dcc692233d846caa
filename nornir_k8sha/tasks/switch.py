"""Top-of-rack switches over SSH with netmiko: BGP neighbours = the LVS directors, the VIP /32
accepted by a prefix filter. Native device types (cisco_ios, cisco_nxos, arista_eos,
juniper_junos; FRR with vtysh as login shell answers as cisco_ios), always with an
`error_pattern`, and `exit_config_mode()` in a `finally` (DESIGN.md 5).

Idempotence: the wanted lines are compared with the running configuration first; only the
missing ones are sent, so a second deploy sends nothing.
"""

from __future__ import annotations

from nornir.core.task import Result, Task

from nornir_k8sha.tasks import host as H
from nornir_k8sha.topology import ClusterSpec

#: What the platforms print when a config line is refused.
ERROR_PATTERN = r"(% ?Invalid|% ?Incomplete|% ?Ambiguous|% ?Unknown|syntax error|error:)"
#: How to read the running configuration, per platform.
SHOW_RUNNING = {
    "cisco_ios": "show running-config",
    "cisco_nxos": "show running-config",
    "arista_eos": "show running-config",
    "juniper_junos": "show configuration | display set",
    "frr": "show running-config",
}
#: Platforms netmiko knows under another device type.
NETMIKO_DEVICE_TYPE = {"frr": "cisco_ios"}


def _netmiko(task: Task):  # noqa: ANN202 - netmiko's BaseConnection
    """The host's netmiko connection, opened with the device type netmiko knows the platform
    by (an `frr` switch is driven as `cisco_ios`)."""
    host = task.host
    if "netmiko" not in host.connections and host.platform in NETMIKO_DEVICE_TYPE:
        host.open_connection("netmiko", task.nornir.config,
                             platform=NETMIKO_DEVICE_TYPE[host.platform])
    return host.get_connection("netmiko", task.nornir.config)


def wanted_lines(spec: ClusterSpec, name: str) -> list[str]:
    """The rendered config lines for this switch (from templates/switch/<platform>.j2)."""
    from nornir_k8sha.render import files_for_component

    lines: list[str] = []
    for f in files_for_component(spec, spec.host(name), "switch"):
        lines.extend(ln.rstrip() for ln in f.content.splitlines()
                     if ln.strip() and not ln.lstrip().startswith(("!", "#")))
    return lines


def missing_lines(wanted: list[str], running: str) -> list[str]:
    """Lines absent from the running config. Context lines (router bgp ...) are kept when any
    line under them is missing, so the sent set stays valid config."""
    present = {ln.strip() for ln in running.splitlines()}
    out: list[str] = []
    context: str | None = None
    context_sent = False
    for line in wanted:
        indented = line.startswith(" ")
        if not indented:
            context, context_sent = line, False
            if line.strip() not in present:
                out.append(line)
                context_sent = True
            continue
        if line.strip() not in present:
            if context and not context_sent:
                out.append(context)
                context_sent = True
            out.append(line)
    return out


def configure(task: Task, spec: ClusterSpec, *, dry_run: bool | None = None) -> Result:
    """Send what is missing of the BGP config; report the lines as the diff."""
    H.honour_dry_run(task, dry_run)
    conn = _netmiko(task)
    platform = task.host.platform or "cisco_ios"
    wanted = wanted_lines(spec, task.host.name)
    running = conn.send_command(SHOW_RUNNING.get(platform, "show running-config"))
    todo = missing_lines(wanted, running)
    diff = "\n".join(f"+{ln}" for ln in todo)
    if not todo or task.is_dry_run():
        return Result(host=task.host, changed=bool(todo), diff=diff,
                      result=f"{len(todo)} line(s) to send" if todo else "in sync")
    try:
        output = conn.send_config_set(todo, error_pattern=ERROR_PATTERN)
        if platform == "juniper_junos":
            conn.commit()
    finally:
        conn.exit_config_mode()
    if platform not in ("juniper_junos",):
        conn.send_command("write memory", read_timeout=30)
    return Result(host=task.host, changed=True, diff=diff, result=output[-500:])


def check(task: Task, spec: ClusterSpec) -> Result:
    """BGP sessions and the VIP /32 as this switch sees them (read-only)."""
    conn = _netmiko(task)
    summary = conn.send_command("show ip bgp summary")
    route = conn.send_command(f"show ip route {spec.vip}/32")
    return Result(host=task.host, result={"summary": summary, "vip_route": route})
