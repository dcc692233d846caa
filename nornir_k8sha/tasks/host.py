"""Host primitives every component task is built from: facts, packages, files, sysctl, services.

Each is a Nornir task (DESIGN.md 6): `def x(task: Task, *, dry_run: bool | None = None, ...)
-> Result`. Call them with `task.run(task=file, path=..., ...)` or directly as `file(task, ...)`
from inside another task (then combine `changed`/`diff` into your own Result yourself).

- They reach the host only through `connect(task)` (the `k8sha_ssh` connection, or the
  `FakeFleet` installed by a unit test), never open their own.
- `task.is_dry_run(dry_run)` is honoured: a dry run reads the host and reports what would change
  (`changed=True` and a `diff`) without writing or restarting anything.
- Read-only tasks (`facts`, `commands(read_only=True)`) never report `changed`.
- Failures raise `CommandFailed(host, command, exit_code, stderr)` (Nornir marks the host
  failed); secrets never appear in a diff (files of mode 0600-like show "(content hidden)").

The file protocol: fetch the current file → unified diff → if different: upload to a temp path
next to the target → run the validator on the temp path → atomic rename → the previous version
kept as `<path>.k8sha-bak` (see `restore_backup`). `service(..., rollback=[paths])` restores
those backups when a reload/restart fails, so a bad config never stays live.
"""

from __future__ import annotations

import contextlib
import difflib
import fnmatch
import shlex
import threading
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from pathlib import PurePosixPath
from typing import Any

from nornir.core import Nornir
from nornir.core.configuration import Config
from nornir.core.inventory import Host
from nornir.core.task import Result, Task

from nornir_k8sha import constants as C
from nornir_k8sha.budget import BUDGET, Budgeted
from nornir_k8sha.exceptions import CommandFailed, ConnectionFailed
from nornir_k8sha.polling import poll
from nornir_k8sha.transport import CONNECTION_NAME, CommandResult, Transport

BACKUP_SUFFIX = ".k8sha-bak"
TEMP_PREFIX = ".k8sha-new."
HIDDEN = "(content hidden)"
APT_TIMEOUT = 900.0
#: The package lists' refresh and the hold, as `packages` runs them.
APT_UPDATE = "apt-get update -q"
APT_HOLD = "apt-mark hold"
SERVICE_STATES = ("started", "stopped", "restarted", "reloaded", None)
_ENABLED = {"enabled", "enabled-runtime", "static", "indirect", "generated", "alias", "linked"}
#: `systemctl enable/disable` of a unit that also ships a SysV init script (frr, keepalived,
#: haproxy, ...) runs Debian's update-rc.d, a Perl script, to mirror the change in /etc/rc?.d:
#: 2-3 s of a fresh director's 3 s `enable` in user-mode Linux. Those links only matter to a
#: host booted with SysV init; systemd (which every step here drives) starts the native unit
#: from its own symlink. Upstream systemctl skips the hook when this is set
#: (systemd's docs/ENVIRONMENT.md).
SKIP_SYSV = "SYSTEMCTL_SKIP_SYSV=1"
_RUNNING = {"active", "reloading", "activating"}


_open_guard = threading.Lock()
_open_locks: dict[int, threading.RLock] = {}  # re-entered by `_open_quietly`
_failed_ahead: dict[int, ConnectionFailed] = {}  # id(host) -> why `open_ahead` could not open it


def connect(task: Task, *, connect_timeout: float | None = None) -> Transport:
    """The host's `k8sha_ssh` connection; errors from it name the inventory host.

    Nornir's `get_connection` is not thread-safe: two tasks opening the same host at once would
    each open (and one leak) a connection. The first open of each host is serialised here.
    `connect_timeout` (seconds) bounds opening it when it is not open yet: checks pass a short
    one so that a dead host costs seconds, not the inventory's connect timeout.
    """
    return open_connection(task.host, task.nornir.config, connect_timeout=connect_timeout)


def probe_connection(task: Task) -> Transport:
    """The connection a check uses: opening it is bounded by `CHECK_TIMEOUT_S`."""
    return connect(task, connect_timeout=C.CHECK_TIMEOUT_S)


def honour_dry_run(task: Task, dry_run: bool | None) -> None:
    """Make a component task's own `dry_run=` argument the task's dry-run state, so every
    primitive it calls (without passing dry_run on) sees it (DESIGN.md 6)."""
    if dry_run is not None:
        task.global_dry_run = dry_run


