"""Juniper Junos: `set` statements, `| display json` output, commit confirmed.

The plan is loaded into a private candidate (`configure private`: a session lost half-way leaves
nothing behind) and committed with `commit confirmed N`: if this tool never confirms (it died,
the link to the switch broke), Junos undoes the commit itself after N minutes. A good post-check
confirms with `commit`; a bad one loads `rollback 1` and commits it. A refused line is thrown away
with `rollback 0`. A commit is persistent: nothing else to save.
"""

from __future__ import annotations

import re
from ipaddress import IPv4Address
from typing import Any

from nornir_k8sha import constants as C
from nornir_k8sha.tasks.switch.base import ERROR_PATTERN, Attempt, Platform
from nornir_k8sha.tasks.switch.state import (
    IMPORT_POLICY,
    PREFIX_LIST,
    FilterState,
    Neighbor,
    VipRoute,
    as_int,
)
from nornir_k8sha.tasks.switch.tree import Node, Syntax

JUNOS_SYNTAX = Syntax(indent=0, set_style=True, single_valued=(re.compile(
    r"^(set .* (?:peer-as|type|description|autonomous-system|router-id|maximum|hold-time"
    r"|local-address)) \S+$"),))
PRIVATE = "configure private"


def _data(node: dict[str, Any], key: str, default: Any = None) -> Any:
    """Junos JSON wraps every leaf as [{"data": value}]."""
    try:
        return node[key][0]["data"]
    except (KeyError, IndexError, TypeError):
        return default


def parse_summary(doc: dict[str, Any]) -> list[Neighbor]:
    """`show bgp summary | display json`: bgp-information / bgp-peer."""
    out = []
    for info in doc.get("bgp-information", []):
        for p in info.get("bgp-peer", []):
            addr = str(_data(p, "peer-address", "?")).split("+")[0]
            ribs = [r for r in p.get("bgp-rib", []) if _data(r, "name") == "inet.0"]
            count = as_int(_data(ribs[0], "accepted-prefix-count")) if ribs else None
            out.append(Neighbor(addr, _data(p, "peer-state", "?"), count))
    return out


def parse_route(doc: dict[str, Any], vip: IPv4Address) -> VipRoute:
    """`show route <vip>/32 exact | display json`: the active (*) entry and its next hops."""
    for info in doc.get("route-information", []):
        for table in info.get("route-table", []):
            for rt in table.get("rt", []):
                if _data(rt, "rt-destination") != f"{vip}/32":
                    continue
                entries = rt.get("rt-entry", [])
                active = [e for e in entries if _data(e, "active-tag") == "*"]
                best = (active or entries or [{}])[0]
                hops = [_data(h, "to") for h in best.get("nh", []) if _data(h, "to")]
                return VipRoute(present=True, installed=bool(active),
                                protocol=str(_data(best, "protocol-name", "")).lower(),
                                next_hops=hops)
    return VipRoute()


class Junos(Platform):
    name = "juniper_junos"
    device_type = "juniper_junos"
    syntax = JUNOS_SYNTAX
    show_running = "show configuration | display set"
    rollback_mechanism = "commit confirmed + rollback 1"
    clear_command = "clear bgp neighbor {address}"
    save_command = None
    config_command = PRIVATE
    live_on_load = False

    summary_command = "show bgp summary | display json"
    route_command = "show route {vip}/32 exact | display json"
    parse_summary = staticmethod(parse_summary)
    parse_route = staticmethod(parse_route)

    def filter_state(self, running: list[Node], vip: IPv4Address,
                     peers: list[str]) -> FilterState:
        lines = [n.line for n in running]
        listed = [ln.split()[-1] for ln in lines
                  if ln.startswith(f"set policy-options prefix-list {PREFIX_LIST} ")]
        if listed != [f"{vip}/32"]:
            return FilterState(False, f"prefix-list {PREFIX_LIST} holds "
                                      f"{', '.join(listed) or 'nothing'}, not only {vip}/32")
        if not any(re.match(rf"^set protocols bgp group \S+ import {IMPORT_POLICY}$", ln)
                   for ln in lines):
            return FilterState(False, f"no BGP group imports {IMPORT_POLICY}")
        if f"set policy-options policy-statement {IMPORT_POLICY} then reject" not in lines:
            return FilterState(False, f"{IMPORT_POLICY} does not end in reject")
        return FilterState(True, f"only {vip}/32 accepted")

    def commit(self, conn: Any, run: Attempt) -> str:
        return conn.commit(confirm=True, confirm_delay=C.SWITCH_COMMIT_CONFIRM_MINUTES,
                           comment=f"k8sha {run.run_id}", read_timeout=run.timeout)

    def discard(self, conn: Any, run: Attempt) -> str:
        if not conn.check_config_mode():
            return "private candidate gone with its session"
        return conn.send_config_set(["rollback 0"], enter_config_mode=False,
                                    exit_config_mode=False, error_pattern=ERROR_PATTERN,
                                    read_timeout=run.timeout)

    def rollback(self, conn: Any, run: Attempt) -> str:
        conn.send_config_set(["rollback 1"], config_mode_command=PRIVATE, exit_config_mode=False,
                             error_pattern=ERROR_PATTERN, read_timeout=run.timeout)
        conn.commit(comment=f"k8sha {run.run_id} rolled back", read_timeout=run.timeout)
        return "rollback 1 committed"

    def finish(self, conn: Any, run: Attempt) -> str:
        conn.commit(comment=f"k8sha {run.run_id} confirmed", read_timeout=run.timeout)
        return "commit confirmed"
