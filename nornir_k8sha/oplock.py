"""The cluster's operation lock: a runbook never runs beside a deploy (or another runbook).

`.k8sha/<cluster>/operation.lock`, held with fcntl.flock for the whole operation; the file
says who holds it (pid, command, since) so the refusal can name them. The kernel drops the lock
when the holder dies, so a crashed run never leaves the cluster locked.

Re-entrant only where asked (`share_inside=True`): the cli holds it around a runbook (with the
lock on the hosts, tasks/hostlock.py) and the runbook engine takes it again inside this process;
that inner one is then a no-op. A plain holder shares nothing: a second take is refused.
"""

from __future__ import annotations

import contextlib
import fcntl
import getpass
import json
import os
import socket
import threading
import time
import uuid
from collections.abc import Iterator
from dataclasses import asdict, dataclass
from pathlib import Path

from nornir_k8sha import constants as C
from nornir_k8sha.exceptions import OperationLocked


@dataclass(frozen=True)
class Holder:
    """Who holds (or wants) the lock: what its file on the members says."""

    user: str
    machine: str
    pid: int
    since: float
    command: str
    token: str

    @classmethod
    def me(cls, command: str) -> Holder:
        try:
            user = getpass.getuser()
        except (KeyError, OSError):
            user = str(os.getuid())
        return cls(user, socket.gethostname(), os.getpid(), time.time(), command,
                   uuid.uuid4().hex)

    @classmethod
    def parse(cls, text: str) -> Holder | None:
        try:
            data = json.loads(text)
            return cls(str(data["user"]), str(data["machine"]), int(data["pid"]),
                       float(data["since"]), str(data["command"]), str(data["token"]))
        except (ValueError, KeyError, TypeError):
            return None

    def record(self) -> str:
        return json.dumps(asdict(self), sort_keys=True)

    def describe(self) -> str:
        since = time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime(self.since))
        return f"{self.user}@{self.machine} pid {self.pid}, `{self.command}`, since {since}"


_HELD: dict[Path, int] = {}
_GUARD = threading.Lock()


@contextlib.contextmanager
def operation_lock(state_dir: Path, command: str, *,
                   share_inside: bool = False) -> Iterator[Path]:
    """Hold the cluster's operation lock, or raise OperationLocked naming the holder.
    `share_inside`: takes of the same lock by this process inside the block pass through."""
    path = (Path(state_dir) / C.STATE_OPERATION_LOCK).absolute()
    with _GUARD:
        nested = _HELD.get(path, 0) > 0
        if nested:
            _HELD[path] += 1
    if nested:
        try:
            yield path
        finally:
            with _GUARD:
                _HELD[path] -= 1
        return
    with _flock(path, command):
        if not share_inside:
            yield path
            return
        with _GUARD:
            _HELD[path] = 1
        try:
            yield path
        finally:
            with _GUARD:
                _HELD.pop(path, None)


@contextlib.contextmanager
def _flock(path: Path, command: str) -> Iterator[None]:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o600)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = Holder.parse(os.pread(fd, 4096, 0).decode(errors="replace").strip())
            who = holder.describe() if holder else "holder unknown"
            raise OperationLocked(f"{path}: another operation runs on this cluster "
                                  f"({who}); try again when it ends") from None
        os.ftruncate(fd, 0)
        os.pwrite(fd, Holder.me(command).record().encode(), 0)
        try:
            yield
        finally:
            os.ftruncate(fd, 0)
            fcntl.flock(fd, fcntl.LOCK_UN)
    finally:
        os.close(fd)

