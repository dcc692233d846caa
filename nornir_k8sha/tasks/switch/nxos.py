"""Cisco NX-OS: `| json` output, nested `router bgp / neighbor / address-family` sections.

Rollback: `checkpoint k8sha-<id>` before the change, `rollback running-config checkpoint
k8sha-<id>` after a failure (the switch computes and applies the inverse itself, atomically);
the checkpoint is deleted afterwards. Save: `copy running-config startup-config`.
"""

from __future__ import annotations

import re
from ipaddress import IPv4Address
from typing import Any

from nornir_k8sha.tasks.switch.base import (
    CISCO_SECTIONS,
    CISCO_SINGLE_VALUED,
    Attempt,
    Platform,
)
from nornir_k8sha.tasks.switch.state import Neighbor, VipRoute, as_int, rows
from nornir_k8sha.tasks.switch.tree import Syntax

NXOS_SYNTAX = Syntax(indent=2, single_valued=CISCO_SINGLE_VALUED,
                     sections=(*CISCO_SECTIONS, re.compile(r"^neighbor \S+$")))


def parse_summary(doc: dict[str, Any]) -> list[Neighbor]:
    """`show ip bgp summary | json`: TABLE_vrf / TABLE_af / TABLE_saf / TABLE_neighbor."""
    out = []
    for vrf in rows(doc.get("TABLE_vrf", {}).get("ROW_vrf")):
        for af in rows(vrf.get("TABLE_af", {}).get("ROW_af")):
            for saf in rows(af.get("TABLE_saf", {}).get("ROW_saf")):
                for n in rows(saf.get("TABLE_neighbor", {}).get("ROW_neighbor")):
                    out.append(Neighbor(n.get("neighborid", "?"), n.get("state", "?"),
                                        as_int(n.get("prefixreceived"))))
    return out


def parse_route(doc: dict[str, Any], vip: IPv4Address) -> VipRoute:
    """`show ip route <vip>/32 | json`: the unicast-best paths of the prefix."""
    for vrf in rows(doc.get("TABLE_vrf", {}).get("ROW_vrf")):
        for af in rows(vrf.get("TABLE_addrf", {}).get("ROW_addrf")):
            for pfx in rows(af.get("TABLE_prefix", {}).get("ROW_prefix")):
                if pfx.get("ipprefix") != f"{vip}/32":
                    continue
                paths = rows(pfx.get("TABLE_path", {}).get("ROW_path"))
                best = [p for p in paths if str(p.get("ubest", "")).lower() == "true"]
                proto = (best or paths or [{}])[0].get("clientname", "")
                return VipRoute(present=True, installed=bool(best),
                                protocol=proto.split("-")[0],
                                next_hops=[p["ipnexthop"] for p in best if p.get("ipnexthop")])
    return VipRoute()


class NXOS(Platform):
    name = "cisco_nxos"
    device_type = "cisco_nxos"
    syntax = NXOS_SYNTAX
    rollback_mechanism = "checkpoint + rollback running-config checkpoint"
    save_command = "copy running-config startup-config"

    summary_command = "show ip bgp summary | json"
    route_command = "show ip route {vip}/32 | json"
    parse_summary = staticmethod(parse_summary)
    parse_route = staticmethod(parse_route)

    def prepare(self, conn: Any, run: Attempt) -> None:
        out = conn.send_command(f"checkpoint {run.name}", read_timeout=run.timeout)
        if "Done" not in out:
            raise ValueError(f"checkpoint {run.name} not taken: {out.strip()[:200]}")

    def rollback(self, conn: Any, run: Attempt) -> str:
        name = run.name
        out = conn.send_command(f"rollback running-config checkpoint {name}",
                                read_timeout=run.timeout)
        if "successfully" not in out:
            raise ValueError(f"rollback to {name} failed: {out.strip()[-200:]}")
        return f"checkpoint {name} restored"

    def forget(self, conn: Any, run: Attempt) -> None:
        conn.send_command(f"no checkpoint {run.name}", read_timeout=run.timeout)
