"""The lab's shared root filesystem: built once with mmdebstrap, cached outside the repo.

The cache key is a hash of everything that shapes the tree (suite, mirrors, package list and
the customisation version), so changing the list builds a new tree beside the old one. The
build goes to a temporary dir that is renamed into place only when complete: a crashed build
never leaves a half cache behind. Host-specific files (hostname, /etc/hosts, host keys,
authorized_keys) are not in here: they go into each host's overlay (see `overlay.py`).
"""

from __future__ import annotations

import fcntl
import hashlib
import json
import os
import shutil
import subprocess
import time
from collections.abc import Callable
from pathlib import Path

from nornir_k8sha.exceptions import LabError
from nornir_k8sha.lab import standins, uml

#: Where built trees live; outside the repo so every clone and every cluster shares them.
CACHE_ROOT = Path(os.environ.get("K8SHA_LAB_CACHE", "/var/cache/nornir-k8sha"))
SUITE = "bookworm"
MIRRORS: tuple[str, ...] = (
    "deb http://deb.debian.org/debian bookworm main",
    "deb http://deb.debian.org/debian bookworm-updates main",
    "deb http://deb.debian.org/debian-security bookworm-security main",
)
#: Everything a lab host may run. The deploy enables what each role needs; nothing here runs
#: by default except sshd (see DISABLED_SERVICES). `kubernetes-client` is Debian's real kubectl.
PACKAGES: tuple[str, ...] = (
    "systemd", "systemd-sysv", "dbus", "openssh-server", "sudo", "python3", "iproute2",
    "iputils-ping", "procps", "kmod", "keepalived", "haproxy", "etcd-server", "etcd-client",
    "frr", "ipvsadm", "curl", "ca-certificates", "containerd", "docker-registry", "openssl",
    "less", "nftables", "kubernetes-client",
)
#: Services installed by the packages above that must stay off until a deploy enables them.
DISABLED_SERVICES: tuple[str, ...] = (
    "haproxy.service", "keepalived.service", "etcd.service", "frr.service",
    "docker-registry.service", "containerd.service", "nftables.service",
)
#: Units that fail or are useless in a container or UML guest; masked to keep boots clean.
MASKED_UNITS: tuple[str, ...] = (
    "systemd-binfmt.service", "proc-sys-fs-binfmt_misc.automount",
    "proc-sys-fs-binfmt_misc.mount", "kmod-static-nodes.service",
    "systemd-modules-load.service", "systemd-udevd.service", "systemd-udev-trigger.service",
    "systemd-udev-settle.service", "systemd-udevd-control.socket",
    "systemd-udevd-kernel.socket", "getty@tty1.service", "serial-getty@ttyS0.service",
    "e2scrub_reap.service", "e2scrub_all.timer", "apt-daily.timer", "apt-daily-upgrade.timer",
    "fstrim.timer", "man-db.timer", "systemd-timesyncd.service",
    "systemd-networkd-wait-online.service", "console-getty.service",
    "modprobe@drm.service", "modprobe@efi_pstore.service", "modprobe@fuse.service",
    "modprobe@configfs.service", "sys-kernel-debug.mount", "sys-kernel-tracing.mount",
    "sys-fs-fuse-connections.mount", "sys-kernel-config.mount",
    # ipvsadm's LSB script would restore saved rules at boot; keepalived owns IPVS instead.
    "ipvsadm.service",
)
#: Bump when the customisation below changes: it is part of the cache key.
CUSTOMISATION_VERSION = 7
COMPLETE_MARK = ".k8sha-rootfs-complete"
#: The switch operator account of the lab's FRR switches (login shell vtysh).
SWITCH_USER = "netops"

Log = Callable[[str], None]


def module_releases(uml_modules: Path) -> list[str]:
    """The UML kernel releases whose modules go into the tree (`/lib/modules/<release>`)."""
    return sorted(d.name for d in uml_modules.iterdir()) if uml_modules.is_dir() else []


def cache_key(uml_modules: Path = uml.PACKAGED_MODULES) -> str:
    """Hash of what shapes the tree; a new list (or UML kernel) means a new tree."""
    material = json.dumps(
        {"suite": SUITE, "mirrors": MIRRORS, "packages": sorted(PACKAGES),
         "disabled": sorted(DISABLED_SERVICES), "masked": sorted(MASKED_UNITS),
         "v": CUSTOMISATION_VERSION, "standins": standins.content_hash(),
         "uml_modules": module_releases(uml_modules)},
        sort_keys=True,
    )
    return hashlib.sha256(material.encode()).hexdigest()[:16]


def rootfs_path(uml_modules: Path = uml.PACKAGED_MODULES) -> Path:
    return CACHE_ROOT / f"rootfs-{cache_key(uml_modules)}"


def is_cached(path: Path | None = None, uml_modules: Path = uml.PACKAGED_MODULES) -> bool:
    path = path or rootfs_path(uml_modules)
    return (path / COMPLETE_MARK).is_file()


