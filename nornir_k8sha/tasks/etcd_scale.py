"""Grow and shrink a RUNNING etcd cluster to the inventory's members, one member at a time,
keeping quorum at every step (`deploy` after the inventory's `etcd` group changed).

- `observe`: the running cluster as etcd itself lists it (names, IDs, URLs, learners), each
  member's `/health` and the leader — read-only, over mTLS from here; None when nothing runs.
- `grow`: each new member joins as a LEARNER through `etcd_replace.join_as_learner` (the one
  implementation `etcd replace` uses too: etcd allows one learner at a time), then the next.
- `point_apiservers`: every master's kube-apiserver `--etcd-servers` set to the inventory's
  members, one master at a time (the apiserver restarted as `pki renew` does it and awaited
  healthy before the next: HAProxy always has an apiserver).
- `shrink`: members no longer in the inventory leave one at a time (a leader first hands its
  leadership to a member that stays), then their etcd is stopped and disabled and their data dir
  moved aside (a removed member ID can never rejoin with it).
The rule saying whether a change may be tried at all is the topology's
(`topology.etcd_membership_plan`); after every step the cluster is observed again and said.
"""

from __future__ import annotations

import json
import re
import shlex
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import cast
from urllib.parse import urlsplit

import httpx
import yaml
from nornir.core import Nornir
from nornir.core.inventory import Host
from nornir.core.task import Result, Task

from nornir_k8sha import constants as C
from nornir_k8sha.clients import api_client, etcd_http_client
from nornir_k8sha.exceptions import CommandFailed, K8shaError
from nornir_k8sha.pki import ClusterPKI
from nornir_k8sha.polling import poll_until
from nornir_k8sha.tasks import etcd
from nornir_k8sha.tasks import host as H
from nornir_k8sha.tasks.etcd_backup import etcdctl
from nornir_k8sha.tasks.etcd_replace import (
    UNHEALTHY,
    join_as_learner,
    retry_while,
    run_batch_on,
)
from nornir_k8sha.tasks.one_host import run_on
from nornir_k8sha.tasks.pki_renew import restart_apiserver
from nornir_k8sha.topology import (
    ClusterSpec,
    EtcdMembershipPlan,
    etcd_membership_plan,
    etcd_quorum,
)

Say = Callable[[str], None]
#: Bound (seconds) for every member to be healthy again after a step.
SETTLE_S = 60.0
POLL_S = 0.5
APISERVER_MANIFEST = f"{C.K8S_MANIFESTS_DIR}/kube-apiserver.yaml"
KUBEADM_CONFIG = "/api/v1/namespaces/kube-system/configmaps/kubeadm-config"
MERGE_PATCH = "application/merge-patch+json"
_ETCD_SERVERS = re.compile(r"--etcd-servers=([^\s\"']+)")


@dataclass(frozen=True)
class Member:
    """One member as the running cluster lists it."""

    id: int
    name: str
    peer: str
    client: str
    learner: bool = False
    healthy: bool = False

    @property
    def hex_id(self) -> str:
        return format(self.id, "x")

    @property
    def address(self) -> str:
        return urlsplit(self.peer).hostname or ""


@dataclass(frozen=True)
class Observed:
    """The running cluster: its members and the leader's ID (0: none seen)."""

    members: tuple[Member, ...]
    leader: int = 0

    def named(self, name: str) -> Member | None:
        return next((m for m in self.members if m.name == name), None)

    @property
    def healthy(self) -> list[str]:
        return [m.name for m in self.members if m.healthy]

    @property
    def learners(self) -> list[Member]:
        """Members that never became voters (an earlier join that did not finish)."""
        return [m for m in self.members if m.learner]

    def plan(self, spec: ClusterSpec) -> EtcdMembershipPlan:
        """The topology's rule over the VOTING members (a learner has no vote: `grow` takes a
        leftover one out and starts its join again)."""
        voters = [m for m in self.members if not m.learner]
        return etcd_membership_plan([m.name for m in voters],
                                    [m.name for m in voters if m.healthy],
                                    [h.name for h in spec.role(C.ROLE_ETCD)])

    def summary(self) -> str:
        """`4 members (etcd1*, etcd2, ...), 4 healthy, quorum 3`: * the leader, ~ a learner."""
        names = ", ".join(m.name + ("*" if m.id == self.leader else "")
                          + ("~" if m.learner else "") + ("" if m.healthy else " (down)")
                          for m in self.members)
        return (f"{len(self.members)} members ({names}), {len(self.healthy)} healthy, "
                f"quorum {etcd_quorum(len(self.members))}")


