"""What the lab made, on disk: PIDs, namespaces, links, mounts, and the faults applied.

One JSON file, `<state dir>/lab/state.json`, written atomically (temp file + rename) after every
change so a crash loses nothing that `lab up` needs to repair or `lab down` needs to remove.
A lock file serialises `up`, `down` and faults run from different processes.
"""

from __future__ import annotations

import fcntl
import json
import os
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

STATE_FILE = "state.json"
LOCK_FILE = "lock"

KIND_NSPAWN = "nspawn"
KIND_UML = "uml"


@dataclass
class HostRecord:
    """One lab host as it runs on this machine."""

    name: str
    kind: str
    address: str
    netns: str | None = None
    link: str | None = None  # the bridge-side veth or tap: what a link cut downs
    mount: str | None = None
    cgroups: list[str] = field(default_factory=list)
    pid: int | None = None
    pid_start: int | None = None
    started_wall: float | None = None
    log: str | None = None


@dataclass
class Fault:
    """A fault as applied: what, to whom, and when (wall and monotonic clocks)."""

    id: int
    kind: str
    targets: list[str]
    applied_wall: float
    applied_monotonic: float
    detail: str = ""
    hosts: list[str] = field(default_factory=list)  # the lab hosts the fault hit
    undone_wall: float | None = None
    undone_monotonic: float | None = None

    @property
    def active(self) -> bool:
        return self.undone_wall is None


@dataclass
class LabState:
    cluster: str
    bridge: str
    controller: str
    rootfs: str | None = None
    hosts: dict[str, HostRecord] = field(default_factory=dict)
    faults: list[Fault] = field(default_factory=list)
    partitions: list[list[str]] = field(default_factory=list)

    def to_json(self) -> str:
        return json.dumps(asdict(self), indent=2, sort_keys=True) + "\n"

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> LabState:
        hosts = {k: HostRecord(**v) for k, v in data.get("hosts", {}).items()}
        faults = [Fault(**f) for f in data.get("faults", [])]
        return cls(
            cluster=data["cluster"], bridge=data["bridge"], controller=data["controller"],
            rootfs=data.get("rootfs"), hosts=hosts, faults=faults,
            partitions=data.get("partitions", []),
        )

    def next_fault_id(self) -> int:
        return max((f.id for f in self.faults), default=0) + 1


class StateStore:
    """Load/save the state file of one lab; `locked()` guards a whole operation."""

    def __init__(self, directory: Path) -> None:
        self.directory = directory
        self.path = directory / STATE_FILE

    def exists(self) -> bool:
        return self.path.is_file()

    def load(self) -> LabState | None:
        if not self.path.is_file():
            return None
        return LabState.from_dict(json.loads(self.path.read_text()))

    def save(self, state: LabState) -> None:
        self.directory.mkdir(parents=True, exist_ok=True)
        tmp = self.path.with_suffix(f".tmp{os.getpid()}")
        tmp.write_text(state.to_json())
        tmp.replace(self.path)

    def remove(self) -> None:
        self.path.unlink(missing_ok=True)

    @contextmanager
    def locked(self) -> Iterator[None]:
        self.directory.mkdir(parents=True, exist_ok=True)
        with open(self.directory / LOCK_FILE, "w") as handle:
            fcntl.flock(handle, fcntl.LOCK_EX)
            try:
                yield
            finally:
                fcntl.flock(handle, fcntl.LOCK_UN)
