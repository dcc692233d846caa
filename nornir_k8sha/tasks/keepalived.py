"""LVS directors: keepalived holds the VIP by VRRP and programs IPVS (DR mode) to the HAProxy
nodes, taking a dead HAProxy out of the table by its TCP check."""

from __future__ import annotations

import socket
import time
from collections.abc import Mapping
from dataclasses import replace

from nornir.core.task import Result, Task

from nornir_k8sha import constants as C
from nornir_k8sha.checkresult import CheckResult, failed, passed
from nornir_k8sha.clients import CONNECT_TIMEOUT, error_text, parse_ipvs_routes
from nornir_k8sha.exceptions import CommandFailed
from nornir_k8sha.tasks import host as H
from nornir_k8sha.tasks.component import apply_component, probe
from nornir_k8sha.topology import ClusterSpec

PACKAGES = ["keepalived", "ipvsadm"]
#: Load IPVS and prove it is there (before keepalived programs it).
IP_VS = "modprobe ip_vs 2>/dev/null || true; grep -q '^ip_vs' /proc/modules"


def configure(task: Task, spec: ClusterSpec, *, dry_run: bool | None = None) -> Result:
    """Packages, the ip_vs module, keepalived.conf (validated by `keepalived -t`), reload."""
    H.honour_dry_run(task, dry_run)
    probed = probe(task, PACKAGES, ["keepalived"], [] if task.is_dry_run() else [IP_VS])
    pk = H.packages(task, names=PACKAGES, known=probed.packages)
    for r in probed.extra:  # the module load (not in a dry run)
        if not r.ok:
            raise CommandFailed(task.host.name, r.command, r.exit_code, r.stderr)
    r = apply_component(task, spec, "keepalived", services={"keepalived": "reload"},
                        known_units=None if pk.changed else probed.units)
    r.changed = r.changed or bool(pk.changed)
    return r


def check(task: Task, spec: ClusterSpec) -> Result:
    """Does this director hold the VIP, and where does IPVS forward VIP:port in DR mode?

    `result` is a CheckResult with values holds_vip and routes (real servers). A holder with no
    DR real server fails; a standby is ok. Read-only, one SSH round trip."""
    start = time.monotonic()
    vip, port = str(spec.vip), spec.settings.apiserver_port
    out = H.probe_connection(task).run(f"ip -o -4 addr show; ipvsadm -Ln -t {vip}:{port}",
                                       check=False, timeout=C.CHECK_TIMEOUT_S)
    holds = f" {vip}/" in out.stdout
    routes = parse_ipvs_routes(out.stdout) if out.exit_code == 0 else []
    name = task.host.name
    if not holds:
        res = passed(name, "standby (VRRP backup)", start, holds_vip=False, routes=routes)
    elif not routes:
        res = failed(name, f"holds the VIP but IPVS has no DR real server for {vip}:{port}",
                     start, holds_vip=True, routes=[])
    else:
        res = passed(name, f"holds VIP {vip}; IPVS DR → {', '.join(routes)}", start,
                     holds_vip=True, routes=routes)
    return Result(host=task.host, result=res, failed=not res.ok)


def assess(directors: Mapping[str, CheckResult]) -> list[CheckResult]:
    """Exactly one director may hold the VIP: none is an outage, two is a split brain."""
    holders = [n for n, r in directors.items() if r.values.get("holds_vip")]
    if len(holders) == 1:
        return list(directors.values())
    return [replace(r, status="failed",
                    message=f"{len(holders)} directors hold the VIP; {r.message}")
            for r in directors.values()]


def check_vip_tcp(spec: ClusterSpec) -> CheckResult:
    """TCP from here to VIP:port reaches HAProxy through the LVS-DR path."""
    start = time.monotonic()
    target = f"VIP {spec.vip}:{spec.settings.apiserver_port}"
    try:
        with socket.create_connection((str(spec.vip), spec.settings.apiserver_port),
                                      timeout=CONNECT_TIMEOUT):
            pass
    except OSError as exc:
        return failed(target, f"TCP connect failed: {error_text(exc)}", start)
    return passed(target, "TCP connect ok (LVS-DR → HAProxy)", start)