def observe(spec: ClusterSpec, state_dir: Path,
            transport: httpx.BaseTransport | None = None) -> Observed | None:
    """The running cluster, asked through the inventory's members (the first that lists it);
    None when none answers (a fresh deploy) or there is no PKI yet to ask with."""
    if transport is None and not ClusterPKI(spec, state_dir).healthcheck_client.key.exists():
        return None
    port = spec.settings.etcd.client_port
    with etcd_http_client(spec, state_dir, transport) as client:
        listed = None
        for h in spec.role(C.ROLE_ETCD):
            try:
                listed = client.post(f"https://{h.address}:{port}/v3/cluster/member/list",
                                     json={}).json()
                break
            except (httpx.HTTPError, ValueError):
                continue
        if listed is None:
            return None
        members, leader = [], 0
        for m in listed.get("members", []):
            client_url = (m.get("clientURLs") or [""])[0]
            healthy = bool(client_url) and etcd.answers_healthy(client, client_url)
            if healthy and not leader:
                try:
                    status = client.post(f"{client_url}/v3/maintenance/status",
                                         json={}).json()
                    leader = int(status.get("leader", 0) or 0)
                except (httpx.HTTPError, ValueError):
                    healthy = False
            members.append(Member(int(m.get("ID", 0)), str(m.get("name", "")),
                                  (m.get("peerURLs") or [""])[0], client_url,
                                  bool(m.get("isLearner")), healthy))
    return Observed(tuple(members), leader)


def settled(spec: ClusterSpec, state_dir: Path, want: Iterable[str],
            transport: httpx.BaseTransport | None = None, timeout: float = SETTLE_S
            ) -> Observed:
    """Wait until the cluster is exactly `want`, every member a healthy voter with a leader."""
    wanted = sorted(want)

    def done(seen: Observed | None) -> bool:
        return seen is not None and sorted(m.name for m in seen.members) == wanted \
            and bool(seen.leader) and all(m.healthy and not m.learner for m in seen.members)

    return cast(Observed, poll_until(  # `done` rules out None
        lambda: observe(spec, state_dir, transport), done, timeout=timeout, interval=POLL_S,
        error=lambda seen: TimeoutError(f"etcd did not settle as {', '.join(wanted)} within "
                                        f"{timeout:.0f} s: "
                                        f"{seen.summary() if seen else 'no answer'}")))


def _helper(spec: ClusterSpec, seen: Observed, avoid: Iterable[str] = ()) -> str:
    """A healthy voting member of the inventory to run etcdctl on, the leader preferred."""
    ours = {h.name for h in spec.role(C.ROLE_ETCD)} - set(avoid)
    fit = [m for m in seen.members if m.name in ours and m.healthy and not m.learner]
    if not fit:
        raise K8shaError("etcd: no healthy member of the inventory to run etcdctl on")
    return next((m.name for m in fit if m.id == seen.leader), fit[0].name)


def grow(nr: Nornir, spec: ClusterSpec, state_dir: Path, plan: EtcdMembershipPlan, *,
         say: Say = print, transport: httpx.BaseTransport | None = None,
         retry_every: float = 1.0) -> list[str]:
    """Each member of `plan.adds` joins as a learner and is promoted, one at a time; after each
    the cluster is awaited healthy and said. Returns the summaries after each step."""
    after: list[str] = []
    members = list(plan.running)
    _clear_learners(nr, spec, state_dir, say, transport, retry_every)
    for name in plan.adds:
        seen = settled(spec, state_dir, members, transport)
        join_as_learner(nr, spec, _helper(spec, seen), name, say=say, retry_every=retry_every)
        members.append(name)
        now = settled(spec, state_dir, members, transport).summary()
        say(f"{name} joined: {now}")
        after.append(now)
    return after