def open_ahead(nr: Nornir, names: Iterable[str]) -> None:
    """Start opening these hosts' connections, each in a thread of its own, and return: a
    command opens the hosts it will reach while it does something else first (a deploy takes
    the cluster lock meanwhile). Whoever reaches a host next waits for its opening (the
    per-host lock of `open_connection`); a host that could not be opened hands that failure
    to the next opener once, so a dead host costs its connect timeout once, not twice."""
    for name in names:
        host = nr.inventory.hosts[name]
        threading.Thread(target=_open_quietly, args=(host, nr.config), daemon=True,
                         name=f"k8sha-open-ahead-{name}").start()


def _open_lock(host: Host) -> threading.RLock:
    """The host's opening lock: one opener at a time, the others wait for its outcome."""
    with _open_guard:
        return _open_locks.setdefault(id(host), threading.RLock())


def _open_quietly(host: Host, config: Config) -> None:
    with _open_lock(host):  # held until a failure is recorded: the next opener waits for it
        try:
            open_connection(host, config)
        except ConnectionFailed as exc:
            _failed_ahead[id(host)] = exc
        except Exception:  # noqa: BLE001 - anything else: the next opener meets it itself
            pass


def open_connection(host: Host, config: Config, *,
                    connect_timeout: float | None = None) -> Transport:
    """`connect` for code outside a task: same locking, same host naming, same budget.

    Opening holds a slot of the connection budget (`budget.BUDGET`) and one of the target
    address's handshake places; the connection returned holds a slot for each operation."""
    try:
        if CONNECTION_NAME in host.connections:
            conn: Transport = host.get_connection(CONNECTION_NAME, config)
        else:
            with _open_lock(host):
                failed = _failed_ahead.pop(id(host), None)
                if failed is not None:
                    raise failed
                if CONNECTION_NAME not in host.connections:
                    params = host.get_connection_parameters(CONNECTION_NAME)
                    extras = None
                    if connect_timeout is not None:
                        extras = dict(params.extras or {})
                        extras["connect_timeout"] = connect_timeout
                    with BUDGET.opening(f"{params.hostname}:{params.port or C.SSH_PORT}"):
                        host.open_connection(CONNECTION_NAME, config, extras=extras)
                    conn = host.get_connection(CONNECTION_NAME, config)
                    BUDGET.opened(conn)  # by its opener only: one who waited for it opened none
                else:
                    conn = host.get_connection(CONNECTION_NAME, config)
    except ConnectionFailed as exc:
        if exc.host == host.name:
            raise
        raise ConnectionFailed(host.name, f"{exc.host}: {exc.reason}") from None
    if getattr(conn, "host", None) != host.name:
        with contextlib.suppress(AttributeError):
            conn.host = host.name  # the plugin only knows the address
    return Budgeted(conn)


# --- commands -------------------------------------------------------------------------------


def commands(task: Task, cmds: Sequence[str], *, sudo: bool | None = None,
             stop_on_error: bool = True, timeout: float | None = None, read_only: bool = False,
             dry_run: bool | None = None) -> Result:
    """Run one step's commands as ONE batch (one channel); `result` is the list of
    CommandResults. Raises CommandFailed on the first failure. A dry run lists the commands
    instead of running them, unless `read_only` (then they run and nothing is `changed`)."""
    cmds = list(cmds)
    if task.is_dry_run(dry_run) and not read_only:
        return Result(host=task.host, changed=bool(cmds), result=[],
                      diff="\n".join(f"would run: {c}" for c in cmds))
    results = connect(task).run_batch(cmds, sudo=sudo, stop_on_error=stop_on_error,
                                      timeout=timeout)
    return Result(host=task.host, changed=bool(cmds) and not read_only, result=results)


# --- facts ----------------------------------------------------------------------------------

#: Files read by ONE process (`head` prints a "==> path <==" header per file): every process
#: costs ~0.15 s on a slow guest (UML), so the probes are 3 processes, not 8.
_FACT_FILES = {
    "os_release": "/etc/os-release",
    "kernel": "/proc/sys/kernel/osrelease",
    "hostname": "/proc/sys/kernel/hostname",
    "meminfo": "/proc/meminfo",
    "modules": "/proc/modules",
    "cpuinfo": "/proc/cpuinfo",
}
_FACT_PROBES = {
    "files": "head -n 100000 " + " ".join(_FACT_FILES.values()),
    "listening": "ss -ltnH",
    "time": "date +%s.%N",
}


