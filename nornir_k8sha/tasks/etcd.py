"""The external etcd cluster: TLS peer and client with client-cert auth, bootstrapped together.

All members start in the same phase (Nornir runs them in parallel), so the `new` cluster forms
as soon as a quorum is up; `wait_for_quorum` then polls `/health` over mTLS from this machine.
A new cluster's members start the seed first and the others once it serves (`StartOrder`: etcd
3.4's bootstrap check otherwise costs members started at the same moment 1-2 s).
"""

from __future__ import annotations

import shlex
import threading
import time
from collections.abc import Mapping, Sequence
from dataclasses import replace
from pathlib import Path
from typing import Any, Literal

import httpx
from nornir.core import Nornir
from nornir.core.task import Result, Task

from nornir_k8sha import constants as C
from nornir_k8sha.checkresult import CheckResult, failed, passed
from nornir_k8sha.clients import error_text, etcd_http_client, etcd_reports_healthy
from nornir_k8sha.exceptions import K8shaError
from nornir_k8sha.polling import poll, poll_until
from nornir_k8sha.render import files_for_component
from nornir_k8sha.tasks import host as H
from nornir_k8sha.tasks.component import apply_component, probe, upload_pki
from nornir_k8sha.topology import ClusterSpec, etcd_quorum

PACKAGES = ["etcd-server", "etcd-client"]


#: The lines of etcd.conf.yml etcd reads only to bootstrap (its data dir empty), and comments:
#: a member of a running cluster is not restarted when nothing else changed.
BOOTSTRAP_ONLY = ("#", "initial-cluster:", "initial-cluster-state:", "initial-cluster-token:")
#: How `configure` treats a member: `new` — bootstrap together (every member started in this
#: phase); `running` — a member of the running cluster (a change of bootstrap-only lines needs
#: no restart); `joining` — files only, etcd stopped: `etcd_replace.join_as_learner` starts it.
Mode = Literal["new", "running", "joining"]


def after_bootstrap(conf: str) -> list[str]:
    """The lines of an etcd.conf.yml a member with data still reads."""
    return [line for line in conf.splitlines() if line.strip()
            and not line.lstrip().startswith(BOOTSTRAP_ONLY)]


class StartOrder:
    """The order in which the members of a NEW cluster start: the seed alone, then the others
    together once it serves.

    Why: before it serves, a member of a new cluster asks its peers, one after the other in the
    sorted order of their peer URLs, whether it was bootstrapped already (etcd 3.4's
    `isMemberBootstrapped`, 1 s timeout per peer). Members started at the same moment have all
    bound their peer port and none serves yet (each is still asking): each question waits out
    its timeout, 1-2 s on most fresh deploys measured on the lab. The seed is the member whose
    peer URL sorts first, so that it is the first every other member asks: started alone, its
    own questions are refused at once (nothing listens yet); the others, started once it
    serves, get its answer at once. Then all elect a leader together, as before.

    "Serves" is read on the seed itself, over its SSH connection: its metrics listener on
    127.0.0.1 (plain HTTP, opened right after the peer listener starts serving; the client
    port answers only once a leader is elected, and the peer port may be closed to us).
    """

    def __init__(self, nr: Nornir, spec: ClusterSpec, members: Sequence[str], *,
                 timeout: float = C.ETCD_SEED_SERVE_WAIT_S) -> None:
        self.nr = nr
        self.seed = min(members, key=lambda n: spec.etcd_peer_url(spec.host(n)))
        self.timeout = timeout
        #: set when the seed's configure ended (it failed before serving: nobody waits longer)
        self.seed_ended = threading.Event()
        self._lock = threading.Lock()
        self._asked = False

    def before_start(self, task: Task) -> None:
        """Right before `task`'s member starts etcd: the seed goes at once; the others wait
        until the seed serves, its configure ended, or `timeout` s passed, and then start
        whatever the answer (a seed that never serves slows them, never stops them)."""
        if task.host.name == self.seed:
            return
        with self._lock:  # one member asks; the others find the answer
            if self._asked:
                return
            self._asked = True
            try:
                seed = H.open_connection(self.nr.inventory.hosts[self.seed], self.nr.config)
                poll(lambda: seed.run(SEED_SERVES, sudo=False, check=False,
                                      timeout=SEED_ASK_S + 5).exit_code == 0,
                     bool, timeout=self.timeout, interval=0.0,
                     give_up=lambda _: self.seed_ended.is_set())
            except K8shaError:  # the seed cannot be asked (unreachable): it fails on its own
                return


