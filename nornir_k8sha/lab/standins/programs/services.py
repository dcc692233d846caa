"""Starting and stopping the stand-in daemons: systemd in the lab, direct processes in tests.

kubeadm's real job of "write static-pod manifests, let the kubelet run them" becomes "write the
manifests, start the matching systemd unit" here. $K8SHA_STANDIN_SERVICES picks how:
`systemctl` (default, the lab), `spawn` (tests: background processes, PID files under the root),
`none` (only print what would be started).
"""

from __future__ import annotations

import os
import shlex
import signal
import subprocess
import sys
import time
from pathlib import Path

import k8sha_standin as sa

MODE_ENV = "K8SHA_STANDIN_SERVICES"
HERE = Path(__file__).resolve().parent
KUBELET_FLAGS_ENV = "/var/lib/kubelet/kubeadm-flags.env"
MANIFESTS = "/etc/kubernetes/manifests"

#: unit -> the program and arguments its ExecStart runs (kept in step with units/*.service).
CONTROL_PLANE_UNITS = ("kube-apiserver.service", "kube-controller-manager.service",
                       "kube-scheduler.service")
KUBELET_UNIT = "kubelet.service"
ALL_UNITS = (KUBELET_UNIT, *CONTROL_PLANE_UNITS)


def command(unit: str) -> list[str]:
    """The argv of a unit's daemon, as its unit file's ExecStart runs it."""
    py = [sys.executable]
    if unit == KUBELET_UNIT:
        flags = ""
        env = sa.host_path(KUBELET_FLAGS_ENV)
        if env.exists():
            for line in env.read_text().splitlines():
                if line.startswith("KUBELET_KUBEADM_ARGS="):
                    flags = shlex.split(line.partition("=")[2])[0]
        return [*py, str(HERE / "kubelet.py"), "--kubeconfig=/etc/kubernetes/kubelet.conf",
                "--config=/var/lib/kubelet/config.yaml", *shlex.split(flags)]
    name = unit.removesuffix(".service")
    program = "apiserver.py" if name == "kube-apiserver" else "leader.py"
    return [*py, str(HERE / program), f"--manifest={MANIFESTS}/{name}.yaml"]


def _mode() -> str:
    return os.environ.get(MODE_ENV, "systemctl")


def _pidfile(unit: str) -> Path:
    return sa.host_path(f"/run/k8sha-standins/{unit}.pid")


def start(units: list[str] | tuple[str, ...]) -> None:
    """Enable and (re)start the units, like kubeadm's `systemctl restart kubelet`."""
    mode = _mode()
    if mode == "systemctl":
        subprocess.run(["systemctl", "enable", "--quiet", *units], check=True)
        subprocess.run(["systemctl", "restart", *units], check=True)
    elif mode == "spawn":
        for unit in units:
            stop([unit])
            logfile = sa.host_path(f"/var/log/k8sha-standins/{unit}.log")
            logfile.parent.mkdir(parents=True, exist_ok=True)
            with open(logfile, "ab") as out:
                proc = subprocess.Popen(command(unit), stdout=out, stderr=subprocess.STDOUT,
                                        stdin=subprocess.DEVNULL, start_new_session=True)
            sa.write_file(_pidfile(unit), f"{proc.pid}\n")


def stop(units: list[str] | tuple[str, ...]) -> None:
    """Stop and disable the units (missing or stopped ones are fine)."""
    mode = _mode()
    if mode == "systemctl":
        subprocess.run(["systemctl", "disable", "--quiet", "--now", *units], check=False,
                       capture_output=True)
    elif mode == "spawn":
        for unit in units:
            pidfile = _pidfile(unit)
            try:
                pid = int(pidfile.read_text())
            except (OSError, ValueError):
                continue
            _terminate(pid)
            pidfile.unlink(missing_ok=True)


def _terminate(pid: int) -> None:
    try:
        os.kill(pid, signal.SIGTERM)
    except ProcessLookupError:
        return
    deadline = time.monotonic() + 5
    while time.monotonic() < deadline:
        try:
            done, _ = os.waitpid(pid, os.WNOHANG)
        except ChildProcessError:  # not our child: poll for existence instead
            try:
                os.kill(pid, 0)
            except ProcessLookupError:
                return
            done = 0
        if done:
            return
        time.sleep(0.05)
    try:
        os.kill(pid, signal.SIGKILL)
    except ProcessLookupError:
        pass