def _split_head(text: str) -> dict[str, str]:
    """`head` output of several files → {path: content}."""
    files: dict[str, list[str]] = {}
    current: list[str] | None = None
    for line in text.splitlines():
        if line.startswith("==> ") and line.endswith(" <=="):
            current = files.setdefault(line[4:-4], [])
        elif current is not None:
            current.append(line)
    return {path: "\n".join(lines).strip("\n") + "\n" for path, lines in files.items()}


def facts(task: Task, *, dry_run: bool | None = None) -> Result:
    """OS, CPUs, memory, swap, loaded modules, listening TCP ports and clock, in one channel.

    `result` keys: hostname, os (PRETTY_NAME), os_id, os_version, kernel, cpus, memory_mb,
    swap_mb, modules (sorted names), listening ([{address, port}]), listening_ports (sorted),
    time (host epoch), clock_skew_s (host minus this machine, at the round trip's midpoint),
    clock_round_trip_s (how long that round trip took: the skew is known to +/- half of it),
    errors ({probe: stderr} for probes that failed). Read-only: runs in dry runs too.
    """
    conn = connect(task)
    names = list(_FACT_PROBES)
    before = time.time()
    res = conn.run_batch([_FACT_PROBES[n] for n in names], sudo=False, stop_on_error=False,
                         check=False)
    after = time.time()
    out = {n: r for n, r in zip(names, res, strict=False)}
    errors = {n: (r.stderr.strip() or f"exit {r.exit_code}") for n, r in out.items()
              if r.exit_code != 0}

    files = _split_head(out["files"].stdout) if "files" in out else {}

    def text(name: str) -> str:
        if name in _FACT_FILES:
            return files.get(_FACT_FILES[name], "")
        r = out.get(name)
        return r.stdout if r is not None and r.exit_code == 0 else ""

    cpus = sum(1 for line in text("cpuinfo").splitlines() if line.startswith("processor"))

    release = _parse_os_release(text("os_release"))
    mem = _parse_meminfo(text("meminfo"))
    listening = _parse_ss(text("listening"))
    host_time = _float(text("time"))
    data: dict[str, Any] = {
        "hostname": text("hostname").strip() or None,
        "os": release.get("PRETTY_NAME"),
        "os_id": release.get("ID"),
        "os_version": release.get("VERSION_ID"),
        "kernel": text("kernel").strip() or None,
        "cpus": cpus or None,
        "memory_mb": mem.get("MemTotal", 0) // 1024 if "MemTotal" in mem else None,
        "swap_mb": mem.get("SwapTotal", 0) // 1024 if "SwapTotal" in mem else None,
        "modules": sorted(line.split()[0] for line in text("modules").splitlines() if line),
        "listening": listening,
        "listening_ports": sorted({x["port"] for x in listening}),
        "time": host_time,
        "clock_skew_s": (host_time - (before + after) / 2) if host_time is not None else None,
        "clock_round_trip_s": after - before,
        "errors": errors,
    }
    return Result(host=task.host, changed=False, result=data)


def _parse_os_release(text: str) -> dict[str, str]:
    values = {}
    for line in text.splitlines():
        key, sep, value = line.partition("=")
        if sep:
            values[key.strip()] = value.strip().strip('"').strip("'")
    return values


def _parse_meminfo(text: str) -> dict[str, int]:
    values = {}
    for line in text.splitlines():
        key, _, rest = line.partition(":")
        parts = rest.split()
        if parts and parts[0].isdigit():
            values[key.strip()] = int(parts[0])  # kB
    return values


def _parse_ss(text: str) -> list[dict[str, Any]]:
    """`ss -ltnH` lines → [{address, port}] (State Recv-Q Send-Q Local:Port Peer:Port ...)."""
    found = []
    for line in text.splitlines():
        parts = line.split()
        if len(parts) < 4:
            continue
        address, _, port = parts[3].rpartition(":")
        if port.isdigit():
            found.append({"address": address.split("%")[0].strip("[]"), "port": int(port)})
    return found


def _float(text: str) -> float | None:
    try:
        return float(text.strip())
    except ValueError:
        return None


# --- packages -------------------------------------------------------------------------------


