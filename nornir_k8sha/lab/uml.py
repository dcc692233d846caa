"""LVS directors: user-mode Linux guests, because IPVS needs a kernel of its own here.

keepalived with a `virtual_server` block exits when the kernel has no IPVS, and this machine's
kernel has none (nor modules). Debian's `user-mode-linux` kernel has `ip_vs` as a module (copied
into the rootfs), boots the same rootfs through hostfs in a few seconds, and reaches the lab
bridge through a tap with the vector driver.
"""

from __future__ import annotations

import shutil
from pathlib import Path

from nornir_k8sha.exceptions import LabError

UML_BINARY = "linux"
MEMORY = "256M"


def uml_binary() -> str:
    path = shutil.which(UML_BINARY) or (
        "/usr/bin/linux.uml" if Path("/usr/bin/linux.uml").exists() else None
    )
    if not path:
        raise LabError("user-mode Linux (`linux`, package user-mode-linux) is not installed")
    return path


def uml_command(host: str, root: Path, tap: str, mac: str, uml_dir: Path) -> list[str]:
    return [
        uml_binary(), f"mem={MEMORY}", f"umid=k8sha-{host}", f"uml_dir={uml_dir}",
        "root=/dev/root", "rootfstype=hostfs", f"rootflags={root}", "rw",
        "init=/lib/systemd/systemd", f"vec0:transport=tap,ifname={tap},mac={mac}",
        "con=null", "con0=null,fd:1", "quiet", "systemd.show_status=0",
    ]
