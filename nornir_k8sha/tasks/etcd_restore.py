"""Restore every etcd member from one snapshot into a new cluster (the restore drill).

Same member names and peer URLs, a NEW initial-cluster-token (members of the old cluster can
never talk to the new one by mistake), every old data dir moved aside (not deleted), all members
started together, then quorum and — when there is a control plane — the API through the VIP.
Refused while the cluster is healthy unless forced: a restore rolls the keyspace back.
"""

from __future__ import annotations

import shlex
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import httpx
from nornir.core import Nornir
from nornir.core.task import Result, Task

from nornir_k8sha import constants as C
from nornir_k8sha.exceptions import SnapshotError
from nornir_k8sha.tasks import etcd, kubeadm
from nornir_k8sha.tasks import host as H
from nornir_k8sha.tasks.apiserver import has_control_plane
from nornir_k8sha.tasks.etcd_backup import Backup, member_checks, parse_status, status_command
from nornir_k8sha.topology import ClusterSpec, HostSpec, etcd_quorum


@dataclass(frozen=True)
class RestorePlan:
    """What one restore uses on every member."""

    token: str  # the new initial-cluster-token
    aside: str  # where each member's old data dir goes


def plan(spec: ClusterSpec, now: float | None = None) -> RestorePlan:
    stamp = time.strftime("%Y%m%dT%H%M%SZ", time.gmtime(time.time() if now is None else now))
    return RestorePlan(f"{spec.settings.etcd.cluster_token}-restore-{stamp}",
                       f"{spec.settings.etcd.data_dir}.before-restore-{stamp}")


def healthy_members(nr: Nornir, spec: ClusterSpec, state_dir: Path,
                    transport: httpx.BaseTransport | None = None) -> tuple[list[str], int]:
    """The members that answer healthy now, and the quorum they are measured against."""
    checks = member_checks(nr, spec, state_dir, transport)
    healthy = sorted(n for n, r in checks.items() if r.values.get("healthy"))
    return healthy, etcd_quorum(len(spec.role(C.ROLE_ETCD)))


def upload_and_check(task: Task, data: bytes, backup: Backup) -> Result:
    """Put the snapshot on this member (0600) and read it with `etcdctl snapshot status`: the
    same revision and hash as when it was taken, or SnapshotError (nothing else changed)."""
    conn = H.connect(task)
    conn.put(data, C.ETCD_RESTORE_TMP, mode=C.SECRET_FILE_MODE)
    out = H.commands(task, [status_command(C.ETCD_RESTORE_TMP)], read_only=True).result[0]
    got = parse_status(out.stdout, f"{task.host.name}:{C.ETCD_RESTORE_TMP}")
    if (got.revision, got.hash) != (backup.revision, backup.hash):
        conn.remove(C.ETCD_RESTORE_TMP)
        raise SnapshotError(f"{task.host.name}: etcdctl reads revision {got.revision} hash "
                            f"{got.hash}; the sidecar says {backup.revision}/{backup.hash}")
    return Result(host=task.host, result=got)


def restore_commands(spec: ClusterSpec, member: HostSpec, restore: RestorePlan) -> list[str]:
    """This member's data dir from the snapshot: old one aside, `snapshot restore` with its
    name and peer URL in the whole initial cluster, the upload removed. etcd stays stopped."""
    s = spec.settings.etcd
    data_dir, aside = shlex.quote(s.data_dir), shlex.quote(restore.aside)
    peer = f"https://{member.address}:{s.peer_port}"
    restore_cmd = " ".join(["ETCDCTL_API=3 etcdctl snapshot restore",
                            shlex.quote(C.ETCD_RESTORE_TMP),
                            "--name", shlex.quote(member.name),
                            "--initial-cluster", shlex.quote(spec.etcd_initial_cluster()),
                            "--initial-cluster-token", shlex.quote(restore.token),
                            "--initial-advertise-peer-urls", shlex.quote(peer),
                            "--data-dir", data_dir])
    return [f"if [ -e {data_dir} ]; then mv {data_dir} {aside}; fi",
            restore_cmd,
            f"rm -f {shlex.quote(C.ETCD_RESTORE_TMP)}"]


def restore_member(task: Task, spec: ClusterSpec, restore: RestorePlan) -> Result:
    return H.commands(task, restore_commands(spec, spec.host(task.host.name), restore))


def stop_etcd(task: Task) -> Result:
    return H.commands(task, ["systemctl stop etcd"])


def start_etcd(task: Task) -> Result:
    """Start without waiting (Type=notify waits for a quorum, which needs the others)."""
    return H.commands(task, ["systemctl start --no-block etcd"])


Say = Callable[[str], None]


def restore(nr: Nornir, spec: ClusterSpec, state_dir: Path, backup: Backup, data: bytes, *,
            say: Say = print, now: float | None = None,
            quorum_timeout: float = 60.0, api_timeout: float = 90.0) -> RestorePlan:
    """Every member from `data` (already verified locally), step by step, each step on all
    members before the next; raises on the first member that fails a step."""
    members = nr.filter(filter_func=lambda h: h.name in {m.name for m in
                                                         spec.role(C.ROLE_ETCD)})
    restore_plan = plan(spec, now)

    def step(title: str, task: Callable[..., Result], **kw: object) -> None:
        say(title)
        # on_failed: the health checks marked the dead members failed; they are restored too
        agg = members.run(task=task, on_failed=True, **kw)
        for name, multi in sorted(agg.items()):
            if multi.failed:
                exc = multi[0].exception
                if isinstance(exc, SnapshotError):
                    raise exc
                raise SnapshotError(f"{name}: {title} failed: {exc or multi[0].result}")

    step(f"upload the snapshot (revision {backup.revision}) and check it with etcdctl",
         upload_and_check, data=data, backup=backup)
    step("stop etcd on every member", stop_etcd)
    step(f"restore every data dir (old ones moved to {restore_plan.aside}, new cluster token)",
         restore_member, spec=spec, restore=restore_plan)
    step("start every member together", start_etcd)
    say("wait for quorum")
    healthy = etcd.wait_for_quorum(spec, state_dir, timeout=quorum_timeout)
    say(f"etcd: {healthy}/{len(spec.role(C.ROLE_ETCD))} members healthy")
    if has_control_plane(state_dir):
        say(f"wait for the API through the VIP ({spec.api_endpoint})")
        kubeadm.wait_for_api(spec, state_dir, timeout=api_timeout)
        say("the API answers through the VIP")
    return restore_plan
