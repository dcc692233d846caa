"""Arista EOS: `| json` output, changes in a named configuration session.

The plan is loaded into `configure session k8sha-<id>` and made live by `commit`; a line the
switch refuses leaves the session uncommitted and it is `abort`ed (nothing reached the running
config). Before the session a checkpoint is saved (`configure checkpoint save k8sha-<id>`); a
failed post-check restores it (`configure checkpoint restore k8sha-<id>`). A session lost half-way
is removed on a fresh login (`no configure session k8sha-<id>`). Save: `write memory`.
"""

from __future__ import annotations

from ipaddress import IPv4Address
from typing import Any

from nornir_k8sha.tasks.switch.base import (
    CISCO_SECTIONS,
    CISCO_SINGLE_VALUED,
    ERROR_PATTERN,
    Attempt,
    Platform,
)
from nornir_k8sha.tasks.switch.state import Neighbor, VipRoute, as_int
from nornir_k8sha.tasks.switch.tree import Syntax

EOS_SYNTAX = Syntax(indent=3, single_valued=CISCO_SINGLE_VALUED, sections=CISCO_SECTIONS)


def parse_summary(doc: dict[str, Any]) -> list[Neighbor]:
    """`show ip bgp summary | json`: vrfs.<vrf>.peers.<address>."""
    out = []
    for vrf in (doc.get("vrfs") or {}).values():
        for addr, p in (vrf.get("peers") or {}).items():
            out.append(Neighbor(addr, p.get("peerState", "?"),
                                as_int(p.get("prefixAccepted", p.get("prefixReceived")))))
    return out


def parse_route(doc: dict[str, Any], vip: IPv4Address) -> VipRoute:
    """`show ip route <vip>/32 | json`: vrfs.default.routes.<prefix>.vias."""
    for vrf in (doc.get("vrfs") or {}).values():
        route = (vrf.get("routes") or {}).get(f"{vip}/32")
        if route:
            hops = [v["nexthopAddr"] for v in route.get("vias", []) if v.get("nexthopAddr")]
            return VipRoute(present=True, installed=bool(route.get("hardwareProgrammed", hops)),
                            protocol=route.get("routeType", ""), next_hops=hops)
    return VipRoute()


class EOS(Platform):
    name = "arista_eos"
    device_type = "arista_eos"
    syntax = EOS_SYNTAX
    rollback_mechanism = "configure session (abort before commit) + checkpoint restore"
    live_on_load = False

    summary_command = "show ip bgp summary | json"
    route_command = "show ip route {vip}/32 | json"
    parse_summary = staticmethod(parse_summary)
    parse_route = staticmethod(parse_route)

    def prepare(self, conn: Any, run: Attempt) -> None:
        conn.send_command(f"configure checkpoint save {run.name}",
                          read_timeout=run.timeout)

    def load(self, conn: Any, run: Attempt) -> str:
        return conn.send_config_set(run.plan.commands, error_pattern=ERROR_PATTERN,
                                    read_timeout=run.timeout, exit_config_mode=False,
                                    config_mode_command=f"configure session {run.name}")

    def _in_session(self, conn: Any, run: Attempt, command: str) -> str:
        return conn.send_config_set([command], enter_config_mode=False, exit_config_mode=False,
                                    error_pattern=ERROR_PATTERN, read_timeout=run.timeout)

    def commit(self, conn: Any, run: Attempt) -> str:
        return self._in_session(conn, run, "commit")

    def discard(self, conn: Any, run: Attempt) -> str:
        if not conn.check_config_mode():
            return self.after_reconnect(conn, run)
        return self._in_session(conn, run, "abort")

    def after_reconnect(self, conn: Any, run: Attempt) -> str:
        return conn.send_command(f"no configure session {run.name}",
                                 read_timeout=run.timeout)

    def rollback(self, conn: Any, run: Attempt) -> str:
        name = run.name
        out = conn.send_command(f"configure checkpoint restore {name}", read_timeout=run.timeout)
        if "%" in out:
            raise ValueError(f"checkpoint {name} not restored: {out.strip()[:200]}")
        return f"checkpoint {name} restored"

    def forget(self, conn: Any, run: Attempt) -> None:
        conn.send_command(f"delete checkpoint:{run.name}", read_timeout=run.timeout)