def packages(task: Task, *, names: Sequence[str], update_cache: bool = False,
             no_start: bool = True, timeout: float = APT_TIMEOUT,
             known: CommandResult | None = None, hold: bool = False,
             probe_units: Sequence[str] = (), dry_run: bool | None = None) -> Result:
    """Install Debian packages with apt; a no-op (one query) when all are installed.

    A name may pin a version: "kubeadm=1.30.2-1.1" or a glob "kubeadm=1.30.*". With `no_start`
    a temporary policy-rc.d keeps newly installed services from starting before they are
    configured (the `service` task starts them). The package lists are refreshed when apt
    cannot find a package (or always with `update_cache`). `known`: the result of
    `package_query(names)` the caller ran moments ago in a batch of its own (one round trip
    fewer). `hold`: `apt-mark hold` the packages once installed (upgrades leave them be).
    `probe_units`: units the packages bring, read (`UNIT_PROBE`) right after the install: the
    Result's `units` ({unit: properties}; empty when nothing was installed) is what `service`
    takes as `known`. The refresh, the install, the hold and the probes share ONE exec
    channel, each with its own exit code: a failure still names its own command.
    """
    wanted = [_split_spec(n) for n in names]
    if not wanted:
        return Result(host=task.host, changed=False, result="no packages", units={})
    conn = connect(task)
    query = known if known is not None else conn.run(package_query(names), check=False)
    installed = {}
    for line in query.stdout.splitlines():
        parts = line.split()
        if len(parts) == 3 and parts[2] == "installed":
            installed[parts[0].split(":")[0]] = parts[1]
    missing = [f"{n}={v}" if v else n for n, v in wanted
               if n not in installed or (v and not fnmatch.fnmatchcase(installed[n], v))]
    if not missing:
        return Result(host=task.host, changed=False, result="all installed", units={})
    diff = "\n".join(f"+ package {m}" for m in missing)
    if task.is_dry_run(dry_run):
        return Result(host=task.host, changed=True, diff=diff, result=f"would install {missing}",
                      units={})
    script = _apt_install_script(missing, no_start)
    after = [*([APT_HOLD + " " + " ".join(shlex.quote(n) for n, _ in wanted)] if hold else []),
             *(UNIT_PROBE.format(unit=shlex.quote(u)) for u in probe_units)]
    cmds = [*([APT_UPDATE] if update_cache else []), script, *after]
    done = _apt_batch(conn, cmds, timeout)
    if not update_cache and not done[0].ok and _needs_update(done[0].stderr):
        cmds = [APT_UPDATE, *cmds]
        done = _apt_batch(conn, cmds, timeout)
    # the probes are reads: only the apt commands' exits fail the step
    failed = next((r for r in done[:len(cmds) - len(probe_units)] if not r.ok), None)
    if failed is not None:
        shown = f"apt-get install {' '.join(missing)}" if failed.command == script \
            else failed.command
        raise CommandFailed(task.host.name, shown, failed.exit_code, failed.stderr)
    units = {u: parse_unit(r.stdout)
             for u, r in zip(probe_units, done[len(cmds) - len(probe_units):], strict=True)}
    return Result(host=task.host, changed=True, diff=diff, result=f"installed {missing}",
                  units=units)


def _apt_batch(conn: Transport, cmds: Sequence[str], timeout: float) -> list[CommandResult]:
    """`cmds` in one exec channel, stopping at the first that fails. The refresh and the
    install have `timeout` each, as when each had a channel of its own: the batch, their sum."""
    budget = timeout * (2 if APT_UPDATE in cmds else 1)
    return conn.run_batch(cmds, stop_on_error=True, timeout=budget, check=False)


def package_query(names: Sequence[str]) -> str:
    """The command `packages` asks first: each package's version and install state."""
    bare = " ".join(shlex.quote(_split_spec(n)[0]) for n in names)
    return f"dpkg-query -W -f '${{Package}} ${{Version}} ${{db:Status-Status}}\\n' {bare}"


def _split_spec(spec: str) -> tuple[str, str]:
    name, _, version = spec.partition("=")
    return name.strip(), version.strip()


def _needs_update(stderr: str) -> bool:
    return any(s in stderr for s in ("Unable to locate package", "has no installation candidate",
                                      "404  Not Found", "404 Not Found", "Version '"))


