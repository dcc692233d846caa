"""Faults as Nornir tasks, over SSH on real machines: break one thing, and undo it.

Each fault returns a Result with changed=True and what it did, and has its undo:

    stop_service / start_service          systemctl stop / start
    kill_service / start_service          SIGKILL of the unit's main PID (systemctl kill)
    freeze_service / thaw_service         SIGSTOP / SIGCONT of every process of the unit
    stop_static_pod / start_static_pod    a kubeadm static pod's manifest moved aside / back
    freeze_static_pod / thaw_static_pod   SIGSTOP / SIGCONT of a static pod's processes
    link_down / link_up                   an interface down; a timer on the host brings it up
    partition / heal                      nftables drops traffic to/from peers; self-heal timer
    reboot / wait_reachable               reboot (armed for 1 s later); wait until SSH answers

A fault that can cut us off from the host (link_down, partition) first arms a transient
systemd timer (`systemd-run --on-active=`) that undoes it on the host itself, so the host
heals even when our connection is lost; the explicit undo cancels the timer.
"""

from __future__ import annotations

import ipaddress
import posixpath
import re
import shlex
from collections.abc import Sequence

from nornir.core.task import Result, Task

from nornir_k8sha import constants as C
from nornir_k8sha.exceptions import CommandFailed, ConnectionFailed
from nornir_k8sha.polling import poll_until
from nornir_k8sha.tasks import host as H
from nornir_k8sha.topology import ClusterSpec
from nornir_k8sha.transport import CONNECTION_NAME, TIMEOUT_EXIT_CODE

_NAME = re.compile(r"^[A-Za-z0-9@._:+-]+$")
PARTITION_UNIT = f"{C.FAULT_UNIT_PREFIX}-partition"
REBOOT_UNIT = f"{C.FAULT_UNIT_PREFIX}-reboot"


def _safe(kind: str, value: str) -> str:
    if not _NAME.fullmatch(value or ""):
        raise ValueError(f"invalid {kind} {value!r}")
    return value


def _done(task: Task, what: str) -> Result:
    return Result(host=task.host, changed=True, result=what)


def _run(task: Task, commands: Sequence[str], what: str) -> Result:
    """Run the commands in order (one batch); a dry run only says what it would do."""
    if task.is_dry_run():
        return Result(host=task.host, changed=True, result=f"would: {what}",
                      diff="\n".join(f"would run: {c}" for c in commands))
    H.connect(task).run_batch(list(commands))
    return _done(task, what)


# --- services -----------------------------------------------------------------------------


def _systemctl(task: Task, unit: str, args: str, what: str) -> Result:
    u = _safe("unit", unit)
    return _run(task, [f"systemctl {args} {u}"], f"{what} {u}")


def stop_service(task: Task, unit: str) -> Result:
    return _systemctl(task, unit, "stop", "stopped")


def start_service(task: Task, unit: str) -> Result:
    return _systemctl(task, unit, "start", "started")


def kill_service(task: Task, unit: str, signal: str = "KILL") -> Result:
    """SIGKILL (or `signal`) to the unit's main process, as a crash would; undo:
    start_service (or the unit's own Restart=)."""
    sig = _safe("signal", signal)
    return _systemctl(task, unit, f"kill --signal={sig} --kill-who=main",
                      f"sent SIG{sig} to the main process of")


def freeze_service(task: Task, unit: str) -> Result:
    """SIGSTOP to every process of the unit: alive to systemd, silent on the network."""
    return _systemctl(task, unit, "kill --signal=STOP --kill-who=all", "froze")


def thaw_service(task: Task, unit: str) -> Result:
    return _systemctl(task, unit, "kill --signal=CONT --kill-who=all", "thawed")


def _manifest(component: str) -> tuple[str, str]:
    c = _safe("component", component)
    return (f"{C.K8S_MANIFESTS_DIR}/{c}.yaml",
            f"{posixpath.dirname(C.K8S_MANIFESTS_DIR)}/{c}.yaml.k8sha-fault")


def stop_static_pod(task: Task, component: str) -> Result:
    """Move a static pod's manifest out of the kubelet's directory: the kubelet stops it
    (kube-apiserver, kube-controller-manager, kube-scheduler on a kubeadm master)."""
    live, aside = _manifest(component)
    return _run(task, [f"mv {live} {aside}"], f"stopped static pod {component}")


