"""Processes of the lab: one cgroup per host, identity checks on PIDs, memory, hard kills.

Every host process (systemd-nspawn or a UML kernel) starts inside a cgroup of its own,
`k8sha-<cluster>/<host>` in each cgroup hierarchy this machine mounts. Without it, nspawn
(with `--keep-unit` and no systemd as PID 1) would put every container's payload into one
shared `/payload` cgroup, where one container's `systemctl stop` would kill another's
processes. The cgroup is also how we find a host's whole process tree (to kill it, to sum its
memory) without ever matching processes by name.
"""

from __future__ import annotations

import os
import signal
import time
from collections.abc import Iterable
from pathlib import Path

CGROUP_MOUNTS = Path("/proc/self/mounts")


def cgroup_roots() -> list[Path]:
    """Hierarchies in which we place host processes: cgroup v2 and the v1 `name=systemd` one."""
    roots: list[Path] = []
    for line in CGROUP_MOUNTS.read_text().splitlines():
        parts = line.split()
        if len(parts) < 4:
            continue
        mountpoint, fstype, options = parts[1], parts[2], parts[3].split(",")
        if fstype == "cgroup2" or (fstype == "cgroup" and "name=systemd" in options):
            roots.append(Path(mountpoint))
    return roots


def host_cgroups(cluster: str, host: str) -> list[Path]:
    return [root / f"k8sha-{cluster}" / host for root in cgroup_roots()]


def make_cgroups(paths: Iterable[Path]) -> list[Path]:
    made = []
    for path in paths:
        path.mkdir(parents=True, exist_ok=True)
        made.append(path)
    return made


def cgroup_pids(paths: Iterable[Path]) -> set[int]:
    """Every PID in these cgroups and their children (all hierarchies, merged)."""
    pids: set[int] = set()
    for path in paths:
        if not path.is_dir():
            continue
        for procs in path.rglob("cgroup.procs"):
            try:
                pids.update(int(p) for p in procs.read_text().split())
            except OSError:
                continue
    return pids


def remove_cgroups(paths: Iterable[Path]) -> list[Path]:
    """rmdir each cgroup tree bottom-up; returns those that could not be removed (still busy)."""
    left = []
    for path in paths:
        if not path.is_dir():
            continue
        for sub in sorted((p for p in path.rglob("*") if p.is_dir()), key=lambda p: -len(p.parts)):
            try:
                sub.rmdir()
            except OSError:
                pass
        try:
            path.rmdir()
        except OSError:
            left.append(path)
    for path in {p.parent for p in paths}:  # the per-cluster parent, once empty
        try:
            path.rmdir()
        except OSError:
            pass
    return left


def start_time(pid: int) -> int | None:
    """Kernel start time of a PID (clock ticks since boot), or None when gone or a zombie."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    fields = stat[stat.rindex(")") + 2:].split()
    if fields[0] in ("Z", "X"):
        return None
    return int(fields[19])


def is_alive(pid: int | None, started: int | None) -> bool:
    """The recorded process still runs: same PID *and* same start time (no PID reuse)."""
    if not pid:
        return False
    now = start_time(pid)
    return now is not None and (started is None or now == started)


def kill_pids(pids: Iterable[int], sig: int = signal.SIGKILL) -> None:
    for pid in pids:
        try:
            os.kill(pid, sig)
        except ProcessLookupError:
            pass


def reap(pids: Iterable[int]) -> None:
    """Collect these PIDs if they are exited children of ours (never `waitpid(-1)`: that could
    steal the exit status of another thread's subprocess)."""
    for pid in pids:
        try:
            os.waitpid(pid, os.WNOHANG)
        except ChildProcessError:
            pass


def wait_gone(pids: Iterable[int], timeout: float) -> set[int]:
    """Wait until the PIDs are gone (or zombies); returns those still alive at the deadline."""
    pending = set(pids)
    deadline = time.monotonic() + timeout
    while pending and time.monotonic() < deadline:
        reap(pending)
        pending = {p for p in pending if start_time(p) is not None}
        if pending:
            time.sleep(0.05)
    return pending


def kill_cgroup_tree(cgroups: list[Path], main_pid: int | None, timeout: float = 5.0) -> bool:
    """SIGKILL every process of a host (its cgroups plus its main PID); True when all gone."""
    pids = cgroup_pids(cgroups)
    if main_pid:
        pids.add(main_pid)
    for _ in range(5):  # processes may fork while we kill: go round until the cgroups are empty
        kill_pids(pids)
        wait_gone(pids, timeout / 5)
        pids = {p for p in cgroup_pids(cgroups) if start_time(p) is not None}
        if not pids:
            return True
    return not pids


def pss_kib(pids: Iterable[int]) -> int:
    """Proportional set size of these processes (KiB): shared pages counted fairly once."""
    total = 0
    for pid in pids:
        try:
            text = Path(f"/proc/{pid}/smaps_rollup").read_text()
        except OSError:
            continue
        for line in text.splitlines():
            if line.startswith("Pss:"):
                total += int(line.split()[1])
                break
    return total


def cmdline(pid: int) -> list[str]:
    try:
        raw = Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:
        return []
    return [a.decode(errors="replace") for a in raw.split(b"\0") if a]


def pids_mentioning(path: Path) -> list[int]:
    """Processes whose command line names this exact path: leftovers of our own lab only."""
    needle = str(path)
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        pid = int(entry.name)
        if pid == os.getpid():
            continue
        if any(needle in arg for arg in cmdline(pid)) and start_time(pid) is not None:
            found.append(pid)
    return found


def launch(command: list[str], cgroups: list[Path], log: Path, env: dict[str, str] | None = None
           ) -> int:
    """Start a host process in its own session and cgroups; returns its PID.

    A tiny shell joins the cgroups and then execs the command, so the recorded PID is the
    command's own and nothing runs outside the host's cgroups, even for an instant.
    """
    import shlex
    import subprocess

    joins = "".join(f"echo $$ > {shlex.quote(str(c / 'cgroup.procs'))} && " for c in cgroups)
    script = f"{joins}exec {shlex.join(command)}"
    full_env = dict(os.environ)
    full_env.update(env or {})
    log.parent.mkdir(parents=True, exist_ok=True)
    with open(log, "ab") as out:
        proc = subprocess.Popen(["/bin/sh", "-c", script], stdin=subprocess.DEVNULL, stdout=out,
                                stderr=subprocess.STDOUT, start_new_session=True, env=full_env,
                                close_fds=True)
    return proc.pid