def _apt_install_script(specs: Sequence[str], no_start: bool) -> str:
    apt = ("DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends "
           "--allow-downgrades -o DPkg::Lock::Timeout=300 -o Dpkg::Options::=--force-confdef "
           "-o Dpkg::Options::=--force-confold " + " ".join(shlex.quote(s) for s in specs))
    if not no_start:
        return apt
    # policy-rc.d exit 101 = "action forbidden": dpkg installs but starts nothing. Only a file we
    # created is removed again.
    return ("created=; if [ ! -e /usr/sbin/policy-rc.d ]; then "
            "printf '#!/bin/sh\\nexit 101\\n' > /usr/sbin/policy-rc.d && "
            "chmod 755 /usr/sbin/policy-rc.d && created=1; fi; "
            f"{apt}; rc=$?; "
            "if [ -n \"$created\" ]; then rm -f /usr/sbin/policy-rc.d; fi; exit $rc")


# --- files ----------------------------------------------------------------------------------


def file(task: Task, *, path: str, content: str | bytes, mode: int = 0o644, owner: str = "root",
         validate: str | None = None, backup: bool = True, secret: bool | None = None,
         dry_run: bool | None = None) -> Result:
    """Make `path` hold `content` with `mode` and `owner` ("user" or "user:group").

    `validate` is a command with `{path}` (e.g. "haproxy -c -f {path}"), run on the uploaded
    temp file before the swap; when it fails the old file is untouched and CommandFailed
    carries the validator's output. `secret` (default: mode gives group/other no access, e.g.
    0600) hides the content in the diff. Result: changed, diff (unified, `path` as the name).
    """
    conn = connect(task)
    return _converge(task, conn, path, conn.get(path), content, mode=mode, owner=owner,
                     validate=validate, backup=backup, secret=secret, dry_run=dry_run)


def edit_file(task: Task, *, path: str, edit: Callable[[str], str], mode: int = 0o644,
              owner: str = "root", backup: bool = True, dry_run: bool | None = None) -> Result:
    """Make `path` what `edit` makes of its text ("" when it is absent), by `file`'s protocol:
    for a file we hold some lines of and others the rest (/etc/hosts). The file is read once
    (not once to edit it and again by `file`); when `edit` changes nothing it is left alone,
    mode and owner too (they are the file's owner's business then)."""
    conn = connect(task)
    current = conn.get(path)
    text = (current or b"").decode()
    edited = edit(text)
    if edited == text:
        return Result(host=task.host, changed=False, diff="", result=f"{path} unchanged")
    return _converge(task, conn, path, current, edited, mode=mode, owner=owner, validate=None,
                     backup=backup, secret=None, dry_run=dry_run)


def _converge(task: Task, conn: Transport, path: str, current: bytes | None,
              content: str | bytes, *, mode: int, owner: str, validate: str | None,
              backup: bool, secret: bool | None, dry_run: bool | None) -> Result:
    """`file` from the moment the current content (`current`, None: absent) is known."""
    data = content.encode() if isinstance(content, str) else content
    hidden = secret if secret is not None else (mode & 0o077) == 0
    info = conn.stat(path) if current is not None else None
    user, _, group = owner.partition(":")
    notes = []
    if info is not None and info.mode != mode:
        notes.append(f"mode {info.mode:04o} -> {mode:04o}")
    if info is not None and (info.owner != user or (group and info.group != group)):
        notes.append(f"owner {info.owner}:{info.group} -> {owner}")
    content_changed = current != data
    if not content_changed and not notes:
        return Result(host=task.host, changed=False, diff="", result=f"{path} unchanged")
    diff = _file_diff(path, current, data, hidden) if content_changed else ""
    diff = "\n".join(x for x in (diff.rstrip("\n"), *(f"# {path}: {n}" for n in notes)) if x)
    if task.is_dry_run(dry_run):
        return Result(host=task.host, changed=True, diff=diff, result=f"{path} would change")
    put_owner = None if owner in ("root", "root:root") else owner
    if content_changed and validate:
        target = PurePosixPath(path)
        tmp = str(target.parent / f"{TEMP_PREFIX}{target.name}")
        conn.put(data, tmp, mode, owner=put_owner)
        check = validate.format(path=shlex.quote(tmp))
        r = conn.run(check, check=False)
        if r.exit_code != 0:
            conn.remove(tmp)
            output = "\n".join(x for x in (r.stderr.strip(), r.stdout.strip()) if x)
            raise CommandFailed(task.host.name, check, r.exit_code,
                                f"{path} not replaced: validation failed\n{output}")
        _backup(conn, path, current, info, backup)
        conn.rename(tmp, path)
    else:
        if content_changed:
            _backup(conn, path, current, info, backup)
        conn.put(data, path, mode, owner=put_owner)
    verb = "created" if current is None else "updated"
    return Result(host=task.host, changed=True, diff=diff, result=f"{path} {verb}")