#: Seconds one question to the seed keeps trying on the host, every 20 ms, before it answers
#: (the controller asks again until `StartOrder.timeout`, unless the seed's configure ended).
SEED_ASK_S = 1
#: Exit 0 once the member's metrics listener answers HTTP (bash's /dev/tcp: no curl needed).
SEED_SERVES = "bash -c " + shlex.quote(
    f"for i in $(seq {SEED_ASK_S * 50}); do "
    f"(exec 3<>/dev/tcp/127.0.0.1/{C.ETCD_METRICS_PORT} && "
    "printf 'GET /health HTTP/1.0\\r\\n\\r\\n' >&3 && read -r -t 2 line <&3 && "
    '[ -n "$line" ]) 2>/dev/null && exit 0; sleep 0.02; done; exit 1')


def configure(
    task: Task, spec: ClusterSpec, state_dir: Path, *, mode: Mode = "new",
    dry_run: bool | None = None, order: StartOrder | None = None
) -> Result:
    """One member's packages, certificates, config and units; etcd started (`new`: all the
    members in this phase together, in `order` when given) or restarted for changed files."""
    H.honour_dry_run(task, dry_run)
    # the snapshot timer first: it is armed at once, where etcd's start waits for a quorum
    services = {C.ETCD_BACKUP_TIMER_UNIT: "restart", "etcd": "restart"}
    extra = [f"cat {shlex.quote(C.ETCD_CONF)} {shlex.quote(C.ETCD_UNIT)} 2>/dev/null; echo "
             f"{_SPLIT}"] if mode == "running" else []
    probed = probe(task, PACKAGES, list(services), extra)
    pk = H.packages(task, names=PACKAGES, known=probed.packages)
    # owned by the etcd user: its unit's ExecStartPre chowns them too, so root-owned uploads
    # would flip back and forth
    certs = upload_pki(task, spec, state_dir, under=C.ETCD_PKI_DIR,
                       owner=f"{C.ETCD_USER}:{C.ETCD_USER}")
    if mode == "joining":
        services.pop("etcd")
    elif mode == "running" and _bootstrap_only_change(spec, task.host.name,
                                                      probed.extra[0].stdout):
        services["etcd"] = "keep"  # uploaded; started if stopped, never restarted for it
    # the data dir is made and chowned by the unit itself (ExecStartPre in etcd.service.j2)
    # the snapshot timer is (re)started when its files change; etcd itself only by its own
    r = apply_component(task, spec, "etcd", services=services,
                        known_units=None if pk.changed or certs else probed.units,
                        units_before=probed.units,
                        before_start=None if order is None else
                        {"etcd": lambda: order.before_start(task)})
    if mode == "joining":
        # enabled, not running: Debian's package may have started it with its own defaults
        j = H.service(task, name="etcd", enabled=True, state="stopped")
        r.changed = bool(r.changed or j.changed)
    elif certs and not r.changed and not task.is_dry_run():
        H.service(task, name="etcd", state="restarted")
    r.changed = bool(r.changed or certs or pk.changed)
    return r


_SPLIT = "--- k8sha: end of the etcd files ---"


def _bootstrap_only_change(spec: ClusterSpec, name: str, current: str) -> bool:
    """The rendered etcd.conf.yml and unit differ from `current` (both files as `cat` printed
    them) in bootstrap-only lines at most."""
    rendered = {f.path: f.content for f in files_for_component(spec, spec.host(name), "etcd")}
    want = rendered[C.ETCD_CONF] + rendered[C.ETCD_UNIT]
    have = current.split(_SPLIT)[0]
    return have.rstrip("\n") != want.rstrip("\n") and after_bootstrap(have) == \
        after_bootstrap(want)


#: Seconds between two rounds of `/health` while waiting for a quorum.
QUORUM_POLL_S = 0.5


def read_health(client: httpx.Client, client_url: str) -> dict[str, Any]:
    """The `/health` answer of the member serving clients at `client_url` (`https://host:port`):
    the one reader of it (`check`, `wait_for_quorum`, `etcd_scale.observe`). httpx and JSON
    errors raise: `check` words them, the others count the member as not healthy."""
    return dict(client.get(f"{client_url}/health").json())


