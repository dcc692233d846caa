"""`lab up`, `lab down`, `lab status`: the inventory's hosts as real hosts on this machine.

`up` is idempotent: it keeps hosts whose recorded process still runs, (re)starts the others,
brings cut links back up, lifts partitions, and waits until every host answers SSH. A lab that
crashed (no state file, or dead PIDs) is cleaned of its own leftovers first: processes in its
cgroups or naming its directories, mounts under its state dir, its namespaces and links.
`down` removes everything `up` made except the SSH client key and the cached rootfs.
"""

from __future__ import annotations

import os
import shutil
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from ipaddress import IPv4Address
from pathlib import Path

from nornir_k8sha import constants as C
from nornir_k8sha.exceptions import LabError, NotRootError
from nornir_k8sha.lab import container, network, overlay, procs, rootfs, ssh, uml, umlkernel
from nornir_k8sha.lab.hostpkgs import ensure_host_packages
from nornir_k8sha.lab.state import KIND_NSPAWN, KIND_UML, HostRecord, LabState, StateStore
from nornir_k8sha.sshcontrol import stop_masters
from nornir_k8sha.topology import ClusterSpec, HostSpec, load_cluster_spec

Log = Callable[[str], None]
SSH_TIMEOUT = 120.0

STATE_RUNNING = "running"
STATE_UNREACHABLE = "unreachable"
STATE_STOPPED = "stopped"


def require_root(action: str = "the lab") -> None:
    if os.geteuid() != 0:
        raise NotRootError(
            f"{action} needs root: it creates network namespaces, a bridge, overlay mounts and "
            "containers on this machine. Run it again as root (e.g. with sudo)."
        )


@dataclass
class UpReport:
    started: list[str] = field(default_factory=list)
    kept: list[str] = field(default_factory=list)
    packages_installed: list[str] = field(default_factory=list)
    rootfs_built: bool = False
    seconds: float = 0.0
    ssh_seconds: float = 0.0


@dataclass
class DownReport:
    stopped: list[str] = field(default_factory=list)
    seconds: float = 0.0
    leftovers: list[str] = field(default_factory=list)


@dataclass
class HostStatus:
    name: str
    address: str
    roles: tuple[str, ...]
    machine: str
    kind: str
    state: str
    pid: int | None
    pss_kib: int

    @property
    def memory_mib(self) -> float:
        return self.pss_kib / 1024


