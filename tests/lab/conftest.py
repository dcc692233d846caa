"""The running lab, shared by every lab test of the session.

`lab` brings the embedded lab up once, fresh (a lab left running, perhaps deployed, is taken
down first: the tests of an undeployed lab must not see an earlier deploy), yields a `LabHandle`
with the spec, the `Lab` and the fault API, and takes the lab down when the session ends.
Lab tests need root; without it they are skipped with the reason.
"""

from __future__ import annotations

import os
import shutil
from collections.abc import Iterator
from dataclasses import dataclass

import pytest

from tests.conftest import LAB_INVENTORY, REPO

NOT_ROOT = "lab tests need root (they build namespaces, a bridge, containers and UML guests)"
MISSING = [t for t in ("systemd-nspawn", "linux", "mmdebstrap", "nft") if not shutil.which(t)]


@dataclass
class LabHandle:
    """What a lab test gets: the spec, the lab (up/down/status/ssh) and its fault API."""

    lab: object
    faults: object

    @property
    def spec(self):  # noqa: ANN201
        return self.lab.spec  # type: ignore[attr-defined]

    def run(self, host: str, command: str, *, check: bool = True) -> tuple[int, str, str]:
        """A command on a lab host over SSH (verified host key)."""
        from nornir_k8sha.lab import ssh

        address = str(self.spec.host(host).address)
        return ssh.run(self.lab.ssh, address, command, host=host, check=check)  # type: ignore[attr-defined]


@pytest.fixture(scope="session")
def lab() -> Iterator[LabHandle]:
    if os.geteuid() != 0:
        pytest.skip(NOT_ROOT)
    if MISSING:
        pytest.skip(f"lab tools missing: {', '.join(MISSING)} (run scripts/setup.sh as root)")
    from nornir_k8sha.lab.faults import Faults
    from nornir_k8sha.lab.lab import Lab

    previous = os.getcwd()
    os.chdir(REPO)  # the inventory's key/known_hosts paths are relative to the repo root
    the_lab = Lab.from_inventory(LAB_INVENTORY)
    try:
        the_lab.down()
        the_lab.up()
        yield LabHandle(lab=the_lab, faults=Faults(the_lab))
    finally:
        the_lab.down()
        os.chdir(previous)
