"""The fake fleet for unit tests, in the spirit of httpx's MockTransport; imported by tests only.

A `FakeHost` implements the `nornir_k8sha.transport.Transport` protocol: it holds a dict
filesystem and a handler for commands, and records every call. `install_fake` puts one in place
of the real `k8sha_ssh` connection of every host of a Nornir object::

    fleet = FakeFleet()
    fleet.host("lvs1").on(r"^systemctl is-active", stdout="active\\n")
    install_fake(nr, fleet)            # every host of `nr` now talks to its FakeHost
    nr.run(task=some_task)
    assert fleet.host("lvs1").commands() == [...]

`SimulatedDebian` is a handler that behaves like a small Debian host (dpkg/apt, systemd,
sysctl) for idempotence tests. No product module imports this one (a test keeps it so).
"""

from __future__ import annotations

import contextlib
import hashlib
import re
import shlex
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any

import httpx

from nornir_k8sha import constants as C
from nornir_k8sha.budget import BUDGET
from nornir_k8sha.exceptions import CommandFailed
from nornir_k8sha.transport import (
    CONNECTION_NAME,
    CommandResult,
    FileInfo,
    raise_for_batch,
)


@dataclass(frozen=True)
class Call:
    """One recorded call on a FakeHost. `stdin` is what the command itself received."""

    op: str  # run | put | get | stat | rename | remove | close
    command: str = ""
    path: str = ""
    sudo: bool = False
    stdin: bytes | None = None
    mode: int | None = None


Handler = Callable[["FakeHost", str, "bytes | None"], Any]


@dataclass(frozen=True)
class LatencyModel:
    """What a call costs, spent by a FakeHost so that a simulated fleet takes the time a real
    one would: the host's latency (slept) and the controller's own CPU for the call (burnt in
    the calling thread, as the real transport's Python code holds the GIL).

    Defaults: `bench/ssh_costs_bench.py` on the lab (docs/benchmarks.md, "what one SSH
    operation costs"), sessions riding an OpenSSH master asked for in-process (`muxclient`).
    `PARAMIKO_ERA` is the model of 2026-12-03, before persistent masters: connect 0.2 s, a new
    exec channel 0.12 s, an SFTP operation 0.05 s, no controller CPU modelled."""

    # 2026-12-04 15:11 UTC, load 4 (docs/benchmarks.md): a container's wall times less the
    # controller's CPU for the call, which is spent apart below
    connect: float = 0.14
    exec: float = 0.0023
    per_command: float = 0.0019
    sftp: float = 0.0006
    #: controller CPU seconds per exec session (a batch is one, plus `cpu_per_command` for each
    #: further command) and per SFTP operation, in this process (burnt holding the GIL);
    #: re-measured 2026-12-04 18:12 UTC, load 0.5, after sessions lost their reader thread and
    #: small files their prefetch (was 0.65 ms and 0.35 ms)
    cpu_exec: float = 0.00055
    cpu_per_command: float = 0.0003
    cpu_sftp: float = 0.0003
    #: controller CPU seconds of a handshake, in the `ssh` process that starts the master
    #: (burnt without the GIL, on any core). OpenSSH 9.2's default key exchange
    #: (sntrup761x25519-sha512) costs most of it: `CLASSICAL_KEX_CONNECT_CPU` with
    #: curve25519-sha256 (the connection option `kex_algorithms`)
    cpu_connect: float = 0.083


#: the model before persistent masters (2026-12-03): paramiko channels, nothing on the CPU
PARAMIKO_ERA = LatencyModel(connect=0.2, exec=0.12, per_command=0.005, sftp=0.05, cpu_exec=0.0,
                            cpu_per_command=0.0, cpu_sftp=0.0, cpu_connect=0.0)
#: a handshake's controller CPU with `kex_algorithms: curve25519-sha256` (ssh_costs_bench)
CLASSICAL_KEX_CONNECT_CPU = 0.0136