def _clear_learners(nr: Nornir, spec: ClusterSpec, state_dir: Path, say: Say,
                    transport: httpx.BaseTransport | None, retry_every: float) -> None:
    """A learner left by a join that did not finish blocks every other join (one learner at a
    time): it is removed, and on its host (when in the inventory) etcd is stopped and its data
    dir moved aside, so that its join can start again."""
    seen = observe(spec, state_dir, transport)
    if seen is None:
        return
    ours = {h.name for h in spec.role(C.ROLE_ETCD)}
    stamp = time.strftime("%Y%m%dT%H%M%SZ", time.gmtime())
    for left in seen.learners:
        helper = _helper(spec, seen, avoid=[left.name])
        say(f"remove learner {left.name or left.peer} (ID {left.hex_id}) left by an unfinished "
            "join")
        retry_while(nr, helper, etcdctl(spec, "member", "remove", left.hex_id), UNHEALTHY,
                    SETTLE_S, retry_every)
        if left.name in ours:
            data_dir = spec.settings.etcd.data_dir
            run_batch_on(nr, left.name, [
                "systemctl stop etcd",
                f"if [ -e {shlex.quote(data_dir)} ]; then mv {shlex.quote(data_dir)} "
                f"{shlex.quote(f'{data_dir}.unfinished-join-{stamp}')}; fi"])


def shrink(nr: Nornir, spec: ClusterSpec, state_dir: Path, plan: EtcdMembershipPlan, *,
           say: Say = print, transport: httpx.BaseTransport | None = None,
           now: float | None = None, retry_every: float = 1.0) -> dict[str, str]:
    """Each member of `plan.removes` leaves, one at a time (see the module); returns member ->
    the cluster's summary after it left (a member already gone is not in it)."""
    after: dict[str, str] = {}
    members = list(plan.wanted) + list(plan.removes)
    stamp = time.strftime("%Y%m%dT%H%M%SZ", time.gmtime(time.time() if now is None else now))
    for name in plan.removes:
        seen = observe(spec, state_dir, transport)
        gone = seen.named(name) if seen else None
        if seen is None or gone is None:
            members.remove(name)
            continue
        helper = _helper(spec, seen, avoid=[name])
        if gone.id == seen.leader:
            to = next(m for m in seen.members if m.name == helper)
            urls = ",".join(m.client for m in seen.members if m.client)
            run_batch_on(nr, helper, [etcdctl(spec, "move-leader", to.hex_id,
                                              f"--endpoints={urls}")])
            say(f"{name} led the cluster: leadership moved to {helper} first")
        say(f"remove member {name} (ID {gone.hex_id}) via {helper}")
        retry_while(nr, helper, etcdctl(spec, "member", "remove", gone.hex_id), UNHEALTHY,
               SETTLE_S, retry_every)
        members.remove(name)
        say(retire(nr, name, gone.address, spec.settings.etcd.data_dir, stamp))
        summary = settled(spec, state_dir, members, transport).summary()
        say(f"{name} removed: {summary}")
        after[name] = summary
    return after


def retire(nr: Nornir, name: str, address: str, data_dir: str, stamp: str) -> str:
    """Stop and disable etcd (and its snapshot timer) on a removed member and move its data dir
    aside. It is no longer in the inventory: reached at its address with the inventory's
    defaults. What happened, as a sentence (an unreachable host is said, not raised: the
    member has left the cluster already, and its old ID can never rejoin it)."""
    if name not in nr.inventory.hosts:
        nr.inventory.hosts[name] = Host(name=name, hostname=address,
                                        defaults=nr.inventory.defaults)
    aside = f"{data_dir}.removed-{stamp}"
    try:
        run_batch_on(nr, name, [f"systemctl disable --now etcd {C.ETCD_BACKUP_TIMER_UNIT}",
                        f"if [ -e {shlex.quote(data_dir)} ]; then mv {shlex.quote(data_dir)} "
                        f"{shlex.quote(aside)}; fi"])
    except K8shaError as exc:
        return (f"{name}: could not stop etcd or move its data dir ({exc}); do it by hand "
                "before the host is reused")
    return f"{name}: etcd stopped and disabled, its data dir moved to {aside}"