def start_static_pod(task: Task, component: str) -> Result:
    """Put the manifest back (if it was moved aside): the kubelet starts the pod again."""
    live, aside = _manifest(component)
    return _run(task, [f"if [ -e {aside} ]; then mv {aside} {live}; fi"],
                f"restored static pod {component}")


def freeze_static_pod(task: Task, component: str) -> Result:
    """SIGSTOP to a static pod's processes: alive, its port still accepting connections,
    answering nothing (the kubelet's liveness probe restarts it only after its failure
    threshold, over a minute with kubeadm's defaults). Undo: thaw_static_pod."""
    return _signal_static_pod(task, component, "STOP", "froze")


def thaw_static_pod(task: Task, component: str) -> Result:
    return _signal_static_pod(task, component, "CONT", "thawed")


def _signal_static_pod(task: Task, component: str, signal: str, what: str) -> Result:
    """Where the component runs as a systemd unit of its name (the lab's stand-ins), every
    process of the unit; else (kubeadm: a container, whose processes the host sees) every
    process named exactly `component`. None found: the command fails."""
    c = _safe("component", component)
    return _run(task, [f"if systemctl cat {c}.service >/dev/null 2>&1; then "
                       f"systemctl kill --signal={signal} --kill-who=all {c}; "
                       f"else pids=$(pgrep -x {c}) && kill -{signal} $pids; fi"],
                f"{what} static pod {c}")


# --- network ------------------------------------------------------------------------------


def _interface(task: Task, spec: ClusterSpec | None, interface: str | None) -> str:
    if interface:
        return _safe("interface", interface)
    if spec is None:
        raise ValueError("give `interface` (or run with the cluster spec)")
    me = spec.host(task.host.name)
    return _safe("interface", me.data.interface or spec.settings.vrrp.interface)


def _arm(unit: str, after_s: float, command: str) -> str:
    """A transient timer on the host that runs `command` in `after_s` s (a stale one of the
    same name is cleared first)."""
    if not 0 < after_s <= 24 * 3600:
        raise ValueError(f"self-heal delay {after_s!r} s out of range (0, 86400]")
    return (f"systemctl stop {unit}.timer {unit}.service >/dev/null 2>&1; "
            f"systemctl reset-failed {unit}.timer {unit}.service >/dev/null 2>&1; "
            f"systemd-run --unit={unit} --on-active={after_s:g}s "
            f"--timer-property=AccuracySec=100ms /bin/sh -c {shlex.quote(command)}")


def _disarm(unit: str) -> str:
    return f"systemctl stop {unit}.timer >/dev/null 2>&1 || true"


def _cutting(task: Task, command: str) -> str:
    """Run a command that may cut our connection: losing the answer is the expected case."""
    try:
        H.connect(task).run(command, timeout=C.FAULT_CUT_TIMEOUT_S)
    except (CommandFailed, ConnectionFailed, OSError, EOFError) as exc:
        if isinstance(exc, CommandFailed) and exc.exit_code not in (TIMEOUT_EXIT_CODE, -1):
            raise
        return " (connection lost, as expected)"
    return ""


def link_unit(interface: str) -> str:
    return f"{C.FAULT_UNIT_PREFIX}-link-{interface}"


def link_down(task: Task, interface: str | None = None, *, spec: ClusterSpec | None = None,
              restore_after: float = C.FAULT_SELF_HEAL_S) -> Result:
    """Take an interface down; a timer armed FIRST on the host brings it back up after
    `restore_after` s even if we never reach the host again. Undo: link_up."""
    iface = _interface(task, spec, interface)
    unit = link_unit(iface)
    arm = _arm(unit, restore_after, f"ip link set dev {iface} up")
    down = f"ip link set dev {iface} down"
    if task.is_dry_run():
        return Result(host=task.host, changed=True, result=f"would take {iface} down",
                      diff=f"would run: {arm}\nwould run: {down}")
    H.connect(task).run(arm)
    lost = _cutting(task, down)
    return _done(task, f"link {iface} down; {unit}.timer brings it up in "
                       f"{restore_after:g}s{lost}")


