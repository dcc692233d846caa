"""What every switch platform does, and the defaults of the Cisco-IOS-like ones.

A platform module (ios, frr, nxos, eos, junos) subclasses `Platform` and says: how its config is
written (`syntax`), how to read BGP state, how a change is opened, committed, confirmed and
rolled back, and how the result is saved. The apply flow itself (apply.py) is one for all.

The default rollback is the explicit inverse: read the running config again and send what takes
it back to the config read before the change (`no` of what was added, old values of what was
changed). It works on any CLI that takes `no`, whatever part of the change went in.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from ipaddress import IPv4Address
from typing import Any, ClassVar

from nornir_k8sha import constants as C
from nornir_k8sha.tasks.switch.plan import Plan, restore_commands
from nornir_k8sha.tasks.switch.state import (
    IMPORT_POLICY,
    PREFIX_LIST,
    FilterState,
    Neighbor,
    VipRoute,
    leaf_paths,
    loads,
)
from nornir_k8sha.tasks.switch.tree import Node, Syntax, parse

#: What the platforms print when a config line is refused (any `% ...` but a warning, Junos'
#: `syntax error` / `error:`, NX-OS' `ERROR:`); netmiko matches it line by line (re.M).
ERROR_PATTERN = r"^\s*% ?(?!Warning)\S|syntax error|^\s*error:|^ERROR:|unknown command"

#: Cisco-style single-valued settings: a new value replaces the line (IOS, FRR, NX-OS, EOS).
CISCO_SINGLE_VALUED = tuple(re.compile(p) for p in (
    r"^(neighbor \S+ (?:remote-as|description|timers connect|timers|maximum-prefix"
    r"|maximum-routes|update-source|ebgp-multihop|advertisement-interval))\b",
    r"^(neighbor \S+ route-map) \S+ (in|out)$",
    r"^((?:bgp )?router-id)\b",
    r"^(timers bgp)\b",
    r"^(remote-as|description|timers|maximum-prefix|update-source|ebgp-multihop"
    r"|advertisement-interval)\b",
    r"^(route-map) \S+ (in|out)$",
    r"^(ip prefix-list \S+ seq \d+)\b",
))
CISCO_SECTIONS = tuple(re.compile(p) for p in (
    r"^router ", r"^route-map \S+ (permit|deny)", r"^interface ", r"^address-family ", r"^vrf ",
))


@dataclass
class Attempt:
    """One apply on one switch: its id (names checkpoints and sessions), plan and limits."""

    run_id: str
    plan: Plan
    timeout: float = C.SWITCH_COMMAND_TIMEOUT

    @property
    def name(self) -> str:
        """The name of this change's checkpoint / configuration session on the switch."""
        return f"k8sha-{self.run_id}"