def _backup(conn: Transport, path: str, current: bytes | None, info: Any, backup: bool) -> None:
    if backup and current is not None:
        owner = f"{info.owner}:{info.group}" if info is not None else None
        conn.put(current, path + BACKUP_SUFFIX, info.mode if info is not None else 0o600,
                 owner=None if owner in (None, "root:root") else owner)


def _file_diff(path: str, old: bytes | None, new: bytes, hidden: bool) -> str:
    src = "/dev/null" if old is None else path
    if hidden:
        return f"--- {src}\n+++ {path}\n{HIDDEN}\n"
    try:
        a = old.decode().splitlines(keepends=True) if old is not None else []
        b = new.decode().splitlines(keepends=True)
    except UnicodeDecodeError:
        size = "absent" if old is None else f"{len(old)} bytes"
        return f"--- {src}\n+++ {path}\n(binary content: {size} -> {len(new)} bytes)\n"
    lines = difflib.unified_diff(a, b, fromfile=src, tofile=path)
    return "".join(x if x.endswith("\n") else x + "\n\\ No newline at end of file\n"
                   for x in lines)


def restore_backup(task: Task, *, path: str, dry_run: bool | None = None) -> Result:
    """Put `<path>.k8sha-bak` back in place (atomic rename); a no-op when there is none."""
    conn = connect(task)
    bak = path + BACKUP_SUFFIX
    info = conn.stat(bak)
    if info is None:
        return Result(host=task.host, changed=False, result=f"no backup of {path}")
    hidden = (info.mode & 0o077) == 0
    diff = _file_diff(path, conn.get(path), conn.get(bak) or b"", hidden)
    if task.is_dry_run(dry_run):
        return Result(host=task.host, changed=True, diff=diff, result=f"would restore {path}")
    conn.rename(bak, path)
    return Result(host=task.host, changed=True, diff=diff, result=f"restored {path}")


# --- sysctl ---------------------------------------------------------------------------------


def sysctl(task: Task, *, settings: Mapping[str, Any], path: str,
           known: Sequence[CommandResult] | None = None, dry_run: bool | None = None) -> Result:
    """Persist `settings` in the sysctl.d file `path` and apply them (`sysctl -p path`) when the
    file changed or a running value differs from the wanted one.

    `known`: the results of `sysctl_probes(settings)` the caller ran moments ago in a batch of
    its own (one round trip fewer); trust them only while nothing has changed on the host."""
    written = file(task, path=path, content=sysctl_content(settings), mode=0o644,
                   dry_run=dry_run)
    conn = connect(task)
    live = known if known is not None else conn.run_batch(
        sysctl_probes(settings), sudo=False, stop_on_error=False, check=False)
    differs = sysctls_differing(settings, live)
    if not written.changed and not differs:
        return Result(host=task.host, changed=False, result="sysctls in place")
    diff = "\n".join(x for x in (written.diff, *(f"# sysctl {k} -> "
                                                f"{_sysctl_value(settings[k])}" for k in differs))
                     if x)
    if task.is_dry_run(dry_run):
        return Result(host=task.host, changed=True, diff=diff, result=f"would apply {path}")
    conn.run(f"sysctl -p {shlex.quote(path)}")
    return Result(host=task.host, changed=True, diff=diff, result=f"applied {path}")


def sysctl_probes(settings: Mapping[str, Any]) -> list[str]:
    """The commands that read `settings`' running values, one per key, in order."""
    return [f"sysctl -n {shlex.quote(k)}" for k in settings]


def sysctl_content(settings: Mapping[str, Any]) -> str:
    """The sysctl.d file `sysctl` writes for `settings`."""
    return "# managed by nornir-k8sha\n" + "".join(
        f"{k} = {_sysctl_value(v)}\n" for k, v in settings.items())


def sysctls_differing(settings: Mapping[str, Any], live: Sequence[CommandResult]) -> list[str]:
    """The keys whose running value (`live`: the results of `sysctl_probes(settings)`) is not
    the wanted one."""
    return [k for k, r in zip(settings, live, strict=False)
            if r.exit_code != 0 or r.stdout.split() != _sysctl_value(settings[k]).split()]


def _sysctl_value(value: Any) -> str:
    if isinstance(value, bool):
        return str(int(value))
    return str(value)


# --- services -------------------------------------------------------------------------------