class Gauge:
    """How many calls are in flight at once (across a fleet): the concurrency a connection
    budget caps. `peak` is the most seen."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self.now = 0
        self.peak = 0

    @contextlib.contextmanager
    def inside(self) -> Iterator[None]:
        with self._lock:
            self.now += 1
            self.peak = max(self.peak, self.now)
        try:
            yield
        finally:
            with self._lock:
                self.now -= 1


@dataclass
class _Rule:
    pattern: re.Pattern[str]
    reply: Any


@dataclass
class FakeHost:
    """A host for unit tests: a dict filesystem, scripted command replies, a record of calls.

    Command replies, first match wins, newest rule first:
    - rules added with `on(regex, stdout=, stderr=, exit_code=)` or `on(regex, func)` where
      `func(host, command, stdin)` returns a CommandResult, `(code, stdout, stderr)`, a stdout
      string, or None (fall through);
    - the `handler` given at construction (same signature and replies);
    - otherwise exit 0 with no output.
    Files live in `files` (path -> bytes) with `modes` and `owners` ("user:group").
    """

    name: str
    handler: Handler | None = None
    files: dict[str, bytes] = field(default_factory=dict)
    modes: dict[str, int] = field(default_factory=dict)
    owners: dict[str, str] = field(default_factory=dict)
    calls: list[Call] = field(default_factory=list)
    closed: bool = False
    #: Sleep what each call would cost on a real host (None: answer at once).
    latency: LatencyModel | None = None
    #: Shared with the other hosts of a fleet: calls in flight at once.
    gauge: Gauge | None = None
    #: Round trips to the host: exec channels (a batch is one) and file operations.
    round_trips: int = 0
    #: Seconds slept for the latency model so far.
    slept: float = 0.0
    connected: bool = False
    _rules: list[_Rule] = field(default_factory=list, repr=False)
    _lock: threading.Lock = field(default_factory=threading.Lock, repr=False)

    @property
    def host(self) -> str:
        return self.name

    # -- scripting --
    def on(self, pattern: str, reply: Any = None, *, stdout: str = "", stderr: str = "",
           exit_code: int = 0) -> FakeHost:
        """Reply to commands matching `pattern` (re.search); returns self for chaining."""
        if reply is None:
            reply = CommandResult("", exit_code, stdout, stderr, 0.0)
        self._rules.insert(0, _Rule(re.compile(pattern), reply))
        return self

    def write(self, path: str, content: bytes | str, mode: int = 0o644,
              owner: str = "root:root") -> None:
        """Put a file on the fake host as if it had always been there."""
        self.files[path] = content.encode() if isinstance(content, str) else content
        self.modes[path] = mode
        self.owners[path] = owner

    def read(self, path: str) -> str | None:
        data = self.files.get(path)
        return None if data is None else data.decode()

    @property
    def debian(self) -> SimulatedDebian:
        """The host's SimulatedDebian handler (FakeFleet(debian=True))."""
        if not isinstance(self.handler, SimulatedDebian):
            raise TypeError(f"{self.name} has no SimulatedDebian handler")
        return self.handler

    # -- inspection --
    def commands(self) -> list[str]:
        """Every command run, in order (batches are recorded command by command)."""
        return [c.command for c in self.calls if c.op == "run"]

    def writes(self) -> list[str]:
        """Every path that was written, renamed onto or removed."""
        return [c.path for c in self.calls if c.op in ("put", "rename", "remove")]

    def connect(self) -> None:
        """Open the simulated connection, once: what the latency model says a handshake costs
        (slept, and the `ssh` process's CPU burnt outside the GIL), holding a connection slot,
        before the first call's own round trip (a real task gets its connection, then times
        its commands)."""
        with self._lock:
            if self.connected:
                return
            self.connected = True
        BUDGET.opened(self)
        if self.latency is not None:
            with BUDGET.opening(f"{self.name}:{C.SSH_PORT}"):  # as host.open_connection does
                with self._lock:
                    self.slept += self.latency.connect
                _burn_outside_gil(self.latency.cpu_connect)
                time.sleep(self.latency.connect)

    @contextlib.contextmanager
    def _trip(self, cost: float = 0.0, cpu: float = 0.0) -> Iterator[None]:
        """One round trip: counted, measured by the fleet's gauge, spent per the latency
        model (a first one opens the simulated connection first)."""
        self.connect()
        with self.gauge.inside() if self.gauge is not None else contextlib.nullcontext():
            with self._lock:
                self.round_trips += 1
            if self.latency is not None:
                with self._lock:
                    self.slept += cost
                _burn(cpu)
                time.sleep(cost)
            yield

    def _cost(self, kind: str, commands: int = 1) -> tuple[float, float]:
        """(seconds of latency, seconds of controller CPU) of one call."""
        if self.latency is None:
            return 0.0, 0.0
        if kind == "exec":
            more = max(0, commands - 1)
            return (self.latency.exec + self.latency.per_command * more,
                    self.latency.cpu_exec + self.latency.cpu_per_command * more)
        return self.latency.sftp, self.latency.cpu_sftp

    # -- the Transport protocol --
    def run(self, command: str, *, sudo: bool | None = None, stdin: bytes | str | None = None,
            timeout: float | None = None, check: bool = True) -> CommandResult:
        with self._trip(*self._cost("exec")):
            result = self._run_one(command, sudo, stdin)
        if check and result.exit_code != 0:
            raise CommandFailed(self.name, command, result.exit_code, result.stderr)
        return result

    def _run_one(self, command: str, sudo: bool | None, stdin: bytes | str | None
                 ) -> CommandResult:
        data = stdin.encode() if isinstance(stdin, str) else stdin
        with self._lock:
            self.calls.append(Call("run", command=command, sudo=bool(sudo), stdin=data))
        return self._reply(command, data)

    def run_batch(self, commands: Sequence[str], *, sudo: bool | None = None,
                  stop_on_error: bool = True, timeout: float | None = None,
                  check: bool = True) -> list[CommandResult]:
        results = []
        with self._trip(*self._cost("exec", len(commands))):
            for cmd in commands:
                r = self._run_one(cmd, sudo, None)
                results.append(r)
                if stop_on_error and r.exit_code != 0:
                    break
        if check:
            raise_for_batch(self.name, results)
        return results

    def put(self, content: bytes | str, path: str, mode: int = 0o644, *,
            owner: str | None = None) -> None:
        data = content.encode() if isinstance(content, str) else content
        with self._trip(*self._cost("sftp")), self._lock:
            self.calls.append(Call("put", path=path, mode=mode))
            self.files[path] = data
            self.modes[path] = mode
            self.owners[path] = _owner_group(owner or "root")

    def get(self, path: str) -> bytes | None:
        with self._trip(*self._cost("sftp")), self._lock:
            self.calls.append(Call("get", path=path))
            return self.files.get(path)

    def stat(self, path: str) -> FileInfo | None:
        with self._trip(*self._cost("sftp")), self._lock:
            self.calls.append(Call("stat", path=path))
            if path not in self.files:
                return None
            user, group = self.owners.get(path, "root:root").split(":", 1)
            return FileInfo(self.modes.get(path, 0o644), user, group)

    def rename(self, src: str, dst: str) -> None:
        with self._trip(*self._cost("sftp")), self._lock:
            self.calls.append(Call("rename", command=src, path=dst))
            if src not in self.files:
                raise FileNotFoundError(src)
            self.files[dst] = self.files.pop(src)
            self.modes[dst] = self.modes.pop(src, 0o644)
            self.owners[dst] = self.owners.pop(src, "root:root")

    def remove(self, path: str) -> None:
        with self._trip(*self._cost("sftp")), self._lock:
            self.calls.append(Call("remove", path=path))
            for d in (self.files, self.modes, self.owners):
                d.pop(path, None)

    def close(self) -> None:
        self.closed = True
        if self.connected:
            BUDGET.closed(self)

    # -- internals --
    def _reply(self, command: str, stdin: bytes | None) -> CommandResult:
        for rule in list(self._rules):
            if rule.pattern.search(command):
                got = _coerce(command, rule.reply(self, command, stdin)
                              if callable(rule.reply) else rule.reply)
                if got is not None:
                    return got
        if self.handler is not None:
            got = _coerce(command, self.handler(self, command, stdin))
            if got is not None:
                return got
        return CommandResult(command, 0, "", "", 0.0)


