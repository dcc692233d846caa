"""Apply one component's rendered files to a host and restart what they feed — the shared step
of every component task (keepalived, haproxy, etcd, frr, registry...).

Files come from `render.files_for_component`, each knowing its validator and service; uploads go
through `host.file` (diff → temp → validate → atomic swap → backup). A service is reloaded or
restarted only when one of its inputs changed; `service` restores the backups when the
reload fails, so a bad config never stays live.
"""

from __future__ import annotations

import shlex
import threading
from collections.abc import Callable, Mapping, Sequence
from contextlib import AbstractContextManager, nullcontext
from dataclasses import dataclass
from pathlib import Path

from nornir.core.task import Result, Task

from nornir_k8sha.pki import bundle_for_host
from nornir_k8sha.render import files_for_component
from nornir_k8sha.tasks import host as H
from nornir_k8sha.topology import ClusterSpec
from nornir_k8sha.transport import CommandResult


@dataclass(frozen=True)
class Probed:
    """What a component's configure reads first, read in one round trip (`probe`)."""

    packages: CommandResult
    #: unit -> its properties as `host.service` reads them
    units: dict[str, dict[str, str]]
    #: the results of the caller's own extra commands, in order
    extra: list[CommandResult]


def probe(task: Task, packages: Sequence[str], units: Sequence[str],
          extra: Sequence[str] = ()) -> Probed:
    """Ask the packages' state (`host.package_query`), the units' state (`host.UNIT_PROBE`) and
    `extra` commands in ONE exec channel: a no-op configure then costs one round trip for them
    instead of one each (~0.15 s each on a slow guest). Pass the parts on as `known=` /
    `known_units=`; the units are trusted only while nothing changed on the host."""
    cmds = [H.package_query(packages), *(H.UNIT_PROBE.format(unit=shlex.quote(u)) for u in units),
            *extra]
    res = H.connect(task).run_batch(cmds, stop_on_error=False, check=False)
    return Probed(res[0], {u: H.parse_unit(r.stdout) for u, r in zip(units, res[1:], strict=False)},
                  res[1 + len(units):])


def apply_component(
    task: Task,
    spec: ClusterSpec,
    component: str,
    *,
    services: dict[str, str] | None = None,
    start: bool = True,
    known_units: Mapping[str, Mapping[str, str]] | None = None,
    one_at_a_time: threading.Lock | None = None,
    units_before: Mapping[str, Mapping[str, str]] | None = None,
    before_start: Mapping[str, Callable[[], None]] | None = None,
) -> Result:
    """Upload `component`'s files; then for each service: `reload`/`restart` if its inputs changed.

    `services` maps service name → "reload" | "restart" | "keep" (default: each file's own
    service, restarted; "keep": its files are uploaded, it is never restarted for them). With
    `start`, services are also enabled and started when they are not.
    `known_units`: the units' state as `probe` read it before this step, with nothing changed
    on the host since; used only when none of the component's files changed either.
    `one_at_a_time`: held around a reload/restart of a running service, shared by the hosts
    of one rollout, so that no two of them reload at once (HAProxy nodes behind the VIP); a
    service not running yet is started without it (it serves nothing a start interrupts).
    `units_before`: the units' state as `probe` read it before the uploads (whether a unit is
    enabled does not change with its files): when files changed and several services are not
    enabled yet, they are enabled in ONE `systemctl enable` (`host.enable_together`: one
    systemd reload, not one each) before any of them starts.
    `before_start`: service -> called right before that service is started or restarted for
    its changed files (etcd's new members wait there for the first to serve).
    """

    me = spec.host(task.host.name)
    changed_files: list[str] = []
    diffs: list[str] = []
    touched: dict[str, bool] = {}
    backups: dict[str, list[str]] = {}
    for f in files_for_component(spec, me, component):
        # a secret file shows only that it changed (None: hidden when the mode is private)
        r = H.file(task, path=f.path, content=f.content, mode=f.mode, validate=f.validate_cmd,
                   secret=f.secret or None)
        if r.changed:
            changed_files.append(f.path)
            if f.service:
                backups.setdefault(f.service, []).append(f.path)
        if r.diff:
            diffs.append(r.diff)
        if f.service:
            touched[f.service] = touched.get(f.service, False) or bool(r.changed)
    actions = services if services is not None else {s: "restart" for s in touched}
    enabled_now: dict[str, dict[str, str]] = {}
    if start and changed_files and units_before is not None and not task.is_dry_run():
        off = [s for s in actions if not H.is_enabled(units_before.get(s, {}))]
        if len(off) > 1:
            enabled_now = H.enable_together(task, off, list(actions)) or {}
    restarts = []
    for service, how in actions.items():
        inputs_changed = touched.get(service, False)
        known = None if changed_files or known_units is None else known_units.get(service)
        if known is None:
            known = enabled_now.get(service)
        serial: AbstractContextManager[object] = nullcontext()
        if inputs_changed and one_at_a_time is not None:
            # a running service reloads (restarts) in its turn; one not running yet (a fresh
            # node) serves nothing a start could interrupt: it starts at once. The state read
            # here is the one `service` reads first: passed on, it costs no round trip.
            known = H.unit_state(H.connect(task), service)
            if H.is_running(known):
                serial = one_at_a_time
        if inputs_changed and before_start is not None and service in before_start \
                and not task.is_dry_run():
            before_start[service]()
        with serial:
            r = H.service(
                task,
                name=service,
                enabled=start,
                state="started" if start else "stopped",
                reload_if_changed=inputs_changed and how == "reload",
                restart_if_changed=inputs_changed and how == "restart",
                rollback=backups.get(service, ()),
                known=known,
            )
        if r.changed:
            restarts.append(f"{how} {service}" if inputs_changed else f"start {service}")
        if r.diff:
            diffs.append(r.diff)
    summary = changed_files + restarts
    return Result(
        host=task.host,
        changed=bool(summary),
        diff="\n".join(diffs),
        result=", ".join(summary) or "unchanged",
    )


def upload_pki(task: Task, spec: ClusterSpec, state_dir: Path, *, under: str,
               owner: str = "root:root") -> list[str]:
    """Upload the files of this host's PKI bundle (`pki.bundle_for_host`) that live under the
    remote directory `under`; keys keep their 0600. Returns the paths that changed. Each
    component places its own part (etcd its member certs, a master the apiserver's, every node
    the registry CA) so nothing is uploaded twice."""

    prefix = under.rstrip("/") + "/"
    changed = []
    for local, remote, mode in bundle_for_host(spec, spec.host(task.host.name), state_dir):
        if str(remote).startswith(prefix) and H.file(
                task, path=str(remote), content=Path(local).read_bytes(), mode=mode,
                owner=owner).changed:
            changed.append(str(remote))
    return changed
