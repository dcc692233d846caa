"""Day 2 on the real lab (issue 11): the cluster lock held on the hosts, certificate renewal.

One deploy on a fresh lab; the tests after it run in file order and share it.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from nornir_k8sha import constants as C
from tests.conftest import LAB_INVENTORY, REPO

pytestmark = pytest.mark.lab

DEPLOY_TIMEOUT = 600


def start(*args: str, cwd: Path = REPO) -> subprocess.Popen[str]:
    """The real entry point, started (not waited for), importing this worktree's package."""
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    return subprocess.Popen([sys.executable, "-m", "nornir_k8sha", *args], cwd=cwd, env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def cli(*args: str, cwd: Path = REPO, timeout: float = DEPLOY_TIMEOUT
        ) -> subprocess.CompletedProcess[str]:
    proc = start(*args, cwd=cwd)
    out, err = proc.communicate(timeout=timeout)
    return subprocess.CompletedProcess(proc.args, proc.returncode, out, err)


def flat(text: str) -> str:
    return " ".join(text.split())


def lock_files(lab) -> dict[str, str]:
    """The cluster lock file on each etcd member ('' where there is none)."""
    found = {}
    for m in lab.spec.role(C.ROLE_ETCD):
        _, out, _ = lab.run(m.name, f"cat {C.HOST_LOCK_FILE} 2>/dev/null || true")
        found[m.name] = out.strip()
    return found


def second_machine(tmp_path: Path, spec) -> Path:  # noqa: ANN001
    """A working dir standing for another operator's machine: the same state (SSH key, PKI,
    secrets: symlinks) but its own local operation lock, so only the lock on the hosts can
    stop it."""
    mine = REPO / spec.state_dir
    theirs = tmp_path / "machine2" / spec.state_dir
    theirs.mkdir(parents=True)
    for entry in mine.iterdir():
        if entry.name != C.STATE_OPERATION_LOCK:
            (theirs / entry.name).symlink_to(entry)
    return tmp_path / "machine2"


@pytest.fixture(scope="module")
def deployed(lab):
    lab.lab.down()
    lab.lab.up()
    proc = cli("deploy", "-i", str(LAB_INVENTORY))
    assert proc.returncode == 0, proc.stderr[-3000:]
    return lab


def test_two_concurrent_deploys_from_two_machines_exactly_one_proceeds(
        deployed, tmp_path: Path) -> None:
    lab = deployed
    other = second_machine(tmp_path, lab.spec)
    first = start("deploy", "-i", str(LAB_INVENTORY))
    time.sleep(0.5)
    second = start("deploy", "-i", str(LAB_INVENTORY), cwd=other)
    runs = {}
    for name, proc in (("first", first), ("second", second)):
        out, err = proc.communicate(timeout=DEPLOY_TIMEOUT)
        runs[name] = (proc.pid, proc.returncode, flat(out + err))
    codes = sorted(code for _, code, _ in runs.values())
    assert codes == [0, 1], {k: (c, o[-1500:]) for k, (_, c, o) in runs.items()}
    (winner,) = [k for k, (_, c, _) in runs.items() if c == 0]
    (loser,) = [k for k, (_, c, _) in runs.items() if c == 1]
    message = runs[loser][2]
    assert "the cluster is locked by " in message and f"pid {runs[winner][0]}, `deploy`" \
        in message, message[-1500:]
    assert "nothing was touched on any host" in message
    print(f"\nwinner: {winner} deploy; loser said: "
          f"{message[message.index('the cluster is locked'):][:200]}")
    assert lock_files(lab) == {m.name: "" for m in lab.spec.role(C.ROLE_ETCD)}  # released


def test_a_killed_deploy_leaves_a_stale_lock_broken_only_with_the_flag(deployed) -> None:
    lab = deployed
    doomed = start("deploy", "-i", str(LAB_INVENTORY))
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline and not all(lock_files(lab).values()):
        time.sleep(0.2)
    held = lock_files(lab)
    os.kill(doomed.pid, signal.SIGKILL)
    doomed.communicate(timeout=30)
    assert all(held.values()), held
    assert {json.loads(v)["pid"] for v in held.values()} == {doomed.pid}
    refused = cli("deploy", "-i", str(LAB_INVENTORY))
    text = flat(refused.stdout + refused.stderr)
    assert refused.returncode == 1, text[-1500:]
    assert f"pid {doomed.pid}" in text and "looks stale" in text and "--break-lock" in text
    broken = cli("deploy", "-i", str(LAB_INVENTORY), "--break-lock")
    text = flat(broken.stdout + broken.stderr)
    assert broken.returncode == 0, text[-1500:]
    assert "broke a stale cluster lock" in text and f"process {doomed.pid}" in text
    assert lock_files(lab) == {m.name: "" for m in lab.spec.role(C.ROLE_ETCD)}