#: How long `_burn` holds the GIL at a time. The real transport lets go of it at each of the
#: ~30 system calls of a session (socket, pipe, poll, read: ~0.55 ms of CPU in all, so about
#: every 20 us); one unbroken hold of the whole share made the simulated threads queue for the
#: GIL as the real ones do not.
_BURN_SLICE_S = 50e-6


def _burn(seconds: float) -> None:
    """Spend `seconds` of this thread's CPU (the controller's share of a simulated call), in
    slices of `_BURN_SLICE_S` with the GIL let go between them (`time.sleep(0)`)."""
    if seconds <= 0:
        return
    end = time.thread_time() + seconds
    while (now := time.thread_time()) < end:
        stop = min(end, now + _BURN_SLICE_S)
        while time.thread_time() < stop:
            pass
        time.sleep(0)


_PBKDF2_PER_CPU_SECOND: list[float] = []  # calibrated once


def _burn_outside_gil(seconds: float) -> None:
    """Spend `seconds` of CPU without holding the GIL (OpenSSL's PBKDF2 releases it), as
    another process would: other threads keep running."""
    if seconds <= 0:
        return
    if not _PBKDF2_PER_CPU_SECOND:
        start = time.thread_time()
        hashlib.pbkdf2_hmac("sha256", b"k8sha", b"calibrate", 20000)
        _PBKDF2_PER_CPU_SECOND.append(20000 / max(time.thread_time() - start, 1e-6))
    rounds = max(1, int(seconds * _PBKDF2_PER_CPU_SECOND[0]))
    hashlib.pbkdf2_hmac("sha256", b"k8sha", b"handshake", rounds)


