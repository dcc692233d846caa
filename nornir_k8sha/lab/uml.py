"""LVS directors: user-mode Linux guests, because IPVS needs a kernel of its own here.

keepalived with a `virtual_server` block exits when the kernel has no IPVS, and this machine's
kernel has none (nor modules). A `user-mode-linux` kernel has `ip_vs` as a module (copied
into the rootfs), boots the same rootfs through hostfs in a few seconds, and reaches the lab
bridge through a tap with the vector driver. Which kernel (Debian's packaged one or a newer one
fetched because the packaged one cannot boot here) is `umlkernel.py`'s choice.
"""

from __future__ import annotations

import shutil
from pathlib import Path

UML_BINARY = "linux"
MEMORY = "256M"
#: Asks a UML kernel for seccomp mode; kernels without it pass it on to init, harmlessly.
SECCOMP_ARG = "seccomp=on"
#: Where Debian's user-mode-linux package puts its modules (`<release>/kernel/...`).
PACKAGED_MODULES = Path("/usr/lib/uml/modules")


def packaged_binary() -> str | None:
    """Debian's packaged UML kernel, or None when the package is not installed."""
    return shutil.which(UML_BINARY) or (
        "/usr/bin/linux.uml" if Path("/usr/bin/linux.uml").exists() else None
    )


def uml_command(binary: Path, host: str, root: Path, tap: str, mac: str,
                uml_dir: Path, seccomp: bool = False) -> list[str]:
    """The director's kernel command line; `seccomp` when the kernel runs in seccomp mode.

    `gro=1` on the tap: the tap is opened with virtio-net headers, and the host then hands it
    TCP segments merged beyond the MTU (2,896-14,480 bytes seen). Without `gro=1` the guest
    dropped those, the sender resent them as single segments after its retransmission timeout,
    and anything sent *to* a director crawled: 176 KB over SSH took 6 s (0.42 s with it), an
    Ansible module (its payload goes over stdin) 6-10 s.
    """
    return [
        str(binary), f"mem={MEMORY}", f"umid=k8sha-{host}", f"uml_dir={uml_dir}",
        "root=/dev/root", "rootfstype=hostfs", f"rootflags={root}", "rw",
        "init=/lib/systemd/systemd", f"vec0:transport=tap,ifname={tap},mac={mac},gro=1",
        "con=null", "con0=null,fd:1", "quiet", "systemd.show_status=0",
        *([SECCOMP_ARG] if seccomp else []),
    ]
