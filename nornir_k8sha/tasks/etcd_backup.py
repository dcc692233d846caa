"""etcd snapshots: take one on a healthy member, check it with etcd's own tool, keep N here.

A snapshot is only reported good after `etcdctl snapshot status` read it (hash, revision, keys,
size) on the member that wrote it; the copy in the state dir carries a JSON sidecar with its
sha256 so a restore can prove it is the same file before any host is touched.
"""

from __future__ import annotations

import hashlib
import json
import shlex
import struct
import time
from collections.abc import Mapping
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import httpx
from nornir.core import Nornir
from nornir.core.task import Result, Task

from nornir_k8sha import constants as C
from nornir_k8sha.checkresult import CheckResult
from nornir_k8sha.exceptions import SnapshotError
from nornir_k8sha.statefiles import write_private
from nornir_k8sha.tasks import etcd
from nornir_k8sha.tasks import host as H
from nornir_k8sha.topology import ClusterSpec

#: bbolt's meta page magic (etcd's backend file format), little-endian at byte 16 of page 0.
_BOLT_MAGIC = 0xED0CDAED
_BOLT_MAGIC_OFFSET = 16


def etcdctl(spec: ClusterSpec, *args: str, timeout: str | None = None) -> str:
    """`etcdctl` against this member's own client URL on loopback with its own server
    certificate (it allows client auth; root reads it), API v3."""
    words = ["ETCDCTL_API=3", "etcdctl",
             "--endpoints", f"https://127.0.0.1:{spec.settings.etcd.client_port}",
             "--cacert", C.ETCD_CA_CERT, "--cert", C.ETCD_SERVER_CERT,
             "--key", C.ETCD_SERVER_KEY]
    if timeout:
        words.append(f"--command-timeout={timeout}")
    return " ".join([*words[:2], *(shlex.quote(w) for w in words[2:]),
                     *(shlex.quote(a) for a in args)])


def status_command(path: str) -> str:
    """`etcdctl snapshot status` of a file: offline, needs no endpoint or certificate."""
    return f"ETCDCTL_API=3 etcdctl snapshot status {shlex.quote(path)} -w json"


@dataclass(frozen=True)
class SnapshotStatus:
    """What `etcdctl snapshot status -w json` read from a snapshot."""

    hash: int
    revision: int
    total_keys: int
    size: int


def parse_status(text: str, where: str) -> SnapshotStatus:
    """The JSON of `snapshot status`; SnapshotError naming `where` when it is not that."""
    try:
        doc = json.loads(text)
        return SnapshotStatus(int(doc["hash"]), int(doc["revision"]), int(doc["totalKey"]),
                              int(doc["totalSize"]))
    except (ValueError, KeyError, TypeError) as exc:
        raise SnapshotError(f"{where}: etcdctl snapshot status gave no status "
                            f"({type(exc).__name__}: {text.strip()[:200]!r})") from None


def snapshot(task: Task, spec: ClusterSpec) -> Result:
    """Save a snapshot on this member, check it with `snapshot status`, fetch its bytes and
    remove the member's copy. `result` is (bytes, SnapshotStatus). Reads the keyspace only."""
    tmp = shlex.quote(C.ETCD_SNAPSHOT_TMP)
    results = H.commands(task, [
        f"rm -f {tmp}",
        etcdctl(spec, "snapshot", "save", C.ETCD_SNAPSHOT_TMP,
                timeout=C.ETCDCTL_SNAPSHOT_TIMEOUT),
        status_command(C.ETCD_SNAPSHOT_TMP),
    ]).result
    status = parse_status(results[-1].stdout, f"{task.host.name}:{C.ETCD_SNAPSHOT_TMP}")
    conn = H.connect(task)
    data = conn.get(C.ETCD_SNAPSHOT_TMP)
    conn.remove(C.ETCD_SNAPSHOT_TMP)
    if data is None:
        raise SnapshotError(f"{task.host.name}: the snapshot {C.ETCD_SNAPSHOT_TMP} vanished")
    return Result(host=task.host, result=(data, status), changed=False)


def choose_member(checks: Mapping[str, CheckResult]) -> str:
    """The member to snapshot: the healthy leader, else the first healthy one (by name)."""
    healthy = sorted(n for n, r in checks.items() if r.values.get("healthy"))
    if not healthy:
        why = "; ".join(f"{n}: {r.message}" for n, r in sorted(checks.items()))
        raise SnapshotError(f"no healthy etcd member to take a snapshot from ({why})")
    leaders = [n for n in healthy if checks[n].values.get("is_leader")]
    return (leaders or healthy)[0]


def member_checks(nr: Nornir, spec: ClusterSpec, state_dir: Path,
                  transport: httpx.BaseTransport | None = None) -> dict[str, CheckResult]:
    """`etcd.check` of every member, from here (read-only), by member name."""
    members = nr.filter(filter_func=lambda h: h.name in {m.name for m in
                                                         spec.role(C.ROLE_ETCD)})
    agg = members.run(task=etcd.check, spec=spec, state_dir=state_dir, transport=transport,
                      on_failed=True)
    return {name: multi[0].result for name, multi in agg.items()
            if isinstance(multi[0].result, CheckResult)}


