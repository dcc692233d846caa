"""The nornir-k8sha task library, for the deploy engine and for anyone's own Nornir scripts.

Host primitives (`nornir_k8sha.tasks.host`), each a Nornir task honouring dry runs::

    from nornir_k8sha.tasks import facts, file, packages, service, sysctl

    nr.run(task=file, path="/etc/motd", content="hello\\n", mode=0o644)
    nr.run(task=service, unit="haproxy", reload_if_changed=True)

They reach hosts through the `k8sha_ssh` connection plugin (`nornir_k8sha.connection`); unit
tests swap in `nornir_k8sha.testing.FakeFleet` with `install_fake(nr, fleet)`. Component
tasks (keepalived, haproxy, etcd, kubeadm, harbor, switch) are submodules of this package.
"""

from __future__ import annotations

from nornir_k8sha.tasks.host import (
    commands,
    connect,
    facts,
    file,
    packages,
    restore_backup,
    service,
    sysctl,
)

__all__ = [
    "commands",
    "connect",
    "facts",
    "file",
    "packages",
    "restore_backup",
    "service",
    "sysctl",
]