def _customise(root: Path, uml_modules: Path) -> None:
    """Make the tree a good lab guest: services off, noisy units masked, no shared secrets."""
    systemctl = ["systemctl", f"--root={root}"]
    present = [u for u in DISABLED_SERVICES if _unit_exists(root, u)]
    if present:
        subprocess.run([*systemctl, "disable", *present], check=True, capture_output=True)
    subprocess.run([*systemctl, "enable", "ssh.service"], check=True, capture_output=True)
    subprocess.run([*systemctl, "mask", *MASKED_UNITS], check=True, capture_output=True)
    # Host keys and machine id are per host: generated into each overlay before boot.
    for key in (root / "etc/ssh").glob("ssh_host_*"):
        key.unlink()
    (root / "etc/machine-id").write_text("")
    dbus_id = root / "var/lib/dbus/machine-id"
    if dbus_id.is_symlink() or dbus_id.exists():
        dbus_id.unlink()
    # Keys only, quick logins: no DNS lookups of the client, root by key.
    sshd_dropin = root / "etc/ssh/sshd_config.d/10-k8sha-lab.conf"
    sshd_dropin.parent.mkdir(parents=True, exist_ok=True)
    sshd_dropin.write_text(
        "# nornir-k8sha lab: key-only logins, no reverse DNS\n"
        "UseDNS no\nPasswordAuthentication no\nPermitRootLogin prohibit-password\n"
        "HostKey /etc/ssh/ssh_host_ed25519_key\n"
    )
    # The UML kernel's own modules (ip_vs and friends): `modprobe ip_vs` in the directors.
    if uml_modules.is_dir():
        for release in uml_modules.iterdir():
            target = root / "lib/modules" / release.name
            if not target.exists():
                shutil.copytree(release, target, symlinks=True)
    # Lab switches are FRR boxes managed like real ToR switches: netmiko logs in as `netops`,
    # whose login shell is vtysh (answers as cisco_ios). Harmless on other hosts.
    subprocess.run(["useradd", f"--root={root}", "--create-home", "--shell", "/usr/bin/vtysh",
                    "--groups", "frrvty,frr", SWITCH_USER], check=True, capture_output=True)
    # The Kubernetes control-plane stand-ins (the only stand-ins of the lab: docs/standins.md).
    standins.install_into(root)
    journald = root / "etc/systemd/journald.conf.d/10-k8sha-lab.conf"
    journald.parent.mkdir(parents=True, exist_ok=True)
    journald.write_text("[Journal]\nStorage=volatile\nRuntimeMaxUse=16M\n")


def _unit_exists(root: Path, unit: str) -> bool:
    return any((root / d / unit).exists() for d in ("lib/systemd/system", "etc/systemd/system"))


def ensure_rootfs(log: Log = print, uml_modules: Path = uml.PACKAGED_MODULES) -> Path:
    """The cached tree, building it first when missing. Concurrent callers wait on a lock.

    `uml_modules` is the chosen UML kernel's modules dir (see `umlkernel.py`).
    """
    path = rootfs_path(uml_modules)
    if is_cached(path):
        return path
    CACHE_ROOT.mkdir(parents=True, exist_ok=True)
    with open(CACHE_ROOT / ".lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if is_cached(path):
            return path
        if path.exists():  # a tree without its mark: an interrupted customisation
            shutil.rmtree(path)
        for stale in CACHE_ROOT.glob(".build-*"):
            shutil.rmtree(stale, ignore_errors=True)
        tmp = CACHE_ROOT / f".build-{cache_key(uml_modules)}-{os.getpid()}"
        log(f"building the lab rootfs with mmdebstrap into {path} (once; ~30-60 s)")
        started = time.monotonic()
        cmd = [
            "mmdebstrap", "--mode=root", "--variant=apt", "--format=directory",
            "--aptopt=APT::Install-Recommends \"false\"",
            f"--include={','.join(PACKAGES)}", SUITE, str(tmp), *MIRRORS,
        ]
        proc = subprocess.run(cmd, capture_output=True, text=True)
        if proc.returncode != 0:
            shutil.rmtree(tmp, ignore_errors=True)
            tail = "\n".join(proc.stderr.strip().splitlines()[-15:])
            raise LabError(f"mmdebstrap failed (exit {proc.returncode}):\n{tail}")
        try:
            _customise(tmp, uml_modules)
        except (OSError, subprocess.CalledProcessError) as exc:
            shutil.rmtree(tmp, ignore_errors=True)
            raise LabError(f"customising the lab rootfs failed: {exc}") from exc
        (tmp / COMPLETE_MARK).write_text(json.dumps({"packages": list(PACKAGES)}) + "\n")
        tmp.rename(path)
        log(f"rootfs built in {time.monotonic() - started:.1f} s")
        _prune_old(path, log)
    return path


def _prune_old(keep: Path, log: Log) -> None:
    """Remove trees of older package lists that no overlay uses any more (they are ~600 MB)."""
    mountinfo = Path("/proc/self/mountinfo").read_text()
    for old in CACHE_ROOT.glob("rootfs-*"):
        if old != keep and f"lowerdir={old}" not in mountinfo:
            shutil.rmtree(old, ignore_errors=True)
            log(f"removed the old rootfs {old.name}")