def take_backup(nr: Nornir, spec: ClusterSpec, state_dir: Path, *,
                transport: httpx.BaseTransport | None = None) -> tuple[Backup, list[Path]]:
    """One snapshot from the healthy leader (else a healthy member), checked, stored, and
    the oldest beyond `etcd.backup_keep` deleted. Returns the backup and what was pruned."""
    member = choose_member(member_checks(nr, spec, state_dir, transport))
    agg = nr.filter(name=member).run(task=snapshot, spec=spec, on_failed=True)
    multi = agg[member]
    if multi.failed:
        exc = multi[0].exception
        if isinstance(exc, SnapshotError):
            raise exc
        raise SnapshotError(f"{member}: snapshot failed: {exc or multi[0].result}")
    data, status = multi[0].result
    backup = store(state_dir, member, data, status)
    return backup, prune(state_dir, spec.settings.etcd.backup_keep)


# --- the copies in the state dir ----------------------------------------------------------------


@dataclass(frozen=True)
class Backup:
    """One snapshot in the state dir and what its sidecar says about it."""

    path: Path
    member: str
    taken: str  # UTC, ISO 8601
    sha256: str
    revision: int
    total_keys: int
    size: int  # of the file (etcd appends a sha256 to the bbolt data it reports)
    hash: int

    def as_dict(self) -> dict[str, Any]:
        out = asdict(self)
        out["path"] = str(self.path)
        return out


def backups_dir(state_dir: Path) -> Path:
    return state_dir / C.STATE_BACKUPS_DIR


def sidecar(path: Path) -> Path:
    return path.with_suffix(".json")


def store(state_dir: Path, member: str, data: bytes, status: SnapshotStatus,
          now: float | None = None) -> Backup:
    """Write the snapshot (0600) and its sidecar; the name sorts by time."""
    now = time.time() if now is None else now
    # milliseconds, as the members' timer names theirs: two backups in one second stay two
    stamp = time.strftime("%Y%m%dT%H%M%S", time.gmtime(now)) + f".{int(now * 1000) % 1000:03d}Z"
    path = backups_dir(state_dir) / f"etcd-{stamp}-{member}.db"
    backup = Backup(path, member, time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(now)),
                    hashlib.sha256(data).hexdigest(), status.revision, status.total_keys,
                    len(data), status.hash)
    write_private(path, data)
    meta = {k: v for k, v in backup.as_dict().items() if k != "path"}
    write_private(sidecar(path), json.dumps(meta, indent=2) + "\n")
    return backup


def read_sidecar(path: Path) -> Backup:
    """The sidecar of snapshot `path`; SnapshotError naming the file when missing or bad."""
    side = sidecar(path)
    try:
        meta = json.loads(side.read_text())
        return Backup(path, str(meta["member"]), str(meta["taken"]), str(meta["sha256"]),
                      int(meta["revision"]), int(meta["total_keys"]), int(meta["size"]),
                      int(meta["hash"]))
    except FileNotFoundError:
        raise SnapshotError(f"{path}: no sidecar {side.name} (checksum, revision) beside it; "
                            "only snapshots taken by `etcd backup` can be restored") from None
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise SnapshotError(f"{side}: not a snapshot sidecar ({type(exc).__name__}: {exc})"
                            ) from None


def list_backups(state_dir: Path) -> list[Backup]:
    """Every snapshot with a readable sidecar, oldest first."""
    out = []
    for path in sorted(backups_dir(state_dir).glob("etcd-*.db")):
        try:
            out.append(read_sidecar(path))
        except SnapshotError:
            continue
    return out


def prune(state_dir: Path, keep: int) -> list[Path]:
    """Delete the oldest snapshots (and sidecars) beyond `keep`; the paths deleted."""
    paths = sorted(backups_dir(state_dir).glob("etcd-*.db"))
    gone = []
    for path in paths[:max(0, len(paths) - keep)]:
        path.unlink(missing_ok=True)
        sidecar(path).unlink(missing_ok=True)
        gone.append(path)
    return gone


def verify_local(path: Path) -> tuple[Backup, bytes]:
    """The snapshot at `path`, proven locally: it exists, looks like a bbolt file, and its
    sha256 and size match the sidecar. SnapshotError naming the file otherwise."""
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        raise SnapshotError(f"{path}: no such snapshot file") from None
    except OSError as exc:
        raise SnapshotError(f"{path}: cannot read it ({exc.strerror})") from None
    magic = data[_BOLT_MAGIC_OFFSET:_BOLT_MAGIC_OFFSET + 4]
    if len(magic) < 4 or struct.unpack("<I", magic)[0] != _BOLT_MAGIC:
        raise SnapshotError(f"{path}: not an etcd snapshot (no bbolt header)")
    backup = read_sidecar(path)
    digest = hashlib.sha256(data).hexdigest()
    if digest != backup.sha256 or len(data) != backup.size:
        raise SnapshotError(f"{path}: sha256 {digest[:12]}…/{len(data)} bytes does not match "
                            f"its sidecar ({backup.sha256[:12]}…/{backup.size} bytes)")
    return backup, data
