"""How `check` reads a switch: over exec channels riding a persistent SSH master when it can.

A netmiko session logs in afresh in every process (0.3-0.4 s on the lab's switches: the
handshake, then its prompt found and paging turned off), which made the switches the slowest
row of `check`. A switch runs the command of an SSH exec request in its own CLI and answers
with that command's output alone (IOS and IOS-XE, NX-OS, EOS, Junos; a lab switch's login
shell is vtysh, which sshd runs as `vtysh -c COMMAND`). So with a key login the reads ride an
OpenSSH master as netmiko's user, the way `k8sha_ssh` reaches a Linux host (the same plugin,
registered a second time as `k8sha_switch_reads`): the next `check` pays no login at all.

Which session the reads use, in this order:
1. a netmiko session this process has open already (a deploy's network phase): logged in;
2. exec channels, when netmiko logs in with a key and no password (a master runs in
   BatchMode, which cannot type one);
3. otherwise a netmiko login, as before.
Changes (`configure`) always go through netmiko: they need the configuration mode.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from ipaddress import IPv4Address
from typing import Any

from nornir.core.inventory import Host
from nornir.core.task import Task

from nornir_k8sha import constants as C
from nornir_k8sha.budget import BUDGET
from nornir_k8sha.exceptions import CommandFailed
from nornir_k8sha.tasks.switch.base import Platform
from nornir_k8sha.tasks.switch.state import Neighbor, VipRoute
from nornir_k8sha.transport import SWITCH_READS_CONNECTION

NETMIKO = "netmiko"

__all__ = ["ExecReads", "PromptKnown", "exec_login", "read_all", "read_state", "session"]


class PromptKnown:
    """A netmiko session as `check` reads it: each `show` reads up to the prompt netmiko found
    when it logged in, instead of finding it again first (netmiko's default: a bare newline,
    a round trip and its sleeps before every command, ~45 ms each). A check only reads, so the
    prompt does not change between its commands. The prompt is matched as a whole last line
    (the base prompt at a line start, the mode's suffix, `#` or `>`): netmiko's base prompt
    alone is the hostname, which `show running-config` also prints."""

    def __init__(self, conn: Any) -> None:
        self._conn = conn
        self._prompt = rf"(?:^|[\r\n]){re.escape(conn.base_prompt)}[^\r\n]*[#>]\s*$"

    def send_command(self, command: str, **kwargs: Any) -> str:
        return self._conn.send_command(command, expect_string=self._prompt, **kwargs)


class ExecReads:
    """The switch's CLI read one command per exec channel (netmiko's `send_command` shape, so
    a Platform reads through either). A command the switch refuses with a non-zero exit
    status raises CommandFailed naming it."""

    def __init__(self, host: str, transport: Any) -> None:
        self.host = host
        self._transport = transport

    def send_command(self, command: str, read_timeout: float = C.SWITCH_COMMAND_TIMEOUT,
                     **_: Any) -> str:
        res = self._transport.run(command, timeout=read_timeout, check=False)
        if res.exit_code != 0:
            raise CommandFailed(self.host, command, res.exit_code,
                                (res.stderr or res.stdout).strip())
        return res.stdout.replace("\r\n", "\n")


def exec_login(host: Host, connect_timeout: float) -> dict[str, Any] | None:
    """The `k8sha_switch_reads` parameters that reach the switch as netmiko does (its user,
    key, port and host-key checks), or None when netmiko's login is not a key alone."""
    params = host.get_connection_parameters(NETMIKO)
    extras = params.extras or {}
    if params.password or not extras.get("use_keys"):
        return None
    strict = bool(extras.get("ssh_strict", False))  # netmiko's default: accept any host key
    known_hosts = None
    if strict and extras.get("alt_host_keys") and extras.get("alt_key_file"):
        known_hosts = extras["alt_key_file"]
    ours: dict[str, Any] = {"strict_host_key": strict, "shell": False,
                            "connect_timeout": connect_timeout}
    if extras.get("key_file"):
        ours["key_file"] = extras["key_file"]
    if known_hosts:
        ours["known_hosts"] = known_hosts
    return {"hostname": params.hostname, "username": params.username, "password": None,
            "port": int(params.port or extras.get("port") or C.SSH_PORT), "platform": None,
            "extras": ours}


def session(task: Task, open_netmiko: Callable[[], Any], connect_timeout: float) -> Any:
    """What this switch's reads go through (see the module's docstring for the order)."""
    host = task.host
    if NETMIKO in host.connections:
        return PromptKnown(open_netmiko())
    login = exec_login(host, connect_timeout)
    if login is None:
        return PromptKnown(open_netmiko())
    if SWITCH_READS_CONNECTION not in host.connections:
        host.open_connection(SWITCH_READS_CONNECTION, task.nornir.config,
                             default_to_host_attributes=False, **login)
        BUDGET.opened(host.get_connection(SWITCH_READS_CONNECTION, task.nornir.config))
    return ExecReads(host.name, host.get_connection(SWITCH_READS_CONNECTION, task.nornir.config))


def read_state(conn: Any, platform: Platform,
               vip: IPv4Address) -> tuple[str, list[Neighbor], VipRoute]:
    """The switch's running config, BGP neighbours and VIP route: in one exec request where the
    platform's CLI runs several commands per request, else by `read_all`."""
    if isinstance(conn, ExecReads):
        joined = platform.read_in_one_request(conn, vip)
        if joined is not None:
            return joined
    running, neighbors, route = read_all(conn, platform.running, platform.neighbors,
                                         lambda c: platform.vip_route(c, vip))
    return running, neighbors, route


def read_all(conn: Any, *reads: Callable[[Any], Any]) -> list[Any]:
    """What each of `reads` returns from `conn`: side by side over exec requests (a channel
    each: the switch's time is the slowest read, not their sum), one after the other over a
    netmiko session (one terminal). The first read that failed raises."""
    if not isinstance(conn, ExecReads):
        return [read(conn) for read in reads]
    with ThreadPoolExecutor(len(reads)) as pool:
        return [f.result() for f in [pool.submit(read, conn) for read in reads]]
