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
#: Load IPVS and prove it is there (before keepalived programs it): `/proc/net/ip_vs` exists
#: once IPVS is in the kernel, as a module or built in (a built-in one is not in /proc/modules,
#: which this read before). Only shell tests when it is there: no process besides the shell,
#: where `modprobe` + `grep` cost a UML director 26 ms on every run.
IP_VS = f"[ -e {C.PROC_IPVS} ] || modprobe ip_vs 2>/dev/null; [ -e {C.PROC_IPVS} ]"
#: How IPVS treats a connection entry whose real server is drained (weight 0) or gone, as
#: kube-proxy's IPVS mode sets them (docs/runbooks.md, "Draining an HAProxy node"):
#: - expire_nodest_conn: a new connection (SYN) whose client port matches an old entry to a
#:   weight-0 real server is scheduled afresh instead of going to the drained node. In DR mode
#:   the director sees only the client's half, so the entries of closed connections stay in
#:   FIN_WAIT for 120 s and a reused port hits them (conn_reuse_mode 1 reschedules only
#:   TIME_WAIT); measured on the lab: 35 of 39 ports reused within 120 s went to the same
#:   node, drained or not. It also expires, instead of silently dropping, the packets of a
#:   connection whose real server keepalived removed, so its client learns at once.
#: - expire_quiescent_template: the same for persistence templates (`lvs.persistence_timeout`).
IPVS_SYSCTLS = {
    "net.ipv4.vs.expire_nodest_conn": "1",
    "net.ipv4.vs.expire_quiescent_template": "1",
}
#: C.LVS_IPVS_MODULES: ip_vs at boot, so that systemd-sysctl finds the keys above.
IPVS_MODULES_CONTENT = "ip_vs\n"


def configure(task: Task, spec: ClusterSpec, *, dry_run: bool | None = None) -> Result:
    """Packages, the ip_vs module (now and at boot), the IPVS sysctls, keepalived.conf
    (validated by `keepalived -t`), reload."""
    H.honour_dry_run(task, dry_run)
    # after the module load (its keys exist then), in the same exec channel: the IPVS files'
    # contents and the live sysctls; when all hold, they cost no round trip of their own
    ipvs_probes = [f"cat {C.LVS_IPVS_MODULES} {C.LVS_IPVS_SYSCTL} 2>/dev/null",
                   *H.sysctl_probes(IPVS_SYSCTLS)]
    probed = probe(task, PACKAGES, ["keepalived"],
                   [] if task.is_dry_run() else [IP_VS, *ipvs_probes])
    pk = H.packages(task, names=PACKAGES, known=probed.packages)
    load, files, live = probed.extra[:1], probed.extra[1:2], probed.extra[2:]  # none: dry run
    for r in load:  # the module load
        if not r.ok:
            raise CommandFailed(task.host.name, r.command, r.exit_code, r.stderr)
    in_place = (not pk.changed and bool(files) and files[0].stdout == IPVS_MODULES_CONTENT
                + H.sysctl_content(IPVS_SYSCTLS) and not H.sysctls_differing(IPVS_SYSCTLS, live))
    done = []
    if not in_place:
        for step in (H.file(task, path=C.LVS_IPVS_MODULES, content=IPVS_MODULES_CONTENT),
                     H.sysctl(task, settings=IPVS_SYSCTLS, path=C.LVS_IPVS_SYSCTL)):
            done += [step] if step.changed else []
    r = apply_component(task, spec, "keepalived", services={"keepalived": "reload"},
                        known_units=None if pk.changed else probed.units)
    r.changed = r.changed or bool(pk.changed) or bool(done)
    r.diff = "\n".join(d for d in (*(s.diff for s in done), r.diff) if d)
    if done:
        r.result = ", ".join([C.LVS_IPVS_SYSCTL, *([] if r.result == "unchanged" else [r.result])])
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
