"""Cisco IOS / IOS-XE (and FRR driven as IOS, as the lab's switches are): plain-text output.

Rollback: the explicit inverse (`no` of what was added, old values of what was changed),
computed from the running config read again after the failure. Chosen over `configure replace`
because it needs no archive on flash and works the same on FRR's vtysh (the lab's switches);
the startup config is only written after the post-check passed, so a reload would also undo it.
Save: `write memory`.
"""

from __future__ import annotations

import re
from ipaddress import IPv4Address
from typing import Any

from nornir_k8sha.tasks.switch.base import CISCO_SECTIONS, CISCO_SINGLE_VALUED, Platform
from nornir_k8sha.tasks.switch.state import Neighbor, VipRoute
from nornir_k8sha.tasks.switch.tree import Syntax

#: `address-family ipv4` and `address-family ipv4 unicast` are one mode on IOS and FRR.
IOS_ALIASES = ((re.compile(r"^address-family ipv4$"), "address-family ipv4 unicast"),)
IOS_SYNTAX = Syntax(indent=1, single_valued=CISCO_SINGLE_VALUED, aliases=IOS_ALIASES,
                    sections=CISCO_SECTIONS, keep_sections=(re.compile(r"^address-family "),),
                    af_exit="exit-address-family")

_IP = r"\d+\.\d+\.\d+\.\d+"
_SUMMARY_ROW = re.compile(rf"^({_IP})\s+\d+\s+(\d+)\s+\d+\s+\d+\s+\d+\s+\d+\s+\d+\s+(\S+)\s+(\S+)")
_NEXT_HOP = re.compile(rf"^\s*\*?\s*({_IP})(?:,| from| via)")


def parse_summary(text: str) -> list[Neighbor]:
    """`show ip bgp summary` rows: State/PfxRcd is a count once Established, else the state."""
    out = []
    for line in text.splitlines():
        m = _SUMMARY_ROW.match(line.strip())
        if not m:
            continue
        state = m.group(4)
        if state.isdigit():
            out.append(Neighbor(m.group(1), "Established", int(state)))
        else:
            out.append(Neighbor(m.group(1), state.split("(")[0], None))
    return out


def parse_route(text: str, vip: IPv4Address) -> VipRoute:
    """`show ip route <vip>`: `Routing entry for <vip>/32`, `Known via "bgp ..."`, and the
    next hops (IOS: `* 10.0.0.1, from ...`; FRR: `* 10.0.0.1, via eth0`)."""
    if f"Routing entry for {vip}/32" not in text:
        return VipRoute()
    known = re.search(r'Known via "(\w+)', text)
    hops = [m.group(1) for ln in text.splitlines() if (m := _NEXT_HOP.match(ln))]
    return VipRoute(present=True, installed=bool(hops), protocol=known.group(1) if known else "",
                    next_hops=hops)


class IOS(Platform):
    name = "cisco_ios"
    device_type = "cisco_ios"
    syntax = IOS_SYNTAX

    def neighbors(self, conn: Any) -> list[Neighbor]:
        return parse_summary(conn.send_command("show ip bgp summary"))

    def vip_route(self, conn: Any, vip: IPv4Address) -> VipRoute:
        return parse_route(conn.send_command(f"show ip route {vip}"), vip)
