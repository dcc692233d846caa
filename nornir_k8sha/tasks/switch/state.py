"""What a switch says about BGP, in one shape for every platform, and the verdict on it."""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from ipaddress import IPv4Address
from typing import Any

from nornir_k8sha.tasks.switch.tree import Node, walk

#: Names the templates give the VIP filter (templates/switch/*.j2).
PREFIX_LIST = "K8SHA-VIP"
IMPORT_POLICY = "K8SHA-VIP-IN"
ESTABLISHED = "Established"


@dataclass
class Neighbor:
    address: str
    state: str
    prefixes_received: int | None = None

    @property
    def established(self) -> bool:
        return self.state.lower() == ESTABLISHED.lower()


@dataclass
class VipRoute:
    present: bool = False
    installed: bool = False
    protocol: str = ""
    next_hops: list[str] = field(default_factory=list)


@dataclass
class FilterState:
    ok: bool
    message: str


def loads(text: str) -> Any:
    """JSON output of a `show ... | json` command; {} for empty or non-JSON output (a switch
    that has no BGP configured prints nothing or an error instead)."""
    start = text.find("{")
    if start < 0:
        return {}
    try:
        return json.loads(text[start:text.rfind("}") + 1])
    except ValueError:
        return {}


def leading_json(text: str, count: int) -> tuple[list[Any], str] | None:
    """The first `count` JSON documents of `text` (whitespace around them allowed) and the text
    after them: the outputs of JSON commands one CLI request ran in turn. None when `text` does
    not begin with that many documents (a command printed an error or nothing instead)."""
    decoder, docs, at = json.JSONDecoder(), [], 0
    for _ in range(count):
        while at < len(text) and text[at].isspace():
            at += 1
        try:
            doc, at = decoder.raw_decode(text, at)
        except ValueError:
            return None
        docs.append(doc)
    return docs, text[at:].lstrip("\n")


def rows(value: Any) -> list[Any]:
    """NX-OS's TABLE_x/ROW_x: a dict for one row, a list for several."""
    if value is None:
        return []
    return value if isinstance(value, list) else [value]


def as_int(value: Any) -> int | None:
    try:
        return int(value)
    except (TypeError, ValueError):
        return None


def leaf_paths(tree: list[Node]) -> list[str]:
    """Every line with its parents, ' / '-joined (a nested neighbour setting in one string)."""
    out: list[str] = []
    stack: list[str] = []
    for depth, node in walk(tree):
        del stack[depth:]
        stack.append(node.line)
        out.append(" / ".join(stack))
    return out


def verdict(neighbors: list[Neighbor], route: VipRoute, filt: FilterState,
            peers: list[str], vip: IPv4Address, announce: bool) -> dict[str, Any]:
    """The structured check result: per neighbour, the VIP route, the filter, ok + message."""
    problems: list[str] = []
    seen = {n.address: n for n in neighbors}
    for p in peers:
        n = seen.get(p)
        if n is None:
            problems.append(f"neighbour {p} not configured")
        elif not n.established:
            problems.append(f"neighbour {p} {n.state}")
    if announce:
        if not route.present:
            problems.append(f"VIP {vip}/32 not received")
        elif not route.installed:
            problems.append(f"VIP {vip}/32 received but not installed")
        elif not set(route.next_hops) <= set(peers) or not route.next_hops:
            problems.append(f"VIP {vip}/32 via {', '.join(route.next_hops) or 'nothing'}, "
                            "not an LVS director")
    if not filt.ok:
        problems.append(filt.message)
    many = [n.address for n in neighbors if (n.prefixes_received or 0) > 1]
    if many:
        problems.append(f"more than the VIP accepted from {', '.join(many)}")
    up = sum(1 for p in peers if p in seen and seen[p].established)
    message = "; ".join(problems) or (
        f"{up}/{len(peers)} neighbour(s) Established"
        + (f", VIP {vip}/32 via {', '.join(route.next_hops)}" if announce else ""))
    return {
        "neighbors": [asdict(n) for n in neighbors],
        "vip_route": asdict(route),
        "filter": asdict(filt),
        "ok": not problems,
        "message": message,
    }
