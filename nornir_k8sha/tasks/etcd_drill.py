"""The steps of the `restore-drill` runbook (runbooks/restore-drill.yaml) as Nornir tasks: write
marker ConfigMaps, back up, destroy quorum, restore every member from the backup, prove the
markers came back, and say how long the API took to recover.

The restore itself is `etcd restore`'s own steps (tasks/etcd_restore.py); the runbook runs each
of them on every member before the next, as `etcd restore` does. What the steps share (the
markers, the backup, when quorum was destroyed) lives in `<state dir>/restore-drill.json`.
"""

from __future__ import annotations

import calendar
import json
import shlex
import threading
import time
import uuid
from pathlib import Path
from typing import Any

import httpx
from nornir.core.task import Result, Task

from nornir_k8sha.checkresult import CheckResult, failed, passed
from nornir_k8sha.clients import api_client, error_text
from nornir_k8sha.exceptions import SnapshotError
from nornir_k8sha.statefiles import write_private
from nornir_k8sha.tasks import etcd_backup as B
from nornir_k8sha.tasks import etcd_restore as R
from nornir_k8sha.tasks import host as H
from nornir_k8sha.topology import ClusterSpec

DRILL_FILE = "restore-drill.json"
MARKER_PREFIX = "k8sha-drill"
NAMESPACE = "default"
#: Where a member's data dir goes when the drill destroys it (moved, never deleted).
ASIDE_SUFFIX = ".before-drill"


def _state(state_dir: Path) -> dict[str, Any]:
    path = Path(state_dir) / DRILL_FILE
    return json.loads(path.read_text()) if path.exists() else {}


_SAVING = threading.Lock()  # the members' tasks run in threads and share the file


def _save(state_dir: Path, *, unless_set: bool = False, **values: Any) -> None:
    """Merge `values` into the drill file; `unless_set`: keep values already there."""
    with _SAVING:
        old = _state(state_dir)
        new = {**values, **{k: v for k, v in old.items() if v}} if unless_set else values
        write_private(Path(state_dir) / DRILL_FILE, json.dumps({**old, **new}))


def _configmaps(spec: ClusterSpec) -> str:
    return f"https://{spec.api_endpoint}/api/v1/namespaces/{NAMESPACE}/configmaps"


def write_markers(task: Task, spec: ClusterSpec, state_dir: Path, count: int = 3,
                  transport: httpx.BaseTransport | None = None) -> Result:
    """Create `count` marker ConfigMaps through the VIP (each acknowledged by 201) and note
    them: they must all be there after the restore. Run it on one host (any)."""
    run = uuid.uuid4().hex[:8]
    names = [f"{MARKER_PREFIX}-{run}-{i}" for i in range(count)]
    with api_client(spec, state_dir, transport) as client:
        for name in names:
            resp = client.post(_configmaps(spec), json={
                "apiVersion": "v1", "kind": "ConfigMap",
                "metadata": {"name": name, "labels": {"k8sha.io/drill": run}},
                "data": {"marker": name}})
            if resp.status_code != 201:
                raise RuntimeError(f"marker {name} not created: HTTP {resp.status_code}")
    _save(state_dir, markers=names, destroyed_at=None)
    return Result(host=task.host, result=f"wrote {count} markers ({names[0]} ...)")


def backup(task: Task, spec: ClusterSpec, state_dir: Path) -> Result:
    """`etcd backup` on this member (run it on the leader): snapshot, checked, stored."""
    data, status = B.snapshot(task, spec).result
    taken = B.store(state_dir, task.host.name, data, status)
    B.prune(state_dir, spec.settings.etcd.backup_keep)
    _save(state_dir, backup=str(taken.path))
    return Result(host=task.host, result=f"snapshot {taken.path.name}: revision "
                  f"{taken.revision}, {taken.total_keys} keys (etcdctl snapshot status)")


