"""`pki renew`: re-issue the certificates that expire within a window with the EXISTING CAs and
roll them out one host at a time, so etcd keeps its quorum and HAProxy always has a healthy
apiserver to send requests to.

What is renewed: in the state dir, every leaf of our PKI expiring within the window (etcd
server/peer per member, apiserver-etcd-client, healthcheck-client, admin, registry server);
on each master, kubeadm's own apiserver serving certificate when it expires within the window
(same subject and SANs, signed by the same cluster CA). CAs never change, so every client keeps
trusting every server throughout.

The order, each host finished (healthy by the same check `check` uses) before the next starts:
1. etcd members, followers first; the leader hands leadership to a renewed follower
   (`etcdctl move-leader`) before its own restart, so there is no election;
2. masters: apiserver-etcd-client and the serving certificate, then the apiserver restarted as
   kubeadm's kubelet does it (manifest out, apiserver gone, manifest back) and awaited healthy;
   HAProxy sends requests to the other apiservers meanwhile;
3. the registry hosts (their configure task restarts the registry on a changed certificate).
A host that does not come back stops the rollout; the hosts not reached yet keep their old,
still valid, certificates, and the message names the host.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import httpx
from nornir.core import Nornir
from nornir.core.task import Result, Task

from nornir_k8sha import constants as C
from nornir_k8sha.checkresult import CheckResult
from nornir_k8sha.exceptions import CommandFailed
from nornir_k8sha.pki import CertStatus, ClusterPKI, days_left_of, reissue
from nornir_k8sha.polling import poll_until
from nornir_k8sha.tasks import apiserver, etcd, faults, harbor
from nornir_k8sha.tasks import host as H
from nornir_k8sha.tasks.component import upload_pki
from nornir_k8sha.tasks.etcd_backup import etcdctl, member_checks
from nornir_k8sha.tasks.one_host import run_on
from nornir_k8sha.topology import ClusterSpec

Say = Callable[[str], None]
APISERVER = "kube-apiserver"
#: Bounds (seconds): an etcd member back healthy, an apiserver gone / back after its restart.
ETCD_BACK_S = 60.0
APISERVER_GONE_S = 30.0
APISERVER_BACK_S = 90.0
POLL_S = 0.25


@dataclass
class Plan:
    """What `pki renew` changes: the local leaves, and each master's apiserver certificate
    (master -> days it had left) to re-issue."""

    local: list[CertStatus]
    apiserver: dict[str, int]
    within_days: int

    @property
    def names(self) -> list[str]:
        return [s.name for s in self.local] + [f"{m}: apiserver" for m in self.apiserver]

    def hosts(self, spec: ClusterSpec) -> dict[str, list[str]]:
        """Role -> the hosts to roll out to, in order (etcd leader order is decided later)."""
        renewed = {s.name for s in self.local}
        etcd = [m.name for m in spec.role(C.ROLE_ETCD)
                if {f"etcd/members/{m.name}/server", f"etcd/members/{m.name}/peer"} & renewed]
        client = "etcd/apiserver-etcd-client" in renewed
        masters = [m.name for m in spec.role(C.ROLE_MASTERS)
                   if client or m.name in self.apiserver]
        registry = [h.name for h in spec.role(C.ROLE_HARBOR)] if "registry/server" in renewed \
            else []
        return {C.ROLE_ETCD: etcd, C.ROLE_MASTERS: masters, C.ROLE_HARBOR: registry}


@dataclass
class Renewal:
    plan: Plan
    #: host -> seconds from its restart to healthy, in rollout order.
    rolled: dict[str, float] = field(default_factory=dict)


def _apiserver_cert(task: Task) -> Result:
    return Result(host=task.host, result=H.connect(task).get(C.KUBE_APISERVER_CERT))


def plan(nr: Nornir, spec: ClusterSpec, state_dir: Path, within_days: int) -> Plan:
    """Read-only: what would be renewed (the local leaves; each master's apiserver cert)."""
    local = ClusterPKI(spec, state_dir).renew(within_days, dry_run=True)
    apis: dict[str, int] = {}
    for m in spec.role(C.ROLE_MASTERS):
        pem = run_on(nr, m.name, _apiserver_cert)
        if pem is None:
            continue  # not initialised yet: kubeadm will make a fresh one
        days = days_left_of(pem)  # type: ignore[arg-type]
        if days < within_days:
            apis[m.name] = days
    return Plan(local, apis, within_days)


def renew(nr: Nornir, spec: ClusterSpec, state_dir: Path, within_days: int, *,
          say: Say = print, transport: httpx.BaseTransport | None = None) -> Renewal:
    """Renew and roll out (see the module). Raises CommandFailed/TimeoutError naming the host
    that failed; PKIError when the local PKI is incomplete (nothing touched then)."""
    wanted = plan(nr, spec, state_dir, within_days)
    done = Renewal(wanted)
    if not wanted.names:
        return done
    pki = ClusterPKI(spec, state_dir)
    wanted.local = pki.renew(within_days)
    for s in wanted.local:
        say(f"renewed {s.name} ({s.reason}); now until {s.not_after:%Y-%m-%d}")
    hosts = wanted.hosts(spec)
    for member in _etcd_order(nr, spec, state_dir, hosts[C.ROLE_ETCD], transport):
        if member_checks(nr, spec, state_dir, transport)[member].values.get("is_leader"):
            to = hand_over_leadership(nr, spec, state_dir, member, transport)
            say(f"{member}: etcd leadership handed over to {to} before the restart")
        start = time.monotonic()
        run_on(nr, member, _place, spec=spec, state_dir=state_dir, under=C.ETCD_PKI_DIR,
             owner=f"{C.ETCD_USER}:{C.ETCD_USER}", restart="etcd")
        _wait_etcd(nr, spec, state_dir, member, transport)
        done.rolled[member] = time.monotonic() - start
        say(f"{member}: etcd restarted with its new certificates, all members healthy "
            f"after {done.rolled[member]:.1f} s")
    for master in hosts[C.ROLE_MASTERS]:
        if master in wanted.apiserver:
            pem = run_on(nr, master, _apiserver_cert)
            cert, key = reissue(pem, pki.kubernetes_ca)  # type: ignore[arg-type]
            run_on(nr, master, _put_apiserver_cert, cert=cert, key=key)
            say(f"{master}: apiserver serving certificate re-issued (had "
                f"{wanted.apiserver[master]} days)")
        run_on(nr, master, _place, spec=spec, state_dir=state_dir, under=C.KUBERNETES_PKI_DIR,
             owner="root:root", restart="")
        start = time.monotonic()
        restart_apiserver(nr, spec, state_dir, master, transport)
        done.rolled[master] = time.monotonic() - start
        say(f"{master}: apiserver restarted, healthy after {done.rolled[master]:.1f} s")
    for registry in hosts[C.ROLE_HARBOR]:
        start = time.monotonic()
        run_on(nr, registry, harbor.configure_registry, spec=spec, state_dir=state_dir)
        done.rolled[registry] = time.monotonic() - start
        say(f"{registry}: registry restarted with its new certificate")
    return done


def _place(task: Task, spec: ClusterSpec, state_dir: Path, under: str, owner: str,
           restart: str) -> Result:
    """Upload this host's renewed files under `under`; restart `restart` when they changed."""
    changed = upload_pki(task, spec, state_dir, under=under, owner=owner)
    if changed and restart:
        H.service(task, name=restart, state="restarted")
    return Result(host=task.host, changed=bool(changed), result=changed)


def _put_apiserver_cert(task: Task, cert: bytes, key: bytes) -> Result:
    H.file(task, path=C.KUBE_APISERVER_KEY, content=key, mode=0o600)
    H.file(task, path=C.KUBE_APISERVER_CERT, content=cert, mode=0o644)
    return Result(host=task.host, changed=True)


# --- etcd -------------------------------------------------------------------------------------


def _etcd_order(nr: Nornir, spec: ClusterSpec, state_dir: Path, members: list[str],
                transport: httpx.BaseTransport | None) -> list[str]:
    """Followers first, the leader last (members not healthy now: refused, nothing restarted:
    restarting one more would risk the quorum)."""
    if not members:
        return []
    checks = member_checks(nr, spec, state_dir, transport)
    sick = sorted(n for n in checks if not checks[n].values.get("healthy"))
    if sick:
        raise CommandFailed(sick[0], "etcd health", 1, f"etcd members not healthy before the "
                            f"rollout: {', '.join(sick)}; no member was restarted")
    leaders = [n for n in members if checks[n].values.get("is_leader")]
    return [n for n in members if n not in leaders] + leaders


def _wait_etcd(nr: Nornir, spec: ClusterSpec, state_dir: Path, member: str,
               transport: httpx.BaseTransport | None) -> None:
    """Every member healthy again with one leader; a restarted leader hands over first."""

    def all_healthy(checks: dict[str, CheckResult]) -> bool:
        return bool(checks) and all(r.ok for r in etcd.assess(spec, checks))

    def not_back(checks: dict[str, CheckResult]) -> TimeoutError:
        bad = ", ".join(f"{n}: {r.message}" for n, r in sorted(checks.items()) if not r.ok)
        return TimeoutError(f"{member}: etcd not healthy {ETCD_BACK_S:.0f} s after its "
                            f"restart ({bad}); the members after it were not restarted")

    poll_until(lambda: member_checks(nr, spec, state_dir, transport), all_healthy,
               timeout=ETCD_BACK_S, interval=POLL_S, error=not_back)


def hand_over_leadership(nr: Nornir, spec: ClusterSpec, state_dir: Path, leader: str,
                         transport: httpx.BaseTransport | None = None) -> str:
    """`etcdctl move-leader` from `leader` to a healthy follower; the follower's name."""
    checks = member_checks(nr, spec, state_dir, transport)
    target = next(n for n in sorted(checks) if n != leader and checks[n].values.get("healthy"))
    target_id = format(int(checks[target].values["member_id"]), "x")
    run_on(nr, leader, _commands, commands=[etcdctl(spec, "move-leader", target_id)])
    return target


def _commands(task: Task, commands: list[str]) -> Result:
    return Result(host=task.host, result=H.connect(task).run_batch(commands))


# --- apiserver --------------------------------------------------------------------------------


def restart_apiserver(nr: Nornir, spec: ClusterSpec, state_dir: Path, master: str,
                       transport: httpx.BaseTransport | None) -> None:
    """Manifest out, wait until the apiserver is gone, manifest back, wait until healthy."""
    try:
        run_on(nr, master, faults.stop_static_pod, component=APISERVER)
        _until(nr, spec, state_dir, master, transport, healthy=False, within=APISERVER_GONE_S)
    finally:
        run_on(nr, master, faults.start_static_pod, component=APISERVER)
    _until(nr, spec, state_dir, master, transport, healthy=True, within=APISERVER_BACK_S)


def _until(nr: Nornir, spec: ClusterSpec, state_dir: Path, master: str,
           transport: httpx.BaseTransport | None, *, healthy: bool, within: float) -> None:
    """Until `master`'s apiserver check is `healthy` (True) or not (False: it has stopped)."""
    what = "healthy" if healthy else "stopped"
    poll_until(lambda: _check_quietly(nr, spec, state_dir, master, transport),
               lambda res: res is not None and res.ok == healthy, timeout=within,
               interval=POLL_S, error=lambda _: TimeoutError(
                   f"{master}: apiserver not {what} {within:.0f} s after its restart; the "
                   "masters after it were not restarted"))


def _check_quietly(nr: Nornir, spec: ClusterSpec, state_dir: Path, master: str,
                   transport: httpx.BaseTransport | None) -> CheckResult | None:
    """apiserver.check of one master (a failed check is an answer here, not an error)."""
    multi = nr.filter(name=master).run(task=apiserver.check, spec=spec, state_dir=state_dir,
                                       transport=transport, on_failed=True)[master]
    return multi[0].result if isinstance(multi[0].result, CheckResult) else None