def _owner_group(owner: str) -> str:
    return owner if ":" in owner else f"{owner}:{owner}"


def _coerce(command: str, reply: Any) -> CommandResult | None:
    if reply is None:
        return None
    if isinstance(reply, CommandResult):
        return CommandResult(command, reply.exit_code, reply.stdout, reply.stderr,
                             reply.duration)
    if isinstance(reply, str):
        return CommandResult(command, 0, reply, "", 0.0)
    if isinstance(reply, tuple) and len(reply) == 3:
        return CommandResult(command, int(reply[0]), str(reply[1]), str(reply[2]), 0.0)
    raise TypeError(f"fake reply for `{command}` must be CommandResult, (code, out, err), str "
                    f"or None, not {type(reply).__name__}")


class FakeFleet:
    """A set of FakeHosts by name, created on first use.

    `handler` is every new host's handler; with `debian=True` each host gets its own
    `SimulatedDebian` instead (reach it as `fleet.host(name).debian`). With `latency`, every
    call sleeps what it would cost on a real host (`LatencyModel`). `gauge.peak` is the most
    calls that were in flight at once across the fleet.
    """

    def __init__(self, handler: Handler | None = None, *, debian: bool = False,
                 latency: LatencyModel | None = None) -> None:
        self.handler = handler
        self.debian = debian
        self.latency = latency
        self.gauge = Gauge()
        self.hosts: dict[str, FakeHost] = {}
        self._lock = threading.Lock()

    def host(self, name: str) -> FakeHost:
        with self._lock:
            if name not in self.hosts:
                handler = SimulatedDebian() if self.debian else self.handler
                self.hosts[name] = FakeHost(name, handler=handler, latency=self.latency,
                                            gauge=self.gauge)
            return self.hosts[name]

    def round_trips(self) -> dict[str, int]:
        """host -> round trips made to it so far."""
        return {name: h.round_trips for name, h in self.hosts.items()}

    def __getitem__(self, name: str) -> FakeHost:
        return self.host(name)


class _FakePlugin:
    """Stands in a Nornir host's `connections` dict for the `k8sha_ssh` plugin."""

    def __init__(self, fake: FakeHost) -> None:
        self.fake = fake

    @property
    def connection(self) -> FakeHost:
        self.fake.connect()  # when a task reaches for the connection, as opening one would
        return self.fake

    def open(self, *args: Any, **kwargs: Any) -> None:  # pragma: no cover - never reopened
        pass

    def close(self) -> None:
        self.fake.close()


def install_fake(nr: Any, fleet: FakeFleet, connection: str = CONNECTION_NAME) -> FakeFleet:
    """Make every host of the Nornir object `nr` talk to `fleet.host(name)`; returns `fleet`."""
    for name, host in nr.inventory.hosts.items():
        host.connections[connection] = _FakePlugin(fleet.host(name))
    return fleet


# --- a simulated Debian host: dpkg/apt, systemd and sysctl over the fake's state -----------


