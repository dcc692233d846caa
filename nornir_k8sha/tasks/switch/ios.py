"""Cisco IOS / IOS-XE (and FRR driven as IOS, as the lab's switches are): plain-text output,
parsed with TextFSM templates of our own (templates/textfsm/): ntc-templates' IOS template
does not read FRR's wider summary, which the lab's switches print.

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

import textfsm

from nornir_k8sha import constants as C
from nornir_k8sha.tasks.switch.base import CISCO_SECTIONS, CISCO_SINGLE_VALUED, Platform
from nornir_k8sha.tasks.switch.state import Neighbor, VipRoute
from nornir_k8sha.tasks.switch.tree import Syntax

#: `address-family ipv4` and `address-family ipv4 unicast` are one mode on IOS and FRR.
IOS_ALIASES = ((re.compile(r"^address-family ipv4$"), "address-family ipv4 unicast"),)
IOS_SYNTAX = Syntax(indent=1, single_valued=CISCO_SINGLE_VALUED, aliases=IOS_ALIASES,
                    sections=CISCO_SECTIONS, keep_sections=(re.compile(r"^address-family "),),
                    af_exit="exit-address-family")

def textfsm_rows(template: str, text: str) -> list[dict[str, Any]]:
    """`text` parsed by one of our TextFSM templates (templates/textfsm/): a dict per row."""
    with (C.TEMPLATES_DIR / "textfsm" / template).open() as f:
        fsm = textfsm.TextFSM(f)
    return [dict(zip(fsm.header, row, strict=True)) for row in fsm.ParseText(text)]


def parse_summary(text: str) -> list[Neighbor]:
    """`show ip bgp summary` rows: State/PfxRcd is a count once Established, else the state."""
    out = []
    for row in textfsm_rows("ios_show_ip_bgp_summary.textfsm", text):
        state = row["STATE_PFXRCD"]
        if state.isdigit():
            out.append(Neighbor(row["NEIGHBOR"], "Established", int(state)))
        else:
            out.append(Neighbor(row["NEIGHBOR"], state.split("(")[0], None))
    return out


def parse_route(text: str, vip: IPv4Address) -> VipRoute:
    """`show ip route <vip>`: the entry for <vip>/32, the protocol it is known via, and its
    next hops."""
    rows = [r for r in textfsm_rows("ios_show_ip_route_entry.textfsm", text)
            if r["PREFIX"] == f"{vip}/32"]
    if not rows:
        return VipRoute()
    hops = rows[0]["NEXT_HOPS"]
    return VipRoute(present=True, installed=bool(hops), protocol=rows[0]["PROTOCOL"],
                    next_hops=hops)


class IOS(Platform):
    name = "cisco_ios"
    device_type = "cisco_ios"
    syntax = IOS_SYNTAX

    def neighbors(self, conn: Any) -> list[Neighbor]:
        return parse_summary(conn.send_command("show ip bgp summary"))

    def vip_route(self, conn: Any, vip: IPv4Address) -> VipRoute:
        return parse_route(conn.send_command(f"show ip route {vip}"), vip)
