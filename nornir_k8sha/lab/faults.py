"""The fault API of the lab, for HA verification: break one thing, record exactly when.

Every call returns a `Fault` with the wall-clock and monotonic time it was applied (taken just
before the action), and stores it in the lab state so measurements made elsewhere can be
aligned with it. Undo calls close the matching open fault (its `undone_*` times).

    faults = Faults(lab)
    f = faults.kill_host("lvs1")          # power cut
    faults.restore_host("lvs1")           # boots again with its disk; waits for SSH
    faults.partition(["etcd1", "master1"])  # they see each other (and the controller) only
    faults.heal()
"""

from __future__ import annotations

import shlex
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager

from nornir_k8sha.exceptions import LabError
from nornir_k8sha.lab import network, ssh
from nornir_k8sha.lab.lab import Lab, require_root
from nornir_k8sha.lab.procs import is_alive
from nornir_k8sha.lab.state import Fault, LabState

SERVICE_SIGNALS = ("KILL", "TERM", "STOP", "CONT", "HUP")


class Faults:
    """Faults applied to a running lab; each method holds the lab lock while it acts."""

    def __init__(self, lab: Lab) -> None:
        self.lab = lab

    # --- plumbing --------------------------------------------------------------------------

    @contextmanager
    def _state(self) -> Iterator[LabState]:
        require_root("lab faults")
        with self.lab.store.locked():
            state = self.lab.load_state()
            yield state
            self.lab.store.save(state)

    def _check_hosts(self, names: list[str]) -> None:
        unknown = [n for n in names if n not in {h.name for h in self.lab.hosts}]
        if unknown:
            raise LabError(f"not a lab host: {', '.join(unknown)}")

    @staticmethod
    def _record(state: LabState, kind: str, targets: list[str], hosts: list[str],
                action: Callable[[], str | None]) -> Fault:
        wall, mono = time.time(), time.monotonic()
        detail = action() or ""
        fault = Fault(id=state.next_fault_id(), kind=kind, targets=targets, applied_wall=wall,
                      applied_monotonic=mono, detail=detail, hosts=hosts)
        state.faults.append(fault)
        return fault

    @staticmethod
    def _close(state: LabState, kinds: tuple[str, ...], match: Callable[[Fault], bool]) -> None:
        wall, mono = time.time(), time.monotonic()
        for fault in state.faults:
            if fault.active and fault.kind in kinds and match(fault):
                fault.undone_wall, fault.undone_monotonic = wall, mono

    def _ssh(self, host: str, command: str) -> str:
        address = str(self.lab.spec.host(host).address)
        _, out, _ = ssh.run(self.lab.ssh, address, command, host=host)
        return out.strip()

    # --- services --------------------------------------------------------------------------

    def stop_service(self, host: str, unit: str) -> Fault:
        self._check_hosts([host])
        with self._state() as state:
            return self._record(state, "stop_service", [host, unit], [host], lambda: self._ssh(
                host, f"systemctl stop {shlex.quote(unit)}"))

    def start_service(self, host: str, unit: str) -> Fault:
        self._check_hosts([host])
        with self._state() as state:
            fault = self._record(state, "start_service", [host, unit], [host], lambda: self._ssh(
                host, f"systemctl start {shlex.quote(unit)}"))
            self._close(state, ("stop_service", "kill_service"),
                        lambda f: f.targets == [host, unit])
            fault.undone_wall, fault.undone_monotonic = fault.applied_wall, fault.applied_monotonic
            return fault

    def kill_service(self, host: str, unit: str, signal: str = "KILL") -> Fault:
        """`systemctl kill -s SIGNAL` on the unit's processes (KILL: a crash; STOP: a freeze)."""
        self._check_hosts([host])
        if signal.upper() not in SERVICE_SIGNALS:
            raise LabError(f"signal must be one of {', '.join(SERVICE_SIGNALS)}")
        with self._state() as state:
            return self._record(
                state, "kill_service", [host, unit], [host],
                lambda: self._ssh(host, f"systemctl kill -s {signal.upper()} {shlex.quote(unit)}"),
            )

    # --- hosts -----------------------------------------------------------------------------

    def kill_host(self, host: str) -> Fault:
        """SIGKILL the host's whole process tree: a power cut. Its disk (overlay) stays."""
        self._check_hosts([host])
        with self._state() as state:
            return self._record(state, "kill_host", [host], [host],
                                lambda: self.lab.kill_hosts(state, [host]))

    def restore_host(self, host: str, *, wait: bool = True) -> Fault:
        """Boot a killed host again (no-op when it runs); with `wait`, until SSH answers."""
        self._check_hosts([host])
        with self._state() as state:
            fault = self._record(state, "restore_host", [host], [host],
                                 lambda: self.lab.start_hosts(state, [host], wait=wait))
            self._close(state, ("kill_host",), lambda f: f.targets == [host])
            self._close(state, ("kill_machine",),
                        lambda f: all(self._runs(state, h) for h in f.hosts))
            fault.undone_wall, fault.undone_monotonic = fault.applied_wall, fault.applied_monotonic
            return fault

    def _runs(self, state: LabState, host: str) -> bool:
        record = state.hosts.get(host)
        return bool(record) and is_alive(record.pid, record.pid_start)  # type: ignore[union-attr]

    def machine_hosts(self, machine: str) -> list[str]:
        hosts = [h.name for h in self.lab.hosts if h.machine == machine]
        if not hosts:
            known = sorted({h.machine for h in self.lab.hosts})
            raise LabError(f"no lab host on physical machine {machine!r} (known: {known})")
        return hosts

    def kill_machine(self, machine: str) -> Fault:
        """Kill every host sharing a `physical_host` label, all at once."""
        hosts = self.machine_hosts(machine)
        with self._state() as state:
            return self._record(state, "kill_machine", [machine], hosts,
                                lambda: self.lab.kill_hosts(state, hosts))

    def restore_machine(self, machine: str, *, wait: bool = True) -> Fault:
        hosts = self.machine_hosts(machine)
        with self._state() as state:
            fault = self._record(state, "restore_machine", [machine], hosts,
                                 lambda: self.lab.start_hosts(state, hosts, wait=wait))
            self._close(state, ("kill_machine",), lambda f: f.targets == [machine])
            self._close(state, ("kill_host",), lambda f: f.targets[0] in hosts)
            fault.undone_wall, fault.undone_monotonic = fault.applied_wall, fault.applied_monotonic
            return fault

    # --- links and partitions --------------------------------------------------------------

    def _link(self, state: LabState, host: str) -> str:
        record = state.hosts.get(host)
        if not record or not record.link:
            raise LabError(f"{host} has no link recorded: is the lab up?")
        return record.link

    def cut_link(self, host: str) -> Fault:
        """Down the bridge side of the host's veth/tap: the host is alive but unreachable."""
        self._check_hosts([host])
        with self._state() as state:
            link = self._link(state, host)
            return self._record(state, "cut_link", [host], [host],
                                lambda: network.set_link(link, False) or f"link {link} down")

    def restore_link(self, host: str) -> Fault:
        self._check_hosts([host])
        with self._state() as state:
            link = self._link(state, host)
            fault = self._record(state, "restore_link", [host], [host],
                                 lambda: network.set_link(link, True) or f"link {link} up")
            self._close(state, ("cut_link",), lambda f: f.targets == [host])
            fault.undone_wall, fault.undone_monotonic = fault.applied_wall, fault.applied_monotonic
            return fault

    def partition(self, hosts: list[str]) -> Fault:
        """Cut `hosts` off from every other lab host; they still reach each other and the
        controller (which observes both sides). Several partitions may be active at once."""
        self._check_hosts(hosts)
        with self._state() as state:
            groups = [*state.partitions, sorted(hosts)]
            links = [[self._link(state, h) for h in group] for group in groups]

            def apply() -> str:
                network.apply_partitions(links)
                state.partitions = groups
                return f"{len(groups)} partition(s) active"

            return self._record(state, "partition", sorted(hosts), sorted(hosts), apply)

    def heal(self) -> Fault:
        """Lift every partition."""
        with self._state() as state:
            def apply() -> str:
                network.clear_partitions()
                state.partitions = []
                return "partitions lifted"

            fault = self._record(state, "heal", [], [], apply)
            self._close(state, ("partition",), lambda f: True)
            fault.undone_wall, fault.undone_monotonic = fault.applied_wall, fault.applied_monotonic
            return fault

    def history(self) -> list[Fault]:
        state = self.lab.store.load()
        return list(state.faults) if state else []