def answers_healthy(client: httpx.Client, client_url: str) -> bool:
    """The member at `client_url` says it is healthy; False when it does not answer."""
    try:
        return etcd_reports_healthy(read_health(client, client_url))
    except (httpx.HTTPError, ValueError):
        return False


def wait_for_quorum(spec: ClusterSpec, state_dir: Path, timeout: float = 60.0, *,
                    transport: httpx.BaseTransport | None = None) -> int:
    """Poll members' /health over mTLS until a quorum reports healthy; return the count.
    `transport` is the test seam (httpx.MockTransport)."""
    urls = spec.etcd_endpoints()
    need = etcd_quorum(len(urls))
    with etcd_http_client(spec, state_dir, transport) as client:
        return poll_until(
            lambda: sum(answers_healthy(client, url) for url in urls), lambda n: n >= need,
            timeout=timeout, interval=QUORUM_POLL_S,
            error=lambda n: TimeoutError(f"etcd: {n}/{len(urls)} members healthy after "
                                         f"{timeout:.0f}s, quorum is {need}"))


def check(task: Task, spec: ClusterSpec, state_dir: Path | None = None, *,
          transport: httpx.BaseTransport | None = None) -> Result:
    """This member from here over mTLS: `/health`, its status (leader, DB size) and its member
    list. `result` is a CheckResult; `values` holds healthy, member_id, leader, is_leader,
    db_size, raft_term and members (names). Read-only; `transport` is the test seam."""
    member = spec.host(task.host.name)
    base = f"https://{member.address}:{spec.settings.etcd.client_port}"
    start = time.monotonic()
    try:
        with etcd_http_client(spec, state_dir or spec.state_dir, transport) as client:
            health = read_health(client, base)
            status = client.post(f"{base}/v3/maintenance/status", json={}).json()
            listed = client.post(f"{base}/v3/cluster/member/list", json={}).json()
    except (httpx.HTTPError, ValueError, OSError) as exc:
        res = failed(member.name, f"unreachable: {error_text(exc)}", start, healthy=False)
        return Result(host=task.host, result=res, failed=True)
    member_id = str(status.get("header", {}).get("member_id", ""))
    leader = str(status.get("leader", "") or "")
    values = {
        "healthy": etcd_reports_healthy(health),
        "reason": health.get("reason", ""),
        "member_id": member_id,
        "leader": "" if leader in ("", "0") else leader,
        "is_leader": bool(member_id) and member_id == leader,
        "db_size": int(status.get("dbSize", 0) or 0),
        "raft_term": int(status.get("raftTerm", 0) or 0),
        "members": sorted(m.get("name", "") for m in listed.get("members", [])),
    }
    if not values["healthy"]:
        res = failed(member.name, f"unhealthy ({values['reason'] or 'no leader'})", start,
                     **values)
    else:
        res = passed(member.name, f"healthy{' (leader)' if values['is_leader'] else ''}, "
                     f"{len(values['members'])} members, db {values['db_size'] / 1e6:.1f} MB",
                     start, **values)
    return Result(host=task.host, result=res, failed=not res.ok)


def assess(spec: ClusterSpec, members: Mapping[str, CheckResult]) -> list[CheckResult]:
    """The cluster's verdict over every member's `check`: quorum, one leader, one member list.

    A healthy member still fails when the members see more than one leader or disagree on the
    member list; an unhealthy one says when the cluster as a whole has lost quorum.
    """
    total = len(spec.role(C.ROLE_ETCD))
    quorum = etcd_quorum(total)
    healthy = [r for r in members.values() if r.values.get("healthy")]
    leaders = {r.values["leader"] for r in members.values() if r.values.get("leader")}
    lists = {tuple(r.values["members"]) for r in members.values() if "members" in r.values}
    verdicts = []
    for r in members.values():
        if not r.values.get("healthy"):
            if len(healthy) < quorum and "unreachable" not in r.message:
                r = replace(r, message=f"{r.message}; etcd has lost quorum: {len(healthy)}/"
                            f"{total} healthy, quorum {quorum}")
        elif len(leaders) != 1:
            r = replace(r, status="failed", message=f"healthy but {len(leaders)} leaders seen")
        elif len(lists) != 1:
            r = replace(r, status="failed", message="members disagree on the member list")
        verdicts.append(r)
    return verdicts
