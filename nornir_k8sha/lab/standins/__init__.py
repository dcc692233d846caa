"""Lab stand-ins for the Kubernetes pieces that cannot run here (lab only, never the deploy).

No kubeadm, kube-apiserver or kubelet binary or image can be had on this machine, so the lab's
rootfs gets small pure-stdlib Python programs with the real command lines instead (see
docs/standins.md): `kubeadm`, an apiserver, controller-manager/scheduler leader election and a
kubelet that posts heartbeats, all keeping their state in the real external etcd. kubectl is
the real one (Debian's `kubernetes-client`), talking to the stand-in apiserver.

The lab's rootfs builder calls `install_into(root)` once per tree; `content_hash()` belongs in its
cache key so a change here rebuilds the tree. The deploy must never import this package.
"""

from __future__ import annotations

import hashlib
from pathlib import Path

from nornir_k8sha.settings import KubernetesSettings

HERE = Path(__file__).parent
PROGRAMS = HERE / "programs"
UNITS = HERE / "units"

#: Where things land inside the rootfs.
LIB_DIR = "usr/lib/k8sha-standins"
UNIT_DIR = "usr/lib/systemd/system"
VERSION_FILE = "etc/k8sha-standins/version"
#: command on PATH -> program in LIB_DIR
COMMANDS = {"kubeadm": "kubeadm.py", "kubelet": "kubelet.py"}
#: kubectl is real (Debian's kubernetes-client); root's default kubeconfig is the admin.conf that
#: kubeadm writes on masters, as `kubeadm init` tells the admin to set up (absent elsewhere).
ROOT_KUBECONFIG = "root/.kube/config"
ADMIN_CONF = "/etc/kubernetes/admin.conf"
#: The systemd units (the lab's faults stop e.g. kube-apiserver.service on one master).
UNIT_NAMES = ("kube-apiserver.service", "kube-controller-manager.service",
              "kube-scheduler.service", "kubelet.service")

_WRAPPER = """#!/bin/sh
# [lab stand-in] nornir-k8sha: this is NOT the real {name}; see /usr/lib/k8sha-standins/README
exec /usr/bin/python3 /{lib}/{program} "$@"
"""
_README = """[lab stand-in] nornir-k8sha lab stand-ins

These programs stand in for kubeadm, kube-apiserver, kube-controller-manager, kube-scheduler and
the kubelet inside the nornir-k8sha lab, where no real Kubernetes binaries or images exist.
kubectl is the real one (Debian's kubernetes-client) and talks to the stand-in apiserver. They
keep the real command lines and output shapes and their state in the real etcd, and every line
and HTTP response they produce says it comes from a lab stand-in.
"""


def _files() -> list[tuple[Path, str, int]]:
    """(source, destination relative to the root, mode) of everything installed."""
    files = [(p, f"{LIB_DIR}/{p.name}", 0o755 if p.name in COMMANDS.values() else 0o644)
             for p in sorted(PROGRAMS.glob("*.py"))]
    files += [(u, f"{UNIT_DIR}/{u.name}", 0o644) for u in sorted(UNITS.glob("*.service"))]
    return files


def content_hash() -> str:
    """A hash of every installed file: part of the rootfs cache key."""
    digest = hashlib.sha256()
    for src, dest, mode in _files():
        digest.update(f"{dest}:{mode:o}\n".encode())
        digest.update(src.read_bytes())
    return digest.hexdigest()[:16]


def _default_version() -> str:
    return KubernetesSettings().version


def install_into(root: Path, kubernetes_version: str | None = None) -> list[Path]:
    """Copy the stand-ins into the tree at `root`; returns the paths written.

    `kubernetes_version` is what `kubeadm version -o short`, the kubelet and the apiserver
    report (the deploy compares it with the inventory's version); default: the settings
    default. A host's overlay may override it by writing /etc/k8sha-standins/version.
    """
    root = Path(root)
    written: list[Path] = []

    def put(dest: str, data: bytes, mode: int) -> None:
        target = root / dest
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_bytes(data)
        target.chmod(mode)
        written.append(target)

    for src, dest, mode in _files():
        put(dest, src.read_bytes(), mode)
    for name, program in COMMANDS.items():
        put(f"usr/bin/{name}", _WRAPPER.format(name=name, lib=LIB_DIR, program=program)
            .encode(), 0o755)
    put(f"{LIB_DIR}/README", _README.encode(), 0o644)
    link = root / ROOT_KUBECONFIG
    link.parent.mkdir(parents=True, exist_ok=True)
    link.unlink(missing_ok=True)
    link.symlink_to(ADMIN_CONF)
    written.append(link)
    version = (kubernetes_version or _default_version()).lstrip("v")
    put(VERSION_FILE, f"{version}\n".encode(), 0o644)
    return written


__all__ = ["COMMANDS", "UNIT_NAMES", "content_hash", "install_into"]
