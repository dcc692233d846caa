"""HAProxy nodes: DR real servers (VIP on lo, ARP sysctls, persistent) in front of the
apiservers, haproxy.cfg validated by `haproxy -c` before the swap, reloaded without dropping
connections (the Debian unit's reload is a seamless master-worker reload)."""

from __future__ import annotations

from pathlib import Path

from nornir.core.task import Result, Task

from nornir_k8sha import constants as C
from nornir_k8sha.tasks import host as H
from nornir_k8sha.tasks.component import apply_component, upload_pki
from nornir_k8sha.topology import ClusterSpec

PACKAGES = ["haproxy"]


def configure_realserver(task: Task, spec: ClusterSpec, *, dry_run: bool | None = None) -> Result:
    """VIP/32 on lo and arp_ignore=1 / arp_announce=2, applied now and at every boot."""
    H.honour_dry_run(task, dry_run)
    return apply_component(task, spec, "realserver")


def configure(task: Task, spec: ClusterSpec, state_dir: Path, *,
              dry_run: bool | None = None) -> Result:
    """Packages, the real-server VIP, the cluster CA the health checks verify apiservers with
    (placed before haproxy.cfg is validated: `haproxy -c` opens it), then haproxy.cfg."""
    H.honour_dry_run(task, dry_run)
    pk = H.packages(task, names=PACKAGES)
    rs = configure_realserver(task, spec)
    ca = upload_pki(task, spec, state_dir, under=C.HAPROXY_PKI_DIR)
    cfg = apply_component(task, spec, "haproxy", services={"haproxy": "reload"})
    if ca and not cfg.changed and not task.is_dry_run():
        H.service(task, name="haproxy", state="reloaded")  # a new CA is read on reload only
    return Result(
        host=task.host,
        changed=bool(pk.changed or rs.changed or ca or cfg.changed),
        diff="\n".join(d for d in (rs.diff, cfg.diff) if d),
        result="; ".join(x for x in (str(rs.result), str(cfg.result)) if x),
    )


def check(task: Task, spec: ClusterSpec) -> Result:
    """This node's view of the apiserver backends, from its own stats page (read-only):
    `result` maps server name → status (UP/DOWN/MAINT...)."""
    from nornir_k8sha.checks import parse_haproxy_csv

    me = spec.host(task.host.name)
    url = f"http://{me.address}:{spec.settings.haproxy.stats_port}/stats;csv"
    out = H.connect(task).run(f"curl -fsS --max-time 2 '{url}'").stdout
    return Result(host=task.host, result=parse_haproxy_csv(out))