def destroy_member(task: Task, spec: ClusterSpec, state_dir: Path) -> Result:
    """Kill etcd on this member and move its data dir aside: run it on a majority."""
    data_dir = shlex.quote(spec.settings.etcd.data_dir)
    aside = shlex.quote(spec.settings.etcd.data_dir + ASIDE_SUFFIX)
    H.commands(task, ["systemctl kill -s KILL etcd; systemctl stop etcd; true",
                      f"rm -rf {aside}", f"if [ -e {data_dir} ]; then mv {data_dir} {aside}; fi"])
    _save(state_dir, unless_set=True, destroyed_at=time.time())
    return Result(host=task.host, changed=True, result="etcd killed, data dir moved aside")


def _latest(state_dir: Path) -> tuple[B.Backup, bytes]:
    path = _state(state_dir).get("backup")
    if not path:
        raise SnapshotError(f"{Path(state_dir) / DRILL_FILE}: no backup taken by this drill")
    return B.verify_local(Path(path))


def _plan(spec: ClusterSpec, backup_: B.Backup) -> R.RestorePlan:
    """One plan for every member (the runbook calls each member separately): the token and
    the aside dir are stamped with the backup's own time."""
    return R.plan(spec, now=calendar.timegm(time.strptime(backup_.taken, "%Y-%m-%dT%H:%M:%SZ")))


def upload_snapshot(task: Task, spec: ClusterSpec, state_dir: Path) -> Result:
    """The drill's backup onto this member, read back by `etcdctl snapshot status`."""
    backup_, data = _latest(state_dir)
    return R.upload_and_check(task, data, backup_)


def restore_member(task: Task, spec: ClusterSpec, state_dir: Path) -> Result:
    """`etcdctl snapshot restore` into this member's data dir (a new cluster token)."""
    backup_, _ = _latest(state_dir)
    return R.restore_member(task, spec, _plan(spec, backup_))


def recover_member(task: Task, spec: ClusterSpec) -> Result:
    """Rollback: a member whose data dir is missing gets its drill copy back; etcd started."""
    data_dir = shlex.quote(spec.settings.etcd.data_dir)
    aside = shlex.quote(spec.settings.etcd.data_dir + ASIDE_SUFFIX)
    return H.commands(task, [f"if [ ! -e {data_dir} ] && [ -e {aside} ]; then mv {aside} "
                             f"{data_dir}; fi", "systemctl start --no-block etcd"])


def markers(task: Task, spec: ClusterSpec, state_dir: Path,
            transport: httpx.BaseTransport | None = None) -> Result:
    """Probe: every marker written before the backup is back, read through the VIP; the time
    since quorum was destroyed is the time to recover."""
    start = time.monotonic()
    state = _state(state_dir)
    names = list(state.get("markers") or [])
    missing, why = [], ""
    try:
        with api_client(spec, state_dir, transport) as client:
            for name in names:
                resp = client.get(f"{_configmaps(spec)}/{name}")
                if resp.status_code != 200:
                    missing.append(f"{name} (HTTP {resp.status_code})")
    except httpx.HTTPError as exc:
        why = error_text(exc)
    took = time.time() - state["destroyed_at"] if state.get("destroyed_at") else None
    values = {"markers": len(names), "missing": missing, "recovered_s": took}
    if why or missing or not names:
        res: CheckResult = failed("markers", why or (f"missing: {', '.join(missing)}" if missing
                                  else "no markers were written"), start, **values)
    else:
        after = f"; API back with them {took:.1f} s after quorum was destroyed" if took else ""
        res = passed("markers", f"all {len(names)} markers written before the backup are "
                     f"back{after}", start, **values)
    return Result(host=task.host, result=res, failed=not res.ok)


def remove_markers(task: Task, spec: ClusterSpec, state_dir: Path,
                   transport: httpx.BaseTransport | None = None) -> Result:
    """Delete the drill's markers (cleanup; a missing one is fine)."""
    names = list(_state(state_dir).get("markers") or [])
    with api_client(spec, state_dir, transport) as client:
        for name in names:
            client.delete(f"{_configmaps(spec)}/{name}")
    return Result(host=task.host, changed=bool(names), result=f"removed {len(names)} markers")