@dataclass
class FakeUnit:
    """A systemd unit of a SimulatedDebian host."""

    enabled: bool = False
    active: bool = False
    fail_start: bool = False  # start/restart/reload fail and leave the unit "failed"
    failed: bool = False
    need_daemon_reload: bool = False
    starts: int = 0
    restarts: int = 0
    reloads: int = 0


@dataclass
class SimulatedDebian:
    """A FakeHost handler that behaves like a small Debian host, for idempotence tests.

    Understands `dpkg-query -W`, our `apt-get install` script, `systemctl show|enable|disable|
    start|stop|restart|reload|reload-or-restart|is-active|daemon-reload`, `journalctl -u`,
    `sysctl -n KEY`, `sysctl -p FILE` and `cat FILE... 2>/dev/null` (the fake's files; a
    missing one is left out, exit 1). Anything else falls
    through to the next reply (exit 0, no output). Use: `FakeFleet(handler=SimulatedDebian())`
    shares one state between hosts; `FakeHost(name, handler=SimulatedDebian())` for one host.
    """

    packages: dict[str, str] = field(default_factory=dict)  # name -> version
    units: dict[str, FakeUnit] = field(default_factory=dict)
    sysctls: dict[str, str] = field(default_factory=dict)
    available: set[str] | None = None  # None: every package can be installed

    def __call__(self, host: FakeHost, command: str, stdin: bytes | None) -> Any:
        command = re.sub(r"^(?:[A-Z_]+=\S*\s+)+", "", command)  # VAR=value systemctl ...
        words = command.split()
        if not words:
            return None
        if words[0] == "dpkg-query":
            return self._dpkg_query(command)
        if "apt-get install" in command:
            return self._apt_install(command)
        if words[0] == "systemctl":
            if words[1:2] in (["daemon-reload"], ["enable"], ["disable"]):
                self._load_unit_files(host)  # systemctl enable/disable reload systemd too
            return self._systemctl([w for w in shlex.split(command)[1:] if w != "--"])
        if words[0] == "journalctl":
            return (0, "fake journal line 1\nfake journal line 2\n", "")
        if words[0] == "sysctl" and len(words) == 3 and words[1] == "-n":
            key = shlex.split(command)[2]
            if key not in self.sysctls:
                return (255, "", f"sysctl: cannot stat /proc/sys/{key}: No such file\n")
            return self.sysctls[key] + "\n"
        if words[0] == "sysctl" and len(words) == 3 and words[1] == "-p":
            return self._sysctl_apply(host, shlex.split(command)[2])
        if words[0] == "cat" and words[-1] == "2>/dev/null":
            found = [host.read(p) for p in shlex.split(command)[1:-1]]
            return (0 if None not in found else 1, "".join(f for f in found if f), "")
        return None

    def unit(self, name: str) -> FakeUnit:
        return self.units.setdefault(name, FakeUnit())

    def _load_unit_files(self, host: FakeHost) -> None:
        """daemon-reload finds the unit files written to /etc/systemd/system, as systemd does."""
        for path in host.files:
            folder, _, name = path.rpartition("/")
            if folder == "/etc/systemd/system" and name.endswith((".service", ".timer")):
                self.units.setdefault(name.removesuffix(".service"), FakeUnit())

    def _dpkg_query(self, command: str) -> Any:
        names = shlex.split(command)[4:]  # dpkg-query -W -f FORMAT NAMES
        lines = [f"{n} {self.packages[n]} installed" for n in names if n in self.packages]
        unknown = [n for n in names if n not in self.packages]
        err = "".join(f"dpkg-query: no packages found matching {n}\n" for n in unknown)
        return (1 if unknown else 0, "".join(x + "\n" for x in lines), err)

    def _apt_install(self, command: str) -> Any:
        tail = shlex.split(command.split("apt-get install", 1)[1].split(";")[0])
        specs, skip = [], False
        for w in tail:
            if skip:
                skip = False
            elif w == "-o":
                skip = True
            elif not w.startswith("-"):
                specs.append(w)
        for spec in specs:
            name, _, version = spec.partition("=")
            if self.available is not None and name not in self.available:
                return (100, "", f"E: Unable to locate package {name}\n")
            self.packages[name] = version.replace("*", "0") or "1.0"
        return (0, f"installed {' '.join(specs)}\n", "")

    def _systemctl(self, args: list[str]) -> Any:
        verb, names = args[0], [a for a in args[1:] if not a.startswith("-")]
        reloads = verb in ("enable", "disable") and all(n in self.units for n in names)
        if verb == "daemon-reload" or reloads:  # a successful enable/disable reloads systemd
            for u in self.units.values():
                u.need_daemon_reload = False
            if verb == "daemon-reload":
                return (0, "", "")
        if verb == "show":
            name = names[-1]
            if name not in self.units:
                return "LoadState=not-found\nActiveState=inactive\nUnitFileState=\n" \
                       "NeedDaemonReload=no\n"
            u = self.units[name]
            active = "failed" if u.failed else ("active" if u.active else "inactive")
            return (f"LoadState=loaded\nActiveState={active}\nUnitFileState="
                    f"{'enabled' if u.enabled else 'disabled'}\nNeedDaemonReload="
                    f"{'yes' if u.need_daemon_reload else 'no'}\n")
        missing = [n for n in names if n not in self.units] or ([] if names else ["?"])
        if missing:
            return (5, "", f"Failed to {verb} unit: Unit {missing[0]} not found.\n")
        u = self.units[names[0]]
        if verb == "is-active":
            state = "failed" if u.failed else ("active" if u.active else "inactive")
            return (0 if u.active else 3, state + "\n", "")
        if verb in ("enable", "disable"):  # several units in one call, as systemctl does
            for name in names:
                self.units[name].enabled = verb == "enable"
        elif verb == "stop":
            u.active = False
        elif verb in ("start", "restart", "reload", "reload-or-restart"):
            if u.fail_start:
                u.active, u.failed = False, True
                return (1, "", f"Job for {names[0]}.service failed.\n")
            if verb == "start" or not u.active:
                u.starts += 1
            elif verb == "restart":
                u.restarts += 1
            else:
                u.reloads += 1
            u.active, u.failed = True, False
        return (0, "", "")

    def _sysctl_apply(self, host: FakeHost, path: str) -> Any:
        text = (host.files.get(path) or b"").decode()
        out = []
        for line in text.splitlines():
            key, sep, value = line.partition("=")
            if sep and not line.lstrip().startswith("#"):
                self.sysctls[key.strip()] = value.strip()
                out.append(f"{key.strip()} = {value.strip()}")
        return "\n".join(out) + "\n"


