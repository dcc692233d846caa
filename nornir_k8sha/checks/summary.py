"""What a sweep's rows add up to: is the cluster serving, and what redundancy is left.

A degraded cluster is summarised honestly — "etcd 2/3 healthy, tolerates 0 more failures;
1 of 2 directors" — from the rows' measured values, with the same quorum arithmetic `validate`
uses (topology.etcd_quorum / etcd_tolerance).
"""

from __future__ import annotations

from nornir_k8sha import constants as C
from nornir_k8sha.checkresult import CheckResult
from nornir_k8sha.topology import ClusterSpec, etcd_quorum


def _by_target(rows: dict[str, list[CheckResult]], row: str) -> dict[str, CheckResult]:
    return {r.target: r for r in rows.get(row, [])}


def _count_ok(results: dict[str, CheckResult], names: list[str]) -> int:
    return sum(1 for n in names if n in results and results[n].status == "ok")


def summarise(spec: ClusterSpec, rows: dict[str, list[CheckResult]]) -> list[CheckResult]:
    """One result per tier: API, etcd, directors, HAProxy, masters, nodes (when checked)."""
    out: list[CheckResult] = []
    api = [r for r in rows.get("apiserver", []) if r.target.startswith("VIP ")]
    tcp = [r for r in rows.get("vip", []) if r.target.startswith("VIP ")]
    through_vip = api or tcp
    if through_vip:
        serving = through_vip[0].status == "ok"
        what = "the API answers" if api else "TCP to the VIP connects (no control plane yet)"
        out.append(CheckResult("API via VIP", "ok" if serving else "failed",
                               f"serving: {what}" if serving else "NOT serving through the VIP",
                               {"serving": serving}))

    etcd = _by_target(rows, "etcd")
    if etcd:
        members = [h.name for h in spec.role(C.ROLE_ETCD)]
        healthy = sum(1 for n in members if n in etcd and etcd[n].values.get("healthy"))
        quorum = etcd_quorum(len(members))
        spare = healthy - quorum
        if spare < 0:
            out.append(CheckResult("etcd", "failed", f"{healthy}/{len(members)} healthy: "
                                   f"quorum lost (needs {quorum})",
                                   {"healthy": healthy, "members": len(members),
                                    "quorum": quorum, "tolerates": 0}))
        else:
            state = "full" if healthy == len(members) else "degraded"
            out.append(CheckResult("etcd", "ok", f"{healthy}/{len(members)} healthy, "
                                   f"tolerates {spare} more failure(s) ({state})",
                                   {"healthy": healthy, "members": len(members),
                                    "quorum": quorum, "tolerates": spare}))

    directors = _by_target(rows, "vip")
    names = [h.name for h in spec.role(C.ROLE_LVS)]
    holder = None
    if any(n in directors for n in names):
        holders = [n for n in names if n in directors and directors[n].values.get("holds_vip")]
        answering = sum(1 for n in names if n in directors
                        and "holds_vip" in directors[n].values)
        holder = holders[0] if len(holders) == 1 else None
        out.append(CheckResult(
            "LVS directors", "ok" if holder else "failed",
            f"{answering} of {len(names)} directors answering; VIP held by "
            + (holder or f"{len(holders)} directors"),
            {"answering": answering, "directors": len(names), "holder": holder}))

    switches = _by_target(rows, "switches")
    names = [h.name for h in spec.role(C.ROLE_SWITCHES)]
    if any(n in switches for n in names) and holder:
        holder_ip = str(spec.host(holder).address)
        routed = [n for n in names if n in switches and holder_ip in
                  (switches[n].values.get("vip_route") or {}).get("next_hops", [])]
        out.append(CheckResult(
            "switches", "ok" if len(routed) == len(names) else "failed",
            f"{len(routed)} of {len(names)} switches route the VIP /32 to its holder {holder}",
            {"routed": len(routed), "switches": len(names)}))

    for row, role, label in (("haproxy", C.ROLE_HAPROXY, "HAProxy"),
                             ("apiserver", C.ROLE_MASTERS, "masters (apiserver)")):
        results = _by_target(rows, row)
        names = [h.name for h in spec.role(role)]
        if not any(n in results for n in names):
            continue
        ok = _count_ok(results, names)
        out.append(CheckResult(label, "ok" if ok else "failed",
                               f"{ok} of {len(names)} serving"
                               + ("" if ok == len(names) else f"; {len(names) - ok} down"),
                               {"serving": ok, "total": len(names)}))

    nodes = _by_target(rows, "nodes")
    names = [h.name for h in spec.kubernetes_nodes()]
    if any(n in nodes for n in names):
        ready = _count_ok(nodes, names)
        out.append(CheckResult("nodes", "ok" if ready else "failed",
                               f"{ready} of {len(names)} Ready", {"ready": ready,
                                                                   "total": len(names)}))
    return out
