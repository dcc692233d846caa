"""The Debian packages the lab needs on this machine, installed when missing.

Debian's policy-rc.d convention (exit 101) keeps anything installed here from starting on this
machine: the lab runs its services inside the hosts, never on the controller.
"""

from __future__ import annotations

import os
import shutil
import subprocess
from collections.abc import Callable
from pathlib import Path

from nornir_k8sha.exceptions import LabError

#: A program (or file) the lab uses -> the package that ships it.
REQUIRED: dict[str, str] = {
    "systemd-nspawn": "systemd-container",
    "mmdebstrap": "mmdebstrap",
    "linux": "user-mode-linux",
    "patchelf": "patchelf",  # a newer UML kernel is patched onto its own libc (umlkernel.py)
    "ip": "iproute2",
    "nft": "nftables",
    "ssh-keygen": "openssh-client",
    "ssh": "openssh-client",
    "/usr/share/keyrings/debian-archive-keyring.gpg": "debian-archive-keyring",
}
POLICY_RC_D = Path("/usr/sbin/policy-rc.d")


def missing_packages() -> list[str]:
    missing = []
    for what, package in REQUIRED.items():
        present = Path(what).exists() if what.startswith("/") else shutil.which(what)
        if not present and package not in missing:
            missing.append(package)
    return missing


def ensure_host_packages(log: Callable[[str], None] = print) -> list[str]:
    """apt-get install what is missing; returns the packages installed."""
    missing = missing_packages()
    if not missing:
        return []
    log(f"installing host packages: {' '.join(missing)}")
    created = False
    if not POLICY_RC_D.exists():
        POLICY_RC_D.write_text("#!/bin/sh\n# nornir-k8sha: start nothing here\nexit 101\n")
        POLICY_RC_D.chmod(0o755)
        created = True
    env = dict(os.environ, DEBIAN_FRONTEND="noninteractive")
    try:
        for cmd in (["apt-get", "update", "-q"],
                    ["apt-get", "install", "-y", "-q", "--no-install-recommends", *missing]):
            proc = subprocess.run(cmd, capture_output=True, text=True, env=env)
            if proc.returncode != 0:
                tail = " | ".join(proc.stderr.strip().splitlines()[-5:])
                raise LabError(f"`{' '.join(cmd)}` failed (exit {proc.returncode}): {tail}")
    finally:
        if created:
            POLICY_RC_D.unlink(missing_ok=True)
    still = missing_packages()
    if still:
        raise LabError(f"host packages still missing after install: {' '.join(still)}")
    return missing
