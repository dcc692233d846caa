"""The real kubectl binaries on this machine, for the tests that drive the apiserver stand-in.

The machine image ships kubectl 1.27-1.33 as `kubectl.1.27` ... `kubectl.1.33` beside the target
of the `kubectl` on PATH; without them the plain `kubectl` is used, without any the tests skip.
The kubectl of the lab's nodes (Debian's kubernetes-client, 1.20) is taken from a cached lab
root filesystem when one has been built (`lab up`), as `lab-node`.
"""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

import pytest

from nornir_k8sha.lab import rootfs


def _minor(version: str) -> tuple[int, ...]:
    return tuple(int(p) for p in version.split(".") if p.isdigit())


def kubectls() -> dict[str, str]:
    """version ("1.27") -> binary, oldest first; {"": path} when only an unversioned one exists."""
    path = shutil.which("kubectl")
    if not path:
        return {}
    target = Path(path).resolve()
    found = {p.name.removeprefix("kubectl."): str(p) for p in target.parent.glob("kubectl.1.*")
             if os.access(p, os.X_OK)}
    if not found:
        return {"": str(target)}
    return dict(sorted(found.items(), key=lambda kv: _minor(kv[0])))


KUBECTLS = kubectls()
#: Debian's kubectl in a built lab rootfs (any: the package is the same in each)
def lab_node_kubectl() -> Path | None:
    """The kubectl of a built lab rootfs, looked up now: `lab up` prunes stale rootfs trees,
    so a path found at collection time may be gone by the time a test runs."""
    return next((p for p in sorted(rootfs.CACHE_ROOT.glob("rootfs-*/usr/bin/kubectl"))
                 if os.access(p, os.X_OK)), None)


LAB_NODE_KUBECTL = lab_node_kubectl()
#: every binary by name: the machine image's, and the lab nodes' when a lab rootfs is built
BINARIES = {**KUBECTLS, **({"lab-node": str(LAB_NODE_KUBECTL)} if LAB_NODE_KUBECTL else {})}
NO_KUBECTL = "no kubectl binary on PATH (the machine image ships kubectl.1.27 ... kubectl.1.33)"
#: The oldest and the newest: the versions every flow is proven with.
EDGE_VERSIONS = sorted({next(iter(KUBECTLS), ""), next(reversed(KUBECTLS), "")},
                       key=_minor) if KUBECTLS else []


def versions(edges_only: bool, lab_node: bool = False) -> list[object]:
    """pytest parameters: one per kubectl version, or one skipped parameter with the reason.

    `edges_only`: the oldest and newest of the machine image (plus the lab nodes' kubectl with
    `lab_node`); otherwise every binary."""
    chosen = EDGE_VERSIONS + ([n for n in BINARIES if n == "lab-node"] if lab_node else []) \
        if edges_only else list(BINARIES)
    return list(chosen) or [pytest.param("", marks=pytest.mark.skip(reason=NO_KUBECTL))]


def kubectl(version: str, kubeconfig: Path, *args: str, home: Path, timeout: float = 60,
            stdin: str | None = None) -> subprocess.CompletedProcess[str]:
    """One kubectl run with only `kubeconfig` (no ambient config); `home` keeps its cache."""
    env = {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "HOME": str(home),
           "KUBECONFIG": str(kubeconfig)}
    binary = str(lab_node_kubectl() or BINARIES[version]) if version == "lab-node" \
        else BINARIES[version]
    return subprocess.run([binary, *args], env=env, capture_output=True, text=True,
                          timeout=timeout, input=stdin)