def link_up(task: Task, interface: str | None = None, *,
            spec: ClusterSpec | None = None) -> Result:
    """Bring the interface up and cancel the self-heal timer."""
    iface = _interface(task, spec, interface)
    return _run(task, [f"ip link set dev {iface} up", _disarm(link_unit(iface))],
                f"link {iface} up; timer cancelled")


def _peer_addresses(task: Task, spec: ClusterSpec | None, peers: Sequence[str]) -> list[str]:
    names = {h.name: str(h.address) for h in spec.hosts} if spec else {}
    own = {str(task.host.hostname or ""), names.get(task.host.name, "")}
    out = []
    for peer in peers:
        addr = names.get(peer, peer)
        try:
            addr = str(ipaddress.IPv4Address(addr))
        except ValueError:
            raise ValueError(f"partition: {peer!r} is neither a host of the inventory nor an "
                             "IPv4 address") from None
        if addr not in own and addr not in out:
            out.append(addr)
    if not out:
        raise ValueError("partition: no peer left once the host itself is taken out")
    return out


def partition_ruleset(addresses: Sequence[str]) -> str:
    """An nftables script: (re)create table k8sha_fault dropping traffic to/from addresses."""
    t = C.FAULT_NFT_TABLE
    peers = ", ".join(addresses)
    return (f"table inet {t}\n"
            f"delete table inet {t}\n"
            f"table inet {t} {{\n"
            f"  chain input {{ type filter hook input priority -10; policy accept; "
            f"ip saddr {{ {peers} }} drop; }}\n"
            f"  chain output {{ type filter hook output priority -10; policy accept; "
            f"ip daddr {{ {peers} }} drop; }}\n"
            f"}}\n")


def partition(task: Task, peers: Sequence[str], *, spec: ClusterSpec | None = None,
              restore_after: float = C.FAULT_SELF_HEAL_S) -> Result:
    """Cut this host off from `peers` (inventory names or addresses) with nftables. A timer
    armed first deletes the table after `restore_after` s. Undo: heal."""
    addresses = _peer_addresses(task, spec, peers)
    arm = _arm(PARTITION_UNIT, restore_after, f"nft delete table inet {C.FAULT_NFT_TABLE}")
    rules = partition_ruleset(addresses)
    what = (f"partitioned from {', '.join(addresses)}; {PARTITION_UNIT}.timer heals in "
            f"{restore_after:g}s")
    if task.is_dry_run():
        return Result(host=task.host, changed=True, result=f"would: {what}",
                      diff=f"would run: {arm}\nwould run: nft -f -\n{rules}")
    conn = H.connect(task)
    conn.run(arm)
    conn.run("nft -f -", stdin=rules)
    return _done(task, what)


def heal(task: Task) -> Result:
    """Delete the partition table (if present) and cancel its self-heal timer."""
    t = C.FAULT_NFT_TABLE
    return _run(task, [f"if nft list table inet {t} >/dev/null 2>&1; then "
                       f"nft delete table inet {t}; fi", _disarm(PARTITION_UNIT)],
                "partition healed; timer cancelled")


# --- the whole host -----------------------------------------------------------------------


def reboot(task: Task, delay: float = 1.0) -> Result:
    """Reboot, armed `delay` s ahead so our command returns before the host goes down.
    Undo: wait_reachable."""
    return _run(task, [_arm(REBOOT_UNIT, delay, "systemctl reboot")],
                f"reboot in {delay:g}s")


def wait_reachable(task: Task, timeout: float = 180.0, interval: float = 2.0) -> Result:
    """Until the host answers `true` over SSH again (reopening a dead connection)."""

    def answers() -> str | None:
        """None when the host answered, else why not (a dead connection is dropped)."""
        try:
            H.connect(task).run("true", timeout=max(interval, 5.0))
            return None
        except (CommandFailed, ConnectionFailed, OSError, EOFError) as exc:
            try:
                task.host.close_connection(CONNECTION_NAME)
            except Exception:  # noqa: BLE001 - a dead connection may fail to close; reopen
                task.host.connections.pop(CONNECTION_NAME, None)
            return str(exc)

    poll_until(answers, lambda why: why is None, timeout=timeout, interval=interval,
               error=lambda why: ConnectionFailed(task.host.name,
                                                  f"not reachable after {timeout:g}s: {why}"))
    return Result(host=task.host, changed=False, result="reachable")