# --- a registry's v2 API in memory -----------------------------------------------------------


class FakeRegistry:
    """The part of a Distribution registry's v2 API a push and a HEAD use, in memory, as an
    `httpx.MockTransport` (`.transport`): blobs by digest, manifests by repository and tag.

    `calls` records "METHOD path" of every request, `hosts` the host each went to. Like
    docker-registry, upload locations are absolute URLs on the registry's own name."""

    def __init__(self, own_name: str = "harbor.k8sha.lab") -> None:
        self.blobs: dict[str, bytes] = {}
        self.manifests: dict[str, bytes] = {}
        self.calls: list[str] = []
        self.hosts: set[str] = set()
        self.own_name = own_name
        self.transport = httpx.MockTransport(self._answer)

    def _answer(self, request: httpx.Request) -> httpx.Response:
        path, method = request.url.path, request.method
        self.calls.append(f"{method} {path}")
        self.hosts.add(request.url.host)
        if path == "/v2/":
            return httpx.Response(200)
        if "/manifests/" in path:
            if method == "PUT":
                self.manifests[path] = request.content
                return httpx.Response(201)
            if path not in self.manifests:
                return httpx.Response(404)
            digest = "sha256:" + hashlib.sha256(self.manifests[path]).hexdigest()
            return httpx.Response(200, headers={"Docker-Content-Digest": digest})
        if path.endswith("/blobs/uploads/") and method == "POST":
            return httpx.Response(
                202, headers={"Location": f"https://{self.own_name}/v2/_uploads/1?state=x"})
        if method == "PUT":
            digest = request.url.params["digest"]
            if "sha256:" + hashlib.sha256(request.content).hexdigest() != digest:
                return httpx.Response(400, text="digest mismatch")
            self.blobs[digest] = request.content
            return httpx.Response(201)
        return httpx.Response(200 if path.rsplit("/", 1)[-1] in self.blobs else 404)