# --- the apiservers' etcd endpoints ---------------------------------------------------------


def _manifest(task: Task) -> Result:
    data = H.connect(task).get(APISERVER_MANIFEST)
    return Result(host=task.host, result=None if data is None else data.decode())


def _set_servers(task: Task, endpoints: str) -> Result:
    conn = H.connect(task)
    text = (conn.get(APISERVER_MANIFEST) or b"").decode()
    conn.put(_ETCD_SERVERS.sub(f"--etcd-servers={endpoints}", text).encode(),
             APISERVER_MANIFEST, 0o600)
    return Result(host=task.host, changed=True)


def stale_apiservers(nr: Nornir, spec: ClusterSpec) -> dict[str, str]:
    """master -> the `--etcd-servers` its apiserver manifest has, for every initialised master
    whose list is not the inventory's members."""
    want = ",".join(spec.etcd_endpoints())
    masters = [m.name for m in spec.role(C.ROLE_MASTERS)]
    agg = nr.filter(filter_func=lambda h: h.name in masters).run(task=_manifest, on_failed=True)
    out = {}
    for name in masters:
        multi = agg.get(name)
        text = multi[0].result if multi is not None and not multi.failed else None
        found = _ETCD_SERVERS.search(text) if isinstance(text, str) else None
        if found and found.group(1) != want:
            out[name] = found.group(1)
    return out


def point_kubeadm_config(spec: ClusterSpec, state_dir: Path,
                         transport: httpx.BaseTransport | None = None) -> bool:
    """The `kubeadm-config` ConfigMap's ClusterConfiguration `etcd.external.endpoints` set to
    the inventory's members: `kubeadm join --control-plane` writes a new master's apiserver
    manifest from it. True when it changed; False when it already had them (or has no external
    etcd). httpx errors and a refused update raise (CommandFailed naming it)."""
    with api_client(spec, state_dir, transport) as client:
        url = f"https://{spec.api_endpoint}{KUBEADM_CONFIG}"
        found = client.get(url)
        found.raise_for_status()
        doc = yaml.safe_load(found.json()["data"]["ClusterConfiguration"]) or {}
        external = (doc.get("etcd") or {}).get("external")
        want = spec.etcd_endpoints()
        if not external or external.get("endpoints") == want:
            return False
        external["endpoints"] = want
        patch = {"data": {"ClusterConfiguration": yaml.safe_dump(doc, sort_keys=False)}}
        done = client.patch(url, content=json.dumps(patch).encode(),
                            headers={"Content-Type": MERGE_PATCH})
        if done.status_code >= 300:
            raise CommandFailed("api", "update the kubeadm-config ConfigMap", done.status_code,
                                done.text.strip()[:200])
    return True


def point_apiservers(nr: Nornir, spec: ClusterSpec, state_dir: Path, masters: Iterable[str],
                     *, say: Say = print, transport: httpx.BaseTransport | None = None
                     ) -> dict[str, float]:
    """`--etcd-servers` of each of `masters` set to the inventory's members, one master at a
    time, its apiserver restarted and awaited healthy before the next. master -> seconds."""
    want = ",".join(spec.etcd_endpoints())
    took = {}
    for master in masters:
        start = time.monotonic()
        run_on(nr, master, _set_servers, endpoints=want)
        restart_apiserver(nr, spec, state_dir, master, transport)
        took[master] = time.monotonic() - start
        say(f"{master}: kube-apiserver now uses etcd {want}; healthy again after "
            f"{took[master]:.1f} s")
    return took