class Lab:
    """The lab of one inventory. Paths are resolved against `base` (default: the cwd)."""

    def __init__(self, spec: ClusterSpec, *, base: Path | None = None, log: Log | None = None):
        self.spec = spec
        self.base = (base or Path.cwd()).resolve()
        self.cluster_dir = self.base / spec.state_dir
        self.state_dir = self.cluster_dir / "lab"
        self.ssh = ssh.SSHPaths(self.cluster_dir / "ssh")
        self.store = StateStore(self.state_dir)
        self.bridge = network.bridge_name(spec.name)
        self.controller = network.controller_address(spec.network)
        self.prefix = spec.network.prefixlen
        self.log: Log = log or (lambda _msg: None)
        self._kernel: umlkernel.UmlKernel | None = None
        taken = [h.name for h in spec.hosts if h.address == self.controller]
        if taken:
            raise LabError(f"host {taken[0]} uses {self.controller}, the lab controller's address")

    @classmethod
    def from_inventory(cls, inventory: Path | str, **kwargs: object) -> Lab:
        return cls(load_cluster_spec(inventory), **kwargs)  # type: ignore[arg-type]

    # --- naming ----------------------------------------------------------------------------

    @property
    def kernel(self) -> umlkernel.UmlKernel:
        """The UML kernel of the directors: chosen (and fetched if needed) once per Lab."""
        if self._kernel is None:
            self._kernel = umlkernel.ensure_kernel(self.log)
        return self._kernel

    @property
    def hosts(self) -> list[HostSpec]:
        return list(self.spec.hosts)

    @staticmethod
    def kind_of(host: HostSpec) -> str:
        return KIND_UML if host.has_role(C.ROLE_LVS) else KIND_NSPAWN

    def dirs(self, name: str) -> overlay.HostDirs:
        return overlay.HostDirs(self.state_dir / "hosts" / name)

    def link_of(self, host: HostSpec) -> str:
        if self.kind_of(host) == KIND_UML:
            return network.tap_name(host.name)
        return network.veth_name(host.name)

    def cgroups(self, name: str) -> list[Path]:
        return procs.host_cgroups(self.spec.name, name)

    def _hosts_file(self) -> str:
        entries: dict[str, IPv4Address] = {h.name: h.address for h in self.hosts}
        extra: dict[str, IPv4Address] = {f"k8sha-controller.{self.spec.name}": self.controller}
        harbor = self.spec.role(C.ROLE_HARBOR)
        if harbor:  # the lab has no DNS: the registry's name points at the first harbor host
            extra[self.spec.settings.registry.name] = harbor[0].address
        return overlay.hosts_file(entries, extra)

    # --- up --------------------------------------------------------------------------------

    def up(self, timeout: float = SSH_TIMEOUT) -> UpReport:
        require_root("lab up")
        started = time.monotonic()
        report = UpReport()
        with self.store.locked():
            report.packages_installed = ensure_host_packages(self.log)
            modules = self.kernel.modules
            report.rootfs_built = not rootfs.is_cached(uml_modules=modules)
            tree = rootfs.ensure_rootfs(self.log, modules)
            state = self.store.load()
            if state and state.rootfs != str(tree):
                self.log("the rootfs changed since this lab was built: rebuilding its hosts")
                self._teardown(state)
                state = None
            if state is None:
                self._teardown(None)  # a crashed lab without state: sweep by our own names
                state = LabState(cluster=self.spec.name, bridge=self.bridge,
                                 controller=str(self.controller), rootfs=str(tree))
            for change in network.host_sysctls():
                self.log(f"host sysctl: {change}")
            network.ensure_bridge(self.bridge, self.controller, self.prefix)
            network.clear_partitions()
            state.partitions = []
            pubkey = ssh.ensure_client_key(self.ssh)
            hosts_file = self._hosts_file()
            known: dict[str, tuple[str, str]] = {}
            for host in self.hosts:
                record = state.hosts.get(host.name)
                if record and procs.is_alive(record.pid, record.pid_start):
                    report.kept.append(host.name)
                    if record.link and not network.link_is_up(record.link):
                        network.set_link(record.link, True)
                else:
                    report.started.append(host.name)
                    self._start_host(state, host, tree, pubkey, hosts_file)
                    self.store.save(state)
                known[host.name] = (str(host.address),
                                    ssh.ensure_host_key(self.dirs(host.name).merged, host.name))
            self._close_faults(state, report.started)
            self.store.save(state)
            self._write_ssh_files(known)
            ssh_started = time.monotonic()
            # Booted hosts must accept a real, verified login; kept ones need only answer.
            self._wait_ssh(report.started, timeout)
            self._wait_ssh(report.kept, timeout, login=False)
            report.ssh_seconds = time.monotonic() - ssh_started
        report.seconds = time.monotonic() - started
        return report

    def _write_ssh_files(self, known: dict[str, tuple[str, str]]) -> None:
        ssh.write_known_hosts(self.ssh, known)
        ssh.write_ssh_config(self.ssh, {n: a for n, (a, _) in known.items()})

    def _start_host(self, state: LabState, host: HostSpec, tree: Path, pubkey: str,
                    hosts_file: str) -> None:
        """(Re)start one host: clean its old processes, wire it, write its identity, boot it."""
        name, kind, dirs = host.name, self.kind_of(host), self.dirs(host.name)
        old = state.hosts.get(name)
        cgroups = self.cgroups(name)
        procs.kill_cgroup_tree(cgroups, None)
        procs.kill_pids(procs.pids_mentioning(dirs.merged.resolve()))
        procs.remove_cgroups(cgroups)
        procs.make_cgroups(cgroups)
        if kind == KIND_UML:
            netns, link = None, network.ensure_tap(name, self.bridge)
        else:
            netns, link = network.ensure_veth(name, self.bridge, host.address, self.prefix)
        overlay.mount_overlay(tree, dirs)
        ssh.ensure_host_key(dirs.merged, name)
        overlay.write_identity(dirs.merged, host=name, hosts=hosts_file, authorized_key=pubkey,
                               keep_hosts=(dirs.upper / "etc/hosts").exists())
        if host.has_role(C.ROLE_SWITCHES):
            uid, gid = overlay.user_ids(dirs.merged, rootfs.SWITCH_USER)
            overlay.write_switch_role(dirs.merged, authorized_key=pubkey,
                                      user=rootfs.SWITCH_USER, uid=uid, gid=gid)
        if kind == KIND_UML:
            overlay.write_uml_network(dirs.merged, host.address, self.prefix)
            shutil.rmtree(dirs.uml_dir, ignore_errors=True)
            dirs.uml_dir.mkdir(parents=True)
            command = uml.uml_command(
                self.kernel.binary, name, dirs.merged.resolve(), link,
                network.mac_for(host.address), dirs.uml_dir.resolve(), self.kernel.seccomp)
            env: dict[str, str] = {}
        else:
            container.clear_propagate(name)
            command = container.nspawn_command(name, dirs.merged.resolve(), netns or "")
            env = container.ENV
        if old and old.link and not network.link_is_up(link):
            network.set_link(link, True)
        pid = procs.launch(command, cgroups, dirs.log, env)
        state.hosts[name] = HostRecord(
            name=name, kind=kind, address=str(host.address), netns=netns, link=link,
            mount=str(dirs.merged.resolve()), cgroups=[str(c) for c in cgroups], pid=pid,
            pid_start=procs.start_time(pid), started_wall=time.time(), log=str(dirs.log),
        )
        self.log(f"started {name} ({kind}, pid {pid})")

    def _close_faults(self, state: LabState, restarted: list[str]) -> None:
        """`up` undoes link cuts, partitions and host kills: mark those faults as undone."""
        now_wall, now_mono = time.time(), time.monotonic()
        for fault in state.faults:
            if not fault.active:
                continue
            healed = fault.kind in ("cut_link", "partition") or (
                fault.kind in ("kill_host", "kill_machine")
                and all(t in restarted or t not in state.hosts for t in fault.hosts)
            )
            if healed:
                fault.undone_wall, fault.undone_monotonic = now_wall, now_mono

    def _wait_ssh(self, names: list[str], timeout: float, *, login: bool = True) -> None:
        if not names:
            return
        deadline = time.monotonic() + timeout
        addresses = {n: str(self.spec.host(n).address) for n in names}

        def ready(name: str) -> bool:
            if login:
                return ssh.wait_ssh(self.ssh, addresses[name], deadline)
            while time.monotonic() < deadline:
                if ssh.port_open(addresses[name]):
                    return True
                time.sleep(0.2)
            return False

        with ThreadPoolExecutor(max_workers=len(names)) as pool:
            results = dict(zip(names, pool.map(ready, names), strict=True))
        failed = [n for n, ok in results.items() if not ok]
        if failed:
            tails = []
            for name in failed:
                log = self.dirs(name).log
                text = log.read_text(errors="replace") if log.is_file() else ""
                tail = " | ".join(line.strip() for line in text.splitlines()[-3:])
                tails.append(f"{name}: {tail or 'no console output'}")
            raise LabError(f"no SSH after {timeout:.0f} s from: {', '.join(failed)}\n  "
                           + "\n  ".join(tails))

    # --- host primitives (used by faults; callers hold the lock) ---------------------------

    def kill_hosts(self, state: LabState, names: list[str]) -> None:
        """SIGKILL every process of these hosts at once (a power cut), keep their disks."""
        everything: set[int] = set()
        for name in names:
            record = state.hosts.get(name)
            everything |= procs.cgroup_pids(self.cgroups(name))
            if record and record.pid:
                everything.add(record.pid)
        procs.kill_pids(everything)
        procs.wait_gone(everything, 5.0)
        for name in names:
            procs.kill_cgroup_tree(self.cgroups(name), None)
        self._forget_connections(names)

    def _forget_connections(self, names: list[str]) -> None:
        """End this machine's persistent SSH masters to these hosts: they come back as new
        machines at the same addresses, and a master left over would carry the next command
        into a connection nobody answers (until its keep-alives give up, ~45 s)."""
        known = {h.name: str(h.address) for h in self.hosts}
        stop_masters(known[n] for n in names if n in known)

    def start_hosts(self, state: LabState, names: list[str], *, wait: bool = True,
                    timeout: float = SSH_TIMEOUT) -> None:
        tree = Path(state.rootfs) if state.rootfs else rootfs.ensure_rootfs(
            self.log, self.kernel.modules)
        pubkey = ssh.ensure_client_key(self.ssh)
        hosts_file = self._hosts_file()
        for name in names:
            record = state.hosts.get(name)
            if record and procs.is_alive(record.pid, record.pid_start):
                continue
            self._start_host(state, self.spec.host(name), tree, pubkey, hosts_file)
        self.store.save(state)
        if wait:
            self._wait_ssh(names, timeout)

    # --- down ------------------------------------------------------------------------------

    def down(self) -> DownReport:
        require_root("lab down")
        started = time.monotonic()
        with self.store.locked():
            state = self.store.load()
            report = DownReport(stopped=sorted(state.hosts) if state else [])
            self._teardown(state)
            self.store.remove()
        report.leftovers = self.leftovers()
        report.seconds = time.monotonic() - started
        return report

    def _teardown(self, state: LabState | None) -> None:
        names = sorted({h.name for h in self.hosts} | set(state.hosts if state else ()))
        everything: set[int] = set()
        for name in names:
            everything |= procs.cgroup_pids(self.cgroups(name))
            record = state.hosts.get(name) if state else None
            if record and procs.is_alive(record.pid, record.pid_start):
                everything.add(record.pid)  # type: ignore[arg-type]
        hosts_dir = self.state_dir / "hosts"
        everything |= set(procs.pids_mentioning(hosts_dir.resolve()))
        procs.kill_pids(everything)
        procs.wait_gone(everything, 5.0)
        for name in names:
            procs.kill_cgroup_tree(self.cgroups(name), None)
        self._forget_connections(names)
        network.clear_partitions()
        for name in names:
            overlay.remove_host_dirs(self.dirs(name))
            network.delete_link(network.veth_name(name))
            network.delete_link(network.tap_name(name))
            network.delete_netns(network.netns_name(name))
            container.clear_propagate(name)
            procs.remove_cgroups(self.cgroups(name))
        for mountpoint in overlay.mounts_below(hosts_dir):
            overlay.unmount(mountpoint)
        shutil.rmtree(hosts_dir, ignore_errors=True)
        network.delete_link(self.bridge)

    def leftovers(self) -> list[str]:
        """Anything of this lab still on the machine (empty after `down`)."""
        found = []
        if network.link_exists(self.bridge):
            found.append(f"link {self.bridge}")
        for host in self.hosts:
            for link in (network.veth_name(host.name), network.tap_name(host.name)):
                if network.link_exists(link):
                    found.append(f"link {link}")
            if network.netns_exists(network.netns_name(host.name)):
                found.append(f"netns {network.netns_name(host.name)}")
            pids = procs.cgroup_pids(self.cgroups(host.name))
            if pids:
                found.append(f"processes of {host.name}: {sorted(pids)}")
            if any(c.exists() for c in self.cgroups(host.name)):
                found.append(f"cgroup of {host.name}")
            if (container.PROPAGATE_DIR / host.name).exists():
                found.append(f"{container.PROPAGATE_DIR / host.name}")
        found += [f"mount {m}" for m in overlay.mounts_below(self.state_dir)]
        found += [f"process {p}" for p in procs.pids_mentioning(self.state_dir / "hosts")]
        return found

    # --- status ----------------------------------------------------------------------------

    def status(self) -> list[HostStatus]:
        require_root("lab status")
        state = self.store.load()
        records = state.hosts if state else {}

        def one(host: HostSpec) -> HostStatus:
            record = records.get(host.name)
            alive = bool(record) and procs.is_alive(record.pid, record.pid_start)  # type: ignore[union-attr]
            if not alive:
                current = STATE_STOPPED
            elif ssh.port_open(str(host.address), timeout=1.0):
                current = STATE_RUNNING
            else:
                current = STATE_UNREACHABLE
            pss = procs.pss_kib(procs.cgroup_pids(self.cgroups(host.name))) if alive else 0
            return HostStatus(
                name=host.name, address=str(host.address), roles=host.roles,
                machine=host.machine, kind=self.kind_of(host), state=current,
                pid=record.pid if record else None, pss_kib=pss,
            )

        with ThreadPoolExecutor(max_workers=max(len(self.hosts), 1)) as pool:
            return list(pool.map(one, self.hosts))

    def load_state(self) -> LabState:
        state = self.store.load()
        if state is None:
            raise LabError("the lab is not up (no state file): run `nornir-k8sha lab up`")
        return state
