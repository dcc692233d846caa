"""`check`: every health check of the running cluster, concurrently, folded into one RunReport.

Each check is a small function `(CheckContext) -> list[HostOutcome]` reading, never changing.
HTTP checks go straight from this machine with httpx and an `ssl.SSLContext` (DESIGN.md 4: httpx
0.28 drops the client cert when `verify=<path>` and `cert=` are combined); host-side facts (who
holds the VIP, the IPVS table) go through the `k8sha_ssh` connection.
"""

from __future__ import annotations

import csv
import io
import socket
import ssl
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import httpx
from nornir.core import Nornir

from nornir_k8sha import constants as C
from nornir_k8sha.report import HostOutcome, RunReport, checks_table
from nornir_k8sha.topology import ClusterSpec, etcd_quorum

if TYPE_CHECKING:
    from rich.console import Console

HTTP_TIMEOUT = 2.0
CONNECT_TIMEOUT = 2.0


@dataclass
class CheckContext:
    spec: ClusterSpec
    nr: Nornir
    state_dir: Path

    def ssh(self, host: str, command: str) -> tuple[int, str, str]:
        """Run a read-only command on a host; (exit code, stdout, stderr)."""
        from nornir_k8sha.tasks.host import open_connection

        conn = open_connection(self.nr.inventory.hosts[host], self.nr.config)
        res = conn.run(command, check=False)
        return res.exit_code, res.stdout, res.stderr


Check = Callable[[CheckContext], list[HostOutcome]]


def _ok(host: str, message: str, start: float) -> HostOutcome:
    return HostOutcome(host, "ok", time.monotonic() - start, message)


def _bad(host: str, message: str, start: float) -> HostOutcome:
    return HostOutcome(host, "failed", time.monotonic() - start, message)


def _error_text(exc: Exception) -> str:
    text = str(exc) or type(exc).__name__
    return text.splitlines()[0][:200]


# --- etcd --------------------------------------------------------------------------------------


def tls_context(ca: Path, cert: Path | None = None, key: Path | None = None) -> ssl.SSLContext:
    """An SSL context trusting `ca`, presenting `cert`/`key` when given."""
    ctx = ssl.create_default_context(cafile=str(ca))
    if cert and key:
        ctx.load_cert_chain(str(cert), str(key))
    return ctx


def etcd_http_client(spec: ClusterSpec, state_dir: Path) -> httpx.Client:
    """httpx client for etcd's HTTP API with the health-check client certificate (mTLS)."""
    from nornir_k8sha.pki import ClusterPKI

    pki = ClusterPKI(spec, state_dir)
    client = pki.healthcheck_client
    return httpx.Client(verify=tls_context(pki.etcd_ca.cert, client.cert, client.key),
                        timeout=HTTP_TIMEOUT)


def etcd_reports_healthy(health: dict[str, Any]) -> bool:
    """etcd's `/health` body says healthy (`{"health": "true"}`; 3.4 sends a string)."""
    return str(health.get("health")) == "true"


def check_etcd(cx: CheckContext) -> list[HostOutcome]:
    """Per member: /health over mTLS, its status (leader, DB size) and member list; then agree."""
    members = cx.spec.role(C.ROLE_ETCD)
    port = cx.spec.settings.etcd.client_port
    quorum = etcd_quorum(len(members))
    results: dict[str, dict[str, Any]] = {}
    with etcd_http_client(cx.spec, cx.state_dir) as client:

        def probe(address: str) -> dict[str, Any]:
            base = f"https://{address}:{port}"
            out: dict[str, Any] = {}
            try:
                out["health"] = client.get(f"{base}/health").json()
                out["status"] = client.post(f"{base}/v3/maintenance/status", json={}).json()
                out["members"] = client.post(f"{base}/v3/cluster/member/list", json={}).json()
            except Exception as exc:  # unreachable member: reported below
                out["error"] = _error_text(exc)
            return out

        with ThreadPoolExecutor(max_workers=len(members) or 1) as pool:
            futures = {h.name: pool.submit(probe, str(h.address)) for h in members}
            start = time.monotonic()
            for name, fut in futures.items():
                results[name] = fut.result()
    healthy = [n for n, r in results.items() if etcd_reports_healthy(r.get("health", {}))]
    lost = len(healthy) < quorum
    leaders = {str(r["status"].get("leader")) for r in results.values()
               if "status" in r and r["status"].get("leader") not in (None, "0")}
    member_sets = {
        tuple(sorted(m.get("name", "") for m in r["members"].get("members", [])))
        for r in results.values() if "members" in r
    }
    outcomes = []
    for name, r in results.items():
        if "error" in r:
            outcomes.append(_bad(name, f"unreachable: {r['error']}", start))
            continue
        db = int(r.get("status", {}).get("dbSize", 0) or 0)
        if name not in healthy:
            reason = r.get("health", {}).get("reason", "") or "no leader"
            msg = f"unhealthy ({reason})"
            if lost:
                msg += f"; etcd has lost quorum: {len(healthy)}/{len(members)} healthy, " \
                       f"quorum {quorum}"
            outcomes.append(_bad(name, msg, start))
        elif len(leaders) != 1:
            outcomes.append(_bad(name, f"healthy but {len(leaders)} leaders seen", start))
        elif len(member_sets) != 1:
            outcomes.append(_bad(name, "members disagree on the member list", start))
        else:
            is_leader = str(r["status"].get("header", {}).get("member_id")) in leaders
            outcomes.append(_ok(name, f"healthy{' (leader)' if is_leader else ''}, "
                                f"{len(members)} members, db {db / 1e6:.1f} MB", start))
    return outcomes


