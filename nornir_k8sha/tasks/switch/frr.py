"""FRR switches (vtysh as the login shell; netmiko drives it as cisco_ios): JSON output.

Rollback: the explicit inverse through vtysh, like IOS (FRR has no checkpoint or candidate
config on the CLI). Save: `write memory` (integrated frr.conf).
"""

from __future__ import annotations

from ipaddress import IPv4Address
from typing import Any

from nornir_k8sha.exceptions import CommandFailed
from nornir_k8sha.tasks.switch.base import Platform
from nornir_k8sha.tasks.switch.ios import IOS_SYNTAX
from nornir_k8sha.tasks.switch.state import Neighbor, VipRoute, as_int, leading_json


def parse_summary(doc: dict[str, Any]) -> list[Neighbor]:
    """`show bgp ipv4 unicast summary json` (older FRR wrap it in `ipv4Unicast`)."""
    doc = doc.get("ipv4Unicast", doc)
    return [Neighbor(addr, p.get("state", "?"), as_int(p.get("pfxRcd")))
            for addr, p in (doc.get("peers") or {}).items()]


def parse_route(doc: dict[str, Any], vip: IPv4Address) -> VipRoute:
    """`show ip route <vip>/32 json`: the selected route, its FIB-installed next hops."""
    routes = doc.get(f"{vip}/32") or []
    best = next((r for r in routes if r.get("selected")), routes[0] if routes else None)
    if best is None:
        return VipRoute()
    hops = [h["ip"] for h in best.get("nexthops", []) if h.get("ip") and h.get("active", True)]
    installed = bool(best.get("installed")) and any(h.get("fib") for h in best.get("nexthops", []))
    return VipRoute(present=True, installed=installed, protocol=best.get("protocol", ""),
                    next_hops=hops)


class FRR(Platform):
    name = "frr"
    device_type = "cisco_ios"
    syntax = IOS_SYNTAX
    rollback_mechanism = "explicit inverse through vtysh (no ...)"

    summary_command = "show bgp ipv4 unicast summary json"
    route_command = "show ip route {vip}/32 json"
    parse_summary = staticmethod(parse_summary)
    parse_route = staticmethod(parse_route)

    def read_in_one_request(self, conn: Any, vip: IPv4Address) -> \
            tuple[str, list[Neighbor], VipRoute] | None:
        """vtysh runs each line of its `-c` command in turn ("multiple commands may be executed
        by ... embedding linefeed characters inside the command string", vtysh(1)), and sshd
        runs an exec request as `vtysh -c COMMAND`: one vtysh start instead of three (~24 ms of
        the switch's CPU each on the lab). The JSON outputs come first; the running config is
        what follows them. None when the answer is not that shape: the reads then go one by
        one, and a refused command is named alone."""
        try:
            out = conn.send_command("\n".join((self.summary_command,
                                               self.route_command.format(vip=vip),
                                               self.show_running)))
        except CommandFailed:
            return None
        split = leading_json(out, 2)
        if split is None:
            return None
        (summary, route), running = split
        return running, self.parse_summary(summary), self.parse_route(route, vip)