def service(task: Task, *, unit: str | None = None, name: str | None = None,
            enabled: bool | None = True,
            state: str | None = "started", reload_if_changed: bool = False,
            restart_if_changed: bool = False, wait_active: bool = True,
            rollback: Sequence[str] = (), timeout: float = 30.0,
            known: Mapping[str, str] | None = None, dry_run: bool | None = None) -> Result:
    """Bring a systemd unit to `enabled` and `state`, acting only when needed.

    state: "started" | "stopped" | "restarted" (always) | "reloaded" (always) | None (leave).
    `reload_if_changed` / `restart_if_changed`: the caller's inputs (config files) changed, so a
    running unit is reloaded (reload-or-restart) / restarted. A daemon-reload runs first when
    systemd says a unit file changed. With `wait_active` the unit must reach "active" within
    `timeout` s. When a start/reload/restart fails, the `rollback` paths get their
    `.k8sha-bak` restored and the action is retried with the old config; CommandFailed then
    carries the last 20 journal lines either way.

    `name` is an alias of `unit` for direct calls (`service(task, name="etcd")`): through
    `task.run()` use `unit`, since Nornir's run() takes `name` as the task's own name.
    `known`: the unit's properties as the caller read them moments ago in a batch of its own
    (`UNIT_PROBE` + `parse_unit`), saving a round trip; trust them only while nothing has
    changed on the host since.
    """
    name = unit or name
    if not name:
        raise ValueError("service: which unit? pass unit=NAME")
    if state not in SERVICE_STATES:
        raise ValueError(f"service {name}: state must be one of {SERVICE_STATES}, not {state!r}")
    conn = connect(task)
    unit = dict(known) if known is not None else unit_state(conn, name)
    pre: list[str] = []
    if unit.get("NeedDaemonReload") == "yes" or unit.get("LoadState") == "not-found":
        pre.append("systemctl daemon-reload")
        if not task.is_dry_run(dry_run):
            conn.run(pre[0])
            unit = unit_state(conn, name)
            if unit.get("LoadState") == "not-found":
                raise CommandFailed(task.host.name, f"systemctl show {name}", 1,
                                    f"unit {name} not found")
    actions = _service_actions(name, unit, enabled, state, reload_if_changed,
                               restart_if_changed)
    todo = pre + actions
    if task.is_dry_run(dry_run):
        return Result(host=task.host, changed=bool(todo),
                      diff="\n".join(f"would run: {a}" for a in todo),
                      result=", ".join(todo) or f"{name} unchanged")
    wants_running = state in ("started", "restarted", "reloaded")
    acted = any(a.split()[-2] in ("start", "restart", "reload-or-restart") for a in actions)
    # a start/restart returns once systemd's job is done: ask `is-active` in the same exec
    # channel, and poll (`_wait_active`) only when it does not say "active" yet
    confirm = [_is_active(name)] if wants_running and wait_active and acted else []
    active = False
    if actions:
        results = conn.run_batch([*actions, *confirm], check=False)
        failed = next((r for r in results[:len(actions)] if r.exit_code != 0), None)
        if failed is not None:
            _fail_service(task, conn, name, failed, rollback, actions)
        active = bool(confirm) and results[-1].stdout.strip() == "active"
    if (wants_running and wait_active and not active
            and (acted or unit.get("ActiveState") == "activating")):
        _wait_active(task, conn, name, timeout, rollback, actions)
    return Result(host=task.host, changed=bool(todo), diff="\n".join(f"ran: {a}" for a in todo),
                  result=", ".join(todo) or f"{name} unchanged")


#: What `service` reads of a unit; `UNIT_PROBE.format(unit=...)` in a caller's own batch.
UNIT_PROBE = "systemctl show -p LoadState,ActiveState,UnitFileState,NeedDaemonReload {unit}"


def unit_state(conn: Transport, name: str) -> dict[str, str]:
    """The unit's properties (`UNIT_PROBE`), read now: what `service` reads first, or takes as
    `known` from a caller that read them moments ago."""
    r = conn.run(UNIT_PROBE.format(unit=shlex.quote(name)), sudo=False, check=False)
    return parse_unit(r.stdout)


def is_running(unit: Mapping[str, str]) -> bool:
    """The unit (as `unit_state` read it) is running: active, reloading or starting."""
    return unit.get("ActiveState", "") in _RUNNING