# --- the SLB tier ------------------------------------------------------------------------------


def check_vip(cx: CheckContext) -> list[HostOutcome]:
    """Exactly one director holds the VIP, with a DR virtual server to the HAProxy nodes."""
    vip = str(cx.spec.vip)
    port = cx.spec.settings.apiserver_port
    outcomes = []
    holders = []
    start = time.monotonic()
    directors = cx.spec.role(C.ROLE_LVS)

    def look(name: str) -> tuple[str, bool, str]:
        code, out, err = cx.ssh(name, f"ip -o -4 addr show; ipvsadm -Ln -t {vip}:{port}")
        return name, f" {vip}/" in out, out if code == 0 else err

    with ThreadPoolExecutor(max_workers=len(directors) or 1) as pool:
        futures = [pool.submit(look, h.name) for h in directors]
        for fut in futures:
            try:
                name, holds, text = fut.result()
            except Exception as exc:
                outcomes.append(HostOutcome("?", "failed", 0.0, _error_text(exc)))
                continue
            if holds:
                holders.append(name)
                routes = [ln.split()[1] for ln in text.splitlines() if "Route" in ln]
                if not routes:
                    outcomes.append(_bad(name, f"holds the VIP but IPVS has no DR real server for "
                                         f"{vip}:{port}", start))
                else:
                    outcomes.append(_ok(name, f"holds VIP {vip}; IPVS DR → {', '.join(routes)}",
                                        start))
            else:
                outcomes.append(_ok(name, "standby (VRRP backup)", start))
    if len(holders) != 1:
        outcomes = [HostOutcome(o.host, "failed", o.duration,
                                f"{len(holders)} directors hold the VIP; {o.message}")
                    for o in outcomes]
    outcomes.append(check_vip_tcp(cx))
    return outcomes


def check_vip_tcp(cx: CheckContext) -> HostOutcome:
    """TCP to VIP:port from here reaches HAProxy through the DR path."""
    start = time.monotonic()
    target = f"VIP {cx.spec.vip}:{cx.spec.settings.apiserver_port}"
    try:
        with socket.create_connection((str(cx.spec.vip), cx.spec.settings.apiserver_port),
                                      timeout=CONNECT_TIMEOUT):
            pass
    except OSError as exc:
        return _bad(target, f"TCP connect failed: {_error_text(exc)}", start)
    return _ok(target, "TCP connect ok (LVS-DR → HAProxy)", start)


def parse_haproxy_csv(text: str, backend: str = "apiserver") -> dict[str, str]:
    """server name → status (UP/DOWN/...) of one backend, from HAProxy's `stats;csv`."""
    rows = csv.DictReader(io.StringIO(text.lstrip("# ")))
    return {
        r["svname"]: r["status"]
        for r in rows
        if r.get("pxname") == backend and r.get("svname") not in ("FRONTEND", "BACKEND")
    }


def check_haproxy(cx: CheckContext) -> list[HostOutcome]:
    """Each HAProxy's view of the apiserver backends, from its stats page (CSV)."""
    port = cx.spec.settings.haproxy.stats_port
    outcomes = []
    with httpx.Client(timeout=HTTP_TIMEOUT) as client:

        def one(h: Any) -> HostOutcome:
            start = time.monotonic()
            try:
                resp = client.get(f"http://{h.address}:{port}/stats;csv")
                resp.raise_for_status()
            except Exception as exc:
                return _bad(h.name, f"stats unreachable: {_error_text(exc)}", start)
            servers = parse_haproxy_csv(resp.text)
            up = sorted(s for s, st in servers.items() if st.startswith("UP"))
            down = sorted(s for s, st in servers.items() if not st.startswith("UP"))
            if not up:
                return _bad(h.name, f"serving, but no apiserver backend is up "
                            f"(down: {', '.join(down) or 'none configured'})", start)
            msg = f"backends up: {', '.join(up)}" + (f"; down: {', '.join(down)}" if down else "")
            return _ok(h.name, msg, start)

        hosts = cx.spec.role(C.ROLE_HAPROXY)
        with ThreadPoolExecutor(max_workers=len(hosts) or 1) as pool:
            outcomes = list(pool.map(one, hosts))
    return outcomes