class Platform:
    """A switch platform. Subclasses set the class attributes and override what differs."""

    name: ClassVar[str] = ""
    #: netmiko's device type for this platform.
    device_type: ClassVar[str] = ""
    syntax: ClassVar[Syntax]
    show_running: ClassVar[str] = "show running-config"
    #: How a failed change is undone (reported with the result and in docs).
    rollback_mechanism: ClassVar[str] = "explicit inverse of the change (no ...)"
    #: Command that saves the running config; None when a commit is already persistent.
    save_command: ClassVar[str | None] = "write memory"
    #: Command that opens configuration mode; None: netmiko's default for the device type.
    config_command: ClassVar[str | None] = None
    #: True when each line takes effect as it is sent (no candidate config to throw away).
    live_on_load: ClassVar[bool] = True
    #: Resets one BGP session ({address}) and, with it, the back-off that holds it Idle.
    clear_command: ClassVar[str] = "clear ip bgp {address}"

    # --- reading --------------------------------------------------------------------------
    def running(self, conn: Any, timeout: float = C.SWITCH_COMMAND_TIMEOUT) -> str:
        return conn.send_command(self.show_running, read_timeout=timeout)

    #: The BGP summary and VIP route commands ({vip}) and their parsers (JSON platforms).
    summary_command: ClassVar[str] = ""
    route_command: ClassVar[str] = ""

    @staticmethod
    def parse_summary(doc: Any) -> list[Neighbor]:
        raise NotImplementedError

    @staticmethod
    def parse_route(doc: Any, vip: IPv4Address) -> VipRoute:
        raise NotImplementedError

    def neighbors(self, conn: Any) -> list[Neighbor]:
        return self.parse_summary(loads(conn.send_command(self.summary_command)))

    def vip_route(self, conn: Any, vip: IPv4Address) -> VipRoute:
        return self.parse_route(loads(conn.send_command(self.route_command.format(vip=vip))),
                                vip)

    def read_in_one_request(self, conn: Any, vip: IPv4Address) -> \
            tuple[str, list[Neighbor], VipRoute] | None:
        """The running config, BGP neighbours and VIP route from one exec request, or None:
        the IOS-like CLIs run an exec request as one command, so each read is a request."""
        return None

    def filter_state(self, running: list[Node], vip: IPv4Address,
                     peers: list[str]) -> FilterState:
        """The VIP filter as configured: the prefix list permits the VIP /32 and nothing else,
        and every peer's inbound policy is that filter."""
        paths = leaf_paths(running)
        permits = [ln.split()[-1] for ln in paths
                   if re.match(rf"^ip prefix-list {PREFIX_LIST} (seq \d+ )?permit ", ln)]
        if permits != [f"{vip}/32"]:
            return FilterState(False, f"prefix-list {PREFIX_LIST} permits "
                                      f"{', '.join(permits) or 'nothing'}, not only {vip}/32")
        unfiltered = [p for p in peers if not any(
            f"neighbor {p}" in ln and ln.endswith(f"route-map {IMPORT_POLICY} in")
            for ln in paths)]
        if unfiltered:
            return FilterState(False, f"no inbound {IMPORT_POLICY} on {', '.join(unfiltered)}")
        return FilterState(True, f"only {vip}/32 accepted")

    # --- changing -------------------------------------------------------------------------
    def prepare(self, conn: Any, run: Attempt) -> None:
        """Before the first line: take what the rollback will need (checkpoint, ...)."""

    def load(self, conn: Any, run: Attempt) -> str:
        """Send the planned lines in configuration mode; raises on the first refused line."""
        extra = {"config_mode_command": self.config_command} if self.config_command else {}
        return conn.send_config_set(run.plan.commands, error_pattern=ERROR_PATTERN,
                                    read_timeout=run.timeout, exit_config_mode=False, **extra)

    def commit(self, conn: Any, run: Attempt) -> str:
        """Make the loaded lines live (nothing to do where every line is live at once)."""
        return ""

    def discard(self, conn: Any, run: Attempt) -> str:
        """Throw away lines loaded but not committed (platforms with a candidate config)."""
        return ""

    def after_reconnect(self, conn: Any, run: Attempt) -> str:
        """Clean up what a lost session left behind (a pending EOS session, ...)."""
        return ""

    def rollback(self, conn: Any, run: Attempt) -> str:
        """Take the switch back to the config read before the change."""
        todo = restore_commands(self.running(conn, run.timeout), run.plan.running, self.syntax)
        if not todo:
            return "nothing to undo"
        conn.send_config_set(todo, error_pattern=ERROR_PATTERN, read_timeout=run.timeout,
                             exit_config_mode=False)
        return f"sent {len(todo)} inverse line(s)"

    def finish(self, conn: Any, run: Attempt) -> str:
        """After a good post-check: confirm the change and save it where the platform needs;
        drop what `prepare` took."""
        saved = ""
        if self.save_command:
            conn.send_command(self.save_command, read_timeout=run.timeout)
            saved = f"saved ({self.save_command})"
        self.forget(conn, run)
        return saved

    def forget(self, conn: Any, run: Attempt) -> None:
        """After a rollback: drop what `prepare` took (checkpoints)."""

    def clear_sessions(self, conn: Any, addresses: list[str], timeout: float) -> None:
        """Reset these BGP sessions now. After a change that kept a session failing, BGP
        speakers hold it Idle for a back-off that grows with every failure (FRR doubles its
        idle hold per NOTIFICATION, up to 120 s): a hard clear starts it again at once."""
        for address in addresses:
            conn.send_command(self.clear_command.format(address=address), read_timeout=timeout)

    # --- shared ----------------------------------------------------------------------------
    def differences(self, conn: Any, target: list[Node], timeout: float) -> list[str]:
        """What still differs from `target` (empty: the switch reads as `target`)."""
        return restore_commands(self.running(conn, timeout), target, self.syntax)

    def parse(self, text: str) -> list[Node]:
        return parse(text, self.syntax)
