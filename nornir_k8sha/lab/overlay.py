"""Each host's disk: an overlay of the shared rootfs plus the files that make it *this* host.

Lower = the cached rootfs (read-only, shared), upper/work = the host's own dir in the lab state
dir. A host killed and brought back keeps its upper dir, like a machine keeps its disk; `lab
down` deletes it. Identity files (hostname, /etc/hosts, machine id, host key, root's
authorized_keys, and for UML guests the network unit) are written before every boot.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import uuid
from dataclasses import dataclass
from ipaddress import IPv4Address
from pathlib import Path

from nornir_k8sha.exceptions import LabError

NET_UNIT = "k8sha-lab-net.service"


@dataclass(frozen=True)
class HostDirs:
    base: Path

    @property
    def upper(self) -> Path:
        return self.base / "upper"

    @property
    def work(self) -> Path:
        return self.base / "work"

    @property
    def merged(self) -> Path:
        return self.base / "root"

    @property
    def log(self) -> Path:
        return self.base / "console.log"

    @property
    def uml_dir(self) -> Path:
        return self.base / "uml"


def mounted(path: Path) -> bool:
    target = str(path.resolve())
    for line in Path("/proc/self/mountinfo").read_text().splitlines():
        if line.split()[4] == target:
            return True
    return False


def mounts_below(path: Path) -> list[str]:
    """Mount points at or under `path` (deepest first), to unmount a crashed lab's leftovers."""
    prefix = str(path.resolve())
    found = [line.split()[4] for line in Path("/proc/self/mountinfo").read_text().splitlines()]
    return sorted((m for m in found if m == prefix or m.startswith(prefix + "/")),
                  key=len, reverse=True)


def mount_overlay(rootfs: Path, dirs: HostDirs) -> None:
    for d in (dirs.upper, dirs.work, dirs.merged):
        d.mkdir(parents=True, exist_ok=True)
    if mounted(dirs.merged):
        return
    opts = f"lowerdir={rootfs},upperdir={dirs.upper.resolve()},workdir={dirs.work.resolve()}"
    proc = subprocess.run(["mount", "-t", "overlay", "overlay", "-o", opts, str(dirs.merged)],
                          capture_output=True, text=True)
    if proc.returncode != 0:
        raise LabError(f"overlay mount of {dirs.merged} failed: {proc.stderr.strip()}")


def unmount(path: str | Path) -> bool:
    """Unmount; lazily when busy. True when nothing stays mounted there."""
    if subprocess.run(["umount", str(path)], capture_output=True).returncode == 0:
        return True
    subprocess.run(["umount", "-l", str(path)], capture_output=True)
    return not mounted(Path(path))


def remove_host_dirs(dirs: HostDirs) -> None:
    for mountpoint in mounts_below(dirs.base):
        unmount(mountpoint)
    shutil.rmtree(dirs.base, ignore_errors=True)


def hosts_file(entries: dict[str, IPv4Address], extra: dict[str, IPv4Address]) -> str:
    """/etc/hosts: localhost first (etcd resolves it), then every lab host by name."""
    lines = ["127.0.0.1\tlocalhost", "::1\tlocalhost ip6-localhost ip6-loopback", ""]
    lines += [f"{addr}\t{name}" for name, addr in entries.items()]
    lines += [f"{addr}\t{name}" for name, addr in extra.items()]
    return "\n".join(lines) + "\n"


def write_identity(root: Path, *, host: str, hosts: str, authorized_key: str,
                   keep_hosts: bool = False) -> None:
    """Name, /etc/hosts, machine id and root's key of a host booting from `root`.

    `keep_hosts` (its own layer has one): a host brought back keeps the /etc/hosts it had, as a
    machine keeps its disk
    (deploy adds the registry's name there: rewriting it made the next deploy change it)."""
    (root / "etc/hostname").write_text(host + "\n")
    if not keep_hosts:
        (root / "etc/hosts").write_text(hosts)
    machine_id = root / "etc/machine-id"
    if not machine_id.read_text().strip():
        machine_id.write_text(uuid.uuid4().hex + "\n")
    ssh_dir = root / "root/.ssh"
    ssh_dir.mkdir(mode=0o700, parents=True, exist_ok=True)
    ssh_dir.chmod(0o700)
    keys = ssh_dir / "authorized_keys"
    keys.write_text(authorized_key + "\n")
    keys.chmod(0o600)


def write_uml_network(root: Path, address: IPv4Address, prefix: int) -> None:
    """A UML guest configures its own NIC (nspawn hosts get theirs ready-made in the netns).

    The vector driver's interface is renamed eth0 so both kinds of host look alike; ip_vs is
    loaded from UML's own modules at the same time so IPVS is there before keepalived.
    """
    unit = root / "etc/systemd/system" / NET_UNIT
    unit.parent.mkdir(parents=True, exist_ok=True)
    unit.write_text(
        "[Unit]\nDescription=nornir-k8sha lab: the lab network on eth0\n"
        "DefaultDependencies=no\nBefore=network.target ssh.service\nWants=network.target\n\n"
        "[Service]\nType=oneshot\nRemainAfterExit=yes\n"
        "ExecStartPre=-/sbin/modprobe ip_vs\n"
        "ExecStart=/bin/sh -c 'ip link set lo up; "
        "dev=$(ls /sys/class/net | grep -v \"^lo$\" | head -n1); "
        "[ \"$dev\" = eth0 ] || ip link set \"$dev\" name eth0; "
        f"ip addr replace {address}/{prefix} dev eth0; ip link set eth0 up'\n\n"
        "[Install]\nWantedBy=multi-user.target\n"
    )
    wants = root / "etc/systemd/system/multi-user.target.wants"
    wants.mkdir(parents=True, exist_ok=True)
    link = wants / NET_UNIT
    if not link.is_symlink():
        link.symlink_to(f"/etc/systemd/system/{NET_UNIT}")


def write_switch_role(root: Path, *, authorized_key: str, user: str, uid: int, gid: int) -> None:
    """A lab switch is a running FRR with bgpd, reached by `user` (login shell vtysh) — the state
    a real ToR switch is in before our deploy configures BGP on it."""
    daemons = root / "etc/frr/daemons"
    if daemons.exists():
        text = daemons.read_text()
        if "bgpd=no" in text:
            daemons.write_text(text.replace("bgpd=no", "bgpd=yes"))
    wants = root / "etc/systemd/system/multi-user.target.wants"
    wants.mkdir(parents=True, exist_ok=True)
    link = wants / "frr.service"
    if not link.is_symlink():
        link.symlink_to("/lib/systemd/system/frr.service")
    ssh_dir = root / "home" / user / ".ssh"
    ssh_dir.mkdir(mode=0o700, parents=True, exist_ok=True)
    keys = ssh_dir / "authorized_keys"
    keys.write_text(authorized_key + "\n")
    keys.chmod(0o600)
    for path in (ssh_dir, keys):
        os.chown(path, uid, gid)


def user_ids(root: Path, user: str) -> tuple[int, int]:
    """uid and gid of `user` in the guest's /etc/passwd."""
    for line in (root / "etc/passwd").read_text().splitlines():
        fields = line.split(":")
        if fields[0] == user:
            return int(fields[2]), int(fields[3])
    raise KeyError(f"user {user} not in the lab rootfs")
