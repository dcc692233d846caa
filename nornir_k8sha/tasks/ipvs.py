"""IPVS on an LVS director, for maintenance: drain a real server (weight 0) and read back
its weight and connections. keepalived programs the table; these edit it in place, and
keepalived's own health check re-adds a real server with its configured weight when it comes
back, so a drain is undone by the next check state change or by `set_weight` again.
"""

from __future__ import annotations

import ipaddress
import re
import time

from nornir.core.task import Result, Task

from nornir_k8sha.checkresult import failed, passed
from nornir_k8sha.exceptions import CommandFailed
from nornir_k8sha.tasks import host as H
from nornir_k8sha.topology import ClusterSpec

#: `  -> 10.88.0.21:6443   Route   1   3   0` in `ipvsadm -Ln`.
_RS_LINE = re.compile(r"^\s*->\s+(\S+):(\d+)\s+(\S+)\s+(\d+)\s+(\d+)\s+(\d+)\s*$")


def _address(spec: ClusterSpec, real_server: str) -> str:
    names = {h.name: str(h.address) for h in spec.hosts}
    addr = names.get(real_server, real_server)
    try:
        return str(ipaddress.IPv4Address(addr))
    except ValueError:
        raise ValueError(f"real server {real_server!r} is neither a host of the inventory nor "
                         "an IPv4 address") from None


def _service(spec: ClusterSpec) -> str:
    return f"{spec.vip}:{spec.settings.apiserver_port}"


def set_weight(task: Task, spec: ClusterSpec, real_server: str, weight: int) -> Result:
    """Set the weight of one real server of the VIP's service on this director (0 drains it:
    no new connection goes there, existing ones finish)."""
    if not 0 <= int(weight) <= 65535:
        raise ValueError(f"weight {weight!r} out of range 0-65535")
    rs = f"{_address(spec, real_server)}:{spec.settings.apiserver_port}"
    cmd = f"ipvsadm -e -t {_service(spec)} -r {rs} -g -w {int(weight)}"
    if task.is_dry_run():
        return Result(host=task.host, changed=True, result=f"would run: {cmd}")
    out = H.connect(task).run(cmd, check=False)
    if out.exit_code != 0 and "No such destination" in out.stderr:
        # keepalived took it out when its health check failed (HAProxy stopped) and puts it
        # back itself, with its configured weight, once the check passes again
        return Result(host=task.host, changed=False,
                      result=f"{rs} not in the IPVS table: keepalived re-adds it when its "
                             "check passes")
    if out.exit_code != 0:
        raise CommandFailed(task.host.name, cmd, out.exit_code, out.stderr)
    return Result(host=task.host, changed=True, result=f"{rs} weight {int(weight)}")


def real_server(task: Task, spec: ClusterSpec, real_server: str) -> Result:
    """One real server as this director's IPVS sees it. `result` is a CheckResult with values
    present, weight, active, inactive (connections); absent is ok (keepalived took it out)."""
    start = time.monotonic()
    addr = _address(spec, real_server)
    out = H.connect(task).run(f"ipvsadm -Ln -t {_service(spec)}", check=False)
    if out.exit_code != 0:
        res = failed(task.host.name, f"ipvsadm: {out.stderr.strip() or out.exit_code}", start)
        return Result(host=task.host, result=res, failed=True)
    for line in out.stdout.splitlines():
        m = _RS_LINE.match(line)
        if m and m.group(1) == addr:
            weight, active, inactive = (int(m.group(i)) for i in (4, 5, 6))
            res = passed(task.host.name, f"{addr}: weight {weight}, {active} active, "
                         f"{inactive} inactive connection(s)", start, present=True,
                         weight=weight, active=active, inactive=inactive)
            return Result(host=task.host, result=res)
    res = passed(task.host.name, f"{addr}: not in the IPVS table", start, present=False,
                 weight=0, active=0, inactive=0)
    return Result(host=task.host, result=res)