def is_enabled(unit: Mapping[str, str]) -> bool:
    """The unit (as `unit_state` read it) needs no `systemctl enable` (enabled, static...)."""
    return unit.get("UnitFileState", "") in _ENABLED


def enable_together(task: Task, names: Sequence[str],
                    read: Sequence[str]) -> dict[str, dict[str, str]] | None:
    """`systemctl enable` of the units `names` in ONE call, then the state of the units `read`
    (`UNIT_PROBE`), in one exec channel: systemd reloads its configuration once for all the
    units instead of once per `enable` (0.1-0.4 s each on a lab host). The states, taken just
    after, are what `service` takes as `known`; None when the enable failed: each unit's own
    `service` then enables it and words the error (journal, rollback)."""
    q = " ".join(shlex.quote(n) for n in names)
    res = connect(task).run_batch([f"{SKIP_SYSV} systemctl enable {q}",
                                   *(UNIT_PROBE.format(unit=shlex.quote(u)) for u in read)],
                                  stop_on_error=False, check=False)
    if not res or res[0].exit_code != 0:
        return None
    return {u: parse_unit(r.stdout) for u, r in zip(read, res[1:], strict=True)}


def parse_unit(stdout: str) -> dict[str, str]:
    """`systemctl show -p ...` output -> {property: value}."""
    props = {}
    for line in stdout.splitlines():
        key, sep, value = line.partition("=")
        if sep:
            props[key] = value.strip()
    return props


def _service_actions(name: str, unit: Mapping[str, str], enabled: bool | None,
                     state: str | None, reload_if_changed: bool,
                     restart_if_changed: bool) -> list[str]:
    q = shlex.quote(name)
    actions = []
    file_state = unit.get("UnitFileState", "")
    if enabled is True and not is_enabled(unit):
        actions.append(f"{SKIP_SYSV} systemctl enable {q}")
    elif enabled is False and file_state in ("enabled", "enabled-runtime"):
        actions.append(f"{SKIP_SYSV} systemctl disable {q}")
    running = is_running(unit)
    if state == "stopped":
        if running:
            actions.append(f"systemctl stop {q}")
    elif state == "restarted" or (state == "reloaded" and not running):
        actions.append(f"systemctl {'restart' if running else 'start'} {q}")
    elif state == "reloaded":
        actions.append(f"systemctl reload-or-restart {q}")
    elif state == "started" and not running:
        actions.append(f"systemctl start {q}")
    elif running and restart_if_changed:
        actions.append(f"systemctl restart {q}")
    elif running and reload_if_changed:
        actions.append(f"systemctl reload-or-restart {q}")
    return actions


def _is_active(name: str) -> str:
    return f"systemctl is-active {shlex.quote(name)}"


def _wait_active(task: Task, conn: Transport, name: str, timeout: float,
                 rollback: Sequence[str], actions: Sequence[str]) -> None:
    """Poll `systemctl is-active` until active; failed or out of time → CommandFailed."""
    cmd = _is_active(name)
    r = poll(lambda: conn.run(cmd, sudo=False, check=False),
             lambda res: res.stdout.strip() == "active", timeout=timeout, interval=0.2,
             give_up=lambda res: res.stdout.strip() == "failed")
    status = r.stdout.strip()
    if status != "active":
        why = CommandResult(cmd, r.exit_code or 3, r.stdout,
                            f"{name} is {status or 'unknown'} (waited up to {timeout:g}s)",
                            r.duration)
        _fail_service(task, conn, name, why, rollback, actions)


def _fail_service(task: Task, conn: Transport, name: str, failed: CommandResult,
                  rollback: Sequence[str], actions: Sequence[str]) -> None:
    """Restore the rollback files, retry the actions, and raise with the journal tail."""
    journal = conn.run(f"journalctl -u {shlex.quote(name)} -n 20 --no-pager -o cat",
                       sudo=None, check=False).stdout.rstrip()
    notes = [failed.stderr.strip(), f"--- journalctl -u {name} -n 20 ---\n{journal}"]
    if rollback:
        restored = [p for p in rollback if restore_backup(task, path=p, dry_run=False).changed]
        if restored:
            retry = conn.run_batch(["systemctl daemon-reload", *actions], check=False)
            ok = all(r.exit_code == 0 for r in retry)
            notes.append(f"restored {', '.join(restored)}; {name} "
                         f"{'is back on the previous config' if ok else 'still fails'}")
    raise CommandFailed(task.host.name, failed.command, failed.exit_code,
                        "\n".join(n for n in notes if n))
