"""Non-LVS hosts: systemd-nspawn containers booting the real systemd of the shared rootfs.

The flags are the ones measured to work on this kind of machine (DESIGN.md 7): no machined
registration and no scope of its own (PID 1 here may not be systemd), the host's own network
namespace made beforehand by `network.ensure_veth`, and `/proc/sys/net` writable
(SYSTEMD_NSPAWN_API_VFS_WRITABLE=network) so that the HAProxy real servers can set
arp_ignore/arp_announce and etcd/keepalived their net sysctls.
"""

from __future__ import annotations

from pathlib import Path

PROPAGATE_DIR = Path("/run/systemd/nspawn/propagate")
CAPABILITIES = "CAP_NET_ADMIN,CAP_NET_RAW,CAP_SYS_NICE"
ENV = {"SYSTEMD_NSPAWN_API_VFS_WRITABLE": "network", "SYSTEMD_LOG_COLOR": "0"}


def nspawn_command(host: str, root: Path, netns: str) -> list[str]:
    return [
        "systemd-nspawn", "--quiet", "--register=no", "--keep-unit", "--boot",
        "--resolv-conf=off", "--timezone=off", "--link-journal=no", "--console=read-only",
        f"--network-namespace-path=/run/netns/{netns}", f"--capability={CAPABILITIES}",
        f"--machine={host}", f"--directory={root}",
    ]


def clear_propagate(host: str) -> None:
    """nspawn leaves this dir behind when killed; a stale one blocks nothing but is litter."""
    path = PROPAGATE_DIR / host
    if path.is_dir():
        for child in path.iterdir():
            if child.is_file() or child.is_symlink():
                child.unlink(missing_ok=True)
        try:
            path.rmdir()
        except OSError:
            pass
