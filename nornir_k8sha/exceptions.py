"""Every error nornir-k8sha raises on purpose.

    K8shaError
    ├── InventoryError         the inventory cannot be read or breaks a rule (exit 2)
    │   └── ValidationFailed   one or more topology rules failed; carries the findings
    ├── PKIError               a certificate or key cannot be made or read
    ├── LabError               the embedded lab cannot be built, reached or torn down
    │   └── NotRootError       the lab needs root
    ├── RunbookError           a runbook cannot run (file:line), or is refused; nothing done
    ├── OperationLocked        another operation (deploy, runbook) holds the cluster
    ├── ConnectionFailed       a host cannot be reached over SSH
    ├── CommandFailed          a command on a host exited non-zero (host, command, code, stderr)
    └── DeployError            a phase of a deploy failed
        └── NodesNotReady      hosts that are not Ready nodes when the deploy's wait ends

Messages never include a secret: commands are logged as given, passwords go on stdin only.
"""

from __future__ import annotations

from typing import Any


class K8shaError(Exception):
    """Base of every error we raise on purpose."""


class InventoryError(K8shaError):
    """The inventory cannot be read (malformed YAML, unknown field, missing file)."""


class ValidationFailed(InventoryError):
    """The inventory breaks one or more topology rules; `findings` holds them all."""

    def __init__(self, findings: list[Any]) -> None:
        self.findings = findings
        lines = [str(f) for f in findings]
        super().__init__("inventory is invalid:\n  " + "\n  ".join(lines))


class PKIError(K8shaError):
    """A certificate or key cannot be created or read."""


class LabError(K8shaError):
    """The embedded lab cannot be built, reached or torn down."""


class NotRootError(LabError):
    """The lab manipulates namespaces, bridges and mounts: it must run as root."""


class RunbookError(K8shaError):
    """A runbook cannot be run: bad YAML, unknown task, selector or field (file:line), a
    lab-only fault on a real inventory, or a non-lab inventory without --yes. Nothing was
    touched on any host."""


class SnapshotError(K8shaError):
    """An etcd snapshot file that is missing, not a snapshot, or fails its checksum: bad input,
    refused before any host is touched."""


class ReplaceRefused(K8shaError):
    """An etcd member replace that would break the cluster or was not asked for (a healthy
    member without --force): refused before anything was touched."""


class OperationLocked(K8shaError):
    """Another operation (deploy, runbook) holds the cluster's operation lock."""


class ConnectionFailed(K8shaError):
    """A host cannot be reached over SSH."""

    def __init__(self, host: str, reason: str) -> None:
        self.host = host
        self.reason = reason
        super().__init__(f"{host}: cannot connect: {reason}")


class CommandFailed(K8shaError):
    """A command on a host exited non-zero."""

    def __init__(self, host: str, command: str, exit_code: int, stderr: str) -> None:
        self.host = host
        self.command = command
        self.exit_code = exit_code
        self.stderr = stderr
        tail = stderr.strip().splitlines()[-5:]
        super().__init__(
            f"{host}: `{command}` exited {exit_code}" + (": " + " | ".join(tail) if tail else "")
        )


class DeployError(K8shaError):
    """A phase of a deploy failed."""


class NodesNotReady(DeployError, TimeoutError):
    """Some masters/workers are not Ready nodes when the deploy's wait ends; `missing` names
    them (exact host names: a caller never has to search the message)."""

    def __init__(self, missing: set[str] | list[str], timeout: float) -> None:
        self.missing = frozenset(missing)
        self.timeout = timeout
        super().__init__(f"nodes not Ready after {timeout:.0f}s: "
                         + ", ".join(sorted(self.missing)))
