"""HAProxy nodes: DR real servers (VIP on lo, ARP sysctls, persistent) in front of the
apiservers, haproxy.cfg validated by `haproxy -c` before the swap, reloaded without dropping
connections (the Debian unit's reload is a seamless master-worker reload)."""

from __future__ import annotations

import threading
import time
from collections.abc import Mapping
from contextlib import nullcontext
from pathlib import Path

import httpx
from nornir.core.task import Result, Task

from nornir_k8sha import constants as C
from nornir_k8sha.checkresult import failed, passed
from nornir_k8sha.clients import error_text, parse_haproxy_csv, plain_client
from nornir_k8sha.tasks import host as H
from nornir_k8sha.tasks.component import apply_component, probe, upload_pki
from nornir_k8sha.topology import ClusterSpec

PACKAGES = ["haproxy"]


def configure_realserver(task: Task, spec: ClusterSpec, *, dry_run: bool | None = None,
                         known_units: Mapping[str, Mapping[str, str]] | None = None) -> Result:
    """VIP/32 on lo and arp_ignore=1 / arp_announce=2, applied now and at every boot.
    `known_units`: as in `apply_component`."""
    H.honour_dry_run(task, dry_run)
    return apply_component(task, spec, "realserver", known_units=known_units)


def configure(task: Task, spec: ClusterSpec, state_dir: Path, *,
              dry_run: bool | None = None, one_at_a_time: threading.Lock | None = None
              ) -> Result:
    """Packages, the real-server VIP, the cluster CA the health checks verify apiservers with
    (placed before haproxy.cfg is validated: `haproxy -c` opens it), then haproxy.cfg.
    `one_at_a_time`: shared by the HAProxy nodes of one deploy, held around a reload of a
    running haproxy (a new master changes every node's backend list: they reload one after
    the other; a node not serving yet starts at once)."""
    H.honour_dry_run(task, dry_run)
    probed = probe(task, PACKAGES, ["haproxy", C.REALSERVER_SERVICE])
    pk = H.packages(task, names=PACKAGES, known=probed.packages)
    rs = configure_realserver(task, spec, known_units=None if pk.changed else probed.units)
    ca = upload_pki(task, spec, state_dir, under=C.HAPROXY_PKI_DIR)
    cfg = apply_component(task, spec, "haproxy", services={"haproxy": "reload"},
                          known_units=None if pk.changed or rs.changed or ca else probed.units,
                          one_at_a_time=one_at_a_time)
    if ca and not cfg.changed and not task.is_dry_run():
        with one_at_a_time or nullcontext():
            H.service(task, name="haproxy", state="reloaded")  # a new CA is read on reload
    return Result(
        host=task.host,
        changed=bool(pk.changed or rs.changed or ca or cfg.changed),
        diff="\n".join(d for d in (rs.diff, cfg.diff) if d),
        result="; ".join(x for x in (str(rs.result), str(cfg.result)) if x),
    )


def check(task: Task, spec: ClusterSpec, *,
          transport: httpx.BaseTransport | None = None) -> Result:
    """This node's view of the apiserver backends, from its stats page (CSV over HTTP from
    here: no SSH round trip). `result` is a CheckResult with values up and down (server
    names); no backend up fails. Read-only; `transport` is the test seam."""
    start = time.monotonic()
    me = spec.host(task.host.name)
    try:
        with plain_client(transport) as client:
            resp = client.get(f"http://{me.address}:{spec.settings.haproxy.stats_port}/stats;csv")
            resp.raise_for_status()
    except httpx.HTTPError as exc:
        res = failed(me.name, f"stats unreachable: {error_text(exc)}", start)
        return Result(host=task.host, result=res, failed=True)
    servers = parse_haproxy_csv(resp.text)
    up = sorted(s for s, st in servers.items() if st.startswith("UP"))
    down = sorted(s for s, st in servers.items() if not st.startswith("UP"))
    if not up:
        res = failed(me.name, f"serving, but no apiserver backend is up "
                     f"(down: {', '.join(down) or 'none configured'})", start, up=up, down=down)
    else:
        res = passed(me.name, f"backends up: {', '.join(up)}"
                     + (f"; down: {', '.join(down)}" if down else ""), start, up=up, down=down)
    return Result(host=task.host, result=res, failed=not res.ok)