def parse_bgp_summary(text: str) -> dict[str, dict[str, Any]]:
    """peer address → {state, pfxSnt, pfxRcd} from FRR's `show bgp ipv4 unicast summary json`."""
    import json

    data = json.loads(text or "{}")
    peers = data.get("peers") or data.get("ipv4Unicast", {}).get("peers") or {}
    return {addr: {"state": p.get("state", "?"), "pfxSnt": p.get("pfxSnt", 0),
                   "pfxRcd": p.get("pfxRcd", 0)} for addr, p in peers.items()}


def check_bgp(cx: CheckContext) -> list[HostOutcome]:
    """Every LVS director's BGP sessions to the switches are Established; who announces the VIP
    (FRR on the directors, read over SSH: fast, and the switches need no second login)."""
    switches = {str(h.address): h.name for h in cx.spec.role(C.ROLE_SWITCHES)}
    if not switches or not cx.spec.settings.bgp.announce_vip:
        return [HostOutcome("-", "skipped", 0.0, "no switches / VIP announcement off")]

    def one(name: str) -> HostOutcome:
        start = time.monotonic()
        try:
            code, out, err = cx.ssh(name, "vtysh -c 'show bgp ipv4 unicast summary json'")
            peers = parse_bgp_summary(out) if code == 0 else {}
        except Exception as exc:
            return _bad(name, _error_text(exc), start)
        if code != 0:
            return _bad(name, f"vtysh: {err.strip() or f'exit {code}'}", start)
        down = [f"{switches.get(a, a)} ({p['state']})" for a, p in peers.items()
                if p["state"] != "Established"]
        missing = [n for a, n in switches.items() if a not in peers]
        if down or missing:
            return _bad(name, "BGP not established with " + ", ".join(down + missing), start)
        sent = sum(int(p["pfxSnt"] or 0) for p in peers.values())
        role = f"announcing the VIP /32 to {len(peers)} switch(es)" if sent else \
            "not announcing (VIP held by the other director)"
        return _ok(name, f"{len(peers)} session(s) Established; {role}", start)

    directors = [h.name for h in cx.spec.role(C.ROLE_LVS)]
    with ThreadPoolExecutor(max_workers=len(directors) or 1) as pool:
        return list(pool.map(one, directors))


# --- the sweep ---------------------------------------------------------------------------------

#: (phase name, title, check). Extended by the Kubernetes checks when they are importable.
CHECKS: list[tuple[str, str, Check]] = [
    ("etcd", "etcd members (mTLS)", check_etcd),
    ("vip", "VIP and IPVS", check_vip),
    ("haproxy", "HAProxy backends", check_haproxy),
    ("bgp", "BGP to the switches", check_bgp),
]


def run_checks(spec: ClusterSpec, nr: Nornir, *, checks: list[tuple[str, str, Check]] | None = None,
               state_dir: Path | None = None) -> RunReport:
    """Run every check at once; one RunReport phase per check."""
    cx = CheckContext(spec, nr, state_dir or spec.state_dir)
    report = RunReport("check", spec.name)
    start = time.monotonic()
    selected = checks if checks is not None else all_checks()
    with ThreadPoolExecutor(max_workers=len(selected)) as pool:
        futures = [(name, title, pool.submit(_guarded, fn, cx)) for name, title, fn in selected]
        for name, title, fut in futures:
            phase_start = time.monotonic()
            outcomes = fut.result()
            phase = report.add_phase(name, title, [])
            for o in outcomes:
                phase.hosts[o.host] = o
            phase.duration = max((o.duration for o in outcomes), default=0.0) or (
                time.monotonic() - phase_start)
    report.duration = time.monotonic() - start
    return report


def all_checks() -> list[tuple[str, str, Check]]:
    try:
        from nornir_k8sha.kube_checks import KUBE_CHECKS
    except ImportError:
        return list(CHECKS)
    return [*CHECKS, *KUBE_CHECKS]


def _guarded(fn: Check, cx: CheckContext) -> list[HostOutcome]:
    start = time.monotonic()
    try:
        return fn(cx)
    except Exception as exc:  # a broken check is a failed check, never a traceback
        return [_bad("-", f"{type(exc).__name__}: {_error_text(exc)}", start)]


def show_checks(report: RunReport, console: Console) -> None:
    """The check table (`report.checks_table`) on `console`, at its width."""
    console.print(checks_table(report, console.width))
